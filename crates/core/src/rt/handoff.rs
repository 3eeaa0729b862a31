//! The one bounded hand-off between the control thread and the threads
//! around it (the spin thread, the publisher, the log writer, the
//! subscribers, the parameter service).
//!
//! A [`Handoff`] is a fixed-capacity queue, built once (the only
//! allocation); after that [`Handoff::push`], [`Handoff::push_replacing`]
//! and [`Handoff::pop`] never allocate, never lock and never wait, from
//! any thread. It has the two policies the node uses:
//!
//! - **refuse when full** ([`Handoff::push`]): the newest item is handed
//!   back to the caller and counted ([`Handoff::refused`]); the control
//!   thread's outputs, log records, retired samplers and episode returns;
//! - **replace the oldest** ([`Handoff::push_replacing`]): the oldest item
//!   is displaced and handed back, for the caller to drop where it may
//!   free memory; a one-slot "latest value" (a new sampler, new live
//!   settings) or a stop that must not be the item lost.
//!
//! Like `realtime_tools::RealtimePublisher`, it is the one type every
//! real-time / non-real-time hand-off is an instance of; unlike it, the
//! real-time side never takes a lock, not even a `try_lock`.
//!
//! Real-time: every method but [`Handoff::new`] is lock-free and
//! allocation-free (`crates/core/tests/handoff_alloc.rs`). Dropping an
//! item the queue hands back is the caller's business: a `Sampler`
//! displaced on the control thread is passed on, never dropped there.
//!
//! ```
//! use flowpilot_core::rt::handoff::Handoff;
//!
//! // built once, off the control thread
//! let outputs: Handoff<u32> = Handoff::new(2);
//! // refuse when full: the newest is handed back and counted
//! assert!(outputs.push(1).is_ok());
//! assert!(outputs.push(2).is_ok());
//! assert_eq!(outputs.push(3), Err(3));
//! assert_eq!(outputs.refused(), 1);
//! // replace the oldest: the displaced item comes back to the caller
//! assert_eq!(outputs.push_replacing(4), Some(1));
//! assert_eq!(outputs.pop(), Some(2));
//! assert_eq!(outputs.pop(), Some(4));
//! assert_eq!(outputs.pop(), None);
//!
//! // a one-slot "latest value": a newer offer replaces one not yet taken
//! let latest: Handoff<&str> = Handoff::new(1);
//! assert_eq!(latest.push_replacing("v1"), None);
//! assert_eq!(latest.push_replacing("v2"), Some("v1"));
//! assert_eq!(latest.pop(), Some("v2"));
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;

/// A bounded, lock-free, allocation-free (after [`Self::new`]) queue from
/// one thread to another, with a per-push full policy.
pub struct Handoff<T> {
    queue: ArrayQueue<T>,
    refused: AtomicU64,
}

impl<T> Handoff<T> {
    /// A queue of `capacity` items (at least 1). Allocates: build it
    /// before the control thread starts.
    pub fn new(capacity: usize) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.max(1)),
            refused: AtomicU64::new(0),
        }
    }

    /// Refuse when full: queue `item`, or hand it back (and count it in
    /// [`Self::refused`]) when the queue is full. Lock-free, no allocation.
    pub fn push(&self, item: T) -> Result<(), T> {
        self.queue.push(item).inspect_err(|_| {
            self.refused.fetch_add(1, Ordering::Relaxed);
        })
    }

    /// Replace the oldest: queue `item`; when the queue is full the oldest
    /// item is displaced and returned, for the caller to drop (off the
    /// control thread when dropping frees memory). Lock-free, no allocation.
    pub fn push_replacing(&self, item: T) -> Option<T> {
        self.queue.force_push(item)
    }

    /// The oldest queued item, if any. Lock-free, no allocation.
    pub fn pop(&self) -> Option<T> {
        self.queue.pop()
    }

    /// Pop and drop every queued item; returns how many there were.
    /// Lock-free, no allocation (the items' drops are the caller's
    /// concern: use it on the control thread only for items that own no
    /// heap memory).
    pub fn clear(&self) -> u64 {
        let mut n = 0;
        while self.queue.pop().is_some() {
            n += 1;
        }
        n
    }

    /// Items [`Self::push`] refused because the queue was full.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.queue.is_full()
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }
}

impl<T> std::fmt::Debug for Handoff<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handoff")
            .field("len", &self.len())
            .field("capacity", &self.capacity())
            .field("refused", &self.refused())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn refuse_when_full_hands_back_the_newest_and_counts_it() {
        let q = Handoff::new(3);
        for i in 0..3 {
            assert!(q.push(i).is_ok());
        }
        assert!(q.is_full());
        assert_eq!(q.push(9), Err(9));
        assert_eq!(q.push(10), Err(10));
        assert_eq!(q.refused(), 2);
        assert_eq!(
            (0..3).map(|_| q.pop().unwrap()).collect::<Vec<_>>(),
            [0, 1, 2]
        );
        assert!(q.is_empty());
    }

    #[test]
    fn replace_oldest_hands_back_the_displaced_item_and_counts_nothing() {
        let q = Handoff::new(2);
        assert_eq!(q.push_replacing(1), None);
        assert_eq!(q.push_replacing(2), None);
        assert_eq!(q.push_replacing(3), Some(1));
        assert_eq!(q.refused(), 0);
        assert_eq!(q.len(), 2);
        assert_eq!(q.clear(), 2);
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn zero_capacity_means_one() {
        let q = Handoff::new(0);
        assert_eq!(q.capacity(), 1);
        assert!(q.push(()).is_ok());
    }

    #[test]
    fn one_producer_one_consumer_lose_nothing_they_do_not_count() {
        let q = Arc::new(Handoff::new(8));
        let producer = {
            let q = q.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    let _ = q.push(i);
                }
            })
        };
        let mut got = Vec::new();
        while !producer.is_finished() || !q.is_empty() {
            if let Some(v) = q.pop() {
                got.push(v);
            }
        }
        producer.join().unwrap();
        assert!(got.windows(2).all(|w| w[0] < w[1]), "in order");
        assert_eq!(got.len() as u64 + q.refused(), 10_000);
    }
}
