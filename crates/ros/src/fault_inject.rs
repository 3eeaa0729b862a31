//! Test-only fault injection for the control thread, so that the fault
//! matrix can prove the supervisor (a panic, a stall) on the real node:
//! `FLOWPILOT_FAULT_INJECT=panic@N` panics the control thread at tick N,
//! `stall@N` stops it ticking at tick N (it still honours shutdown),
//! `hang@N` stops it for good (a thread that never returns, shutdown or
//! not), `pubstall@N` stops the publisher thread at its N-th output.
//! Unset on a robot; the node warns loudly when it is set. Read once at
//! start-up; when unset the control thread runs `Runner::run` untouched.

use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Result};

use flowpilot_core::rt::clock::Clock;
use flowpilot_core::rt::control::Controller;
use flowpilot_core::rt::runner::Runner;

/// The environment variable that asks for a fault.
const VAR: &str = "FLOWPILOT_FAULT_INJECT";

#[derive(Debug, Clone, Copy)]
enum Kind {
    Panic,
    Stall,
    Hang,
    PubStall,
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Injection {
    kind: Kind,
    at_tick: u64,
}

/// The injection asked for, if any; a malformed value is an error.
pub(crate) fn from_env() -> Result<Option<Injection>> {
    let Ok(v) = std::env::var(VAR) else {
        return Ok(None);
    };
    let Some((kind, at)) = v.split_once('@') else {
        bail!("{VAR}='{v}': expected panic@N, stall@N, hang@N or pubstall@N");
    };
    let kind = match kind {
        "panic" => Kind::Panic,
        "stall" => Kind::Stall,
        "hang" => Kind::Hang,
        "pubstall" => Kind::PubStall,
        o => bail!("{VAR}: unknown fault '{o}' (panic, stall, hang, pubstall)"),
    };
    let Ok(at_tick) = at.parse() else {
        bail!("{VAR}: '{at}' is not a tick number");
    };
    tracing::warn!("{VAR}={v}: a test fault will be injected into the control thread");
    Ok(Some(Injection { kind, at_tick }))
}

/// Stop working until shutdown (an injected stall).
pub(crate) fn stall_until(stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

impl Injection {
    /// The output at which the publisher thread stalls (`pubstall@N`).
    pub(crate) fn publisher_stall_at(&self) -> Option<u64> {
        matches!(self.kind, Kind::PubStall).then_some(self.at_tick)
    }

    /// `Runner::run`, with the fault at the chosen tick.
    pub(crate) fn run<C: Clock>(self, mut runner: Runner<C>, stop: &AtomicBool) -> Controller {
        let stats = runner.controller().stats().clone();
        while !stop.load(Ordering::Relaxed) {
            if stats.ticks.load(Ordering::Relaxed) >= self.at_tick {
                match self.kind {
                    Kind::Panic => panic!("injected fault at tick {}", self.at_tick),
                    Kind::Stall => {
                        stall_until(stop);
                        break;
                    }
                    Kind::Hang => loop {
                        std::thread::park();
                    },
                    Kind::PubStall => {}
                }
            }
            runner.step();
        }
        runner.into_controller()
    }
}
