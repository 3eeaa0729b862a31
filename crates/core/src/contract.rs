//! The cross-process contract: every name and number that one process
//! writes and another reads, in one place. The node writes log metadata
//! and checkpoint records the learner and the tools read; the node starts
//! the learner with flags `flowpilot finetune` defines, and the learner
//! starts `flowpilot_fleet` the same way; each topic has a QoS by role that
//! both its ends apply; the trace and the log carry decision and stop
//! codes the tests and scripts decode. The Rust side uses these constants;
//! the Python side reads them from `flowpilot contract --json`
//! ([`to_json`]), so no test spells a code or a file name by hand.
//!
//! Plain data: no I/O, nothing here runs anything.
//!
//! ```
//! use flowpilot_core::contract::{files, to_json};
//! assert_eq!(files::ACCEPTED, ".flowpilot_accepted");
//! assert_eq!(to_json()["decision"]["stale"], 3);
//! ```

use serde::Serialize;
use serde_json::{json, Value};

/// Metadata keys of a transition log file (MCAP), written by the node
/// (`ros/log_inputs.rs`, the log writer) and the fleet's shard store, read
/// by the learner, the fleet link and the tools.
pub mod log_meta {
    pub const OBS_DIM: &str = "obs_dim";
    pub const GOAL_DIM: &str = "goal_dim";
    pub const ACT_DIM: &str = "act_dim";
    pub const CHUNK_LEN: &str = "chunk_len";
    pub const OBS_HORIZON: &str = "obs_horizon";
    pub const ACTION_LOW: &str = "action_low";
    pub const ACTION_HIGH: &str = "action_high";
    pub const RATE_HZ: &str = "rate_hz";
    /// Every k-th tick was logged.
    pub const EVERY: &str = "every";
    pub const STEP_SOURCE: &str = "step_source";
    pub const MODEL: &str = "model";
    /// The stream position of the file's first record.
    pub const SEQ_BASE: &str = "seq_base";
    /// The log stream's epoch (16 hex digits): a reinstalled robot is a
    /// new stream.
    pub const EPOCH: &str = "stream_epoch";
    /// In a fleet learner's shard: the robot, and its source log file.
    pub const FLEET_ROBOT: &str = "fleet_robot";
    pub const FLEET_SOURCE: &str = "fleet_source";
}

/// File names in a checkpoint (hot-swap) directory and a shard directory
/// (`crates/core/src/checkpoint.rs` has the layout).
pub mod files {
    /// The node's record of accepted versions.
    pub const ACCEPTED: &str = ".flowpilot_accepted";
    /// The append-only revocation log.
    pub const REVOKED: &str = ".flowpilot_revoked";
    /// Appended to a revoked version's file name when its revocation could
    /// not be recorded.
    pub const SET_ASIDE_SUFFIX: &str = ".revoked";
    /// The learner's non-policy state: `<dir>/.learner/state.safetensors`.
    pub const LEARNER_DIR: &str = ".learner";
    pub const LEARNER_STATE: &str = "state.safetensors";
    /// The learner's live metrics: `<dir>/.learner/metrics.json`
    /// (`crate::learner_metrics`).
    pub const LEARNER_METRICS: &str = "metrics.json";
    /// Every snapshot, one JSON line each: `<dir>/.learner/metrics.jsonl`.
    pub const LEARNER_METRICS_HISTORY: &str = "metrics.jsonl";
    /// A policy version: `policy_v000042.safetensors`.
    pub const POLICY_PREFIX: &str = "policy_v";
    pub const POLICY_DIGITS: usize = 6;
    pub const POLICY_EXT: &str = "safetensors";
    /// The evaluations a session ran, written into the checkpoint directory
    /// by whoever ran them (scripts/finetune_session.py): a JSON list the
    /// report shows on top.
    pub const EVALUATIONS: &str = "evaluations.json";
    /// A fleet learner's lasting id, in its shard directory.
    pub const LEARNER_ID: &str = ".flowpilot_learner_id";
}

