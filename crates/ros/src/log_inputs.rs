//! The ROS side of the transition log and of human overrides: reward,
//! episode and terminal subscriptions writing core's atomic [`LogInputs`],
//! the override subscription writing a one-slot board, and starting the
//! log writer with the run's metadata. Subscriptions run on the spin
//! thread; what they write is lock-free for the control thread to read.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;

use flowpilot_core::log::writer::{LogConfig, LogHandle};
use flowpilot_core::node::config::{LogSettings, NodeConfig};
use flowpilot_core::policy::model::ModelFile;
use flowpilot_core::rt::board::Board;
use flowpilot_core::rt::runner::{LogInputs, LogTap};

/// Subscribe the reward topic (std_msgs/Float64) and the episode-boundary
/// topics (std_msgs/Int64: an episode just ended by time limit / terminal).
///
/// With a step source, a boundary is tied to the robot step reports
/// received so far: the episode ended with the last of them.
fn subscribe_log_inputs(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    l: &LogSettings,
    step: Option<Arc<Board>>,
) -> Result<Arc<LogInputs>> {
    let inputs = Arc::new(LogInputs::default());
    let q = crate::qos::profile(flowpilot_core::contract::qos::EVENTS);
    if let Some(t) = &l.reward_topic {
        let s = node.subscribe::<r2r::std_msgs::msg::Float64>(t, q.clone())?;
        let i = inputs.clone();
        spawner.spawn_local(s.for_each(move |m| {
            if m.data.is_finite() {
                i.add_reward(m.data);
            }
            futures::future::ready(())
        }))?;
    }
    for (topic, terminal) in [(&l.episode_topic, false), (&l.terminal_topic, true)] {
        if let Some(t) = topic {
            let s = node.subscribe::<r2r::std_msgs::msg::Int64>(t, q.clone())?;
            let (i, step) = (inputs.clone(), step.clone());
            spawner.spawn_local(s.for_each(move |_| {
                i.boundary_after(terminal, step.as_ref().map(|b| b.writes(0)));
                futures::future::ready(())
            }))?;
        }
    }
    Ok(inputs)
}

/// Subscribe the human override topic (std_msgs/Float64MultiArray,
/// act_dim values, physical units) into a one-slot board.
pub(crate) fn subscribe_override(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    topic: &str,
    act_dim: usize,
) -> Result<Arc<Board>> {
    let board = Arc::new(Board::new(&[act_dim]));
    let s = node.subscribe::<r2r::std_msgs::msg::Float64MultiArray>(
        topic,
        crate::qos::profile(flowpilot_core::contract::qos::OVERRIDE),
    )?;
    let b = board.clone();
    spawner.spawn_local(s.for_each(move |m| {
        if m.data.len() == act_dim && m.data.iter().all(|v| v.is_finite()) {
            b.write(0, &m.data, None);
        } else {
            tracing::warn!(
                len = m.data.len(),
                "rejected a malformed override message (needs {act_dim} finite values)"
            );
        }
        futures::future::ready(())
    }))?;
    Ok(board)
}

/// If `log.dir` is set: subscribe the log inputs and start the writer.
pub(crate) fn start(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    cfg: &NodeConfig,
    model: &ModelFile,
    model_path: &Path,
    board_total: usize,
) -> Result<Option<LogTap>> {
    let Some(l) = &cfg.log else {
        return Ok(None);
    };
    // A record holds one tick: one observation step, one action step (and,
    // for a chunked policy, which chunk and step it came from).
    let act_dim = model.spec.step_act_dim();
    if board_total > flowpilot_core::log::MAX_OBS || act_dim > flowpilot_core::log::MAX_ACT {
        bail!(
            "the transition log carries at most {} observation+goal values and {} actions; this model has {} and {act_dim}",
            flowpilot_core::log::MAX_OBS,
            flowpilot_core::log::MAX_ACT,
            board_total
        );
    }
    // The step source first: within one spin its report is taken before
    // an episode boundary that followed it.
    let step = match &l.step_source {
        None => None,
        Some(src) => {
            if src.kind.width() != act_dim {
                bail!(
                    "log.step_source '{}' gives {} values; it must report the {act_dim} action values the robot executed",
                    src.name,
                    src.kind.width()
                );
            }
            let b = Arc::new(Board::new(&[act_dim]));
            crate::inputs::subscribe_all(node, spawner, [src], &b)?;
            Some(b)
        }
    };
    let inputs = subscribe_log_inputs(node, spawner, l, step.clone())?;
    let spec = &model.spec;
    use flowpilot_core::contract::log_meta as k;
    let meta = [
        (k::OBS_DIM, spec.step_obs_dim().to_string()),
        (k::GOAL_DIM, spec.goal_dim.to_string()),
        (k::ACT_DIM, act_dim.to_string()),
        (k::CHUNK_LEN, spec.chunk_len.to_string()),
        (k::OBS_HORIZON, spec.obs_horizon.to_string()),
        (
            k::ACTION_LOW,
            serde_json::to_string(&spec.action_low[..act_dim])?,
        ),
        (
            k::ACTION_HIGH,
            serde_json::to_string(&spec.action_high[..act_dim])?,
        ),
        (k::RATE_HZ, cfg.rate_hz.to_string()),
        (k::EVERY, l.every.to_string()),
        (
            k::STEP_SOURCE,
            l.step_source
                .as_ref()
                .map(|s| s.topic.clone())
                .unwrap_or_default(),
        ),
        (k::MODEL, model_path.display().to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let handle = LogHandle::start(LogConfig {
        dir: l.dir.clone().into(),
        flush_period: Duration::from_secs_f64(l.flush_period_s),
        queue_capacity: l.queue,
        reward: l.distance_reward.clone(),
        metadata: meta,
    })
    .context("starting the transition log")?;
    tracing::info!(path = %handle.stats().path.lock().expect("path").as_str(), every = l.every, "transition log started");
    Ok(Some(LogTap {
        handle: Arc::new(handle),
        inputs,
        every: l.every,
        step,
    }))
}
