//! The e-stop rule: stop is latched, release is a separate, deliberate act.
//!
//! As on industrial arms (ISO 13850) and in ros2_control's split of
//! "stop" from "reset", engaging is easy and immediate from any input, and
//! nothing that merely stops saying "stop" moves the robot again:
//!
//! - `true` on the `~/estop` topic, or the `~/estop` service with `true`,
//!   engages the stop. It stays engaged whatever arrives afterwards.
//! - `false` on the topic releases nothing: it only withdraws the topic's
//!   demand for a stop.
//! - `~/reset_estop` (the deliberate reset) releases the stop, and is
//!   refused while the topic still demands one (its latest message was
//!   `true`): a latched `true` must be withdrawn with a fresh `false` first.
//!
//! The latch owns the flag that the control thread reads once per tick
//! ([`EStopFlag`]: one atomic load, the only part that touches the
//! real-time path). Everything else here runs on the spin thread.

use crate::rt::flags::EStopFlag;

/// What a request did to the latch, for the caller to log and answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The stop was released: it is now engaged.
    Engaged,
    /// The stop was engaged already: nothing changed.
    AlreadyEngaged,
    /// The topic withdrew its demand; the stop stays engaged until a reset.
    Withdrawn,
    /// Nothing to do (a `false` while no stop is engaged or demanded).
    NoChange,
    /// The reset released the stop.
    Released,
}

/// A reset that was refused, and why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ResetRefused {
    #[error("the ~/estop topic still demands a stop: publish false there first, then reset")]
    TopicDemandsStop,
}

/// The latched e-stop. One per node; cheap to query from any thread
/// through [`EStopLatch::flag`].
#[derive(Debug)]
pub struct EStopLatch {
    engaged: EStopFlag,
    /// The latest `~/estop` topic message was `true`.
    topic_demands: bool,
}

impl EStopLatch {
    /// A latch over the controller's e-stop flag (released at start).
    pub fn new(flag: EStopFlag) -> Self {
        flag.release();
        Self {
            engaged: flag,
            topic_demands: false,
        }
    }

    /// The flag the control thread obeys.
    pub fn flag(&self) -> &EStopFlag {
        &self.engaged
    }

    pub fn engaged(&self) -> bool {
        self.engaged.engaged()
    }

    /// Whether the topic's latest message demands a stop.
    pub fn topic_demands(&self) -> bool {
        self.topic_demands
    }

    /// A `std_msgs/Bool` on the `~/estop` topic (any QoS).
    pub fn topic(&mut self, stop: bool) -> Outcome {
        let was_demanding = std::mem::replace(&mut self.topic_demands, stop);
        if stop {
            self.engage()
        } else if was_demanding && self.engaged() {
            Outcome::Withdrawn
        } else {
            Outcome::NoChange
        }
    }

    /// Engage (the `~/estop` service with `true`, or the topic's `true`).
    pub fn engage(&mut self) -> Outcome {
        if self.engaged.engage() {
            Outcome::AlreadyEngaged
        } else {
            Outcome::Engaged
        }
    }

    /// The deliberate reset (`~/reset_estop`).
    pub fn reset(&mut self) -> Result<Outcome, ResetRefused> {
        if self.topic_demands {
            return Err(ResetRefused::TopicDemandsStop);
        }
        Ok(if self.engaged.release() {
            Outcome::Released
        } else {
            Outcome::NoChange
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latch() -> EStopLatch {
        EStopLatch::new(EStopFlag::new())
    }

    #[test]
    fn a_false_on_the_topic_never_releases() {
        let mut l = latch();
        assert_eq!(l.topic(true), Outcome::Engaged);
        assert_eq!(l.topic(false), Outcome::Withdrawn);
        assert!(l.engaged(), "only the reset releases");
        assert_eq!(l.topic(false), Outcome::NoChange);
        assert!(l.engaged());
    }

    #[test]
    fn reset_is_refused_while_the_topic_demands_a_stop() {
        let mut l = latch();
        l.topic(true);
        assert_eq!(l.reset(), Err(ResetRefused::TopicDemandsStop));
        assert!(l.engaged());
        l.topic(false);
        assert_eq!(l.reset(), Ok(Outcome::Released));
        assert!(!l.engaged());
        assert_eq!(l.reset(), Ok(Outcome::NoChange));
    }

    #[test]
    fn service_engage_is_released_by_reset_alone() {
        let mut l = latch();
        assert_eq!(l.engage(), Outcome::Engaged);
        assert_eq!(l.engage(), Outcome::AlreadyEngaged);
        assert_eq!(
            l.topic(false),
            Outcome::NoChange,
            "the topic never engaged it"
        );
        assert!(l.engaged());
        assert_eq!(l.reset(), Ok(Outcome::Released));
        assert!(!l.flag().engaged(), "the control thread's flag follows");
    }
}
