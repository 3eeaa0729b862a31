//! The action side: [`ActionPublisher`] turns a tick's output into the
//! configured message type (and the `~/action_trace` topic), and the
//! publisher thread drains the control thread's output queue into it.
//! r2r's publish allocates and locks, so it never runs on the control
//! thread (the realtime_tools pattern): the control thread only pushes to a
//! lock-free queue and unparks this thread. [`Line`] orders the publisher
//! thread against the spin thread's final stop: once that stop is sent,
//! nothing from the queue follows it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;

use flowpilot_core::node::config::{ActionKind, NodeConfig};
use flowpilot_core::rt::board::wall_ns;
use flowpilot_core::rt::output::{Outgoing, OutputQueue};

use crate::inputs::qos;

/// A wall-clock ns stamp as a ROS Time.
pub(crate) fn to_time(ns: i64) -> r2r::builtin_interfaces::msg::Time {
    r2r::builtin_interfaces::msg::Time {
        sec: (ns / 1_000_000_000) as i32,
        nanosec: (ns % 1_000_000_000) as u32,
    }
}

/// The configured publisher, one of four message types.
enum Sink {
    F64a(r2r::Publisher<r2r::std_msgs::msg::Float64MultiArray>),
    Traj(
        r2r::Publisher<r2r::trajectory_msgs::msg::JointTrajectory>,
        Vec<String>,
    ),
    Twist(r2r::Publisher<r2r::geometry_msgs::msg::Twist>),
    TwistStamped(
        r2r::Publisher<r2r::geometry_msgs::msg::TwistStamped>,
        String,
    ),
}

/// Publishes actions (and the trace) in the configured message type.
pub(crate) struct ActionPublisher {
    sink: Sink,
    period_ns: i64,
    /// `chunk.as_trajectory`: chunks go out whole as multi-point
    /// trajectories, and the policy ticks within a chunk send nothing.
    chunk_points: bool,
    trace: r2r::Publisher<r2r::std_msgs::msg::Float64MultiArray>,
}

impl ActionPublisher {
    pub(crate) fn new(node: &mut r2r::Node, cfg: &NodeConfig, act_dim: usize) -> Result<Self> {
        cfg.action.check_act_dim(act_dim)?;
        let q = qos(cfg.action_best_effort).keep_last(10);
        let t = &cfg.action_topic;
        let sink = match &cfg.action {
            ActionKind::Float64MultiArray => Sink::F64a(node.create_publisher(t, q)?),
            ActionKind::JointTrajectory { joints } => {
                Sink::Traj(node.create_publisher(t, q)?, joints.clone())
            }
            ActionKind::Twist => Sink::Twist(node.create_publisher(t, q)?),
            ActionKind::TwistStamped { frame_id } => {
                Sink::TwistStamped(node.create_publisher(t, q)?, frame_id.clone())
            }
        };
        let chunk_points = cfg.chunk.as_trajectory;
        if chunk_points && !matches!(sink, Sink::Traj(..)) {
            anyhow::bail!("'chunk.as_trajectory' needs action.type 'joint_trajectory'");
        }
        Ok(Self {
            sink,
            chunk_points,
            period_ns: (1e9 / cfg.rate_hz) as i64,
            trace: node.create_publisher(
                "~/action_trace",
                crate::qos::profile(flowpilot_core::contract::qos::TRACE),
            )?,
        })
    }

    /// 2 values: (vx, wz); 3: (vx, vy, wz); 6: linear then angular.
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

    /// What one tick's output sends: a stop as [`Self::publish_stop`]; with `chunk.as_trajectory`, a new
    /// chunk whole, nothing on the other policy ticks of a chunk (the
    /// controller is executing it), and a one-point trajectory for any
    /// other action (a safe action preempts the running trajectory).
    fn publish_output(&self, o: &Outgoing) -> Result<()> {
        if !o.publish() {
            return Ok(());
        }
        if o.stop() != 0 {
            return self.publish_stop(o.action());
        }
        if self.chunk_points {
            if !o.trajectory().is_empty() {
                return self.publish_points(o.trajectory(), o.action().len(), false);
            }
            if o.decision() == flowpilot_core::rt::decision::Decision::Policy.code() {
                return Ok(());
            }
        }
        self.publish_action(o.action())
    }

    /// A trajectory of `values.len() / step` points, point j reached at
    /// (j + 1) periods; with `still`, each at zero velocity.
    fn publish_points(&self, values: &[f64], step: usize, still: bool) -> Result<()> {
        let Sink::Traj(p, joints) = &self.sink else {
            unreachable!("checked in new()");
        };
        let mut m = r2r::trajectory_msgs::msg::JointTrajectory {
            joint_names: joints.clone(),
            ..Default::default()
        };
        m.header.stamp = to_time(wall_ns());
        for (j, pt) in values.chunks_exact(step).enumerate() {
            let t = self.period_ns * (j as i64 + 1);
            m.points
                .push(r2r::trajectory_msgs::msg::JointTrajectoryPoint {
                    positions: pt.to_vec(),
                    velocities: if still { vec![0.0; step] } else { Vec::new() },
                    time_from_start: r2r::builtin_interfaces::msg::Duration {
                        sec: (t / 1_000_000_000) as i32,
                        nanosec: (t % 1_000_000_000) as u32,
                    },
                    ..Default::default()
                });
        }
        p.publish(&m)?;
        Ok(())
    }

