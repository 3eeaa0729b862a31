//! Observation and goal subscriptions: each message's configured values
//! (by joint name, array index or fixed component) go to the source's
//! board slot; malformed, non-finite or oversized messages (core's
//! `joint_map` caps) are counted and dropped.
//! Runs on the spin thread (r2r callbacks), never on the control thread;
//! the board write is lock-free.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;
use r2r::QosProfile;

use flowpilot_core::joint_map::{JointMap, MAX_VALUES};
use flowpilot_core::node::config::{JointField, SourceConfig, SourceKind};
use flowpilot_core::rt::board::Board;

/// Counters kept by the subscriber side.
#[derive(Default)]
pub(crate) struct InputStats {
    rejected: AtomicU64,
    received: AtomicU64,
}

impl InputStats {
    pub(crate) fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }
    pub(crate) fn rejected(&self) -> u64 {
        self.rejected.load(Ordering::Relaxed)
    }
}

/// Keep-last-1 QoS, best effort or reliable.
pub(crate) fn qos(best_effort: bool) -> QosProfile {
    use flowpilot_core::contract::qos::{SOURCE_BEST_EFFORT, SOURCE_RELIABLE};
    crate::qos::profile(if best_effort {
        SOURCE_BEST_EFFORT
    } else {
        SOURCE_RELIABLE
    })
}

/// A header stamp in ns; None for the zero stamp (publisher set none).
fn stamp_ns(t: &r2r::builtin_interfaces::msg::Time) -> Option<i64> {
    let ns = t.sec as i64 * 1_000_000_000 + t.nanosec as i64;
    (ns != 0).then_some(ns)
}

/// Extract the configured values from a JointState, by name (through the
/// source's [`JointMap`]: bounded work per message). False if the message
/// is too large or a joint or field is missing.
fn joint_values(
    m: &r2r::sensor_msgs::msg::JointState,
    map: &mut JointMap,
    fields: &[JointField],
    out: &mut Vec<f64>,
) -> bool {
    out.clear();
    let Some(at) = map.positions(&m.name) else {
        return false;
    };
    for i in at.iter().flatten() {
        for f in fields {
            let arr = match f {
                JointField::Position => &m.position,
                JointField::Velocity => &m.velocity,
                JointField::Effort => &m.effort,
            };
            match arr.get(*i) {
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

/// Subscribe every source; source `i` writes board slot `i`.
pub(crate) fn subscribe_all<'a>(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    sources: impl IntoIterator<Item = &'a SourceConfig>,
    board: &Arc<Board>,
) -> Result<Arc<InputStats>> {
    let stats = Arc::new(InputStats::default());
    for (i, s) in sources.into_iter().enumerate() {
        subscribe(node, spawner, s, i, board.clone(), stats.clone())?;
    }
    Ok(stats)
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
            if n <= 5 || n.is_multiple_of(100) {
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
            let mut map = JointMap::new(joints);
            spawn!(
                r2r::sensor_msgs::msg::JointState,
                move |m: r2r::sensor_msgs::msg::JointState| {
                    let ok = joint_values(&m, &mut map, &fields, &mut buf);
                    accept(ok.then_some(&buf[..]), stamp_ns(&m.header.stamp));
                }
            )
        }
        SourceKind::Float64MultiArray { indices } => {
            spawn!(
                r2r::std_msgs::msg::Float64MultiArray,
                move |m: r2r::std_msgs::msg::Float64MultiArray| {
                    let v: Option<Vec<f64>> = (m.data.len() <= MAX_VALUES)
                        .then(|| indices.iter().map(|&i| m.data.get(i).copied()).collect())
                        .flatten();
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
