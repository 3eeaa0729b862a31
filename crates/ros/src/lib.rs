//! flowpilot-ros: the ROS 2 node (on r2r, no candle), wiring only. The
//! ROS-free parts live in flowpilot-core: parameter parsing
//! (`config`), the control thread's body (`runner`) and the diagnostics
//! content (`diagnostics`).
//!
//! Threads: subscriptions fill the board on the spin thread; the control
//! thread runs core's `Runner` at a fixed rate (allocation-free, lock-free;
//! nothing in this crate runs inside a tick); the publisher thread turns
//! its outputs into messages (r2r's publish allocates and locks: the
//! realtime_tools pattern); the spin thread also serves e-stop, services,
//! hot swap polls, diagnostics and shutdown.
//!
//! - [`params`]: r2r parameters to core's `ParamMap`.
//! - [`inputs`]: observation/goal subscriptions into the board.
//! - [`log_inputs`]: reward/episode/terminal and override subscriptions; the log writer.
//! - [`outputs`]: the action publisher and its thread.
//! - [`services`]: e-stop, `~/rollback`, `~/keep_best`, `~/finetune`.
//! - [`lifecycle`]: the managed-node services on lifecycle_msgs.
//! - [`swap`]: the starting model and the hot-swap poll.
//! - [`learner`]: the fine-tuning learner child process.
//! - [`session_topics`]: the learner's metrics (`~/learner/*`) and version events (`~/policy_events`) on the graph.
//! - [`fleet`]: the robot's end of the fleet link (records out, versions in).
//! - [`fleet_learner`]: the learner's end (`flowpilot_fleet`).
//! - [`diagnostics`]: publishing /diagnostics.
//! - [`fault_inject`]: test-only control-thread faults for the fault matrix.
//!
//! The spin loop is also the supervisor of the control and publisher
//! threads: a dead loop, one with no tick for `watchdog.stall_periods`
//! periods, or a publisher that leaves outputs waiting as long (core's
//! `watchdog`), gets the interface's stop (core's `stop`) published from the
//! spin thread's own writer once the publisher thread is halted
//! ([`outputs::Line`]), an ERROR on /diagnostics and a non-zero exit.

// The crate docs are the house tour, private modules included: build them
// with `cargo doc --document-private-items` (scripts/test.sh checks them).
#![allow(rustdoc::private_intra_doc_links)]

mod diagnostics;
mod fault_inject;
mod fleet;
pub mod fleet_learner;
mod inputs;
mod learner;
mod lifecycle;
mod live_params;
mod log_inputs;
mod outputs;
mod params;
mod qos;
mod services;
mod session_topics;
mod swap;

use std::sync::atomic::{AtomicBool, Ordering};

use flowpilot_core::rt::flags::{ActuationGate, EStopFlag};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use flowpilot_core::log::MAX_ACT;
use flowpilot_core::node::config::NodeConfig;
use flowpilot_core::node::hotswap::SwapChannel;
use flowpilot_core::node::lifecycle::Transition;
use flowpilot_core::node::watchdog::{Fault, Watchdog};
use flowpilot_core::policy::sampler::Sampler;
use flowpilot_core::rt::board::{mono_ns, Board};
use flowpilot_core::rt::clock::Periodic;
use flowpilot_core::rt::control::{ControlConfig, Controller};
use flowpilot_core::rt::output::{OutputQueue, MAX_SOURCES};
use flowpilot_core::rt::runner::Runner;
use flowpilot_core::rt::stop::StopRule;
use flowpilot_core::sched::apply_rt_settings;

/// Outputs buffered between the control and publisher threads.
const OUTPUT_QUEUE: usize = 256;

/// The control tick's settings from the node's.
fn control_config(
    cfg: &NodeConfig,
    spec: &flowpilot_core::policy::model::ModelSpec,
) -> Result<ControlConfig> {
    Ok(ControlConfig {
        rate_hz: cfg.rate_hz,
        max_age_s: cfg.sources().map(|s| s.max_age_s).collect(),
        max_future_stamp_s: cfg.max_future_stamp_s,
        obs_sources: cfg.observations.len(),
        safe: cfg.safe,
        max_delta: cfg.max_delta.clone(),
        warmup_ticks: cfg.warmup_ticks,
        startup_hold_ticks: (cfg.startup_hold_s * cfg.rate_hz).ceil() as u64,
        seed: cfg.seed,
        temperature: cfg.temperature.unwrap_or(spec.temperature),
        chunk: cfg.chunk,
        stop: cfg.stop_rule(spec.step_act_dim())?,
    })
}

