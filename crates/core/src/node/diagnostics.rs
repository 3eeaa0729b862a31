//! What the node reports on /diagnostics, without ROS: a plain
//! [`StatsSnapshot`] of every counter (taken from [`Stats`] plus the input,
//! output, log, hot-swap and learner state), and [`report`], the pure
//! function that turns a snapshot, and the one the previous message was
//! made from, into the level, message and key/values. The ROS node only
//! gathers the snapshots and copies the [`Report`] into a DiagnosticArray.
//!
//! The level is WARN while something is wrong *now* (see [`warnings`]):
//! counters that grew since the previous message (stale, invalid or
//! future-stamped input, dropped outputs), and states that hold (the
//! e-stop, a stalled publisher thread, failed logging, an accepted version
//! the hot swap could not record). A fault that has passed leaves the
//! cumulative counters in the key/values and the level back at OK.
//!
//! Real-time: not on the control thread. Snapshots read relaxed atomics
//! (and drain the per-period jitter histogram); reports allocate strings.

use std::sync::atomic::Ordering;

use crate::rt::control::Stats;

/// Queued outputs that have waited longer than this for the publisher
/// thread make the status WARN ("publisher thread stalled"). The wait is
/// measured from the publisher's last pop, and it pops on every wake-up
/// from the control thread and at least every 50 ms when idle (its park
/// timeout), so a healthy node sees about one period, never more than
/// ~50 ms. Measured on the running node (2-core VM, the spin loop sampling
/// `waiting_ns` ~6 000 times in 32 s, idle / with both cores busy): max
/// 11.5 / 10.5 ms at 100 Hz, 4.9 / 8.8 ms at 1 kHz, 0 / 50.1 ms at 10 Hz.
/// 100 ms is twice the worst of those (ten periods at 100 Hz) and 40 % of
/// the shortest watchdog limit ([`crate::node::watchdog::MIN_STALL_NS`], 250 ms),
/// so the WARN comes before the supervisor stops the node for the stall.
pub const PUBLISHER_WAIT_WARN_NS: i64 = 100_000_000;

/// Diagnostic levels, as diagnostic_msgs/DiagnosticStatus numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Ok = 0,
    Warn = 1,
    Error = 2,
}

/// The transition log's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum LogState {
    #[default]
    Off,
    /// Writing to `path`.
    Ok { path: String },
    /// Logging stopped on `error` (the loop runs on).
    Failed { error: String },
}

/// The fine-tuning learner's state.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum LearnerState {
    /// Fine-tuning is not configured.
    #[default]
    Off,
    Running {
        pid: u32,
    },
    /// Never started, or stopped without an exit status to report.
    Stopped,
    Exited {
        status: String,
    },
}

/// Every counter the diagnostics report, at one instant. Plain data.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StatsSnapshot {
    // from the control thread's Stats
    pub ticks: u64,
    pub published: u64,
    pub overruns: u64,
    pub stale_ticks: u64,
    pub invalid_ticks: u64,
    pub future_stamp_ticks: u64,
    pub estop_ticks: u64,
    pub chunk_exhausted_ticks: u64,
    pub override_ticks: u64,
    pub last_inference_ns: u64,
    pub max_inference_ns: u64,
    /// Wake-ups since the previous snapshot and their lateness, µs.
    pub jitter_samples: u64,
    pub jitter_p50_us: f64,
    pub jitter_p99_us: f64,
    pub jitter_max_us: f64,
    // the rest of the node
    pub estop: bool,
    pub received_messages: u64,
    pub rejected_messages: u64,
    pub dropped_outputs: u64,
    /// Queued outputs a stop discarded (by design: not a warning).
    pub preempted_outputs: u64,
    /// How long queued outputs have waited for the publisher thread, ns
    /// (0 when nothing waits).
    pub publisher_wait_ns: i64,
    /// The longest one publish call (the middleware's write) has taken, ns.
    pub publish_max_ns: i64,
    pub policy_digest: String,
    pub policy_version: u64,
    pub policy_swaps: u64,
    pub policy_rejections: u64,
    pub policy_last_rejection: String,
    /// Rollbacks made by the return guard, and its latest verdict.
    pub policy_auto_rollbacks: u64,
    pub policy_guard_verdict: String,
    /// Why the hot swap's accepted record could not be written (empty: ok).
    pub policy_record_error: String,
    pub log_written: u64,
    pub log_dropped: u64,
    pub log: LogState,
    pub learner: LearnerState,
    /// The fleet link's counters in words ("off" without one).
    pub fleet: String,
}

