//! The node's use of the hot swap: which model to start with (the last
//! accepted version after a restart), and the worker thread that polls for
//! new versions and validates them (fed with recent complete observations
//! for the smoke sample and the divergence check). The spin thread only
//! ever `try_lock`s the hot swap; the control thread sees only the
//! lock-free `SwapChannel`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, TryLockError};
use std::time::Duration;

use anyhow::{Context, Result};

use flowpilot_core::node::config::NodeConfig;
use flowpilot_core::node::hotswap::{HotSwap, SwapChannel};
use flowpilot_core::policy::model::ModelFile;
use flowpilot_core::rt::board::{mono_ns, wall_ns, Board};
use flowpilot_core::sched::{set_idle_scheduling, set_niceness};

/// Recent observation snapshots kept for the smoke sample and the
/// divergence check.
const RECENT: usize = 20;

/// Load `model`; after a restart, resume with the newest version the hot
/// swap accepted that still passes every hot-swap check
/// ([`HotSwap::resume`]), unless `hot_swap.resume` is false. Returns the
/// model and its path.
pub(crate) fn load_policy(cfg: &NodeConfig) -> Result<(ModelFile, PathBuf)> {
    let model =
        ModelFile::load(&cfg.model).with_context(|| format!("loading model {}", cfg.model))?;
    let model_path = PathBuf::from(&cfg.model);
    let Some(dir) = &cfg.hot_swap_dir else {
        return Ok((model, model_path));
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating hot_swap.dir {dir}"))?;
    if !cfg.hot_swap_resume {
        tracing::info!(
            "hot_swap.resume is false: starting from `model` (revoked versions stay revoked)"
        );
        return Ok((model, model_path));
    }
    match hot_swap(cfg, dir, &model_path, &model).resume() {
        Some((p, m)) => {
            // Say loudly that `model` is not what runs: the hot swap's
            // accepted record overrides it after a restart.
            tracing::warn!(
                model_param = %cfg.model,
                running = %p.display(),
                version = m.spec.version,
                "the `model` parameter is overridden: resuming with the last version the hot swap accepted in {dir} (hot_swap.resume: false starts from `model`)",
            );
            Ok((m, p))
        }
        None => Ok((model, model_path)),
    }
}

/// The hot swap as `cfg` sets it up, running `model`.
fn hot_swap(cfg: &NodeConfig, dir: &str, model_path: &Path, model: &ModelFile) -> HotSwap {
    HotSwap::new(
        dir.into(),
        cfg.hot_swap_max_divergence,
        model_path.to_path_buf(),
        model.clone(),
    )
    .with_guard(cfg.hot_swap_guard)
    .allow_spec_changes(cfg.hot_swap_allow_spec_change)
    .with_trusted_keys(cfg.hot_swap_trusted_keys.clone())
}

/// The hot swap's state as the diagnostics report it (a copy, so that
/// reading it never waits for the worker).
#[derive(Debug, Clone, Default)]
pub(crate) struct SwapStatus {
    pub(crate) digest: String,
    pub(crate) version: u64,
    pub(crate) swaps: u64,
    pub(crate) rejected: u64,
    pub(crate) last_rejection: String,
    pub(crate) auto_rollbacks: u64,
    pub(crate) verdict: String,
    pub(crate) record_error: String,
}

impl SwapStatus {
    fn of(h: &HotSwap) -> Self {
        Self {
            digest: h.current().spec.digest.clone(),
            version: h.current().spec.version,
            swaps: h.swaps(),
            rejected: h.rejected(),
            last_rejection: h.last_rejection().to_string(),
            auto_rollbacks: h.auto_rollbacks(),
            verdict: h.last_verdict().to_string(),
            record_error: h.record_error().to_string(),
        }
    }
}

/// The hot swap on a worker thread of its own in SCHED_IDLE: reading,
/// hashing and validating new versions (up to `model::MAX_FILE_BYTES`
/// each), building and smoke-sampling their samplers never runs on the
/// spin thread that serves the e-stop, nor competes with the control
/// thread for the CPU (nice 19 alone did: +13–16 missed deadlines per 100
/// swaps at 500 Hz in `bench/hotswap_bench.py`). The spin thread reaches the hot swap only
/// with `try_lock` ([`SwapWorker::with_hot`]): it never waits behind a
/// validation; a rollback request or an episode return that finds it busy
/// waits in its queue for the next spin.
pub(crate) struct SwapWorker {
    hot: Arc<Mutex<HotSwap>>,
    status: SwapStatus,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SwapWorker {
    /// None when `hot_swap.dir` is unset.
    pub(crate) fn start(
        cfg: &NodeConfig,
        model_path: &Path,
        model: &ModelFile,
        board: &Arc<Board>,
        chan: &Arc<SwapChannel>,
    ) -> Result<Option<Self>> {
        let Some(dir) = cfg.hot_swap_dir.as_ref() else {
            return Ok(None);
        };
        let hot = hot_swap(cfg, dir, model_path, model);
        let keys = hot.trusted_keys();
        if keys.is_empty() {
            tracing::warn!(
                dir = %dir,
                "hot-swapped versions are not authenticated: any well-formed version written into hot_swap.dir runs; set hot_swap.trusted_keys (docs/security.md)"
            );
        } else {
            let keys: Vec<String> = keys.keys().iter().map(ToString::to_string).collect();
            tracing::info!(dir = %dir, trusted_keys = ?keys, "hot swap accepts only versions signed by a trusted key");
        }
        let status = SwapStatus::of(&hot);
        let hot = Arc::new(Mutex::new(hot));
        let stop = Arc::new(AtomicBool::new(false));
        let mut poller = Poller {
            hot: hot.clone(),
            board: board.clone(),
            chan: chan.clone(),
            period: Duration::from_secs_f64(cfg.hot_swap_poll_s),
            step_obs: model.spec.step_obs_dim(),
            horizon: model.spec.obs_horizon,
            recent: Vec::new(),
            snap: vec![0f32; board.total()],
        };
        let s = stop.clone();
        let thread = std::thread::Builder::new()
            .name("flowpilot-swap".into())
            .spawn(move || {
                // Per thread on Linux: only this worker runs in SCHED_IDLE.
                if let Err(e) = set_niceness(19).and_then(|()| set_idle_scheduling()) {
                    tracing::warn!("hot-swap worker keeps normal priority: {e}");
                }
                poller.run(&s);
            })
            .context("starting the hot-swap worker")?;
        Ok(Some(Self {
            hot,
            status,
            stop,
            thread: Some(thread),
        }))
    }

    /// Run `f` on the hot swap if the worker is not using it (and refresh
    /// the reported status); nothing if it is busy.
    pub(crate) fn with_hot(&mut self, f: impl FnOnce(&mut HotSwap)) {
        if let Some(mut h) = try_hot(&self.hot) {
            f(&mut h);
            self.status = SwapStatus::of(&h);
        }
    }

    /// The latest status seen (refreshed whenever the spin thread had the
    /// hot swap).
    pub(crate) fn status(&mut self) -> &SwapStatus {
        if let Some(h) = try_hot(&self.hot) {
            self.status = SwapStatus::of(&h);
        }
        &self.status
    }
}

/// The hot swap, unless the worker holds it. A panic while validating
/// leaves it consistent (checks only read it), so a poisoned lock is served
/// as usual.
fn try_hot(hot: &Mutex<HotSwap>) -> Option<MutexGuard<'_, HotSwap>> {
    match hot.try_lock() {
        Ok(h) => Some(h),
        Err(TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

impl Drop for SwapWorker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The worker's loop: every poll period, snapshot the board's observation
/// and look for a new version.
struct Poller {
    hot: Arc<Mutex<HotSwap>>,
    board: Arc<Board>,
    chan: Arc<SwapChannel>,
    period: Duration,
    /// One observation step's width, and the policy's history length.
    step_obs: usize,
    horizon: usize,
    recent: Vec<(Vec<f32>, Vec<f32>)>,
    snap: Vec<f32>,
}

impl Poller {
    fn run(&mut self, stop: &AtomicBool) {
        let mut next = std::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            if std::time::Instant::now() < next {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            next += self.period;
            self.remember_observation();
            // Poisoned: see `try_hot`.
            let mut h = self.hot.lock().unwrap_or_else(|p| p.into_inner());
            h.poll(&self.chan, &self.recent);
        }
    }

    /// Keep the board's current observation (if every source has been
    /// written) for the smoke sample and the divergence check.
    fn remember_observation(&mut self) {
        let board = &self.board;
        let (m, w) = (mono_ns(), wall_ns());
        let mut ok = true;
        for i in 0..board.sources() {
            let (off, wd) = (board.offset(i), board.width(i));
            ok &= board
                .read(i, &mut self.snap[off..off + wd], m, w)
                .ever_written;
        }
        if ok {
            let (obs, goal) = self.snap.split_at(self.step_obs);
            // A history policy sees it as the control thread does at a
            // start: the one observation repeated over the whole horizon.
            self.recent.push((obs.repeat(self.horizon), goal.to_vec()));
            if self.recent.len() > RECENT {
                self.recent.remove(0);
            }
        }
    }
}