    pub(crate) fn publish_action(&self, a: &[f64]) -> Result<()> {
        match &self.sink {
            Sink::F64a(p) => p.publish(&r2r::std_msgs::msg::Float64MultiArray {
                data: a.to_vec(),
                ..Default::default()
            })?,
            Sink::Traj(..) => self.publish_points(a, a.len(), false)?,
            Sink::Twist(p) => p.publish(&Self::twist(a))?,
            Sink::TwistStamped(p, frame_id) => {
                let mut m = r2r::geometry_msgs::msg::TwistStamped {
                    twist: Self::twist(a),
                    ..Default::default()
                };
                m.header.stamp = to_time(wall_ns());
                m.header.frame_id = frame_id.clone();
                p.publish(&m)?
            }
        }
        Ok(())
    }

    /// A stop ([`flowpilot_core::rt::stop`]): a JointTrajectory holds its one
    /// point at zero velocity (an empty trajectory is a hold only to some
    /// controller versions, ros2_controllers #683); other types as any
    /// action.
    pub(crate) fn publish_stop(&self, a: &[f64]) -> Result<()> {
        match &self.sink {
            Sink::Traj(..) => self.publish_points(a, a.len(), true),
            _ => self.publish_action(a),
        }
    }

    /// Trace: [tick, decision, published, log_prob, stamp_s per source...,
    /// action..., stop] (stop: `StopKind::code`).
    fn publish_trace(&self, o: &Outgoing) -> Result<()> {
        let mut data = vec![
            o.tick() as f64,
            o.decision() as f64,
            if o.publish() { 1.0 } else { 0.0 },
            o.log_prob() as f64,
        ];
        data.extend(o.stamps().iter().map(|&s| s as f64 * 1e-9));
        data.extend_from_slice(o.action());
        data.push(o.stop() as f64);
        self.trace.publish(&r2r::std_msgs::msg::Float64MultiArray {
            data,
            ..Default::default()
        })?;
        Ok(())
    }
}

/// The one way onto the action topic for the publisher thread and the spin
/// thread's final stop. Once [`Line::halt_then`] has sent the stop, the
/// publisher thread sends nothing more: a publish in flight finishes first
/// (a mutex held only around one publish; neither side is the control
/// thread), and the stop is never kept waiting longer than
/// [`Line::MAX_WAIT`] by a publisher stuck inside DDS.
pub(crate) struct Line {
    turn: Mutex<()>,
    halted: AtomicBool,
}

impl Line {
    /// Longest the final stop waits for a publish in flight.
    const MAX_WAIT: Duration = Duration::from_millis(50);

    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            turn: Mutex::new(()),
            halted: AtomicBool::new(false),
        })
    }

    /// The publisher thread's turn: `send` runs unless the line is halted.
    fn send(&self, send: impl FnOnce()) {
        let _turn = self.turn.lock().unwrap_or_else(|e| e.into_inner());
        if !self.halted.load(Ordering::SeqCst) {
            send();
        }
    }

    /// Halt the publisher thread, wait (bounded) for a publish in flight,
    /// then `send` the stop. Returns false when the wait ran out (the stop
    /// went out anyway; one queued action may still follow it).
    pub(crate) fn halt_then(&self, send: impl FnOnce()) -> bool {
        self.halted.store(true, Ordering::SeqCst);
        let t0 = std::time::Instant::now();
        loop {
            match self.turn.try_lock() {
                Ok(_turn) => {
                    send();
                    return true;
                }
                Err(std::sync::TryLockError::Poisoned(p)) => {
                    let _turn = p.into_inner();
                    send();
                    return true;
                }
                Err(std::sync::TryLockError::WouldBlock) if t0.elapsed() < Self::MAX_WAIT => {
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(std::sync::TryLockError::WouldBlock) => {
                    send();
                    return false;
                }
            }
        }
    }
}

/// Start the publisher thread: it publishes every output the control
/// thread queues until `stop` is set and the queue is empty, then hands
/// the publisher back. Nothing goes out once `line` is halted.
/// `stall_at` (fault injection only) makes it stop popping at that output.
pub(crate) fn spawn_publisher(
    publisher: ActionPublisher,
    queue: Arc<OutputQueue>,
    stop: Arc<AtomicBool>,
    line: Arc<Line>,
    stall_at: Option<u64>,
) -> std::io::Result<std::thread::JoinHandle<ActionPublisher>> {
    std::thread::Builder::new()
        .name("flowpilot-pub".into())
        .spawn(move || {
            let mut popped = 0u64;
            loop {
                if stall_at.is_some_and(|n| popped >= n) {
                    crate::fault_inject::stall_until(&stop);
                    break;
                }
                while let Some(o) = queue.pop() {
                    popped += 1;
                    line.send(|| {
                        queue.timed_send(|| {
                            if let Err(e) = publisher.publish_output(&o) {
                                tracing::error!("publishing action: {e}");
                            }
                            let _ = publisher.publish_trace(&o);
                        })
                    });
                    if stall_at.is_some_and(|n| popped >= n) {
                        break;
                    }
                }
                if stop.load(Ordering::SeqCst) && queue.is_empty() {
                    break;
                }
                // Woken by the control thread after each output.
                std::thread::park_timeout(Duration::from_millis(50));
            }
            publisher
        })
}
