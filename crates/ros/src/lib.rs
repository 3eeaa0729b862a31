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
//! - [`fault_inject`]: test-only control-thread faults for the fault matrix.
//!
//! The spin loop is also the control thread's supervisor: a dead thread,
//! or one with no tick for `watchdog.stall_periods` periods (core's
//! `watchdog`), gets the safe action published from the spin thread's own
//! writer, an ERROR on /diagnostics and a non-zero exit.

mod diagnostics;
mod fault_inject;
mod inputs;
mod learner;
mod live_params;
mod log_inputs;
mod outputs;
mod params;
mod services;
mod swap;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use flowpilot_core::board::{mono_ns, Board};
use flowpilot_core::config::NodeConfig;
use flowpilot_core::control::{apply_rt_settings, ControlConfig, Controller, Periodic};
use flowpilot_core::hotswap::SwapChannel;
use flowpilot_core::log::MAX_ACT;
use flowpilot_core::runner::{OutputQueue, Runner, MAX_SOURCES};
use flowpilot_core::sampler::Sampler;
use flowpilot_core::watchdog::{Fault, Watchdog};

/// Outputs buffered between the control and publisher threads.
const OUTPUT_QUEUE: usize = 256;

/// The control tick's settings from the node's.
fn control_config(cfg: &NodeConfig, spec: &flowpilot_core::model::ModelSpec) -> ControlConfig {
    ControlConfig {
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
    }
}

