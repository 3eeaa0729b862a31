//! Publishing /diagnostics: once per `diagnostics_period`, gather a
//! [`StatsSnapshot`] of the node's counters and publish core's
//! [`report`] of it (against the previous message's snapshot, so that
//! counters warn while they grow) as a DiagnosticArray; and the ERROR
//! status when the supervisor stops the node. Spin thread only.

use std::sync::atomic::Ordering;

use anyhow::Result;
use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};

use flowpilot_core::log::writer::LogStats;
use flowpilot_core::node::diagnostics::{report, LogState, RateMeter, StatsSnapshot};
use flowpilot_core::node::watchdog::Fault;
use flowpilot_core::policy::model::ModelFile;
use flowpilot_core::rt::board::{mono_ns, wall_ns};
use flowpilot_core::rt::control::Stats;
use flowpilot_core::rt::output::OutputQueue;

use crate::inputs::InputStats;
use crate::learner::Learner;
use crate::outputs::to_time;
use crate::swap::SwapStatus;

/// Where each part of the snapshot comes from.
pub(crate) struct Sources<'a> {
    pub(crate) stats: &'a Stats,
    pub(crate) estop: &'a flowpilot_core::rt::flags::EStopFlag,
    pub(crate) inputs: &'a InputStats,
    pub(crate) outputs: &'a OutputQueue,
    /// The model the node started with (reported while hot swap is off).
    pub(crate) model: &'a ModelFile,
    pub(crate) swap: Option<&'a SwapStatus>,
    pub(crate) log: Option<&'a LogStats>,
    pub(crate) learner: Option<&'a mut Learner>,
    pub(crate) fleet: Option<&'a crate::fleet::FleetLink>,
}

impl Sources<'_> {
    fn snapshot(self) -> StatsSnapshot {
        let mut s = self.stats.snapshot();
        s.estop = self.estop.engaged();
        s.received_messages = self.inputs.received();
        s.rejected_messages = self.inputs.rejected();
        s.dropped_outputs = self.outputs.dropped();
        s.preempted_outputs = self.outputs.preempted();
        s.publisher_wait_ns = self.outputs.waiting_ns(mono_ns());
        s.publish_max_ns = self.outputs.slowest_send_ns();
        match self.swap {
            Some(h) => {
                s.policy_digest = h.digest.clone();
                s.policy_version = h.version;
                s.policy_swaps = h.swaps;
                s.policy_rejections = h.rejected;
                s.policy_last_rejection = h.last_rejection.clone();
                s.policy_auto_rollbacks = h.auto_rollbacks;
                s.policy_guard_verdict = h.verdict.clone();
                s.policy_record_error = h.record_error.clone();
            }
            None => {
                s.policy_digest = self.model.spec.digest.clone();
                s.policy_version = self.model.spec.version;
            }
        }
        if let Some(l) = self.log {
            s.log_written = l.written.load(Ordering::Relaxed);
            s.log_dropped = l.not_written();
            s.log = if l.failed.load(Ordering::Relaxed) {
                LogState::Failed {
                    error: l.error.lock().expect("log error").clone(),
                }
            } else {
                LogState::Ok {
                    path: l.path.lock().expect("log path").clone(),
                }
            };
        }
        if let Some(l) = self.learner {
            s.learner = l.state();
        }
        if let Some(f) = self.fleet {
            s.fleet = f.describe();
        }
        s
    }
}

/// The /diagnostics publisher and its schedule.
pub(crate) struct DiagPublisher {
    publisher: r2r::Publisher<DiagnosticArray>,
    period_ns: i64,
    next_ns: i64,
    configured_rate_hz: f64,
    rate: RateMeter,
    /// The snapshot the previous message was made from (zero before it).
    prev: StatsSnapshot,
}

impl DiagPublisher {
    pub(crate) fn new(
        node: &mut r2r::Node,
        period_s: f64,
        configured_rate_hz: f64,
    ) -> Result<Self> {
        let period_ns = (period_s * 1e9) as i64;
        let now = mono_ns();
        Ok(Self {
            publisher: node.create_publisher(
                "/diagnostics",
                crate::qos::profile(flowpilot_core::contract::qos::DIAGNOSTICS),
            )?,
            period_ns,
            next_ns: now + period_ns,
            configured_rate_hz,
            rate: RateMeter::new(now),
            prev: StatsSnapshot::default(),
        })
    }

    /// Publish an ERROR status at once: the supervisor stops the node for
    /// `fault` of the control thread ("control loop failed: ...") or of the
    /// publisher thread ("action publisher failed: ..."), under the same
    /// status name as the periodic reports, which it ends.
    pub(crate) fn publish_fault(&mut self, fault: &Fault) {
        let (what, thread) = match fault {
            Fault::Dead(_) | Fault::Stalled { .. } => ("control loop", "control"),
            Fault::PublisherStalled { .. } => ("action publisher", "publisher"),
        };
        let fault = fault.to_string();
        let status = DiagnosticStatus {
            level: flowpilot_core::node::diagnostics::Level::Error as u8,
            name: "flowpilot: control loop".into(),
            message: format!("{what} failed: {fault}"),
            hardware_id: "flowpilot".into(),
            values: vec![
                KeyValue {
                    key: "fault".into(),
                    value: fault,
                },
                KeyValue {
                    key: "thread".into(),
                    value: thread.into(),
                },
            ],
        };
        let mut arr = DiagnosticArray::default();
        arr.header.stamp = to_time(wall_ns());
        arr.status.push(status);
        let _ = self.publisher.publish(&arr);
    }

    /// Publish if a period has passed; `sources` is only read then.
    pub(crate) fn publish_if_due<'a>(&mut self, sources: impl FnOnce() -> Sources<'a>) {
        if mono_ns() < self.next_ns {
            return;
        }
        self.next_ns += self.period_ns;
        let snap = sources().snapshot();
        let rate = self.rate.update(snap.ticks, mono_ns());
        let r = report(&snap, &self.prev, rate, self.configured_rate_hz);
        self.prev = snap;
        let status = DiagnosticStatus {
            level: r.level as u8,
            name: "flowpilot: control loop".into(),
            message: r.message,
            hardware_id: "flowpilot".into(),
            values: r
                .values
                .into_iter()
                .map(|(key, value)| KeyValue {
                    key: key.into(),
                    value,
                })
                .collect(),
        };
        let mut arr = DiagnosticArray::default();
        arr.header.stamp = to_time(wall_ns());
        arr.status.push(status);
        let _ = self.publisher.publish(&arr);
    }
}
