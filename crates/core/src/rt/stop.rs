//! What "stop" means for the robot: the one owner of every safe action the
//! node sends, whatever caused it (e-stop, stale or invalid input, lifecycle
//! deactivate, shutdown, the supervisor's watchdog).
//!
//! A command's meaning depends on the interface it drives, so the stop is
//! chosen per action value (the ros2_control conventions):
//! - **position**: hold where the robot *is*: the measured position from
//!   `action.state_source` while that source is fresh, else the last command
//!   sent; with neither, nothing can be held and nothing is sent. Never a
//!   jump to 0 rad.
//! - **velocity**: zero.
//! - **effort**: zero (a gravity-loaded arm needs its own brake or holding
//!   controller: docs/safety.md).
//!
//! Real-time: [`StopRule::fill`] runs inside the control tick: no
//! allocation, no lock. [`StopRule::final_action`] is for the spin thread
//! (shutdown, watchdog) and allocates.
//!
//! ```
//! use flowpilot_core::rt::stop::{Interface, StopKind, StopRule};
//!
//! // joint 0 by position (measured value 1 of the state source), joint 1 by velocity
//! let rule = StopRule::new(vec![Interface::Position, Interface::Velocity], None);
//! let mut out = [9.0, 9.0];
//! // no measurement: the last command sent is held
//! let kind = rule.fill(None, Some(&[0.3, 0.7]), &mut out);
//! assert_eq!((kind, out), (StopKind::HoldCommand, [0.3, 0.0]));
//! ```

use crate::rt::board::{mono_ns, wall_ns, Board};

/// What an action value commands (`action.interface`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interface {
    Position,
    Velocity,
    Effort,
}

impl Interface {
    pub const NAMES: &'static str = "position, velocity or effort";

    pub fn name(self) -> &'static str {
        match self {
            Self::Position => "position",
            Self::Velocity => "velocity",
            Self::Effort => "effort",
        }
    }
}

impl std::str::FromStr for Interface {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "position" => Ok(Self::Position),
            "velocity" => Ok(Self::Velocity),
            "effort" => Ok(Self::Effort),
            o => Err(format!("unknown interface '{o}' ({})", Self::NAMES)),
        }
    }
}

/// Which stop a tick applied (the trace's last value and the log's `stop`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StopKind {
    /// Not a stop: a policy, override or silent tick.
    #[default]
    None,
    /// Position values held at the measured position (others zero).
    HoldMeasured,
    /// Position values held at the last command sent (others zero).
    HoldCommand,
    /// Every value zero (velocity and effort outputs); under stale or
    /// invalid input the rate limit may still be ramping it down.
    Zero,
    /// Nothing sent: `safe_behaviour: stop`, or a position with nothing to
    /// hold (never commanded, never measured).
    Silent,
}

impl StopKind {
    pub fn code(self) -> u8 {
        match self {
            Self::None => 0,
            Self::HoldMeasured => 1,
            Self::HoldCommand => 2,
            Self::Zero => 3,
            Self::Silent => 4,
        }
    }

    /// Whether a command is sent for this stop.
    pub fn sends(self) -> bool {
        matches!(self, Self::HoldMeasured | Self::HoldCommand | Self::Zero)
    }

    /// The codes and their meaning, for the log schema and docs.
    pub fn legend() -> &'static str {
        "0 none, 1 hold at measured position, 2 hold at last command, 3 zero, 4 silent"
    }
}

/// Where the measured positions are on the board: one source, and for each
/// action value the index of its position within that source's values
/// (`None` for values that are not positions).
#[derive(Debug, Clone, PartialEq)]
pub struct StateSource {
    pub source: usize,
    pub index: Vec<Option<usize>>,
}

/// The stop for one output: its interfaces, and where its positions are
/// measured.
#[derive(Debug, Clone, PartialEq)]
pub struct StopRule {
    interfaces: Vec<Interface>,
    state: Option<StateSource>,
}

impl StopRule {
    /// One interface per action value. A state source's `index` has one
    /// entry per action value (checked by the config).
    pub fn new(interfaces: Vec<Interface>, state: Option<StateSource>) -> Self {
        Self { interfaces, state }
    }

    pub fn interfaces(&self) -> &[Interface] {
        &self.interfaces
    }

    /// The board source holding the measured positions, if any.
    pub fn state_source(&self) -> Option<usize> {
        self.state.as_ref().map(|s| s.source)
    }

    /// Whether the rate limit may shape value `i` of a stop: velocity and
    /// effort ramp down under stale or invalid input; a held position is
    /// no motion and is never limited.
    pub fn ramps(&self, i: usize) -> bool {
        self.interfaces.get(i) != Some(&Interface::Position)
    }

    /// The stop into `out`: `measured` is the state source's values while
    /// fresh, `last` the last command sent. Returns what it is; `out` is
    /// meaningful only when [`StopKind::sends`]. No allocation.
    pub fn fill(
        &self,
        measured: Option<&[f64]>,
        last: Option<&[f64]>,
        out: &mut [f64],
    ) -> StopKind {
        let mut kind = StopKind::Zero;
        for (i, (o, itf)) in out.iter_mut().zip(&self.interfaces).enumerate() {
            if *itf != Interface::Position {
                *o = 0.0;
                continue;
            }
            let at = self
                .state
                .as_ref()
                .and_then(|s| s.index.get(i).copied().flatten());
            match (measured, at, last) {
                (Some(m), Some(j), _) if j < m.len() && m[j].is_finite() => {
                    *o = m[j];
                    // Mixed measured/commanded holds report the weaker one.
                    if kind != StopKind::HoldCommand {
                        kind = StopKind::HoldMeasured;
                    }
                }
                (_, _, Some(l)) if i < l.len() => {
                    *o = l[i];
                    kind = StopKind::HoldCommand;
                }
                _ => return StopKind::Silent,
            }
        }
        kind
    }

