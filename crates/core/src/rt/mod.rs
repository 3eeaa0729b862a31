//! Everything the control thread runs, and the one way data crosses into
//! and out of it.
//!
//! - [`handoff`]: the bounded lock-free hand-off every queue between the
//!   control thread and another thread is an instance of.
//! - [`board`]: the lock-free latest-value board between subscribers and
//!   the loop (seqlock per source, stamped), and the clocks it stamps with.
//! - [`control`]: the tick ([`control::Controller`]): freshness, sample,
//!   e-stop / safe behaviour, warm-up gate, clip, rate limit. Its methods
//!   say which run in the tick, which between ticks and which at set-up.
//! - [`chunk`]: how a chunked policy's chunks are played and joined, how
//!   an observation history is padded.
//! - [`stop`]: what a safe action commands, per interface (the stop's one
//!   owner).
//! - [`decision`]: why a tick's action is what it is (the codes the log
//!   carries).
//! - [`flags`]: the e-stop and the actuation gate, typed: what other
//!   threads set and the tick obeys.
//! - [`clock`]: the loop's time base (the [`clock::Clock`] trait, the
//!   absolute-deadline [`clock::Periodic`] timer).
//! - [`output`]: one tick's output and the queue to the publisher thread.
//! - [`runner`]: the control thread's period: wait, swap, tick, log,
//!   output, and the log inputs it reads.
//! - [`histogram`]: the lock-free wake-up latency histogram.
//!
//! Real-time promise: after construction nothing here allocates, locks or
//! blocks on the control thread, apart from the clock's wait (the
//! counting-allocator tests in `crates/core/tests`: `runner_alloc.rs` over
//! a whole period, `alloc_free.rs` over the sampler, `handoff_alloc.rs`
//! over the hand-off). What runs around it (parameters, hot-swap checks,
//! the log file, the fleet link, scheduling) lives outside `rt`.

pub mod board;
pub mod chunk;
pub mod clock;
pub mod control;
pub mod decision;
pub mod flags;
pub mod handoff;
pub mod histogram;
pub mod output;
pub mod runner;
pub mod stop;

pub use handoff::Handoff;