/// Flags one process passes to another it starts (long names, without
/// `--`): the node starts `flowpilot finetune`, `flowpilot finetune
/// --from-graph` starts `flowpilot_fleet`. The definitions use them too.
pub mod flags {
    /// `flowpilot finetune`.
    pub const FINETUNE: &str = "finetune";
    pub const LOG_DIR: &str = "log-dir";
    pub const OUT: &str = "out";
    pub const INIT: &str = "init";
    pub const FOLLOW: &str = "follow";
    /// `flowpilot_fleet`.
    pub const SHARDS: &str = "shards";
    pub const ROBOT: &str = "robot";
    pub const ROBOT_KEYS: &str = "robot-keys";
}

/// A topic's QoS, in words both ends apply (the ros crate maps it to r2r).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Qos {
    pub reliable: bool,
    pub transient_local: bool,
    pub depth: usize,
}

impl Qos {
    const fn reliable(depth: usize) -> Self {
        Self {
            reliable: true,
            transient_local: false,
            depth,
        }
    }
    const fn best_effort(depth: usize) -> Self {
        Self {
            reliable: false,
            transient_local: false,
            depth,
        }
    }
    const fn latched(self) -> Self {
        Self {
            transient_local: true,
            ..self
        }
    }
}

/// QoS by role. The node's subscriptions take what common publishers send
/// (a best-effort reader matches every publisher; the e-stop has one reader
/// per common QoS, docs/safety.md).
pub mod qos {
    use super::Qos;
    /// An observation source (the node reads keep-last-1; best effort or
    /// reliable by `sources.*.reliable`).
    pub const SOURCE_BEST_EFFORT: Qos = Qos::best_effort(1);
    pub const SOURCE_RELIABLE: Qos = Qos::reliable(1);
    /// The e-stop's three readers.
    pub const ESTOP_BEST_EFFORT: Qos = Qos::best_effort(10);
    pub const ESTOP_RELIABLE: Qos = Qos::reliable(10);
    pub const ESTOP_LATCHED: Qos = Qos::reliable(1).latched();
    /// Rewards, episode and terminal events: every one counts.
    pub const EVENTS: Qos = Qos::reliable(100);
    /// The human override and the step report (the newest counts).
    pub const OVERRIDE: Qos = Qos::reliable(1);
    /// `~/action_trace`.
    pub const TRACE: Qos = Qos::reliable(100);
    /// `~/learner/<series>` (the learner's metrics) and `~/policy_events`
    /// (swaps, rejections, rollbacks; the last ones kept for a late joiner).
    pub const LEARNER_METRICS: Qos = Qos::reliable(10);
    pub const POLICY_EVENTS: Qos = Qos::reliable(50).latched();
    /// `/diagnostics` and lifecycle transition events.
    pub const DIAGNOSTICS: Qos = Qos::reliable(10);
    pub const TRANSITION_EVENTS: Qos = Qos::reliable(10);
    /// The fleet (`crate::fleet::topics`).
    pub const FLEET_RECORDS: Qos = Qos::reliable(64);
    pub const FLEET_ACKS: Qos = Qos::reliable(8);
    pub const FLEET_POLICY: Qos = Qos::reliable(1).latched();
    pub const FLEET_REVOKED: Qos = Qos::reliable(64).latched();
}

