//! flowpilot-ros: the ROS 2 node (on r2r, no candle): subscriptions fill the board,
//! the control thread ticks at a fixed rate, a publisher thread turns its
//! actions into messages (r2r's publish allocates and locks, so it never
//! runs on the control thread — the realtime_tools pattern), and the spin
//! thread serves e-stop, diagnostics and shutdown.

pub mod config;
pub mod session;

use flowpilot_core::hotswap;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use crossbeam_queue::ArrayQueue;
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;
use r2r::QosProfile;

use config::{ActionKind, JointField, NodeConfig, SourceConfig, SourceKind};
use flowpilot_core::board::{mono_ns, wall_ns, Board};
use flowpilot_core::control::{apply_rt_settings, ControlConfig, Controller, Periodic};
use flowpilot_core::model::ModelFile;
use flowpilot_core::sampler::Sampler;

/// Largest action and source counts an [`Outgoing`] record carries.
pub const MAX_ACT: usize = 32;
pub const MAX_SOURCES: usize = 16;

/// One tick's output, copied (no allocation) from the control thread to the
/// publisher thread.
#[derive(Clone, Copy)]
struct Outgoing {
    tick: u64,
    decision: f64,
    publish: bool,
    log_prob: f32,
    n_act: usize,
    action: [f64; MAX_ACT],
    n_src: usize,
    stamps: [i64; MAX_SOURCES],
}

/// Counters kept by the subscriber side.
#[derive(Default)]
struct InputStats {
    rejected: AtomicU64,
    received: AtomicU64,
}

fn qos(best_effort: bool) -> QosProfile {
    let q = QosProfile::default().keep_last(1);
    if best_effort {
        q.best_effort()
    } else {
        q.reliable()
    }
}

fn stamp_ns(t: &r2r::builtin_interfaces::msg::Time) -> Option<i64> {
    let ns = t.sec as i64 * 1_000_000_000 + t.nanosec as i64;
    (ns != 0).then_some(ns)
}

fn to_time(ns: i64) -> r2r::builtin_interfaces::msg::Time {
    r2r::builtin_interfaces::msg::Time {
        sec: (ns / 1_000_000_000) as i32,
        nanosec: (ns % 1_000_000_000) as u32,
    }
}

/// Extract the configured values from a JointState, by name. None if a
/// joint or field is missing.
fn joint_values(
    m: &r2r::sensor_msgs::msg::JointState,
    joints: &[String],
    fields: &[JointField],
    out: &mut Vec<f64>,
) -> bool {
    out.clear();
    for j in joints {
        let Some(i) = m.name.iter().position(|n| n == j) else {
            return false;
        };
        for f in fields {
            let arr = match f {
                JointField::Position => &m.position,
                JointField::Velocity => &m.velocity,
                JointField::Effort => &m.effort,
            };
            match arr.get(i) {
                Some(v) => out.push(*v),
                None => return false,
            }
        }
    }
    true
}

fn pose_vec(p: &r2r::geometry_msgs::msg::Pose) -> [f64; 7] {
    [
        p.position.x,
        p.position.y,
        p.position.z,
        p.orientation.x,
        p.orientation.y,
        p.orientation.z,
        p.orientation.w,
    ]
}

fn twist_vec(t: &r2r::geometry_msgs::msg::Twist) -> [f64; 6] {
    [
        t.linear.x,
        t.linear.y,
        t.linear.z,
        t.angular.x,
        t.angular.y,
        t.angular.z,
    ]
}

