//! The node's use of the hot swap: which model to start with (the last
//! accepted version after a restart) and the periodic poll for new
//! versions, fed with recent complete observations for the divergence
//! check. Spin thread only; the control thread sees only the lock-free
//! `SwapChannel`.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use flowpilot_core::board::{mono_ns, wall_ns, Board};
use flowpilot_core::config::NodeConfig;
use flowpilot_core::hotswap::{HotSwap, SwapChannel};
use flowpilot_core::model::ModelFile;

/// Recent observation snapshots kept for the divergence check.
const RECENT: usize = 20;

/// Load `model`; after a restart, resume with the last version the hot
/// swap accepted (if it still fits). Returns the model and its path.
pub(crate) fn load_policy(cfg: &NodeConfig) -> Result<(ModelFile, PathBuf)> {
    let mut model =
        ModelFile::load(&cfg.model).with_context(|| format!("loading model {}", cfg.model))?;
    let mut model_path = PathBuf::from(&cfg.model);
    if let Some(dir) = &cfg.hot_swap_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating hot_swap.dir {dir}"))?;
        if let Some((p, m)) = HotSwap::resume(Path::new(dir)) {
            match model.spec.check_compatible(&m.spec) {
                Ok(()) => {
                    // Say loudly that `model` is not what runs: the hot
                    // swap's accepted record overrides it after a restart.
                    tracing::warn!(
                        model_param = %cfg.model,
                        running = %p.display(),
                        version = m.spec.version,
                        "the `model` parameter is overridden: resuming with the last version the hot swap accepted in {dir} (remove {dir}/{} to start from `model`)",
                        flowpilot_core::checkpoint::ACCEPTED_FILE,
                    );
                    model = m;
                    model_path = p;
                }
                Err(e) => {
                    tracing::warn!(path = %p.display(), "last accepted version does not fit `model` ({e}); ignoring it");
                }
            }
        }
    }
    Ok((model, model_path))
}

/// The hot swap and its poll schedule.
pub(crate) struct Poller {
    hot: HotSwap,
    period_ns: i64,
    next_ns: i64,
    obs_dim: usize,
    recent: Vec<(Vec<f32>, Vec<f32>)>,
    snap: Vec<f32>,
}

impl Poller {
    /// None when `hot_swap.dir` is unset.
    pub(crate) fn new(
        cfg: &NodeConfig,
        model_path: &Path,
        model: &ModelFile,
        board: &Board,
    ) -> Option<Self> {
        let dir = cfg.hot_swap_dir.as_ref()?;
        Some(Self {
            hot: HotSwap::new(
                dir.into(),
                cfg.hot_swap_max_divergence,
                model_path.to_path_buf(),
                model.clone(),
            )
            .with_guard(cfg.hot_swap_guard),
            period_ns: (cfg.hot_swap_poll_s * 1e9) as i64,
            next_ns: mono_ns(),
            obs_dim: model.spec.obs_dim,
            recent: Vec::new(),
            snap: vec![0f32; board.total()],
        })
    }

    pub(crate) fn hot(&self) -> &HotSwap {
        &self.hot
    }

    pub(crate) fn hot_mut(&mut self) -> &mut HotSwap {
        &mut self.hot
    }

    /// When due: remember the board's current observation (if every source
    /// has been written) and look for a new version to offer.
    pub(crate) fn poll_if_due(&mut self, chan: &Arc<SwapChannel>, board: &Board) {
        if mono_ns() < self.next_ns {
            return;
        }
        self.next_ns = mono_ns() + self.period_ns;
        let (m, w) = (mono_ns(), wall_ns());
        let mut ok = true;
        for i in 0..board.sources() {
            let (off, wd) = (board.offset(i), board.width(i));
            ok &= board
                .read(i, &mut self.snap[off..off + wd], m, w)
                .ever_written;
        }
        if ok {
            let (obs, goal) = self.snap.split_at(self.obs_dim);
            self.recent.push((obs.to_vec(), goal.to_vec()));
            if self.recent.len() > RECENT {
                self.recent.remove(0);
            }
        }
        self.hot.poll(chan, &self.recent);
    }
}
