//! The control loop's time base: the [`Clock`] the runner waits on, and
//! the real one, [`Periodic`] (absolute deadlines on CLOCK_MONOTONIC).
//!
//! Real-time: [`Clock::wait`] is the control thread's only blocking call,
//! by design (it sleeps until the next deadline); nothing here allocates.

use crate::rt::board::mono_ns;

/// The control loop's time base: the real [`Periodic`] timer, or a fake one
/// in tests.
pub trait Clock {
    /// The control period in ns.
    fn period_ns(&self) -> i64;
    /// Block until the next deadline; returns the wake-up lateness (ns) and
    /// how many deadlines were missed before this one.
    fn wait(&mut self) -> (u64, u64);
}

impl Clock for Periodic {
    fn period_ns(&self) -> i64 {
        Periodic::period_ns(self)
    }
    fn wait(&mut self) -> (u64, u64) {
        Periodic::wait(self)
    }
}

/// Absolute-deadline periodic timer on CLOCK_MONOTONIC: deadlines are
/// `start + k·period`, so sleep overshoot never accumulates into drift.
pub struct Periodic {
    next_ns: i64,
    period_ns: i64,
}

impl Periodic {
    pub fn new(rate_hz: f64) -> Self {
        let period_ns = (1e9 / rate_hz).round() as i64;
        Self {
            next_ns: mono_ns() + period_ns,
            period_ns,
        }
    }

    pub fn period_ns(&self) -> i64 {
        self.period_ns
    }

    /// Sleep until the next deadline. Returns the wake-up lateness in ns and
    /// how many deadlines were missed (skipped) before this one.
    pub fn wait(&mut self) -> (u64, u64) {
        let ts = libc::timespec {
            tv_sec: self.next_ns / 1_000_000_000,
            tv_nsec: self.next_ns % 1_000_000_000,
        };
        // SAFETY: valid timespec; absolute sleep on the monotonic clock.
        // EINTR (a signal) just ends the sleep early; the loop re-checks.
        unsafe {
            libc::clock_nanosleep(
                libc::CLOCK_MONOTONIC,
                libc::TIMER_ABSTIME,
                &ts,
                std::ptr::null_mut(),
            );
        }
        let now = mono_ns();
        let late = (now - self.next_ns).max(0) as u64;
        // Skip deadlines already passed instead of bursting to catch up.
        let missed = ((now - self.next_ns) / self.period_ns).max(0) as u64;
        self.next_ns += (missed as i64 + 1) * self.period_ns;
        (late, missed)
    }
}