/// Subscribe one source; each valid message is written to board slot `slot`.
fn subscribe(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    src: &SourceConfig,
    slot: usize,
    board: Arc<Board>,
    stats: Arc<InputStats>,
) -> Result<()> {
    let q = qos(src.best_effort);
    let name = src.name.clone();
    let width = src.kind.width();
    // Accept a message's values only if complete and finite.
    let accept = move |vals: Option<&[f64]>, stamp: Option<i64>| match vals {
        Some(v) if v.len() == width && v.iter().all(|x| x.is_finite()) => {
            stats.received.fetch_add(1, Ordering::Relaxed);
            board.write(slot, v, stamp);
        }
        _ => {
            let n = stats.rejected.fetch_add(1, Ordering::Relaxed) + 1;
            // Log the first few and then every 100th, so a flood cannot flood the log.
            if n <= 5 || n % 100 == 0 {
                tracing::warn!(source = %name, rejected_total = n, "rejected a malformed or non-finite message");
            }
        }
    };
    let pick =
        |full: &[f64], select: &[usize]| -> Vec<f64> { select.iter().map(|&i| full[i]).collect() };
    macro_rules! spawn {
        ($ty:ty, $f:expr) => {{
            let stream = node
                .subscribe::<$ty>(&src.topic, q)
                .with_context(|| format!("subscribing {}", src.topic))?;
            #[allow(unused_mut)] // FnMut for sources that keep a buffer
            let mut f = $f;
            spawner
                .spawn_local(stream.for_each(move |m| {
                    f(m);
                    futures::future::ready(())
                }))
                .context("spawning subscriber")?;
        }};
    }
    match src.kind.clone() {
        SourceKind::JointState { joints, fields } => {
            let mut buf = Vec::new();
            spawn!(
                r2r::sensor_msgs::msg::JointState,
                move |m: r2r::sensor_msgs::msg::JointState| {
                    let ok = joint_values(&m, &joints, &fields, &mut buf);
                    accept(ok.then_some(&buf[..]), stamp_ns(&m.header.stamp));
                }
            )
        }
        SourceKind::Float64MultiArray { indices } => {
            spawn!(
                r2r::std_msgs::msg::Float64MultiArray,
                move |m: r2r::std_msgs::msg::Float64MultiArray| {
                    let v: Option<Vec<f64>> =
                        indices.iter().map(|&i| m.data.get(i).copied()).collect();
                    accept(v.as_deref(), None);
                }
            )
        }
        SourceKind::PoseStamped { select } => {
            spawn!(
                r2r::geometry_msgs::msg::PoseStamped,
                move |m: r2r::geometry_msgs::msg::PoseStamped| {
                    accept(
                        Some(&pick(&pose_vec(&m.pose), &select)),
                        stamp_ns(&m.header.stamp),
                    );
                }
            )
        }
        SourceKind::TwistStamped { select } => {
            spawn!(
                r2r::geometry_msgs::msg::TwistStamped,
                move |m: r2r::geometry_msgs::msg::TwistStamped| {
                    accept(
                        Some(&pick(&twist_vec(&m.twist), &select)),
                        stamp_ns(&m.header.stamp),
                    );
                }
            )
        }
        SourceKind::Imu { select } => {
            spawn!(
                r2r::sensor_msgs::msg::Imu,
                move |m: r2r::sensor_msgs::msg::Imu| {
                    let o = &m.orientation;
                    let (w, a) = (&m.angular_velocity, &m.linear_acceleration);
                    let full = [o.x, o.y, o.z, o.w, w.x, w.y, w.z, a.x, a.y, a.z];
                    accept(Some(&pick(&full, &select)), stamp_ns(&m.header.stamp));
                }
            )
        }
        SourceKind::Odometry { select } => {
            spawn!(
                r2r::nav_msgs::msg::Odometry,
                move |m: r2r::nav_msgs::msg::Odometry| {
                    let mut full = [0.0; 13];
                    full[..7].copy_from_slice(&pose_vec(&m.pose.pose));
                    full[7..].copy_from_slice(&twist_vec(&m.twist.twist));
                    accept(Some(&pick(&full, &select)), stamp_ns(&m.header.stamp));
                }
            )
        }
    }
    Ok(())
}

/// Publishes actions (and the trace) in the configured message type.
struct ActionPublisher {
    kind: ActionKind,
    period_ns: i64,
    f64a: Option<r2r::Publisher<r2r::std_msgs::msg::Float64MultiArray>>,
    traj: Option<r2r::Publisher<r2r::trajectory_msgs::msg::JointTrajectory>>,
    twist: Option<r2r::Publisher<r2r::geometry_msgs::msg::Twist>>,
    twist_st: Option<r2r::Publisher<r2r::geometry_msgs::msg::TwistStamped>>,
    trace: r2r::Publisher<r2r::std_msgs::msg::Float64MultiArray>,
}