/// Run the node until SIGINT/SIGTERM. Returns after a clean shutdown.
///
/// The node is a managed (lifecycle) node: it starts `unconfigured`;
/// configure builds a [`Session`] (model loaded and checked, everything
/// preallocated, the control loop running but silent), activate opens its
/// actuation gate, deactivate closes it (the stop once, then
/// silence), cleanup stops the session, shutdown stops it and finalizes.
/// With `autostart` (the default) it configures and activates at once.
pub fn run_node() -> Result<()> {
    let shutdown = flowpilot_core::shutdown::Shutdown::install();
    let ctx = r2r::Context::create().context("creating the ROS context")?;
    let mut node = r2r::Node::create(ctx, "flowpilot", "").context("creating the node")?;
    // The parameters as they stand: read at launch (an invalid set ends the
    // node here), then changed only by accepted live changes, so that a
    // re-configure starts from those.
    let param_map = params::read(&node);
    let cfg = NodeConfig::from_params(&param_map).context("invalid node parameters")?;
    let params = std::rc::Rc::new(std::cell::RefCell::new(param_map));

    // Node-level interfaces, alive in every state: the lifecycle services
    // and the e-stop (its latch survives cleanup and re-configure).
    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    let mut lifecycle = lifecycle::LifecycleServer::serve(&mut node, &spawner)?;
    let estop = EStopFlag::new();
    services::serve_estop(
        &mut node,
        &spawner,
        flowpilot_core::node::estop::EStopLatch::new(estop.clone()),
    )?;

    let mut session: Option<Session> = None;
    if cfg.autostart {
        let (mut s, mut why) = (None, String::new());
        if !lifecycle.run(Transition::Configure, || {
            match Session::configure(&mut node, &params, &estop) {
                Ok(session) => s = Some(session),
                Err(e) => {
                    why = format!("{e:#}");
                    return Err(e);
                }
            }
            Ok(())
        }) {
            // Autostarted, a model that fails its checks ends the node, as a
            // plain `ros2 run` always did.
            bail!("{why}");
        }
        let s = session.insert(s.expect("configured"));
        lifecycle.run(Transition::Activate, || {
            s.set_active(true);
            Ok(())
        });
    }

    let mut fault = None;
    // A deactivate is answered once the loop has published its stop.
    let mut pending: Option<(
        r2r::ServiceRequest<r2r::lifecycle_msgs::srv::ChangeState::Service>,
        u64,
        std::time::Instant,
    )> = None;
    while !shutdown.requested() {
        if let Some(s) = session.as_mut() {
            // The supervisor: a dead or stalled control thread ends the node.
            if let Err(f) = s.supervise() {
                fault = Some(f);
                break;
            }
        }
        node.spin_once(Duration::from_millis(5));
        pool.run_until_stalled();
        if let Some(s) = session.as_mut() {
            s.serve();
        }
        if let Some((req, ticks, since)) = pending.take() {
            let done = session.as_ref().is_none_or(|s| s.ticks() >= ticks);
            if done || since.elapsed() > Duration::from_millis(500) {
                let _ =
                    req.respond(r2r::lifecycle_msgs::srv::ChangeState::Response { success: true });
            } else {
                pending = Some((req, ticks, since));
                continue;
            }
        }
        let Some((t, req)) = lifecycle.next_request() else {
            continue;
        };
        let ok = match t {
            Transition::Configure => {
                let mut s = None;
                let ok = lifecycle.run(t, || {
                    s = Some(Session::configure(&mut node, &params, &estop)?);
                    Ok(())
                });
                session = s;
                ok
            }
            Transition::Activate => lifecycle.run(t, || {
                session.as_ref().context("no session")?.set_active(true);
                Ok(())
            }),
            Transition::Deactivate => {
                let ok = lifecycle.run(t, || {
                    session.as_ref().context("no session")?.set_active(false);
                    Ok(())
                });
                if let (true, Some(s)) = (ok, session.as_ref()) {
                    pending = Some((req, s.ticks() + 2, std::time::Instant::now()));
                    continue;
                }
                ok
            }
            Transition::Cleanup | Transition::Shutdown => {
                // The session is gone either way (that is what these
                // transitions mean): a thread that ended badly is reported,
                // not a reason to claim the node is still configured.
                lifecycle.run(t, || {
                    if let Some(Err(e)) = session.take().map(|s| s.stop(&mut node)) {
                        tracing::error!("stopping the session: {e:#}");
                    }
                    Ok(())
                })
            }
        };
        let _ = req.respond(r2r::lifecycle_msgs::srv::ChangeState::Response { success: ok });
    }

    if let Some(f) = fault {
        let s = session.take().expect("a fault comes from a session");
        return Err(s.fail(&mut node, f));
    }
    tracing::info!("shutting down");
    if let Some(s) = session.take() {
        s.stop(&mut node)?;
    }
    // Let DDS deliver the last messages before the participant goes away.
    for _ in 0..20 {
        node.spin_once(Duration::from_millis(5));
    }
    drop(node);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// What `configure` builds and `cleanup` stops: the policy, the control,
/// publisher and hot-swap threads, the log, the learner, and the
/// subscriptions and services that feed them (spawned on the session's own
/// pool, so that dropping it ends them).
struct Session {
    pool: futures::executor::LocalPool,
    model: flowpilot_core::policy::model::ModelFile,
    active: ActuationGate,
    estop: EStopFlag,
    stats: Arc<flowpilot_core::rt::control::Stats>,
    input_stats: Arc<inputs::InputStats>,
    out: Arc<OutputQueue>,
    log_stats: Option<Arc<flowpilot_core::log::writer::LogStats>>,
    episode_returns: Option<Arc<flowpilot_core::rt::runner::LogInputs>>,
    log_handle: Option<Arc<flowpilot_core::log::writer::LogHandle>>,
    chan: Arc<SwapChannel>,
    swap: Option<swap::SwapWorker>,
    learner: Option<learner::Learner>,
    /// `~/learner/*` and `~/policy_events` (with `hot_swap.dir`).
    session_topics: Option<session_topics::SessionTopics>,
    fleet: Option<fleet::FleetLink>,
    requests: services::Requests,
    diag: diagnostics::DiagPublisher,
    safety: outputs::ActionPublisher,
    /// The final stop's inputs: the rule, the board (measured positions,
    /// fresh within `state_limits_ns`) and the last command sent.
    stop_rule: StopRule,
    board: Arc<Board>,
    /// The state source's freshness limits (max age, max future stamp), ns.
    state_limits_ns: (i64, i64),
    sent: Arc<Board>,
    line: Arc<outputs::Line>,
    stop: Arc<AtomicBool>,
    /// Taken when joined.
    pub_thread: Option<std::thread::JoinHandle<outputs::ActionPublisher>>,
    /// Taken when joined.
    control_thread: Option<std::thread::JoinHandle<Controller>>,
    watchdog: Watchdog,
}

impl Session {
    /// Load and check the model, preallocate, subscribe, start the threads.
    /// The control loop runs from here on, silent until [`Self::set_active`].
    fn configure(
        node: &mut r2r::Node,
        params: &std::rc::Rc<std::cell::RefCell<flowpilot_core::node::config::ParamMap>>,
        estop: &EStopFlag,
    ) -> Result<Self> {
        let cfg = &NodeConfig::from_params(&params.borrow()).context("invalid node parameters")?;
        // 1. The policy.
        let (model, model_path) = swap::load_policy(cfg)?;
        tracing::info!(model = %model_path.display(), version = model.spec.version, digest = %model.spec.digest, rate_hz = cfg.rate_hz, "policy loaded");
        // What the robot gets per tick: one step of a chunk.
        let act_dim = model.spec.step_act_dim();
        if act_dim > MAX_ACT || cfg.sources().count() > MAX_SOURCES {
            bail!("at most {MAX_ACT} action values and {MAX_SOURCES} sources are supported");
        }
        if cfg.chunk.as_trajectory
            && model.spec.act_dim > flowpilot_core::rt::output::MAX_TRAJECTORY
        {
            bail!(
                "chunk.as_trajectory: a chunk of at most {} values goes out whole; this model's has {}",
                flowpilot_core::rt::output::MAX_TRAJECTORY,
                model.spec.act_dim
            );
        }

        // 2. The board and the controller (not actuating yet).
        let widths: Vec<usize> = cfg.sources().map(|s| s.kind.width()).collect();
        let board = Arc::new(Board::new(&widths));
        let sent = Arc::new(Board::new(&[act_dim]));
        let ccfg = control_config(cfg, &model.spec)?;
        let stop_rule = ccfg.stop.clone();
        let state_limits_ns = (
            stop_rule
                .state_source()
                .map_or(0, |i| (ccfg.max_age_s[i] * 1e9) as i64),
            (ccfg.max_future_stamp_s * 1e9) as i64,
        );
        let mut controller = Controller::new(ccfg, Sampler::new(&model)?, board.clone())?
            .with_estop(estop.clone())
            .with_sent(sent.clone())
            .inactive();
        let active = controller.active().clone();
        let stats = controller.stats().clone();

        // 3. Subscriptions, the transition log, services, publishers.
        let pool = futures::executor::LocalPool::new();
        let spawner = pool.spawner();
        if let Some((topic, max_age_s)) = &cfg.override_input {
            let b = log_inputs::subscribe_override(node, &spawner, topic, act_dim)?;
            controller.set_override(flowpilot_core::rt::control::OverrideInput {
                board: b,
                max_age_s: *max_age_s,
            })?;
        }
        let log = log_inputs::start(node, &spawner, cfg, &model, &model_path, board.total())?;
        let log_stats = log.as_ref().map(|t| t.handle.stats().clone());
        let episode_returns = log.as_ref().map(|t| t.inputs.clone());
        // Kept until the learner has stopped, so the log closes after it.
        let log_handle = log.as_ref().map(|t| t.handle.clone());
        let live = flowpilot_core::node::live::LiveChannel::new();
        live_params::serve(
            node,
            &spawner,
            params.clone(),
            cfg,
            model.spec.temperature,
            act_dim,
            live.clone(),
            log_handle.clone(),
        )?;
        let input_stats = inputs::subscribe_all(node, &spawner, cfg.sources(), &board)?;
        let chan = SwapChannel::new();
        let swap = swap::SwapWorker::start(cfg, &model_path, &model, &board, &chan)?;
        let learner = learner::Learner::for_config(cfg, &model_path)?;
        let session_topics = match &cfg.hot_swap_dir {
            Some(d) => Some(session_topics::SessionTopics::new(node, d)?),
            None => None,
        };
        let fleet = fleet::FleetLink::start(node, &spawner, cfg)?;
        let requests = services::Requests::new(node, &spawner)?;
        let diag = diagnostics::DiagPublisher::new(node, cfg.diagnostics_period_s, cfg.rate_hz)?;
        let publisher = outputs::ActionPublisher::new(node, cfg, act_dim)?;
        // The spin thread's own writer on the action topic: the stop at
        // shutdown or on a watchdog trip goes out here, never behind the
        // publisher thread's queue (nor through a dead control thread).
        let safety = outputs::ActionPublisher::new(node, cfg, act_dim)?;

        // 4. The publisher and control threads.
        let out = OutputQueue::new(OUTPUT_QUEUE);
        let stop = Arc::new(AtomicBool::new(false));
        let line = outputs::Line::new();
        let inject = fault_inject::from_env()?;
        let pub_thread = outputs::spawn_publisher(
            publisher,
            out.clone(),
            stop.clone(),
            line.clone(),
            inject.and_then(|i| i.publisher_stall_at()),
        )?;
        let mut runner = Runner::new(
            controller,
            Periodic::new(cfg.rate_hz),
            chan.clone(),
            out.clone(),
        )
        .with_waker(pub_thread.thread().clone())
        .with_live(live);
        if let Some(tap) = log {
            runner = runner.with_log(tap);
        }
        let rt = (cfg.fifo_priority, cfg.cpu, cfg.mlockall);
        let control_thread = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("flowpilot-ctl".into())
                .spawn(move || {
                    for w in apply_rt_settings(rt.0, rt.1, rt.2) {
                        tracing::warn!("{w}");
                    }
                    match inject {
                        None => runner.run(&stop),
                        Some(f) => f.run(runner, &stop),
                    }
                })?
        };
        Ok(Self {
            pool,
            stop_rule,
            board,
            state_limits_ns,
            sent,
            line,
            model,
            active,
            estop: estop.clone(),
            stats,
            input_stats,
            out,
            log_stats,
            episode_returns,
            log_handle,
            chan,
            swap,
            learner,
            session_topics,
            fleet,
            requests,
            diag,
            safety,
            stop,
            pub_thread: Some(pub_thread),
            control_thread: Some(control_thread),
            watchdog: Watchdog::new(cfg.rate_hz, cfg.stall_periods, mono_ns()),
        })
    }

    fn set_active(&self, on: bool) {
        self.active.set(on);
    }

    fn ticks(&self) -> u64 {
        self.stats.ticks.load(Ordering::Relaxed)
    }

    /// A dead or stalled control thread.
    fn supervise(&mut self) -> std::result::Result<(), Fault> {
        if self
            .control_thread
            .as_ref()
            .is_some_and(|h| h.is_finished())
        {
            return Err(Fault::Dead("it exited while the node was running".into()));
        }
        let now = mono_ns();
        self.watchdog.check(self.ticks(), now)?;
        self.watchdog
            .check_publisher(self.out.waiting_ns(now), self.out.in_send_ns(now))
    }

    /// One spin's work: the session's subscriptions and services, the
    /// learner, the hot swap, diagnostics.
    fn serve(&mut self) {
        self.pool.run_until_stalled();
        self.requests.serve_finetune(self.learner.as_mut());
        let (requests, chan, returns) = (&mut self.requests, &self.chan, &self.episode_returns);
        match self.swap.as_mut() {
            None => requests.refuse_swap_requests(),
            Some(s) => s.with_hot(|h| {
                // The return guard judges versions by their episodes' returns.
                if let Some(inputs) = returns {
                    while let Some(ret) = inputs.pop_episode_return() {
                        h.episode_ended(ret, chan);
                    }
                }
                requests.serve_swap_requests(h, chan);
            }),
        }
        if let Some(t) = self.session_topics.as_mut() {
            t.poll(self.swap.as_mut().map(|s| s.status()));
        }
        let Self {
            diag,
            stats,
            estop,
            input_stats,
            out,
            model,
            swap,
            log_stats,
            learner,
            fleet,
            ..
        } = self;
        diag.publish_if_due(|| diagnostics::Sources {
            stats,
            estop,
            inputs: input_stats,
            outputs: out,
            model,
            swap: swap.as_mut().map(|s| s.status()),
            log: log_stats.as_deref(),
            learner: learner.as_mut(),
            fleet: fleet.as_ref(),
        });
    }

    /// Publish the stop from the spin thread, if the node actuates: the
    /// publisher thread is halted first, so nothing it still holds follows
    /// the stop.
    fn publish_safe(&self, why: &str) {
        if !self.active.is_open() {
            return; // inactive: another controller may own the robot now
        }
        let stop = self
            .stop_rule
            .final_action(&self.board, self.state_limits_ns, &self.sent);
        let ordered = self.line.halt_then(|| {
            let Some((a, kind)) = &stop else { return };
            tracing::info!(?kind, action = ?a, "publishing the stop ({why})");
            if let Err(e) = self.safety.publish_stop(a) {
                tracing::error!("publishing the stop: {e}");
            }
        });
        if stop.is_none() {
            tracing::warn!(
                "no stop to publish ({why}): nothing was commanded and no position is measured"
            );
        }
        if !ordered {
            tracing::error!("the publisher thread held the action topic past the wait; the stop went out regardless");
        }
    }

    /// Wait up to `limit` for a thread to end.
    fn ended<T>(h: &Option<std::thread::JoinHandle<T>>, limit: Duration) -> bool {
        let t0 = std::time::Instant::now();
        while h.as_ref().is_some_and(|h| !h.is_finished()) {
            if t0.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    /// Stop the loop and publish the stop at once (if active), before
    /// waiting for any thread: a stalled loop cannot delay it. Then stop
    /// the learner and flush the log. A thread that does not end within a
    /// bound is an error (the node exits without it).
    fn stop(mut self, node: &mut r2r::Node) -> Result<()> {
        self.stop.store(true, Ordering::SeqCst);
        self.publish_safe("shutdown");
        if let Some(t) = &self.pub_thread {
            t.thread().unpark();
        }
        // A loop at 10 Hz ends within one period; 2 s is a stall.
        let bound = Duration::from_secs(2);
        if !Self::ended(&self.control_thread, bound) || !Self::ended(&self.pub_thread, bound) {
            stop_learner(self.learner.take());
            drop(self.log_handle.take());
            for _ in 0..20 {
                node.spin_once(Duration::from_millis(5));
            }
            bail!("a thread did not stop within {bound:?} (stalled); the stop was published");
        }
        let joined = self.control_thread.take().expect("joined once").join();
        let drained = self.pub_thread.take().expect("joined once").join();
        stop_learner(self.learner.take());
        // Flush, write the summary, close (the live-parameter services may
        // still hold a handle: they only add notes).
        if let Some(l) = self.log_handle.take() {
            l.finish();
        }
        // The fleet link sends what the learner lacks of the closed log;
        // its acknowledgements arrive through this spin.
        if let Some(f) = self.fleet.take() {
            f.request_stop();
            while !f.finished() {
                node.spin_once(Duration::from_millis(5));
                self.pool.run_until_stalled();
            }
            fleet_summary(&f);
        }
        log_summary(&self.stats);
        for _ in 0..5 {
            node.spin_once(Duration::from_millis(5));
        }
        joined.map_err(|p| anyhow::anyhow!("control thread panicked: {}", panic_text(&p)))?;
        drained.map_err(|_| anyhow::anyhow!("publisher thread panicked"))?;
        Ok(())
    }

    /// A faulted loop or publisher: the stop from the spin thread's own
    /// writer (the publisher thread halted first), an ERROR on
    /// /diagnostics, the learner stopped. The loop is not waited for if it
    /// is stuck. Returns the error the node exits with.
    fn fail(mut self, node: &mut r2r::Node, f: Fault) -> anyhow::Error {
        self.stop.store(true, Ordering::SeqCst);
        self.publish_safe("watchdog");
        if let Some(t) = &self.pub_thread {
            t.thread().unpark();
        }
        let f = match f {
            Fault::Dead(_) => match self.control_thread.take().expect("joined once").join() {
                Err(panic) => Fault::Dead(format!("panicked: {}", panic_text(&panic))),
                Ok(_) => f,
            },
            stalled => stalled,
        };
        tracing::error!("{f}");
        self.diag.publish_fault(&f);
        stop_learner(self.learner.take());
        drop(self.fleet.take());
        drop(self.log_handle.take());
        for _ in 0..20 {
            node.spin_once(Duration::from_millis(5));
        }
        anyhow::anyhow!("{f}")
    }
}

fn stop_learner(learner: Option<learner::Learner>) {
    if let Some(mut l) = learner {
        if l.running().is_some() {
            tracing::info!("{}", l.stop());
        }
    }
}

/// The message of a panic payload.
fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

fn fleet_summary(f: &fleet::FleetLink) {
    use std::sync::atomic::Ordering::Relaxed;
    let s = f.stats();
    tracing::info!(
        sent = s.sent.load(Relaxed),
        acked = s.acked.load(Relaxed),
        resends = s.rewinds.load(Relaxed),
        versions_taken = s.versions_taken.load(Relaxed),
        versions_refused = s.versions_refused.load(Relaxed),
        "fleet link summary"
    );
}

/// The whole run's loop timing, logged once at shutdown.
fn log_summary(stats: &flowpilot_core::rt::control::Stats) {
    use std::sync::atomic::Ordering::Relaxed;
    let (n, p50, p99, max) = stats.jitter_total.drain();
    tracing::info!(
        ticks = stats.ticks.load(Relaxed),
        wakeups = n,
        jitter_p50_us = p50,
        jitter_p99_us = p99,
        jitter_max_us = max,
        overruns = stats.overruns.load(Relaxed),
        max_inference_us = stats.max_inference_ns.load(Relaxed) as f64 / 1e3,
        "loop summary"
    );
}

/// The `flowpilot_node` binary: logging set-up, then [`run_node`]; exits 1
/// with the reason on a fatal error.
pub fn main() {
    binary_main("flowpilot_node", run_node);
}

/// A binary's edge: logging to stderr (RUST_LOG, default info), then
/// `run`; exits 1 with the reason on a fatal error.
fn binary_main(name: &str, run: impl FnOnce() -> Result<()>) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run() {
        tracing::error!("{e:#}");
        eprintln!("{name}: {e:#}");
        std::process::exit(1);
    }
}
