//! The managed-node (lifecycle) state machine of ROS 2's node lifecycle
//! design, as `lifecycle_msgs` numbers it: the four primary states, the
//! transitions between them, which transition a request names (by label or
//! id) from the current state, and what a transition event reports. Pure
//! logic with no ROS types; flowpilot-ros `lifecycle` serves it on the
//! standard services. Never on the control thread.
//!
//! ```
//! use flowpilot_core::node::lifecycle::{Machine, State, Transition};
//! let mut m = Machine::new();
//! let t = m.resolve(0, "configure").unwrap();
//! assert_eq!(t, Transition::Configure);
//! assert_eq!(m.finish(t, true), State::Inactive);
//! assert!(m.resolve(0, "cleanup").is_ok() && m.resolve(0, "deactivate").is_err());
//! ```

/// A primary state (`lifecycle_msgs/State` ids 1–4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Unconfigured,
    Inactive,
    Active,
    Finalized,
}

impl State {
    pub fn id(self) -> u8 {
        match self {
            State::Unconfigured => 1,
            State::Inactive => 2,
            State::Active => 3,
            State::Finalized => 4,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            State::Unconfigured => "unconfigured",
            State::Inactive => "inactive",
            State::Active => "active",
            State::Finalized => "finalized",
        }
    }
}

/// Every state a lifecycle node reports in `~/get_available_states`: the
/// primary ones, then the transition states (ids 10–15), as (id, label).
pub const ALL_STATES: [(u8, &str); 10] = [
    (1, "unconfigured"),
    (2, "inactive"),
    (3, "active"),
    (4, "finalized"),
    (10, "configuring"),
    (11, "cleaningup"),
    (12, "shuttingdown"),
    (13, "activating"),
    (14, "deactivating"),
    (15, "errorprocessing"),
];

/// A transition a client may request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Configure,
    Cleanup,
    Activate,
    Deactivate,
    Shutdown,
}

impl Transition {
    pub fn label(self) -> &'static str {
        match self {
            Transition::Configure => "configure",
            Transition::Cleanup => "cleanup",
            Transition::Activate => "activate",
            Transition::Deactivate => "deactivate",
            Transition::Shutdown => "shutdown",
        }
    }

    /// The transition state it passes through, as (id, label).
    pub fn via(self) -> (u8, &'static str) {
        match self {
            Transition::Configure => (10, "configuring"),
            Transition::Cleanup => (11, "cleaningup"),
            Transition::Shutdown => (12, "shuttingdown"),
            Transition::Activate => (13, "activating"),
            Transition::Deactivate => (14, "deactivating"),
        }
    }

    /// Its `lifecycle_msgs/Transition` id from `from` (shutdown has one per
    /// primary state it leaves).
    pub fn id(self, from: State) -> u8 {
        match (self, from) {
            (Transition::Configure, _) => 1,
            (Transition::Cleanup, _) => 2,
            (Transition::Activate, _) => 3,
            (Transition::Deactivate, _) => 4,
            (Transition::Shutdown, State::Inactive) => 6,
            (Transition::Shutdown, State::Active) => 7,
            (Transition::Shutdown, _) => 5,
        }
    }

    /// The id of its outcome (`TRANSITION_ON_<X>_SUCCESS` / `_FAILURE`),
    /// reported when the transition state is left.
    pub fn outcome_id(self, ok: bool) -> u8 {
        let base = match self {
            Transition::Configure => 10,
            Transition::Cleanup => 20,
            Transition::Activate => 30,
            Transition::Deactivate => 40,
            Transition::Shutdown => 50,
        };
        if ok {
            base
        } else {
            base + 1
        }
    }

    /// Where it leads from `from`, or None where it is not available.
    pub fn goal(self, from: State) -> Option<State> {
        use State::*;
        match (self, from) {
            (Transition::Configure, Unconfigured) => Some(Inactive),
            (Transition::Cleanup, Inactive) => Some(Unconfigured),
            (Transition::Activate, Inactive) => Some(Active),
            (Transition::Deactivate, Active) => Some(Inactive),
            (Transition::Shutdown, Unconfigured | Inactive | Active) => Some(Finalized),
            _ => None,
        }
    }
}

const TRANSITIONS: [Transition; 5] = [
    Transition::Configure,
    Transition::Cleanup,
    Transition::Activate,
    Transition::Deactivate,
    Transition::Shutdown,
];

/// Why a requested transition was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("unknown transition {0:?}")]
    Unknown(String),
    #[error("transition '{transition}' is not available from state '{from}'")]
    NotAvailable {
        transition: &'static str,
        from: &'static str,
    },
}