impl ActionPublisher {
    fn new(node: &mut r2r::Node, cfg: &NodeConfig, act_dim: usize) -> Result<Self> {
        let q = qos(cfg.action_best_effort).keep_last(10);
        let t = &cfg.action_topic;
        let mut p = Self {
            kind: cfg.action.clone(),
            period_ns: (1e9 / cfg.rate_hz) as i64,
            f64a: None,
            traj: None,
            twist: None,
            twist_st: None,
            trace: node.create_publisher("~/action_trace", QosProfile::default().keep_last(100))?,
        };
        match &cfg.action {
            ActionKind::Float64MultiArray => p.f64a = Some(node.create_publisher(t, q)?),
            ActionKind::JointTrajectory { joints } => {
                if joints.len() != act_dim {
                    bail!(
                        "'action.joints' names {} joints, the model outputs {act_dim} actions",
                        joints.len()
                    );
                }
                p.traj = Some(node.create_publisher(t, q)?)
            }
            ActionKind::Twist | ActionKind::TwistStamped { .. } => {
                if act_dim != 6 && act_dim != 3 && act_dim != 2 {
                    bail!("twist actions need 2 (vx, wz), 3 (vx, vy, wz) or 6 values; the model outputs {act_dim}");
                }
                if matches!(cfg.action, ActionKind::Twist) {
                    p.twist = Some(node.create_publisher(t, q)?)
                } else {
                    p.twist_st = Some(node.create_publisher(t, q)?)
                }
            }
        }
        Ok(p)
    }

    fn twist(a: &[f64]) -> r2r::geometry_msgs::msg::Twist {
        let mut t = r2r::geometry_msgs::msg::Twist::default();
        match a.len() {
            2 => {
                t.linear.x = a[0];
                t.angular.z = a[1];
            }
            3 => {
                t.linear.x = a[0];
                t.linear.y = a[1];
                t.angular.z = a[2];
            }
            _ => {
                (t.linear.x, t.linear.y, t.linear.z) = (a[0], a[1], a[2]);
                (t.angular.x, t.angular.y, t.angular.z) = (a[3], a[4], a[5]);
            }
        }
        t
    }

    fn publish_action(&self, a: &[f64]) -> Result<()> {
        match &self.kind {
            ActionKind::Float64MultiArray => self.f64a.as_ref().expect("created").publish(
                &r2r::std_msgs::msg::Float64MultiArray {
                    data: a.to_vec(),
                    ..Default::default()
                },
            )?,
            ActionKind::JointTrajectory { joints } => {
                let mut m = r2r::trajectory_msgs::msg::JointTrajectory {
                    joint_names: joints.clone(),
                    ..Default::default()
                };
                m.header.stamp = to_time(wall_ns());
                m.points
                    .push(r2r::trajectory_msgs::msg::JointTrajectoryPoint {
                        positions: a.to_vec(),
                        time_from_start: r2r::builtin_interfaces::msg::Duration {
                            sec: (self.period_ns / 1_000_000_000) as i32,
                            nanosec: (self.period_ns % 1_000_000_000) as u32,
                        },
                        ..Default::default()
                    });
                self.traj.as_ref().expect("created").publish(&m)?
            }
            ActionKind::Twist => self
                .twist
                .as_ref()
                .expect("created")
                .publish(&Self::twist(a))?,
            ActionKind::TwistStamped { frame_id } => {
                let mut m = r2r::geometry_msgs::msg::TwistStamped {
                    twist: Self::twist(a),
                    ..Default::default()
                };
                m.header.stamp = to_time(wall_ns());
                m.header.frame_id = frame_id.clone();
                self.twist_st.as_ref().expect("created").publish(&m)?
            }
        }
        Ok(())
    }

    /// Trace: [tick, decision, published, log_prob, stamp_s per source..., action...].
    fn publish_trace(&self, o: &Outgoing) -> Result<()> {
        let mut data = vec![
            o.tick as f64,
            o.decision,
            if o.publish { 1.0 } else { 0.0 },
            o.log_prob as f64,
        ];
        data.extend(o.stamps[..o.n_src].iter().map(|&s| s as f64 * 1e-9));
        data.extend_from_slice(&o.action[..o.n_act]);
        self.trace.publish(&r2r::std_msgs::msg::Float64MultiArray {
            data,
            ..Default::default()
        })?;
        Ok(())
    }
}

/// Everything the diagnostics message reports.
struct DiagState {
    last_ticks: u64,
    last_t: i64,
}

fn kv(key: &str, value: String) -> r2r::diagnostic_msgs::msg::KeyValue {
    r2r::diagnostic_msgs::msg::KeyValue {
        key: key.into(),
        value,
    }
}

