//! The managed-node interface on `lifecycle_msgs`: `~/change_state`,
//! `~/get_state`, `~/get_available_states`, `~/get_available_transitions`,
//! `~/get_transition_graph` and the `~/transition_event` topic, serving
//! core's [`Machine`]. Queries are answered where they arrive; a change of
//! state is queued for the spin loop, which owns the runtime it acts on
//! (see `run_node`: configure builds it, activate and deactivate flip the
//! control thread's gate, cleanup and shutdown stop it). All on the spin
//! thread; nothing here runs on the control thread.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Result;
use crossbeam_queue::ArrayQueue;
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;
use r2r::lifecycle_msgs::msg::{
    State as StateMsg, Transition as TransitionMsg, TransitionDescription, TransitionEvent,
};
use r2r::lifecycle_msgs::srv::{
    ChangeState, GetAvailableStates, GetAvailableTransitions, GetState,
};
use r2r::QosProfile;

use flowpilot_core::node::lifecycle::{Machine, State, Transition, ALL_STATES};

fn state_msg(s: State) -> StateMsg {
    StateMsg {
        id: s.id(),
        label: s.label().into(),
    }
}

fn description(t: Transition, from: State, to: State) -> TransitionDescription {
    TransitionDescription {
        transition: TransitionMsg {
            id: t.id(from),
            label: t.label().into(),
        },
        start_state: state_msg(from),
        goal_state: state_msg(to),
    }
}

/// A query service whose answer does not depend on the request.
fn answer<S>(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    name: &str,
    reply: impl Fn() -> S::Response + 'static,
) -> Result<()>
where
    S: r2r::WrappedServiceTypeSupport + 'static,
{
    let srv = node.create_service::<S>(name, QosProfile::services_default())?;
    spawner.spawn_local(srv.for_each(move |req| {
        let _ = req.respond(reply());
        futures::future::ready(())
    }))?;
    Ok(())
}

/// The lifecycle services and the state they report.
pub(crate) struct LifecycleServer {
    machine: Machine,
    /// What the query services report (they run on the same thread).
    shown: Rc<Cell<State>>,
    changes: Arc<ArrayQueue<r2r::ServiceRequest<ChangeState::Service>>>,
    events: r2r::Publisher<TransitionEvent>,
    clock: r2r::Clock,
}

impl LifecycleServer {
    pub(crate) fn serve(
        node: &mut r2r::Node,
        spawner: &futures::executor::LocalSpawner,
    ) -> Result<Self> {
        let shown = Rc::new(Cell::new(State::Unconfigured));
        let changes = crate::services::queued_service::<ChangeState::Service>(
            node,
            spawner,
            "~/change_state",
            || ChangeState::Response { success: false },
        )?;
        let s = shown.clone();
        answer::<GetState::Service>(node, spawner, "~/get_state", move || GetState::Response {
            current_state: state_msg(s.get()),
        })?;
        answer::<GetAvailableStates::Service>(node, spawner, "~/get_available_states", || {
            GetAvailableStates::Response {
                available_states: ALL_STATES
                    .iter()
                    .map(|(id, label)| StateMsg {
                        id: *id,
                        label: (*label).into(),
                    })
                    .collect(),
            }
        })?;
        let s = shown.clone();
        answer::<GetAvailableTransitions::Service>(
            node,
            spawner,
            "~/get_available_transitions",
            move || {
                let m = Machine::at(s.get());
                GetAvailableTransitions::Response {
                    available_transitions: m
                        .available()
                        .map(|(t, to)| description(t, m.state(), to))
                        .collect(),
                }
            },
        )?;
        answer::<GetAvailableTransitions::Service>(
            node,
            spawner,
            "~/get_transition_graph",
            || GetAvailableTransitions::Response {
                available_transitions: Machine::graph()
                    .map(|(t, from, to)| description(t, from, to))
                    .collect(),
            },
        )?;
        let events = node.create_publisher::<TransitionEvent>(
            "~/transition_event",
            crate::qos::profile(flowpilot_core::contract::qos::TRANSITION_EVENTS),
        )?;
        Ok(Self {
            machine: Machine::new(),
            shown,
            changes,
            events,
            clock: r2r::Clock::create(r2r::ClockType::SystemTime)?,
        })
    }

    /// Take the next queued change request, resolved against the current
    /// state. A request naming an unavailable or unknown transition is
    /// answered `success: false` here (and logged), and the next is taken.
    pub(crate) fn next_request(
        &mut self,
    ) -> Option<(Transition, r2r::ServiceRequest<ChangeState::Service>)> {
        while let Some(req) = self.changes.pop() {
            let t = &req.message.transition;
            match self.machine.resolve(t.id, &t.label) {
                Ok(tr) => return Some((tr, req)),
                Err(e) => {
                    tracing::warn!("lifecycle: {e}");
                    let _ = req.respond(ChangeState::Response { success: false });
                }
            }
        }
        None
    }

    /// Carry out `t` with `work` (the runtime's part; its error fails the
    /// transition and is logged), publishing the two transition events
    /// (into the transition state, out of it) as rcl_lifecycle does.
    /// Returns whether it succeeded.
    pub(crate) fn run(&mut self, t: Transition, work: impl FnOnce() -> Result<()>) -> bool {
        let from = self.machine.state();
        let (via_id, via_label) = t.via();
        let via = StateMsg {
            id: via_id,
            label: via_label.into(),
        };
        self.event(
            TransitionMsg {
                id: t.id(from),
                label: t.label().into(),
            },
            state_msg(from),
            via.clone(),
        );
        let ok = match work() {
            Ok(()) => true,
            Err(e) => {
                tracing::error!("lifecycle {}: {e:#}", t.label());
                false
            }
        };
        let to = self.machine.finish(t, ok);
        self.shown.set(to);
        self.event(
            TransitionMsg {
                id: t.outcome_id(ok),
                label: if ok {
                    "transition_success"
                } else {
                    "transition_failure"
                }
                .into(),
            },
            via,
            state_msg(to),
        );
        tracing::info!(
            "lifecycle: {} {} ({} -> {})",
            t.label(),
            if ok { "done" } else { "failed" },
            from.label(),
            to.label()
        );
        ok
    }

    fn event(&mut self, transition: TransitionMsg, start_state: StateMsg, goal_state: StateMsg) {
        let timestamp = self
            .clock
            .get_now()
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let _ = self.events.publish(&TransitionEvent {
            timestamp,
            transition,
            start_state,
            goal_state,
        });
    }
}
