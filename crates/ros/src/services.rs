//! The node's services and e-stop: the `~/estop` topic (three
//! subscriptions, so that every common publisher QoS reaches it and every
//! reliable publisher's lost packets are retransmitted), the `~/estop` SetBool
//! and `~/reset_estop` Trigger services, all applying core's
//! [`EStopLatch`] rule (engage at once, release only by a deliberate reset)
//! to the atomic the control thread reads; and the queued `~/rollback`,
//! `~/keep_best` and `~/finetune` services, whose requests the spin thread answers between
//! spins (it owns the hot swap and the learner they act on). Nothing here
//! runs on the control thread.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Result;
use crossbeam_queue::ArrayQueue;
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;
use r2r::std_srvs::srv::{SetBool, Trigger};
use r2r::QosProfile;

use flowpilot_core::node::estop::{EStopLatch, Outcome};
use flowpilot_core::node::hotswap::{HotSwap, SwapChannel};

use crate::learner::Learner;

/// Log an e-stop event (the latch says what changed).
fn note(outcome: Outcome, by: &str) {
    match outcome {
        Outcome::Engaged => tracing::warn!("e-stop engaged ({by})"),
        Outcome::Withdrawn => {
            tracing::warn!("e-stop demand withdrawn ({by}); still engaged until ~/reset_estop")
        }
        Outcome::Released => tracing::warn!("e-stop released ({by})"),
        Outcome::AlreadyEngaged | Outcome::NoChange => {}
    }
}

/// E-stop inputs, all on the spin thread, all through one latch.
///
/// The topic is subscribed three times, because a DDS writer and reader
/// match only when the reader asks for no more than the writer offers
/// (reliability, durability), and a writer retransmits lost samples only
/// to a reliable reader:
///
/// - BEST_EFFORT + VOLATILE matches every writer, so a best-effort joystick
///   reaches the node. Alone, it would take even a reliable writer's
///   samples best-effort: a one-shot `true` lost on the wire would be gone.
/// - RELIABLE + VOLATILE matches every reliable writer, volatile or
///   transient-local: the default QoS of `ros2 topic pub --once` and of most
///   teleop nodes. A lost `true` is retransmitted (docs/safety.md, "E-stop
///   delivery under packet loss").
/// - RELIABLE + TRANSIENT_LOCAL matches only transient-local writers, and
///   also receives a latched `true` published before this node started.
///
/// A sample seen by several readers is applied once per reader, which the
/// latch makes harmless: engaging is idempotent, and no topic message can
/// release. A `false`, however late it arrives on whichever reader, only
/// withdraws the topic's demand; release is only `~/reset_estop`. (Each
/// reader keeps a writer's order, and a reliable reader delivers all of
/// it, so once the streams settle the demand is the writer's latest word.)
pub(crate) fn serve_estop(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    latch: EStopLatch,
) -> Result<()> {
    let latch = Rc::new(RefCell::new(latch));
    use flowpilot_core::contract::qos::{ESTOP_BEST_EFFORT, ESTOP_LATCHED, ESTOP_RELIABLE};
    let readers = [ESTOP_BEST_EFFORT, ESTOP_RELIABLE, ESTOP_LATCHED].map(crate::qos::profile);
    for qos in readers {
        let topic = node.subscribe::<r2r::std_msgs::msg::Bool>("~/estop", qos)?;
        let l = latch.clone();
        spawner.spawn_local(topic.for_each(move |m| {
            note(l.borrow_mut().topic(m.data), "topic");
            futures::future::ready(())
        }))?;
    }
    let engage =
        node.create_service::<SetBool::Service>("~/estop", QosProfile::services_default())?;
    let l = latch.clone();
    spawner.spawn_local(engage.for_each(move |req| {
        let resp = if req.message.data {
            note(l.borrow_mut().engage(), "service");
            SetBool::Response {
                success: true,
                message: "e-stop engaged: publishing the stop until ~/reset_estop".into(),
            }
        } else {
            SetBool::Response {
                success: false,
                message: "the e-stop is released only by ~/reset_estop (std_srvs/Trigger)".into(),
            }
        };
        let _ = req.respond(resp);
        futures::future::ready(())
    }))?;
    let reset =
        node.create_service::<Trigger::Service>("~/reset_estop", QosProfile::services_default())?;
    let l = latch.clone();
    spawner.spawn_local(reset.for_each(move |req| {
        let resp = match l.borrow_mut().reset() {
            Ok(outcome) => {
                note(outcome, "~/reset_estop");
                Trigger::Response {
                    success: true,
                    message: match outcome {
                        Outcome::Released => "e-stop released".into(),
                        _ => "e-stop was not engaged".into(),
                    },
                }
            }
            Err(e) => {
                tracing::warn!("e-stop reset refused: {e}");
                Trigger::Response {
                    success: false,
                    message: e.to_string(),
                }
            }
        };
        let _ = req.respond(resp);
        futures::future::ready(())
    }))?;
    Ok(())
}

