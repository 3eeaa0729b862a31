//! What one tick sends out: the fixed-size [`Outgoing`] copy of a tick's
//! result and the [`OutputQueue`] that carries it from the control thread
//! to the publisher thread (a [`Handoff`]; a stop preempts what is queued).
//!
//! Real-time: `OutputQueue::push` runs in the tick (lock-free, no
//! allocation); [`OutputQueue::pop`] and the counters are the publisher's
//! and the diagnostics'.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use crate::log::MAX_ACT;
use crate::rt::control::TickOut;
use crate::rt::handoff::Handoff;

/// Most sources (observations + goals) an [`Outgoing`] record carries.
pub const MAX_SOURCES: usize = 16;
/// Largest chunk (steps × values) an output carries as a trajectory.
pub const MAX_TRAJECTORY: usize = 256;

/// One tick's output, copied (no allocation) from the control thread to the
/// publisher thread.
#[derive(Clone, Copy, Debug)]
pub struct Outgoing {
    tick: u64,
    decision: u8,
    publish: bool,
    log_prob: f32,
    stop: u8,
    n_act: usize,
    action: [f64; MAX_ACT],
    n_src: usize,
    stamps: [i64; MAX_SOURCES],
    n_traj: usize,
    trajectory: [f64; MAX_TRAJECTORY],
}

impl Outgoing {
    /// Copy a tick's result (in the tick: no allocation).
    pub(in crate::rt) fn of(out: &TickOut<'_>) -> Self {
        let mut o = Self {
            tick: out.tick,
            decision: out.decision.code(),
            publish: out.publish,
            log_prob: out.log_prob,
            stop: out.stop.code(),
            n_act: out.action.len().min(MAX_ACT),
            action: [0.0; MAX_ACT],
            n_src: out.stamps.len().min(MAX_SOURCES),
            stamps: [0; MAX_SOURCES],
            n_traj: out.trajectory.len().min(MAX_TRAJECTORY),
            trajectory: [0.0; MAX_TRAJECTORY],
        };
        o.action[..o.n_act].copy_from_slice(&out.action[..o.n_act]);
        o.stamps[..o.n_src].copy_from_slice(&out.stamps[..o.n_src]);
        o.trajectory[..o.n_traj].copy_from_slice(&out.trajectory[..o.n_traj]);
        o
    }
    pub fn tick(&self) -> u64 {
        self.tick
    }
    /// The decision code (see `Decision::code`).
    pub fn decision(&self) -> u8 {
        self.decision
    }
    /// Whether the action is to be sent this tick.
    pub fn publish(&self) -> bool {
        self.publish
    }
    pub fn log_prob(&self) -> f32 {
        self.log_prob
    }
    /// Which stop the tick applied (`StopKind::code`; 0: not a stop).
    pub fn stop(&self) -> u8 {
        self.stop
    }
    /// The action, physical units.
    pub fn action(&self) -> &[f64] {
        &self.action[..self.n_act]
    }
    /// Header stamps (wall ns, 0 if none) of each source used.
    pub fn stamps(&self) -> &[i64] {
        &self.stamps[..self.n_src]
    }
    /// A new chunk whole, step-major (`chunk.as_trajectory`; empty on other
    /// ticks): sent as one multi-point trajectory instead of `action`.
    pub fn trajectory(&self) -> &[f64] {
        &self.trajectory[..self.n_traj]
    }
}

/// The bounded, lock-free queue from the control thread to the publisher
/// (a [`Handoff`]). A full queue refuses the newest policy output and
/// counts it, never blocks. A stop preempts: the outputs still queued
/// before it are discarded (and counted), so nothing the policy decided
/// earlier reaches the robot after the stop, and the stop itself is never
/// the entry dropped.
pub struct OutputQueue {
    queue: Handoff<Outgoing>,
    preempted: AtomicU64,
    /// CLOCK_MONOTONIC ns of the publisher's last pop (its heartbeat).
    last_pop_ns: AtomicI64,
    /// When the publish call in progress began (0: none): tells a publisher
    /// blocked inside the middleware from one that is not scheduled.
    send_since_ns: AtomicI64,
    /// The longest one publish call has taken (ns).
    slowest_send_ns: AtomicI64,
}

impl OutputQueue {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            queue: Handoff::new(capacity),
            preempted: AtomicU64::new(0),
            last_pop_ns: AtomicI64::new(crate::rt::board::mono_ns()),
            send_since_ns: AtomicI64::new(0),
            slowest_send_ns: AtomicI64::new(0),
        })
    }
    /// Control thread: lock-free, no allocation.
    pub(in crate::rt) fn push(&self, o: Outgoing) {
        if o.stop != 0 {
            // Only the publisher pops concurrently: what it already took
            // goes out before this stop, and after the drain there is room
            // (replacing the oldest all the same, should there not be).
            self.preempted
                .fetch_add(self.queue.clear(), Ordering::Relaxed);
            self.queue.push_replacing(o);
        } else {
            // refused when full: counted by the queue (`dropped`)
            let _ = self.queue.push(o);
        }
    }
    /// Publisher thread.
    pub fn pop(&self) -> Option<Outgoing> {
        self.last_pop_ns
            .store(crate::rt::board::mono_ns(), Ordering::Relaxed);
        self.queue.pop()
    }
    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
    /// Publisher thread: `send` (one output's publish calls), timed, so that
    /// a stall can say whether the thread was inside the middleware.
    pub fn timed_send<R>(&self, send: impl FnOnce() -> R) -> R {
        let t0 = crate::rt::board::mono_ns().max(1);
        self.send_since_ns.store(t0, Ordering::Relaxed);
        let r = send();
        let took = crate::rt::board::mono_ns() - t0;
        self.send_since_ns.store(0, Ordering::Relaxed);
        self.slowest_send_ns.fetch_max(took, Ordering::Relaxed);
        r
    }
    /// How long the publish call in progress has run (ns; 0 when none).
    pub fn in_send_ns(&self, now_mono: i64) -> i64 {
        match self.send_since_ns.load(Ordering::Relaxed) {
            0 => 0,
            t0 => (now_mono - t0).max(0),
        }
    }
    /// The longest one publish call has taken so far (ns).
    pub fn slowest_send_ns(&self) -> i64 {
        self.slowest_send_ns.load(Ordering::Relaxed)
    }
    /// Outputs dropped because the publisher fell behind.
    pub fn dropped(&self) -> u64 {
        self.queue.refused()
    }
    /// Queued outputs a stop discarded before they were published.
    pub fn preempted(&self) -> u64 {
        self.preempted.load(Ordering::Relaxed)
    }
    /// How long outputs have waited for a publisher that has not popped
    /// (ns; 0 when nothing waits): the publisher thread's stall measure.
    pub fn waiting_ns(&self, now_mono: i64) -> i64 {
        if self.queue.is_empty() {
            return 0;
        }
        (now_mono - self.last_pop_ns.load(Ordering::Relaxed)).max(0)
    }
}