/// A service whose requests are queued for the spin loop (which owns the
/// state they act on); when 4 are already waiting, a request is answered
/// with `busy()` at once.
fn queued_service<S>(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    name: &str,
    busy: impl Fn() -> S::Response + 'static,
) -> Result<Arc<ArrayQueue<r2r::ServiceRequest<S>>>>
where
    S: r2r::WrappedServiceTypeSupport + 'static,
{
    let srv = node.create_service::<S>(name, QosProfile::services_default())?;
    let queue = Arc::new(ArrayQueue::new(4));
    let q = queue.clone();
    spawner.spawn_local(srv.for_each(move |req| {
        if let Err(req) = q.push(req) {
            let _ = req.respond(busy());
        }
        futures::future::ready(())
    }))?;
    Ok(queue)
}

/// Run the node until SIGINT/SIGTERM. Returns after a clean shutdown.
pub fn run_node() -> Result<()> {
    let shutdown = flowpilot_core::shutdown::Shutdown::install();
    let ctx = r2r::Context::create().context("creating the ROS context")?;
    let mut node = r2r::Node::create(ctx, "flowpilot", "").context("creating the node")?;
    let params: std::collections::HashMap<String, r2r::ParameterValue> = node
        .params
        .lock()
        .expect("params lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.value.clone()))
        .collect();
    let cfg = NodeConfig::from_params(&params).context("invalid node parameters")?;
    let mut model =
        ModelFile::load(&cfg.model).with_context(|| format!("loading model {}", cfg.model))?;
    let mut model_path = std::path::PathBuf::from(&cfg.model);
    // After a restart, resume with the last version the hot swap accepted.
    if let Some(dir) = &cfg.hot_swap_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating hot_swap.dir {dir}"))?;
        if let Some((p, m)) = hotswap::HotSwap::resume(std::path::Path::new(dir)) {
            let dims = |s: &flowpilot_core::model::ModelSpec| (s.obs_dim, s.goal_dim, s.act_dim);
            if dims(&m.spec) == dims(&model.spec) {
                tracing::info!(path = %p.display(), version = m.spec.version, "resuming with the last accepted version");
                model = m;
                model_path = p;
            } else {
                tracing::warn!(path = %p.display(), "last accepted version has other dims than `model`; ignoring it");
            }
        }
    }
    tracing::info!(model = %model_path.display(), version = model.spec.version, digest = %model.spec.digest, rate_hz = cfg.rate_hz, "policy loaded");
    let act_dim = model.spec.act_dim;
    let sources: Vec<&SourceConfig> = cfg.observations.iter().chain(&cfg.goals).collect();
    if act_dim > MAX_ACT || sources.len() > MAX_SOURCES {
        bail!("at most {MAX_ACT} action values and {MAX_SOURCES} sources are supported");
    }
    let widths: Vec<usize> = sources.iter().map(|s| s.kind.width()).collect();
    let board = Arc::new(Board::new(&widths));
    let ccfg = ControlConfig {
        rate_hz: cfg.rate_hz,
        max_age_s: sources.iter().map(|s| s.max_age_s).collect(),
        obs_sources: cfg.observations.len(),
        safe: cfg.safe,
        max_delta: cfg.max_delta.clone(),
        warmup_ticks: cfg.warmup_ticks,
        startup_hold_ticks: (cfg.startup_hold_s * cfg.rate_hz).ceil() as u64,
        seed: cfg.seed,
    };
    let mut controller = Controller::new(ccfg, Sampler::new(&model)?, board.clone())?;
    let estop = controller.estop.clone();
    let stats = controller.stats.clone();

    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    if let Some((topic, max_age_s)) = &cfg.override_input {
        let b = session::subscribe_override(&mut node, &spawner, topic, act_dim)?;
        controller.set_override(flowpilot_core::control::OverrideInput {
            board: b,
            max_age_s: *max_age_s,
        })?;
    }
    // Transition log: reward/episode inputs and the writer thread.
    let log = match &cfg.log {
        Some(l) => {
            if board.total() > flowpilot_core::log::MAX_OBS
                || act_dim > flowpilot_core::log::MAX_ACT
            {
                bail!(
                    "the transition log carries at most {} observation+goal values and {} actions; this model has {} and {act_dim}",
                    flowpilot_core::log::MAX_OBS,
                    flowpilot_core::log::MAX_ACT,
                    board.total()
                );
            }
            let inputs = session::subscribe_log_inputs(
                &mut node,
                &spawner,
                l.reward_topic.as_deref(),
                l.episode_topic.as_deref(),
                l.terminal_topic.as_deref(),
            )?;
            let spec = &model.spec;
            let meta = [
                ("obs_dim", spec.obs_dim.to_string()),
                ("goal_dim", spec.goal_dim.to_string()),
                ("act_dim", spec.act_dim.to_string()),
                ("action_low", serde_json::to_string(&spec.action_low)?),
                ("action_high", serde_json::to_string(&spec.action_high)?),
                ("rate_hz", cfg.rate_hz.to_string()),
                ("every", l.every.to_string()),
                ("model", model_path.display().to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
            let handle = flowpilot_core::log::writer::LogHandle::start(
                flowpilot_core::log::writer::LogConfig {
                    dir: l.dir.clone().into(),
                    flush_period: Duration::from_secs_f64(l.flush_period_s),
                    queue_capacity: l.queue,
                    reward: l.distance_reward.clone(),
                    metadata: meta,
                },
            )
            .context("starting the transition log")?;
            tracing::info!(path = %handle.stats.path.lock().expect("path").as_str(), every = l.every, "transition log started");
            Some((Arc::new(handle), inputs, l.every))
        }
        None => None,
    };
    let log_stats = log.as_ref().map(|(h, _, _)| h.stats.clone());
    let input_stats = Arc::new(InputStats::default());
    for (i, s) in sources.iter().enumerate() {
        subscribe(
            &mut node,
            &spawner,
            s,
            i,
            board.clone(),
            input_stats.clone(),
        )?;
    }
    // E-stop: a latched Bool topic and a SetBool service.
    let estop_q = QosProfile::default()
        .reliable()
        .transient_local()
        .keep_last(1);
    let estop_topic = node.subscribe::<r2r::std_msgs::msg::Bool>("~/estop", estop_q)?;
    let e = estop.clone();
    spawner.spawn_local(estop_topic.for_each(move |m| {
        if e.swap(m.data, Ordering::SeqCst) != m.data {
            tracing::warn!(engaged = m.data, "e-stop (topic)");
        }
        futures::future::ready(())
    }))?;
    let estop_srv = node.create_service::<r2r::std_srvs::srv::SetBool::Service>(
        "~/estop",
        QosProfile::services_default(),
    )?;
    let e = estop.clone();
    spawner.spawn_local(estop_srv.for_each(move |req| {
        let on = req.message.data;
        e.store(on, Ordering::SeqCst);
        tracing::warn!(engaged = on, "e-stop (service)");
        let msg = if on {
            "e-stop engaged: publishing zero"
        } else {
            "e-stop released"
        };
        let _ = req.respond(r2r::std_srvs::srv::SetBool::Response {
            success: true,
            message: msg.into(),
        });
        futures::future::ready(())
    }))?;
    // Hot swap: checked hand-off of new versions, and a rollback service.
    let chan = hotswap::SwapChannel::new();
    let mut hot = cfg.hot_swap_dir.as_ref().map(|d| {
        hotswap::HotSwap::new(
            d.into(),
            cfg.hot_swap_max_divergence,
            model_path.clone(),
            model.clone(),
        )
    });
    let rollback_requests = queued_service::<r2r::std_srvs::srv::Trigger::Service>(
        &mut node,
        &spawner,
        "~/rollback",
        || r2r::std_srvs::srv::Trigger::Response {
            success: false,
            message: "busy".into(),
        },
    )?;
    // Fine-tuning sessions: ~/finetune (SetBool) starts/stops the learner.
    let mut learner = match (&cfg.log, &cfg.hot_swap_dir) {
        (Some(l), Some(out)) => {
            let mut args: Vec<String> = vec![
                "--log-dir".into(),
                l.dir.clone(),
                "--out".into(),
                out.clone(),
                "--init".into(),
                model_path.display().to_string(),
                "--follow".into(),
            ];
            args.extend(cfg.finetune_args.iter().cloned());
            Some(session::Learner::new(
                cfg.finetune_exe.as_ref().map(Into::into),
                args,
            )?)
        }
        _ => None,
    };
    let finetune_requests = queued_service::<r2r::std_srvs::srv::SetBool::Service>(
        &mut node,
        &spawner,
        "~/finetune",
        || r2r::std_srvs::srv::SetBool::Response {
            success: false,
            message: "busy".into(),
        },
    )?;
    let mut pending_stop: Option<r2r::ServiceRequest<r2r::std_srvs::srv::SetBool::Service>> = None;
    let diag_pub = node.create_publisher::<r2r::diagnostic_msgs::msg::DiagnosticArray>(
        "/diagnostics",
        QosProfile::default(),
    )?;
    let publisher = ActionPublisher::new(&mut node, &cfg, act_dim)?;

    // Publisher thread.
    let queue: Arc<ArrayQueue<Outgoing>> = Arc::new(ArrayQueue::new(256));
    let stop = Arc::new(AtomicBool::new(false));
    let dropped = Arc::new(AtomicU64::new(0));
    let pub_thread = {
        let (q, stop) = (queue.clone(), stop.clone());
        std::thread::Builder::new()
            .name("flowpilot-pub".into())
            .spawn(move || {
                loop {
                    while let Some(o) = q.pop() {
                        if o.publish {
                            if let Err(e) = publisher.publish_action(&o.action[..o.n_act]) {
                                tracing::error!("publishing action: {e}");
                            }
                        }
                        let _ = publisher.publish_trace(&o);
                    }
                    if stop.load(Ordering::SeqCst) && q.is_empty() {
                        break;
                    }
                    std::thread::park_timeout(Duration::from_millis(50));
                }
                publisher
            })?
    };

    // Control thread.
    let rt = (cfg.fifo_priority, cfg.cpu, cfg.mlockall);
    let control_thread = {
        let (q, stop, dropped) = (queue.clone(), stop.clone(), dropped.clone());
        let waker = pub_thread.thread().clone();
        let chan = chan.clone();
        let rate = cfg.rate_hz;
        let log = log.clone();
        std::thread::Builder::new()
            .name("flowpilot-ctl".into())
            .spawn(move || {
                for w in apply_rt_settings(rt.0, rt.1, rt.2) {
                    tracing::warn!("{w}");
                }
                let mut rec = flowpilot_core::log::Transition::default();
                let mut timer = Periodic::new(rate);
                let period = timer.period_ns() as u64;
                while !stop.load(Ordering::Relaxed) {
                    let (late, missed) = timer.wait();
                    controller.stats.record_wakeup(late);
                    if missed > 0 {
                        controller
                            .stats
                            .overruns
                            .fetch_add(missed, Ordering::Relaxed);
                    }
                    controller.note_deadline(missed == 0 && late < period);
                    // A checked new policy swaps in between two ticks: a move.
                    if let Some(new) = chan.incoming.pop() {
                        let old = controller.set_sampler(new);
                        // Freed by the spin thread; only if that queue is full
                        // (it drains every few ms) is it freed here.
                        if let Err(old) = chan.retired.push(old) {
                            drop(old);
                        }
                    }
                    let out = controller.tick();
                    let mut o = Outgoing {
                        tick: out.tick,
                        decision: out.decision.code() as f64,
                        publish: out.publish,
                        log_prob: out.log_prob,
                        n_act: out.action.len(),
                        action: [0.0; MAX_ACT],
                        n_src: out.stamps.len(),
                        stamps: [0; MAX_SOURCES],
                    };
                    o.action[..o.n_act].copy_from_slice(out.action);
                    o.stamps[..o.n_src].copy_from_slice(out.stamps);
                    if let Some((h, inputs, every)) = &log {
                        if o.tick % every == 0 {
                            controller.fill_transition(&mut rec);
                            rec.reward = inputs.take_reward();
                            rec.episode = inputs.episode.load(Ordering::SeqCst);
                            rec.began_after_terminal = inputs.last_terminal.load(Ordering::SeqCst);
                            h.push(&rec);
                        }
                    }
                    if q.push(o).is_err() {
                        dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    waker.unpark();
                }
                controller
            })?
    };

    // Spin: subscriptions, services, diagnostics.
    let mut diag = DiagState {
        last_ticks: 0,
        last_t: mono_ns(),
    };
    let mut recent: Vec<(Vec<f32>, Vec<f32>)> = Vec::new();
    let mut snap = vec![0f32; board.total()];
    let obs_dim = model.spec.obs_dim;
    let mut next_poll = mono_ns();
    let mut next_diag = mono_ns() + (cfg.diagnostics_period_s * 1e9) as i64;
    while !shutdown.requested() {
        node.spin_once(Duration::from_millis(5));
        pool.run_until_stalled();
        while let Some(req) = rollback_requests.pop() {
            let r = match hot.as_mut() {
                Some(h) => h.rollback(&chan),
                None => Err(anyhow::anyhow!("hot swap is off (set hot_swap.dir)")),
            };
            let (success, message) = match r {
                Ok(m) => (true, m),
                Err(e) => (false, e.to_string()),
            };
            let _ = req.respond(r2r::std_srvs::srv::Trigger::Response { success, message });
        }
        // A stop is answered once the learner has exited (it writes a last
        // checkpoint first); waiting never blocks this thread.
        if let (Some(req), Some(l)) = (pending_stop.take(), learner.as_mut()) {
            match l.stop_progress() {
                Some(message) => {
                    let _ = req.respond(r2r::std_srvs::srv::SetBool::Response {
                        success: true,
                        message,
                    });
                }
                None => pending_stop = Some(req),
            }
        }
        while let Some(req) = finetune_requests.pop() {
            let (success, message) = match (learner.as_mut(), req.message.data) {
                (None, _) => (
                    false,
                    "fine-tuning needs log.dir and hot_swap.dir".to_string(),
                ),
                _ if pending_stop.is_some() => (false, "the learner is stopping".to_string()),
                (Some(l), true) => match l.start() {
                    Ok(m) => (true, m),
                    Err(e) => (false, format!("{e:#}")),
                },
                (Some(l), false) => {
                    if l.request_stop() {
                        pending_stop = Some(req);
                        continue;
                    }
                    (true, "no learner running".to_string())
                }
            };
            let _ = req.respond(r2r::std_srvs::srv::SetBool::Response { success, message });
        }
        if let Some(h) = hot.as_mut() {
            if mono_ns() >= next_poll {
                next_poll = mono_ns() + (cfg.hot_swap_poll_s * 1e9) as i64;
                // Keep recent complete observations for the divergence check.
                let (m, w) = (mono_ns(), wall_ns());
                let mut ok = true;
                for i in 0..board.sources() {
                    let (off, wd) = (board.offset(i), board.width(i));
                    ok &= board.read(i, &mut snap[off..off + wd], m, w).ever_written;
                }
                if ok {
                    recent.push((snap[..obs_dim].to_vec(), snap[obs_dim..].to_vec()));
                    if recent.len() > 20 {
                        recent.remove(0);
                    }
                }
                h.poll(&chan, &recent);
            }
        }
        if mono_ns() >= next_diag {
            next_diag += (cfg.diagnostics_period_s * 1e9) as i64;
            let now = mono_ns();
            let ticks = stats.ticks.load(Ordering::Relaxed);
            let rate = (ticks - diag.last_ticks) as f64 / ((now - diag.last_t) as f64 * 1e-9);
            diag.last_ticks = ticks;
            diag.last_t = now;
            let (n, p50, p99, max) = stats.jitter.drain();
            let on = estop.load(Ordering::Relaxed);
            let level = if on || stats.stale_ticks.load(Ordering::Relaxed) > 0 {
                1u8
            } else {
                0u8
            };
            let status = r2r::diagnostic_msgs::msg::DiagnosticStatus {
                level,
                name: "flowpilot: control loop".into(),
                message: if on {
                    "e-stop engaged".into()
                } else {
                    "running".into()
                },
                hardware_id: "flowpilot".into(),
                values: vec![
                    kv("rate_hz", format!("{rate:.2}")),
                    kv("configured_rate_hz", format!("{}", cfg.rate_hz)),
                    kv("jitter_samples", n.to_string()),
                    kv("jitter_p50_us", format!("{p50:.1}")),
                    kv("jitter_p99_us", format!("{p99:.1}")),
                    kv("jitter_max_us", format!("{max:.1}")),
                    kv(
                        "overruns",
                        stats.overruns.load(Ordering::Relaxed).to_string(),
                    ),
                    kv(
                        "inference_us",
                        format!(
                            "{:.1}",
                            stats.last_inference_ns.load(Ordering::Relaxed) as f64 / 1e3
                        ),
                    ),
                    kv(
                        "inference_max_us",
                        format!(
                            "{:.1}",
                            stats.max_inference_ns.load(Ordering::Relaxed) as f64 / 1e3
                        ),
                    ),
                    kv(
                        "stale_ticks",
                        stats.stale_ticks.load(Ordering::Relaxed).to_string(),
                    ),
                    kv(
                        "invalid_ticks",
                        stats.invalid_ticks.load(Ordering::Relaxed).to_string(),
                    ),
                    kv(
                        "rejected_messages",
                        input_stats.rejected.load(Ordering::Relaxed).to_string(),
                    ),
                    kv(
                        "received_messages",
                        input_stats.received.load(Ordering::Relaxed).to_string(),
                    ),
                    kv("estop", on.to_string()),
                    kv(
                        "estop_ticks",
                        stats.estop_ticks.load(Ordering::Relaxed).to_string(),
                    ),
                    kv(
                        "published",
                        stats.published.load(Ordering::Relaxed).to_string(),
                    ),
                    kv(
                        "dropped_outputs",
                        dropped.load(Ordering::Relaxed).to_string(),
                    ),
                    kv(
                        "policy_digest",
                        hot.as_ref()
                            .map_or(&model, |h| h.current())
                            .spec
                            .digest
                            .clone(),
                    ),
                    kv(
                        "policy_version",
                        hot.as_ref()
                            .map_or(&model, |h| h.current())
                            .spec
                            .version
                            .to_string(),
                    ),
                    kv(
                        "policy_swaps",
                        hot.as_ref().map_or(0, |h| h.swaps).to_string(),
                    ),
                    kv(
                        "policy_rejections",
                        hot.as_ref().map_or(0, |h| h.rejected).to_string(),
                    ),
                    kv(
                        "override_ticks",
                        stats.override_ticks.load(Ordering::Relaxed).to_string(),
                    ),
                    kv(
                        "log_written",
                        log_stats
                            .as_ref()
                            .map_or(0, |s| s.written.load(Ordering::Relaxed))
                            .to_string(),
                    ),
                    kv(
                        "log_dropped",
                        log_stats
                            .as_ref()
                            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
                            .to_string(),
                    ),
                    kv(
                        "log_state",
                        match &log_stats {
                            None => "off".into(),
                            Some(s) if s.failed.load(Ordering::Relaxed) => {
                                format!("failed: {}", s.error.lock().expect("log error").as_str())
                            }
                            Some(s) => format!("ok {}", s.path.lock().expect("log path").as_str()),
                        },
                    ),
                    kv(
                        "learner",
                        match learner.as_mut() {
                            None => "off".into(),
                            Some(l) => match l.running() {
                                Some(pid) => format!("running pid {pid}"),
                                None if l.last_exit.is_empty() => "stopped".into(),
                                None => format!("exited: {}", l.last_exit),
                            },
                        },
                    ),
                    kv(
                        "policy_last_rejection",
                        hot.as_ref()
                            .map_or(String::new(), |h| h.last_rejection.clone()),
                    ),
                ],
            };
            let mut arr = r2r::diagnostic_msgs::msg::DiagnosticArray::default();
            arr.header.stamp = to_time(wall_ns());
            arr.status.push(status);
            let _ = diag_pub.publish(&arr);
        }
    }

    // Clean shutdown: stop the loop, publish the safe action once, flush.
    tracing::info!("shutting down: publishing the safe action");
    stop.store(true, Ordering::SeqCst);
    let mut controller = control_thread
        .join()
        .map_err(|_| anyhow::anyhow!("control thread panicked"))?;
    if let Some(mut l) = learner.take() {
        if l.running().is_some() {
            tracing::info!("{}", l.stop());
        }
    }
    // Last reference to the log: flush, write the summary, close.
    drop(log);
    let (n, p50, p99, max) = stats.jitter_total.drain();
    tracing::info!(
        ticks = stats.ticks.load(Ordering::Relaxed),
        wakeups = n,
        jitter_p50_us = p50,
        jitter_p99_us = p99,
        jitter_max_us = max,
        overruns = stats.overruns.load(Ordering::Relaxed),
        max_inference_us = stats.max_inference_ns.load(Ordering::Relaxed) as f64 / 1e3,
        "loop summary"
    );
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
