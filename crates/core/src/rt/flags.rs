//! The two flags other threads set and the control thread obeys: the
//! e-stop ([`EStopFlag`]) and the actuation gate ([`ActuationGate`], the
//! lifecycle's active state). Each is a handle on one shared atomic bool,
//! cloned to whoever sets it; the tick reads each once (one atomic load).
//! Typed so that a gate cannot be passed where an e-stop is meant, and so
//! that the orderings live in one place.
//!
//! Real-time: every method is one atomic operation, no allocation, no
//! lock; only [`EStopFlag::new`] and [`ActuationGate::new`] allocate.
//!
//! ```
//! use flowpilot_core::rt::flags::{ActuationGate, EStopFlag};
//! let estop = EStopFlag::new();
//! let seen_by_the_tick = estop.clone();
//! assert!(!estop.engage(), "was released");
//! assert!(seen_by_the_tick.engaged());
//! assert!(estop.release(), "was engaged");
//! let gate = ActuationGate::new(false);
//! gate.set(true);
//! assert!(gate.is_open());
//! ```

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// The e-stop: engaged, the tick sends the stop and nothing else. The latch
/// that decides when it may be released is `crate::node::estop::EStopLatch`.
#[derive(Debug, Clone, Default)]
pub struct EStopFlag(Arc<AtomicBool>);

impl EStopFlag {
    /// Released.
    pub fn new() -> Self {
        Self::default()
    }

    /// **Any thread, the tick included.**
    pub fn engaged(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// **Any thread.** Engage; returns whether it was engaged already.
    pub fn engage(&self) -> bool {
        self.0.swap(true, Ordering::SeqCst)
    }

    /// **Any thread.** Release; returns whether it was engaged.
    pub fn release(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// Whether the node actuates (lifecycle active). Open: the ticks actuate
/// after the warm-up and the start-up hold, counted anew from opening.
/// Closed: the next tick sends the stop once, then every tick sends
/// nothing (the loop keeps running).
#[derive(Debug, Clone)]
pub struct ActuationGate(Arc<AtomicBool>);

impl ActuationGate {
    pub fn new(open: bool) -> Self {
        Self(Arc::new(AtomicBool::new(open)))
    }

    /// **Any thread, the tick included.**
    pub fn is_open(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// **Any thread.** Open or close; the next tick obeys.
    pub fn set(&self, open: bool) {
        self.0.store(open, Ordering::SeqCst);
    }
}