/// Everything above, the decision codes ([`crate::rt::decision::CODES`]), the
/// stop codes ([`crate::rt::stop::StopKind`]) and the fleet topics, as one
/// JSON object (`flowpilot contract --json`).
pub fn to_json() -> Value {
    use crate::rt::stop::StopKind;
    let decision: serde_json::Map<String, Value> = crate::rt::decision::CODES
        .iter()
        .map(|(c, n)| (n.replace([' ', '-'], "_"), json!(c)))
        .collect();
    let stop: serde_json::Map<String, Value> = [
        ("none", StopKind::None),
        ("hold_measured", StopKind::HoldMeasured),
        ("hold_command", StopKind::HoldCommand),
        ("zero", StopKind::Zero),
        ("silent", StopKind::Silent),
    ]
    .into_iter()
    .map(|(n, k)| (n.to_string(), json!(k.code())))
    .collect();
    json!({
        "decision": decision,
        "stop": stop,
        "log_meta": {
            "obs_dim": log_meta::OBS_DIM, "goal_dim": log_meta::GOAL_DIM,
            "act_dim": log_meta::ACT_DIM, "chunk_len": log_meta::CHUNK_LEN,
            "obs_horizon": log_meta::OBS_HORIZON, "action_low": log_meta::ACTION_LOW,
            "action_high": log_meta::ACTION_HIGH, "rate_hz": log_meta::RATE_HZ,
            "every": log_meta::EVERY, "step_source": log_meta::STEP_SOURCE,
            "model": log_meta::MODEL, "seq_base": log_meta::SEQ_BASE,
            "epoch": log_meta::EPOCH, "fleet_robot": log_meta::FLEET_ROBOT,
            "fleet_source": log_meta::FLEET_SOURCE,
        },
        "files": {
            "accepted": files::ACCEPTED, "revoked": files::REVOKED,
            "set_aside_suffix": files::SET_ASIDE_SUFFIX,
            "learner_dir": files::LEARNER_DIR, "learner_state": files::LEARNER_STATE,
            "learner_metrics": files::LEARNER_METRICS,
            "learner_metrics_history": files::LEARNER_METRICS_HISTORY,
            "evaluations": files::EVALUATIONS,
            "policy_prefix": files::POLICY_PREFIX, "policy_digits": files::POLICY_DIGITS,
            "policy_ext": files::POLICY_EXT, "learner_id": files::LEARNER_ID,
        },
        "flags": {
            "finetune": flags::FINETUNE, "log_dir": flags::LOG_DIR, "out": flags::OUT,
            "init": flags::INIT, "follow": flags::FOLLOW, "shards": flags::SHARDS,
            "robot": flags::ROBOT, "robot_keys": flags::ROBOT_KEYS,
        },
        "qos": {
            "source_best_effort": qos::SOURCE_BEST_EFFORT, "source_reliable": qos::SOURCE_RELIABLE,
            "estop_best_effort": qos::ESTOP_BEST_EFFORT, "estop_reliable": qos::ESTOP_RELIABLE,
            "estop_latched": qos::ESTOP_LATCHED, "events": qos::EVENTS,
            "override": qos::OVERRIDE, "trace": qos::TRACE, "diagnostics": qos::DIAGNOSTICS,
            "transition_events": qos::TRANSITION_EVENTS, "fleet_records": qos::FLEET_RECORDS,
            "fleet_acks": qos::FLEET_ACKS, "fleet_policy": qos::FLEET_POLICY,
            "fleet_revoked": qos::FLEET_REVOKED,
            "learner_metrics": qos::LEARNER_METRICS, "policy_events": qos::POLICY_EVENTS,
        },
        "learner_series": crate::learner_metrics::LearnerMetrics::names(),
        "fleet_topics": {
            "records": crate::fleet::topics::RECORDS, "acks": crate::fleet::topics::ACKS,
            "policy": crate::fleet::topics::POLICY, "revoked": crate::fleet::topics::REVOKED,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_decision_and_stop_code_is_named_once() {
        let j = to_json();
        let d = j["decision"].as_object().unwrap();
        assert_eq!(d.len(), crate::rt::decision::CODES.len());
        assert_eq!(j["decision"]["policy"], 0);
        assert_eq!(j["decision"]["human_override"], 5);
        assert_eq!(j["decision"]["inactive"], 6);
        assert_eq!(j["stop"]["silent"], 4);
        // the checkpoint directory names policy files by the contract
        let name = crate::checkpoint::CheckpointDir::policy_file_name(42);
        assert_eq!(name, "policy_v000042.safetensors");
        assert_eq!(j["files"]["policy_prefix"], "policy_v");
        assert_eq!(j["files"]["policy_digits"], 6);
        assert_eq!(j["qos"]["fleet_policy"]["transient_local"], true);
    }
}
