//! A fine-tuning session on the ROS graph, for PlotJuggler, Foxglove and
//! rqt_plot with no plugin:
//! - `~/learner/<series>` (`std_msgs/Float64`, one topic per series of
//!   [`LearnerMetrics::series`]): the learner's metrics, republished from
//!   the file it rewrites in `hot_swap.dir` ([`flowpilot_core::learner_metrics`]);
//!   whoever started the learner, the node or an operator;
//! - `~/policy_events` (`std_msgs/String`, latched): one line per version
//!   event (swapped in, rejected and why, rolled back and why), read from
//!   the hot swap's status.
//!
//! Real-time: spin thread only. At most one bounded file read per
//! [`POLL`]; a missing, malformed or oversize file costs a warning, never
//! the node.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Result;
use r2r::std_msgs::msg::{Float64, String as StringMsg};

use flowpilot_core::contract::qos as roles;
use flowpilot_core::learner_metrics::{self, LearnerMetrics};

use crate::qos::profile;
use crate::swap::SwapStatus;

/// How often the metrics file is looked at (the learner rewrites it about
/// once a second).
const POLL: Duration = Duration::from_millis(250);

/// The topics of one session (built at configure when `hot_swap.dir` is set).
pub(crate) struct SessionTopics {
    dir: PathBuf,
    series: Vec<r2r::Publisher<Float64>>,
    events: r2r::Publisher<StringMsg>,
    next_poll: Instant,
    /// The snapshot last published (to publish each one once).
    last: Option<(u64, i64)>,
    /// The last read error reported (each new one is logged once).
    last_error: Option<String>,
    /// The hot swap's status at the previous look: version, rejections,
    /// automatic rollbacks.
    prev: Option<(u64, u64, u64)>,
}

impl SessionTopics {
    pub(crate) fn new(node: &mut r2r::Node, dir: &str) -> Result<Self> {
        let series = LearnerMetrics::names()
            .iter()
            .map(|n| {
                node.create_publisher::<Float64>(
                    &format!("~/learner/{n}"),
                    profile(roles::LEARNER_METRICS),
                )
            })
            .collect::<std::result::Result<_, _>>()?;
        let events =
            node.create_publisher::<StringMsg>("~/policy_events", profile(roles::POLICY_EVENTS))?;
        Ok(Self {
            dir: dir.into(),
            series,
            events,
            next_poll: Instant::now(),
            last: None,
            last_error: None,
            prev: None,
        })
    }

    /// One spin's look: a new metrics snapshot goes out, and the events
    /// since the previous look.
    pub(crate) fn poll(&mut self, swap: Option<&SwapStatus>) {
        if let Some(s) = swap {
            self.events_since(s);
        }
        if Instant::now() < self.next_poll {
            return;
        }
        self.next_poll = Instant::now() + POLL;
        match learner_metrics::read(&self.dir) {
            Ok(None) => {}
            Ok(Some(m)) => {
                self.last_error = None;
                if self.last != Some((m.updates, m.wall_ns)) {
                    self.last = Some((m.updates, m.wall_ns));
                    for (p, (_, v)) in self.series.iter().zip(m.series()) {
                        let _ = p.publish(&Float64 { data: v });
                    }
                }
            }
            Err(e) => {
                let e = e.to_string();
                if self.last_error.as_deref() != Some(&e) {
                    tracing::warn!("learner metrics not republished: {e}");
                    self.last_error = Some(e);
                }
            }
        }
    }

    fn events_since(&mut self, s: &SwapStatus) {
        let now = (s.version, s.rejected, s.auto_rollbacks);
        let Some((v0, rej0, rb0)) = self.prev.replace(now) else {
            self.say(format!("running version {} ({})", s.version, s.digest));
            return;
        };
        if s.rejected > rej0 {
            self.say(format!("rejected: {}", s.last_rejection));
        }
        if s.auto_rollbacks > rb0 {
            self.say(format!(
                "rolled back to version {} by the return guard: {}",
                s.version, s.verdict
            ));
        } else if s.version < v0 {
            // ~/rollback or ~/keep_best
            self.say(format!("back to version {} ({})", s.version, s.digest));
        } else if s.version > v0 {
            self.say(format!("swapped in version {} ({})", s.version, s.digest));
        }
    }

    fn say(&self, line: String) {
        tracing::debug!(event = %line, "policy event");
        let _ = self.events.publish(&StringMsg { data: line });
    }
}
