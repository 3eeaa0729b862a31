//! The fleet link's ROS-free half (docs/fleet.md): many robots stream
//! their transition records over the ROS 2 graph to one learner, which
//! acknowledges what it has stored and publishes new versions back.
//!
//! - [`auth`]: records only from the robots they name (robot keys).
//! - [`wire`]: the records batch (bytes inside a std_msgs/UInt8MultiArray),
//!   the acknowledgement and the revocation (JSON in std_msgs/String).
//! - [`outbox`]: the robot's flow control: a window of unacknowledged
//!   records, go-back-N from the acknowledged position when the learner
//!   stops answering (with back-off), or answers as a new run; and the one
//!   learner a robot follows ([`outbox::Follow`]).
//! - [`cursor`]: the robot's reader of its own log at any stream position
//!   (the log stays the source of truth: resends come from it).
//! - [`inbox`]: the learner's per-robot contiguity (exactly once, in
//!   order) and the gaps it could not fill.
//! - [`shards`]: the learner's per-robot shard files and their recovery
//!   after a kill -9.
//!
//! A record's identity is its robot id, its log stream's epoch
//! (`contract::log_meta::EPOCH`: a reinstalled robot is a new stream) and its
//! stream position (the log file's `seq_base` plus its index in the file:
//! `log::reader::stream_base`).
//!
//! Real-time: none of this runs on the control thread.

pub mod auth;
pub mod cursor;
pub mod inbox;
pub mod outbox;
pub mod shards;
pub mod wire;

/// Topics (absolute, shared by the whole fleet) and their QoS in words;
/// the ROS adapters apply them (crates/ros/src/fleet*).
pub mod topics {
    /// Record batches, robot → learner: reliable, volatile, keep last 64.
    pub const RECORDS: &str = "/flowpilot/fleet/records";
    /// Acknowledgements, learner → robots: reliable, volatile, keep last 8.
    pub const ACKS: &str = "/flowpilot/fleet/acks";
    /// Shared policy versions, learner → robots: reliable,
    /// transient-local, keep last 1 (a robot joining late gets the newest).
    pub const POLICY: &str = "/flowpilot/fleet/policy";
    /// Revoked versions, robots → learner: reliable, transient-local,
    /// keep last 64.
    pub const REVOKED: &str = "/flowpilot/fleet/revoked";

    /// The policy topic of one robot when each robot has its own policy.
    pub fn own_policy(robot: &str) -> String {
        format!("{POLICY}/{robot}")
    }
}

/// Whether `id` can name a robot: a ROS name token (it becomes a topic
/// segment and a directory name), 1..=64 characters.
pub fn valid_robot_id(id: &str) -> bool {
    let mut c = id.chars();
    id.len() <= 64
        && c.next().is_some_and(|f| f.is_ascii_alphabetic())
        && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
}

/// Whether `id` can name a learner (`fleet.learner`, the id a fleet
/// learner keeps in its shard directory): 1..=64 letters, digits, `_`, `-`.
pub fn valid_learner_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    #[test]
    fn robot_ids_are_name_tokens() {
        for ok in ["r1", "arm_left", "A"] {
            assert!(super::valid_robot_id(ok), "{ok}");
        }
        for bad in ["", "1r", "r-1", "r/1", "../x", &"r".repeat(65)] {
            assert!(!super::valid_robot_id(bad), "{bad}");
        }
    }
}