    /// The stop the spin thread sends when the loop has ended or failed
    /// (shutdown, watchdog): the measured positions if fresh within
    /// `max_age_ns` (and stamped no more than `max_future_ns` ahead), else
    /// the last command the loop recorded in `sent`. Off the control thread
    /// (allocates). `None`: nothing to send.
    pub fn final_action(
        &self,
        board: &Board,
        (max_age_ns, max_future_ns): (i64, i64),
        sent: &Board,
    ) -> Option<(Vec<f64>, StopKind)> {
        let (now_mono, now_wall) = (mono_ns(), wall_ns());
        let measured = self.state.as_ref().and_then(|s| {
            let mut m = vec![0.0; board.width(s.source)];
            let st = board.read_f64(s.source, &mut m, now_mono, now_wall);
            st.fresh(max_age_ns, max_future_ns).then_some(m)
        });
        let mut last = vec![0.0; sent.width(0)];
        let st = sent.read_f64(0, &mut last, now_mono, now_wall);
        let last = (st.ever_written && !st.busy).then_some(last);
        let mut out = vec![0.0; self.interfaces.len()];
        let kind = self.fill(measured.as_deref(), last.as_deref(), &mut out);
        kind.sends().then_some((out, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Interface::*;

    fn arm() -> StopRule {
        // two position joints measured at source values 2 and 0
        StopRule::new(
            vec![Position, Position],
            Some(StateSource {
                source: 0,
                index: vec![Some(2), Some(0)],
            }),
        )
    }

    #[test]
    fn a_position_stop_holds_the_measured_position_never_zero() {
        let mut out = [0.0; 2];
        let k = arm().fill(Some(&[-0.5, 9.0, 0.3]), Some(&[1.0, 1.0]), &mut out);
        assert_eq!((k, out), (StopKind::HoldMeasured, [0.3, -0.5]));
    }

    #[test]
    fn without_a_fresh_measurement_the_last_command_is_held() {
        let mut out = [0.0; 2];
        let k = arm().fill(None, Some(&[0.1, 0.2]), &mut out);
        assert_eq!((k, out), (StopKind::HoldCommand, [0.1, 0.2]));
        // a non-finite measurement is no measurement
        let k = arm().fill(Some(&[f64::NAN, 0.0, 0.3]), Some(&[0.1, 0.2]), &mut out);
        assert_eq!((k, out), (StopKind::HoldCommand, [0.3, 0.2]));
    }

    #[test]
    fn a_position_with_nothing_to_hold_sends_nothing() {
        let mut out = [7.0; 2];
        assert_eq!(arm().fill(None, None, &mut out), StopKind::Silent);
    }

    #[test]
    fn velocity_and_effort_stop_at_zero_and_may_ramp() {
        let r = StopRule::new(vec![Velocity, Effort, Position], None);
        let mut out = [5.0; 3];
        assert_eq!(
            r.fill(None, Some(&[1.0, 2.0, 3.0]), &mut out),
            StopKind::HoldCommand
        );
        assert_eq!(out, [0.0, 0.0, 3.0]);
        assert!(r.ramps(0) && r.ramps(1) && !r.ramps(2));
        let v = StopRule::new(vec![Velocity, Velocity], None);
        assert_eq!(v.fill(None, None, &mut out[..2]), StopKind::Zero);
        assert_eq!(out[..2], [0.0, 0.0]);
    }

    #[test]
    fn the_final_action_reads_the_board_and_the_last_command() {
        let board = Board::new(&[3]);
        let sent = Board::new(&[2]);
        let r = arm();
        // nothing measured, nothing sent: nothing to hold
        assert_eq!(r.final_action(&board, (1_000_000_000, 0), &sent), None);
        sent.write(0, &[0.1, 0.2], None);
        assert_eq!(
            r.final_action(&board, (1_000_000_000, 0), &sent),
            Some((vec![0.1, 0.2], StopKind::HoldCommand))
        );
        board.write(0, &[-0.5, 0.0, 0.3], None);
        assert_eq!(
            r.final_action(&board, (1_000_000_000, 0), &sent),
            Some((vec![0.3, -0.5], StopKind::HoldMeasured))
        );
        // a measurement stamped ahead of the clock is not trusted
        let ahead = crate::rt::board::wall_ns() + 500_000_000;
        board.write(0, &[-0.5, 0.0, 0.3], Some(ahead));
        assert_eq!(
            r.final_action(&board, (1_000_000_000, 50_000_000), &sent),
            Some((vec![0.1, 0.2], StopKind::HoldCommand))
        );
        // a stale measurement gives way to the last command
        board.write(0, &[-0.5, 0.0, 0.3], None);
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert_eq!(
            r.final_action(&board, (1_000_000, 0), &sent),
            Some((vec![0.1, 0.2], StopKind::HoldCommand))
        );
    }
}