impl Stats {
    /// The control counters, with the rest of the snapshot left default.
    /// Drains the per-period jitter histogram (one snapshot per message).
    pub fn snapshot(&self) -> StatsSnapshot {
        let ld = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let (n, p50, p99, max) = self.jitter.drain();
        StatsSnapshot {
            ticks: ld(&self.ticks),
            published: ld(&self.published),
            overruns: ld(&self.overruns),
            stale_ticks: ld(&self.stale_ticks),
            invalid_ticks: ld(&self.invalid_ticks),
            future_stamp_ticks: ld(&self.future_stamp_ticks),
            estop_ticks: ld(&self.estop_ticks),
            chunk_exhausted_ticks: ld(&self.chunk_exhausted_ticks),
            override_ticks: ld(&self.override_ticks),
            last_inference_ns: ld(&self.last_inference_ns),
            max_inference_ns: ld(&self.max_inference_ns),
            jitter_samples: n,
            jitter_p50_us: p50,
            jitter_p99_us: p99,
            jitter_max_us: max,
            ..StatsSnapshot::default()
        }
    }
}

/// One diagnostics status: level, message and ordered key/values.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub level: Level,
    /// "running" when OK; else the reasons, most important first.
    pub message: String,
    pub values: Vec<(&'static str, String)>,
}

impl Report {
    /// The value of `key`, if reported.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Ticks per second between two snapshots.
#[derive(Debug, Clone, Copy)]
pub struct RateMeter {
    last_ticks: u64,
    last_ns: i64,
}

impl RateMeter {
    pub fn new(now_ns: i64) -> Self {
        Self {
            last_ticks: 0,
            last_ns: now_ns,
        }
    }

    /// The tick rate since the previous call (or since `new`).
    pub fn update(&mut self, ticks: u64, now_ns: i64) -> f64 {
        let rate =
            ticks.saturating_sub(self.last_ticks) as f64 / ((now_ns - self.last_ns) as f64 * 1e-9);
        self.last_ticks = ticks;
        self.last_ns = now_ns;
        rate
    }
}

/// Why the status is WARN, most important first (empty: OK). `prev` is the
/// snapshot the previous message was made from (all zero before the first):
/// counters warn when they grew since then, so a fault that has passed
/// clears at the next message; the e-stop, a stalled publisher, failed
/// logging and an unrecorded version warn while they last.
pub fn warnings(s: &StatsSnapshot, prev: &StatsSnapshot) -> Vec<&'static str> {
    let grew = |now: u64, before: u64| now > before;
    let future = s.future_stamp_ticks.saturating_sub(prev.future_stamp_ticks);
    // A future-stamped tick is also an invalid one: "invalid input" names
    // the others (non-finite observations).
    let invalid = s.invalid_ticks.saturating_sub(prev.invalid_ticks);
    let mut w = Vec::new();
    if s.estop {
        w.push("e-stop engaged");
    }
    if s.publisher_wait_ns > PUBLISHER_WAIT_WARN_NS {
        w.push("publisher thread stalled");
    }
    if grew(s.dropped_outputs, prev.dropped_outputs) {
        w.push("outputs dropped");
    }
    if grew(s.stale_ticks, prev.stale_ticks) {
        w.push("stale input");
    }
    if future > 0 {
        w.push("future-stamped input");
    }
    if invalid > future {
        w.push("invalid input");
    }
    if matches!(s.log, LogState::Failed { .. }) {
        w.push("logging failed");
    }
    if !s.policy_record_error.is_empty() {
        w.push("accepted policy not recorded");
    }
    w
}

