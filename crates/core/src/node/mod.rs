//! The node's non-real-time concerns, around the control thread: its
//! parameters ([`config`]) and their live changes ([`live`]), the managed
//! lifecycle ([`lifecycle`]), the e-stop latch ([`estop`]: the control
//! thread reads only its flag), the stall watchdog ([`watchdog`]), the
//! /diagnostics content ([`diagnostics`]), the checked hot swap of new
//! policy versions ([`hotswap`]) and its return guard ([`guard`]).
//!
//! Not real-time: these run on the spin, parameter-service and diagnostics
//! threads and may allocate. What reaches the control thread goes through
//! [`crate::rt::handoff::Handoff`]s ([`hotswap::SwapChannel`],
//! [`live::LiveChannel`]) or atomics.

pub mod config;
pub mod diagnostics;
pub mod estop;
pub mod guard;
pub mod hotswap;
pub mod lifecycle;
pub mod live;
pub mod watchdog;