/// The node's current primary state.
#[derive(Debug)]
pub struct Machine {
    state: State,
}

impl Default for Machine {
    fn default() -> Self {
        Self::new()
    }
}

impl Machine {
    pub fn new() -> Self {
        Self {
            state: State::Unconfigured,
        }
    }

    /// A machine in `state` (what a query about that state's transitions
    /// needs).
    pub fn at(state: State) -> Self {
        Self { state }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// The transition a `ChangeState` request names: by label when it has
    /// one (as rclcpp does, so `ros2 lifecycle set node configure` works),
    /// else by id; refused when not available from the current state.
    pub fn resolve(&self, id: u8, label: &str) -> Result<Transition, LifecycleError> {
        let from = self.state;
        let t = if label.is_empty() {
            TRANSITIONS.into_iter().find(|t| t.id(from) == id)
        } else {
            TRANSITIONS.into_iter().find(|t| t.label() == label)
        }
        .ok_or_else(|| {
            LifecycleError::Unknown(if label.is_empty() {
                id.to_string()
            } else {
                label.to_string()
            })
        })?;
        match t.goal(from) {
            Some(_) => Ok(t),
            None => Err(LifecycleError::NotAvailable {
                transition: t.label(),
                from: from.label(),
            }),
        }
    }

    /// The transitions available now, with their goals.
    pub fn available(&self) -> impl Iterator<Item = (Transition, State)> + '_ {
        TRANSITIONS
            .into_iter()
            .filter_map(|t| t.goal(self.state).map(|g| (t, g)))
    }

    /// Every transition of the graph as (transition, from, to): what
    /// `~/get_transition_graph` lists.
    pub fn graph() -> impl Iterator<Item = (Transition, State, State)> {
        use State::*;
        [Unconfigured, Inactive, Active]
            .into_iter()
            .flat_map(|from| {
                TRANSITIONS
                    .into_iter()
                    .filter_map(move |t| t.goal(from).map(|g| (t, from, g)))
            })
    }

    /// End a resolved transition: on success the node is in its goal, on
    /// failure back where it started (a failed configure leaves it
    /// unconfigured). Returns the new state.
    pub fn finish(&mut self, t: Transition, ok: bool) -> State {
        if ok {
            if let Some(g) = t.goal(self.state) {
                self.state = g;
            }
        }
        self.state
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_graph_from_each_primary_state() {
        let mut m = Machine::new();
        let labels = |m: &Machine| m.available().map(|(t, _)| t.label()).collect::<Vec<_>>();
        assert_eq!(labels(&m), ["configure", "shutdown"]);
        m.finish(Transition::Configure, true);
        assert_eq!(m.state(), State::Inactive);
        assert_eq!(labels(&m), ["cleanup", "activate", "shutdown"]);
        m.finish(Transition::Activate, true);
        assert_eq!(labels(&m), ["deactivate", "shutdown"]);
        assert_eq!(Transition::Shutdown.id(m.state()), 7);
        m.finish(Transition::Shutdown, true);
        assert_eq!(m.state(), State::Finalized);
        assert_eq!(labels(&m), Vec::<&str>::new());
        assert_eq!(Machine::graph().count(), 7);
    }

    #[test]
    fn requests_resolve_by_label_first_then_id_and_unavailable_ones_are_refused() {
        let mut m = Machine::new();
        assert_eq!(m.resolve(1, ""), Ok(Transition::Configure));
        assert_eq!(m.resolve(3, "configure"), Ok(Transition::Configure));
        assert_eq!(m.resolve(5, ""), Ok(Transition::Shutdown));
        assert_eq!(
            m.resolve(0, "activate"),
            Err(LifecycleError::NotAvailable {
                transition: "activate",
                from: "unconfigured"
            })
        );
        assert!(matches!(
            m.resolve(0, "configur"),
            Err(LifecycleError::Unknown(_))
        ));
        assert!(matches!(m.resolve(99, ""), Err(LifecycleError::Unknown(_))));
        m.finish(Transition::Configure, true);
        // shutdown's id depends on the state it leaves
        assert_eq!(m.resolve(6, ""), Ok(Transition::Shutdown));
        assert!(m.resolve(5, "").is_err());
    }

    #[test]
    fn a_failed_transition_stays_where_it_started() {
        let mut m = Machine::new();
        assert_eq!(m.finish(Transition::Configure, false), State::Unconfigured);
        m.finish(Transition::Configure, true);
        assert_eq!(m.finish(Transition::Activate, false), State::Inactive);
        assert_eq!(Transition::Activate.outcome_id(false), 31);
    }
}