/// The diagnostics status for snapshot `s`, given the snapshot `prev` the
/// previous message was made from: WARN with the [`warnings`] joined by
/// ", " as the message, or OK and "running". The key/values report the
/// cumulative counters.
pub fn report(
    s: &StatsSnapshot,
    prev: &StatsSnapshot,
    rate_hz: f64,
    configured_rate_hz: f64,
) -> Report {
    let warn = warnings(s, prev);
    let (level, message) = if warn.is_empty() {
        (Level::Ok, "running".to_string())
    } else {
        (Level::Warn, warn.join(", "))
    };
    let us = |ns: u64| format!("{:.1}", ns as f64 / 1e3);
    let log_state = match &s.log {
        LogState::Off => "off".to_string(),
        LogState::Failed { error } => format!("failed: {error}"),
        LogState::Ok { path } => format!("ok {path}"),
    };
    let learner = match &s.learner {
        LearnerState::Off => "off".to_string(),
        LearnerState::Running { pid } => format!("running pid {pid}"),
        LearnerState::Stopped => "stopped".to_string(),
        LearnerState::Exited { status } => format!("exited: {status}"),
    };
    Report {
        level,
        message,
        values: vec![
            ("rate_hz", format!("{rate_hz:.2}")),
            ("configured_rate_hz", format!("{configured_rate_hz}")),
            ("jitter_samples", s.jitter_samples.to_string()),
            ("jitter_p50_us", format!("{:.1}", s.jitter_p50_us)),
            ("jitter_p99_us", format!("{:.1}", s.jitter_p99_us)),
            ("jitter_max_us", format!("{:.1}", s.jitter_max_us)),
            ("overruns", s.overruns.to_string()),
            ("inference_us", us(s.last_inference_ns)),
            ("inference_max_us", us(s.max_inference_ns)),
            ("stale_ticks", s.stale_ticks.to_string()),
            ("invalid_ticks", s.invalid_ticks.to_string()),
            ("future_stamp_ticks", s.future_stamp_ticks.to_string()),
            ("rejected_messages", s.rejected_messages.to_string()),
            ("received_messages", s.received_messages.to_string()),
            ("estop", s.estop.to_string()),
            ("estop_ticks", s.estop_ticks.to_string()),
            ("chunk_exhausted_ticks", s.chunk_exhausted_ticks.to_string()),
            ("published", s.published.to_string()),
            ("dropped_outputs", s.dropped_outputs.to_string()),
            ("preempted_outputs", s.preempted_outputs.to_string()),
            (
                "publisher_wait_ms",
                format!("{:.1}", s.publisher_wait_ns as f64 / 1e6),
            ),
            (
                "publish_max_ms",
                format!("{:.1}", s.publish_max_ns as f64 / 1e6),
            ),
            ("policy_digest", s.policy_digest.clone()),
            ("policy_version", s.policy_version.to_string()),
            ("policy_swaps", s.policy_swaps.to_string()),
            ("policy_rejections", s.policy_rejections.to_string()),
            ("override_ticks", s.override_ticks.to_string()),
            ("log_written", s.log_written.to_string()),
            ("log_dropped", s.log_dropped.to_string()),
            ("log_state", log_state),
            ("learner", learner),
            ("policy_last_rejection", s.policy_last_rejection.clone()),
            ("policy_auto_rollbacks", s.policy_auto_rollbacks.to_string()),
            ("policy_guard_verdict", s.policy_guard_verdict.clone()),
            ("policy_record_error", s.policy_record_error.clone()),
            (
                "fleet",
                if s.fleet.is_empty() {
                    "off".into()
                } else {
                    s.fleet.clone()
                },
            ),
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_copies_the_counters_and_drains_the_jitter() {
        let st = Stats::default();
        st.ticks.store(12, Ordering::Relaxed);
        st.stale_ticks.store(2, Ordering::Relaxed);
        st.max_inference_ns.store(1500, Ordering::Relaxed);
        st.record_wakeup(3_000);
        st.record_wakeup(5_000);
        let s = st.snapshot();
        assert_eq!((s.ticks, s.stale_ticks, s.max_inference_ns), (12, 2, 1500));
        assert_eq!(s.jitter_samples, 2);
        assert!(s.jitter_max_us >= 5.0);
        assert_eq!(st.snapshot().jitter_samples, 0, "drained");
        assert_eq!(s.log, LogState::Off);
        assert_eq!(s.learner, LearnerState::Off);
    }

    #[test]
    fn a_healthy_loop_reports_ok_and_every_key_in_order() {
        let s = StatsSnapshot {
            ticks: 100,
            last_inference_ns: 12_345,
            policy_digest: "sha256:ab".into(),
            policy_version: 3,
            log: LogState::Ok {
                path: "/l/a.mcap".into(),
            },
            learner: LearnerState::Running { pid: 42 },
            ..Default::default()
        };
        let r = report(&s, &StatsSnapshot::default(), 99.987, 100.0);
        assert_eq!(r.level, Level::Ok);
        assert_eq!(r.message, "running");
        let keys: Vec<&str> = r.values.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [
                "rate_hz",
                "configured_rate_hz",
                "jitter_samples",
                "jitter_p50_us",
                "jitter_p99_us",
                "jitter_max_us",
                "overruns",
                "inference_us",
                "inference_max_us",
                "stale_ticks",
                "invalid_ticks",
                "future_stamp_ticks",
                "rejected_messages",
                "received_messages",
                "estop",
                "estop_ticks",
                "chunk_exhausted_ticks",
                "published",
                "dropped_outputs",
                "preempted_outputs",
                "publisher_wait_ms",
                "publish_max_ms",
                "policy_digest",
                "policy_version",
                "policy_swaps",
                "policy_rejections",
                "override_ticks",
                "log_written",
                "log_dropped",
                "log_state",
                "learner",
                "policy_last_rejection",
                "policy_auto_rollbacks",
                "policy_guard_verdict",
                "policy_record_error",
                "fleet",
            ]
        );
        assert_eq!(r.get("rate_hz"), Some("99.99"));
        assert_eq!(r.get("configured_rate_hz"), Some("100"));
        assert_eq!(r.get("inference_us"), Some("12.3"));
        assert_eq!(r.get("estop"), Some("false"));
        assert_eq!(r.get("policy_digest"), Some("sha256:ab"));
        assert_eq!(r.get("log_state"), Some("ok /l/a.mcap"));
        assert_eq!(r.get("learner"), Some("running pid 42"));
        assert_eq!(r.get("nope"), None);
    }

    /// The level and message of `s` after `prev`.
    fn status(s: &StatsSnapshot, prev: &StatsSnapshot) -> (Level, String) {
        let r = report(s, prev, 100.0, 100.0);
        (r.level, r.message)
    }

    fn warn(m: &str) -> (Level, String) {
        (Level::Warn, m.to_string())
    }

    fn ok() -> (Level, String) {
        (Level::Ok, "running".to_string())
    }

    #[test]
    fn e_stop_and_stale_input_warn() {
        let zero = StatsSnapshot::default();
        let estop = StatsSnapshot {
            estop: true,
            ..Default::default()
        };
        assert_eq!(status(&estop, &zero), warn("e-stop engaged"));
        assert_eq!(
            report(&estop, &zero, 100.0, 100.0).get("estop"),
            Some("true")
        );
        // Held while engaged, whatever the counters do.
        assert_eq!(status(&estop, &estop), warn("e-stop engaged"));
        let stale = StatsSnapshot {
            stale_ticks: 1,
            ..Default::default()
        };
        assert_eq!(status(&stale, &zero), warn("stale input"));
        assert_eq!(Level::Warn as u8, 1);
    }

    #[test]
    fn counters_warn_only_while_they_grow() {
        let zero = StatsSnapshot::default();
        for (name, key, s) in [
            (
                "stale input",
                "stale_ticks",
                StatsSnapshot {
                    stale_ticks: 7,
                    ..Default::default()
                },
            ),
            (
                "outputs dropped",
                "dropped_outputs",
                StatsSnapshot {
                    dropped_outputs: 3,
                    ..Default::default()
                },
            ),
            (
                // NaN observations: invalid, not future-stamped.
                "invalid input",
                "invalid_ticks",
                StatsSnapshot {
                    invalid_ticks: 4,
                    ..Default::default()
                },
            ),
            (
                // A future-stamped tick counts in both.
                "future-stamped input",
                "future_stamp_ticks",
                StatsSnapshot {
                    invalid_ticks: 5,
                    future_stamp_ticks: 5,
                    ..Default::default()
                },
            ),
        ] {
            assert_eq!(status(&s, &zero), warn(name));
            // The next message, with nothing new: OK again; the count stays.
            let later = StatsSnapshot {
                ticks: 500,
                ..s.clone()
            };
            assert_eq!(status(&later, &s), ok(), "{name} recovers");
            let r = report(&later, &s, 100.0, 100.0);
            assert_ne!(r.get(key), Some("0"), "{key} stays cumulative");
        }
        let both = StatsSnapshot {
            invalid_ticks: 9,
            future_stamp_ticks: 5,
            ..Default::default()
        };
        assert_eq!(
            status(&both, &zero),
            warn("future-stamped input, invalid input")
        );
        let before = StatsSnapshot {
            invalid_ticks: 4,
            future_stamp_ticks: 0,
            ..Default::default()
        };
        assert_eq!(status(&both, &before), warn("future-stamped input"));
    }

    #[test]
    fn preempted_outputs_are_reported_not_warned() {
        let s = StatsSnapshot {
            preempted_outputs: 12,
            ..Default::default()
        };
        let r = report(&s, &StatsSnapshot::default(), 100.0, 100.0);
        assert_eq!((r.level, r.message.as_str()), (Level::Ok, "running"));
        assert_eq!(r.get("preempted_outputs"), Some("12"));
    }

    #[test]
    fn a_publisher_waited_on_past_the_threshold_warns_before_the_watchdog() {
        let zero = StatsSnapshot::default();
        let at = |ns: i64| StatsSnapshot {
            publisher_wait_ns: ns,
            ..Default::default()
        };
        assert_eq!(status(&at(0), &zero), ok());
        assert_eq!(status(&at(PUBLISHER_WAIT_WARN_NS), &zero), ok());
        assert_eq!(
            status(&at(PUBLISHER_WAIT_WARN_NS + 1), &zero),
            warn("publisher thread stalled")
        );
        // It lasts while the outputs wait, whatever the previous message saw.
        let stalled = at(180_000_000);
        assert_eq!(status(&stalled, &stalled), warn("publisher thread stalled"));
        assert_eq!(
            report(&stalled, &zero, 100.0, 100.0).get("publisher_wait_ms"),
            Some("180.0")
        );
        const { assert!(PUBLISHER_WAIT_WARN_NS < crate::node::watchdog::MIN_STALL_NS) };
    }

    #[test]
    fn log_failure_and_an_unrecorded_version_warn_while_they_last() {
        let failed = StatsSnapshot {
            log: LogState::Failed {
                error: "No space left on device".into(),
            },
            ..Default::default()
        };
        assert_eq!(status(&failed, &failed), warn("logging failed"));
        let unrecorded = StatsSnapshot {
            policy_record_error: "No space left on device".into(),
            ..Default::default()
        };
        assert_eq!(
            status(&unrecorded, &unrecorded),
            warn("accepted policy not recorded")
        );
        let ok_log = StatsSnapshot {
            log: LogState::Ok { path: "/l".into() },
            ..Default::default()
        };
        assert_eq!(status(&ok_log, &failed), ok());
    }

    #[test]
    fn several_reasons_are_joined_most_important_first() {
        let s = StatsSnapshot {
            estop: true,
            publisher_wait_ns: 2 * PUBLISHER_WAIT_WARN_NS,
            dropped_outputs: 1,
            stale_ticks: 1,
            invalid_ticks: 2,
            future_stamp_ticks: 1,
            log: LogState::Failed { error: "x".into() },
            policy_record_error: "y".into(),
            ..Default::default()
        };
        assert_eq!(
            status(&s, &StatsSnapshot::default()),
            warn(
                "e-stop engaged, publisher thread stalled, outputs dropped, stale input, \
                 future-stamped input, invalid input, logging failed, accepted policy not recorded"
            )
        );
    }

    #[test]
    fn log_and_learner_states_read_as_before() {
        let mut s = StatsSnapshot {
            log: LogState::Failed {
                error: "disk full".into(),
            },
            learner: LearnerState::Exited {
                status: "exit status: 1".into(),
            },
            ..Default::default()
        };
        let r = report(&s, &StatsSnapshot::default(), 0.0, 100.0);
        assert_eq!(r.get("log_state"), Some("failed: disk full"));
        assert_eq!(r.get("learner"), Some("exited: exit status: 1"));
        s.log = LogState::Off;
        s.learner = LearnerState::Stopped;
        let r = report(&s, &StatsSnapshot::default(), 0.0, 100.0);
        assert_eq!(r.get("log_state"), Some("off"));
        assert_eq!(r.get("learner"), Some("stopped"));
        s.learner = LearnerState::Off;
        assert_eq!(
            report(&s, &StatsSnapshot::default(), 0.0, 100.0).get("learner"),
            Some("off")
        );
    }

    #[test]
    fn rate_meter_measures_ticks_per_second() {
        let mut m = RateMeter::new(0);
        assert_eq!(m.update(50, 500_000_000), 100.0);
        assert_eq!(m.update(150, 1_500_000_000), 100.0);
    }
}