/// Run the node until SIGINT/SIGTERM. Returns after a clean shutdown.
pub fn run_node() -> Result<()> {
    let shutdown = flowpilot_core::shutdown::Shutdown::install();
    let ctx = r2r::Context::create().context("creating the ROS context")?;
    let mut node = r2r::Node::create(ctx, "flowpilot", "").context("creating the node")?;

    // 1. Configuration and policy.
    let param_map = params::read(&node);
    let cfg = NodeConfig::from_params(&param_map).context("invalid node parameters")?;
    let (model, model_path) = swap::load_policy(&cfg)?;
    tracing::info!(model = %model_path.display(), version = model.spec.version, digest = %model.spec.digest, rate_hz = cfg.rate_hz, "policy loaded");
    // What the robot gets per tick: one step of a chunk.
    let act_dim = model.spec.step_act_dim();
    if act_dim > MAX_ACT || cfg.sources().count() > MAX_SOURCES {
        bail!("at most {MAX_ACT} action values and {MAX_SOURCES} sources are supported");
    }
    if cfg.chunk.as_trajectory && model.spec.act_dim > flowpilot_core::runner::MAX_TRAJECTORY {
        bail!(
            "chunk.as_trajectory: a chunk of at most {} values goes out whole; this model's has {}",
            flowpilot_core::runner::MAX_TRAJECTORY,
            model.spec.act_dim
        );
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
    let live = flowpilot_core::live::LiveChannel::new();
    live_params::serve(
        &mut node,
        &spawner,
        param_map,
        &cfg,
        model.spec.temperature,
        act_dim,
        live.clone(),
        log_handle.clone(),
    )?;
    let input_stats = inputs::subscribe_all(&mut node, &spawner, cfg.sources(), &board)?;
    services::serve_estop(
        &mut node,
        &spawner,
        flowpilot_core::estop::EStopLatch::new(estop.clone()),
    )?;
    let chan = SwapChannel::new();
    let mut swap = swap::SwapWorker::start(&cfg, &model_path, &model, &board, &chan)?;
    let mut learner = learner::Learner::for_config(&cfg, &model_path)?;
    let mut requests = services::Requests::new(&mut node, &spawner)?;
    let mut diag =
        diagnostics::DiagPublisher::new(&mut node, cfg.diagnostics_period_s, cfg.rate_hz)?;
    let publisher = outputs::ActionPublisher::new(&mut node, &cfg, act_dim)?;
    // The spin thread's own writer on the action topic: the safe action at
    // shutdown or on a watchdog trip goes out here, never behind the
    // publisher thread's queue (nor through a dead control thread).
    let safety = outputs::ActionPublisher::new(&mut node, &cfg, act_dim)?;
    let final_action = cfg.safe.final_action(act_dim);
    let publish_safe = |why: &str| {
        let Some(a) = &final_action else { return };
        tracing::info!("publishing the safe action ({why})");
        if let Err(e) = safety.publish_action(a) {
            tracing::error!("publishing the safe action: {e}");
        }
    };

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
    .with_waker(pub_thread.thread().clone())
    .with_live(live);
    if let Some(tap) = log {
        runner = runner.with_log(tap);
    }
    let rt = (cfg.fifo_priority, cfg.cpu, cfg.mlockall);
    let inject = fault_inject::from_env()?;
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
    let mut watchdog = Watchdog::new(cfg.rate_hz, cfg.stall_periods, mono_ns());
    let mut fault = None;

    // 5. Spin: subscriptions, services, hot swap, diagnostics.
    while !shutdown.requested() {
        // The supervisor: a dead or stalled control thread ends the node.
        if control_thread.is_finished() {
            fault = Some(Fault::Dead("it exited while the node was running".into()));
            break;
        }
        if let Err(f) = watchdog.check(stats.ticks.load(Ordering::Relaxed), mono_ns()) {
            fault = Some(f);
            break;
        }
        node.spin_once(Duration::from_millis(5));
        pool.run_until_stalled();
        requests.serve_finetune(learner.as_mut());
        match swap.as_mut() {
            None => requests.refuse_rollback(),
            Some(s) => s.with_hot(|h| {
                // The return guard judges versions by their episodes' returns.
                if let Some(inputs) = &episode_returns {
                    while let Some(ret) = inputs.pop_episode_return() {
                        h.episode_ended(ret, &chan);
                    }
                }
                requests.serve_rollback(h, &chan);
            }),
        }
        diag.publish_if_due(|| diagnostics::Sources {
            stats: &stats,
            estop: &estop,
            inputs: &input_stats,
            outputs: &out,
            model: &model,
            swap: swap.as_mut().map(|s| s.status()),
            log: log_stats.as_deref(),
            learner: learner.as_mut(),
        });
    }

    // 6. Stop the loop, publish the safe action first, then stop the
    // learner and flush the log. A faulted loop is not waited for if it
    // is stuck; the node then exits non-zero.
    stop.store(true, Ordering::SeqCst);
    pub_thread.thread().unpark();
    if let Some(f) = fault {
        let f = match f {
            Fault::Dead(_) => match control_thread.join() {
                Err(panic) => Fault::Dead(format!("panicked: {}", panic_text(&panic))),
                Ok(_) => f,
            },
            stalled => stalled,
        };
        tracing::error!("{f}");
        publish_safe("watchdog");
        diag.publish_fault(&f.to_string());
        stop_learner(learner.take());
        drop(log_handle);
        for _ in 0..20 {
            node.spin_once(Duration::from_millis(5));
        }
        bail!("{f}");
    }
    tracing::info!("shutting down");
    let joined = control_thread.join();
    // The publisher thread drains what the loop queued before the safe
    // action goes out, so nothing from the policy follows it.
    let drained = pub_thread.join();
    publish_safe("shutdown");
    stop_learner(learner.take());
    // Last reference to the log: flush, write the summary, close.
    drop(log_handle);
    log_summary(&stats);
    joined.map_err(|p| anyhow::anyhow!("control thread panicked: {}", panic_text(&p)))?;
    drained.map_err(|_| anyhow::anyhow!("publisher thread panicked"))?;
    // Let DDS deliver the last messages before the participant goes away.
    for _ in 0..20 {
        node.spin_once(Duration::from_millis(5));
    }
    drop(safety);
    drop(node);
    tracing::info!("stopped cleanly");
    Ok(())
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