/// A service whose requests are queued for the spin loop (which owns the
/// state they act on); when 4 are already waiting, a request is answered
/// with `busy()` at once.
pub(crate) fn queued_service<S>(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    name: &str,
    busy: impl Fn() -> S::Response + 'static,
) -> Result<Arc<ArrayQueue<r2r::ServiceRequest<S>>>>
where
    S: r2r::WrappedServiceTypeSupport + 'static,
{
    let srv = node.create_service::<S>(name, QosProfile::services_default())?;
    let queue = Arc::new(ArrayQueue::new(4));
    let q = queue.clone();
    spawner.spawn_local(srv.for_each(move |req| {
        if let Err(req) = q.push(req) {
            let _ = req.respond(busy());
        }
        futures::future::ready(())
    }))?;
    Ok(queue)
}

/// `~/rollback` and `~/keep_best` (Trigger), and `~/finetune` (SetBool).
pub(crate) struct Requests {
    rollback: Arc<ArrayQueue<r2r::ServiceRequest<Trigger::Service>>>,
    keep_best: Arc<ArrayQueue<r2r::ServiceRequest<Trigger::Service>>>,
    finetune: Arc<ArrayQueue<r2r::ServiceRequest<SetBool::Service>>>,
    /// A stop request answered once the learner has exited.
    pending_stop: Option<r2r::ServiceRequest<SetBool::Service>>,
}

impl Requests {
    pub(crate) fn new(
        node: &mut r2r::Node,
        spawner: &futures::executor::LocalSpawner,
    ) -> Result<Self> {
        Ok(Self {
            rollback: queued_service::<Trigger::Service>(node, spawner, "~/rollback", || {
                Trigger::Response {
                    success: false,
                    message: "busy".into(),
                }
            })?,
            keep_best: queued_service::<Trigger::Service>(node, spawner, "~/keep_best", || {
                Trigger::Response {
                    success: false,
                    message: "busy".into(),
                }
            })?,
            finetune: queued_service::<SetBool::Service>(node, spawner, "~/finetune", || {
                SetBool::Response {
                    success: false,
                    message: "busy".into(),
                }
            })?,
            pending_stop: None,
        })
    }

    /// Answer what is queued. Never blocks: a learner stop is answered on a
    /// later call, once the learner has exited (it writes a last checkpoint
    /// first).
    /// `~/rollback` and `~/keep_best` requests, answered by the hot swap
    /// (the spin thread calls this only when the worker is not validating:
    /// until then they wait in their queues).
    pub(crate) fn serve_swap_requests(&mut self, hot: &mut HotSwap, chan: &SwapChannel) {
        for (queue, rollback) in [(&self.rollback, true), (&self.keep_best, false)] {
            while let Some(req) = queue.pop() {
                let done = if rollback {
                    hot.rollback(chan)
                } else {
                    hot.keep_best(chan)
                };
                let (success, message) = match done {
                    Ok(m) => (true, m),
                    Err(e) => (false, e.to_string()),
                };
                let _ = req.respond(Trigger::Response { success, message });
            }
        }
    }

    /// `~/rollback` and `~/keep_best` requests while hot swap is off.
    pub(crate) fn refuse_swap_requests(&mut self) {
        for queue in [&self.rollback, &self.keep_best] {
            while let Some(req) = queue.pop() {
                let _ = req.respond(Trigger::Response {
                    success: false,
                    message: "hot swap is off (set hot_swap.dir)".into(),
                });
            }
        }
    }

    /// `~/finetune` requests (the learner is the spin thread's own).
    pub(crate) fn serve_finetune(&mut self, mut learner: Option<&mut Learner>) {
        if let (Some(req), Some(l)) = (self.pending_stop.take(), learner.as_deref_mut()) {
            match l.stop_progress() {
                Some(message) => {
                    let _ = req.respond(SetBool::Response {
                        success: true,
                        message,
                    });
                }
                None => self.pending_stop = Some(req),
            }
        }
        while let Some(req) = self.finetune.pop() {
            let (success, message) = match (learner.as_deref_mut(), req.message.data) {
                (None, _) => (
                    false,
                    "fine-tuning needs log.dir and hot_swap.dir".to_string(),
                ),
                _ if self.pending_stop.is_some() => (false, "the learner is stopping".to_string()),
                (Some(l), true) => match l.start() {
                    Ok(m) => (true, m),
                    Err(e) => (false, format!("{e:#}")),
                },
                (Some(l), false) => {
                    if l.request_stop() {
                        self.pending_stop = Some(req);
                        continue;
                    }
                    (true, "no learner running".to_string())
                }
            };
            let _ = req.respond(SetBool::Response { success, message });
        }
    }
}
