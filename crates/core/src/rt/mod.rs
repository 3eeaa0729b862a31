//! What the control thread runs, and the one way data crosses into and out
//! of it.
//!
//! - [`handoff`]: the bounded lock-free hand-off every queue between the
//!   control thread and another thread is an instance of.
//!
//! Real-time promise: after construction nothing here allocates, locks or
//! blocks on the control thread (the counting-allocator tests in
//! `crates/core/tests`).

pub mod handoff;

pub use handoff::Handoff;
