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
//! - [`services`]: e-stop, `~/rollback`, `~/finetune`.
//! - [`swap`]: the starting model and the hot-swap poll.
//! - [`learner`]: the fine-tuning learner child process.
//! - [`diagnostics`]: publishing /diagnostics.

mod diagnostics;
mod inputs;
mod learner;
mod log_inputs;
mod outputs;
mod params;
mod services;
mod swap;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use flowpilot_core::board::Board;
use flowpilot_core::config::NodeConfig;
use flowpilot_core::control::{apply_rt_settings, ControlConfig, Controller, Periodic};
use flowpilot_core::hotswap::SwapChannel;
use flowpilot_core::log::MAX_ACT;
use flowpilot_core::runner::{OutputQueue, Runner, MAX_SOURCES};
use flowpilot_core::sampler::Sampler;

/// Outputs buffered between the control and publisher threads.
const OUTPUT_QUEUE: usize = 256;

/// The control tick's settings from the node's.
fn control_config(cfg: &NodeConfig, spec: &flowpilot_core::model::ModelSpec) -> ControlConfig {
    ControlConfig {
        rate_hz: cfg.rate_hz,
        max_age_s: cfg.sources().map(|s| s.max_age_s).collect(),
        obs_sources: cfg.observations.len(),
        safe: cfg.safe,
        max_delta: cfg.max_delta.clone(),
        warmup_ticks: cfg.warmup_ticks,
        startup_hold_ticks: (cfg.startup_hold_s * cfg.rate_hz).ceil() as u64,
        seed: cfg.seed,
        temperature: cfg.temperature.unwrap_or(spec.temperature),
    }
}

/// Run the node until SIGINT/SIGTERM. Returns after a clean shutdown.
pub fn run_node() -> Result<()> {
    let shutdown = flowpilot_core::shutdown::Shutdown::install();
    let ctx = r2r::Context::create().context("creating the ROS context")?;
    let mut node = r2r::Node::create(ctx, "flowpilot", "").context("creating the node")?;

    // 1. Configuration and policy.
    let cfg = NodeConfig::from_params(&params::read(&node)).context("invalid node parameters")?;
    let (model, model_path) = swap::load_policy(&cfg)?;
    tracing::info!(model = %model_path.display(), version = model.spec.version, digest = %model.spec.digest, rate_hz = cfg.rate_hz, "policy loaded");
    let act_dim = model.spec.act_dim;
    if act_dim > MAX_ACT || cfg.sources().count() > MAX_SOURCES {
        bail!("at most {MAX_ACT} action values and {MAX_SOURCES} sources are supported");
    }

    // 2. The board and the controller.
    let widths: Vec<usize> = cfg.sources().map(|s| s.kind.width()).collect();
    let board = Arc::new(Board::new(&widths));
    let mut controller = Controller::new(
        control_config(&cfg, &model.spec),
        Sampler::new(&model)?,
        board.clone(),
    )?;
    let estop = controller.estop().clone();
    let stats = controller.stats().clone();

    // 3. Subscriptions, the transition log, services, publishers.
    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    if let Some((topic, max_age_s)) = &cfg.override_input {
        let b = log_inputs::subscribe_override(&mut node, &spawner, topic, act_dim)?;
        controller.set_override(flowpilot_core::control::OverrideInput {
            board: b,
            max_age_s: *max_age_s,
        })?;
    }
    let log = log_inputs::start(
        &mut node,
        &spawner,
        &cfg,
        &model,
        &model_path,
        board.total(),
    )?;
    let log_stats = log.as_ref().map(|t| t.handle.stats().clone());
    let episode_returns = log.as_ref().map(|t| t.inputs.clone());
    // Kept until the learner has stopped, so the log closes after it, as before.
    let log_handle = log.as_ref().map(|t| t.handle.clone());
    let input_stats = inputs::subscribe_all(&mut node, &spawner, cfg.sources(), &board)?;
    services::serve_estop(&mut node, &spawner, &estop)?;
    let chan = SwapChannel::new();
    let mut swap = swap::Poller::new(&cfg, &model_path, &model, &board);
    let mut learner = learner::Learner::for_config(&cfg, &model_path)?;
    let mut requests = services::Requests::new(&mut node, &spawner)?;
    let mut diag =
        diagnostics::DiagPublisher::new(&mut node, cfg.diagnostics_period_s, cfg.rate_hz)?;
    let publisher = outputs::ActionPublisher::new(&mut node, &cfg, act_dim)?;

    // 4. The publisher and control threads.
    let out = OutputQueue::new(OUTPUT_QUEUE);
    let stop = Arc::new(AtomicBool::new(false));
    let pub_thread = outputs::spawn_publisher(publisher, out.clone(), stop.clone())?;
    let mut runner = Runner::new(
        controller,
        Periodic::new(cfg.rate_hz),
        chan.clone(),
        out.clone(),
    )
    .with_waker(pub_thread.thread().clone());
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
                runner.run(&stop)
            })?
    };

    // 5. Spin: subscriptions, services, hot swap, diagnostics.
    while !shutdown.requested() {
        node.spin_once(Duration::from_millis(5));
        pool.run_until_stalled();
        requests.serve(
            swap.as_mut().map(swap::Poller::hot_mut),
            &chan,
            learner.as_mut(),
        );
        if let Some(s) = swap.as_mut() {
            s.poll_if_due(&chan, &board);
            // The return guard judges versions by their episodes' returns.
            if let Some(inputs) = &episode_returns {
                while let Some(ret) = inputs.pop_episode_return() {
                    s.hot_mut().episode_ended(ret, &chan);
                }
            }
        }
        diag.publish_if_due(|| diagnostics::Sources {
            stats: &stats,
            estop: &estop,
            inputs: &input_stats,
            outputs: &out,
            model: &model,
            swap: swap.as_ref(),
            log: log_stats.as_deref(),
            learner: learner.as_mut(),
        });
    }

    // 6. Clean shutdown: stop the loop, publish the safe action once, flush.
    tracing::info!("shutting down: publishing the safe action");
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut controller = control_thread
        .join()
        .map_err(|_| anyhow::anyhow!("control thread panicked"))?;
    if let Some(mut l) = learner.take() {
        if l.running().is_some() {
            tracing::info!("{}", l.stop());
        }
    }
    // Last reference to the log: flush, write the summary, close.
    drop(log_handle);
    log_summary(&stats);
    pub_thread.thread().unpark();
    let publisher = pub_thread
        .join()
        .map_err(|_| anyhow::anyhow!("publisher thread panicked"))?;
    if !matches!(cfg.safe, flowpilot_core::control::SafeBehaviour::Stop) {
        publisher.publish_action(controller.shutdown_action())?;
    }
    // Let DDS deliver the last messages before the participant goes away.
    for _ in 0..20 {
        node.spin_once(Duration::from_millis(5));
    }
    drop(publisher);
    drop(node);
    tracing::info!("stopped cleanly");
    Ok(())
}

/// The whole run's loop timing, logged once at shutdown.
fn log_summary(stats: &flowpilot_core::control::Stats) {
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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = run_node() {
        tracing::error!("{e:#}");
        eprintln!("flowpilot_node: {e:#}");
        std::process::exit(1);
    }
}
