//! The node's services and e-stop: the latched `~/estop` topic and the
//! `~/estop` SetBool service (both only flip an atomic the control thread
//! reads), and the queued `~/rollback` and `~/finetune` services, whose
//! requests the spin thread answers between spins (it owns the hot swap and
//! the learner they act on). Nothing here runs on the control thread.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use crossbeam_queue::ArrayQueue;
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;
use r2r::std_srvs::srv::{SetBool, Trigger};
use r2r::QosProfile;

use flowpilot_core::hotswap::{HotSwap, SwapChannel};

use crate::learner::Learner;

/// E-stop: a latched Bool topic and a SetBool service, both setting `estop`.
pub(crate) fn serve_estop(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    estop: &Arc<AtomicBool>,
) -> Result<()> {
    let estop_q = QosProfile::default()
        .reliable()
        .transient_local()
        .keep_last(1);
    let estop_topic = node.subscribe::<r2r::std_msgs::msg::Bool>("~/estop", estop_q)?;
    let e = estop.clone();
    spawner.spawn_local(estop_topic.for_each(move |m| {
        if e.swap(m.data, Ordering::SeqCst) != m.data {
            tracing::warn!(engaged = m.data, "e-stop (topic)");
        }
        futures::future::ready(())
    }))?;
    let estop_srv =
        node.create_service::<SetBool::Service>("~/estop", QosProfile::services_default())?;
    let e = estop.clone();
    spawner.spawn_local(estop_srv.for_each(move |req| {
        let on = req.message.data;
        e.store(on, Ordering::SeqCst);
        tracing::warn!(engaged = on, "e-stop (service)");
        let msg = if on {
            "e-stop engaged: publishing zero"
        } else {
            "e-stop released"
        };
        let _ = req.respond(SetBool::Response {
            success: true,
            message: msg.into(),
        });
        futures::future::ready(())
    }))?;
    Ok(())
}

/// A service whose requests are queued for the spin loop (which owns the
/// state they act on); when 4 are already waiting, a request is answered
/// with `busy()` at once.
fn queued_service<S>(
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

/// `~/rollback` (Trigger) and `~/finetune` (SetBool), answered by
/// [`Requests::serve`].
pub(crate) struct Requests {
    rollback: Arc<ArrayQueue<r2r::ServiceRequest<Trigger::Service>>>,
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
    pub(crate) fn serve(
        &mut self,
        hot: Option<&mut HotSwap>,
        chan: &SwapChannel,
        mut learner: Option<&mut Learner>,
    ) {
        if let Some(h) = hot {
            while let Some(req) = self.rollback.pop() {
                let (success, message) = match h.rollback(chan) {
                    Ok(m) => (true, m),
                    Err(e) => (false, e.to_string()),
                };
                let _ = req.respond(Trigger::Response { success, message });
            }
        } else {
            while let Some(req) = self.rollback.pop() {
                let _ = req.respond(Trigger::Response {
                    success: false,
                    message: "hot swap is off (set hot_swap.dir)".into(),
                });
            }
        }
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
