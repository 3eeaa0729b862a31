//! Shutdown on SIGINT / SIGTERM, as one small type shared by the node and
//! the learner. The signal handler only stores to an atomic; whoever owns a
//! loop polls [`Shutdown::requested`] (one relaxed-enough load, real-time
//! safe) and winds down in its own time.
//!
//! ```
//! let stop = flowpilot_core::shutdown::Shutdown::install();
//! assert!(!stop.requested());
//! stop.request(); // what the handler does on a signal
//! assert!(stop.requested());
//! ```

use std::sync::atomic::{AtomicBool, Ordering};

/// Process-wide: a signal is process-wide too.
static REQUESTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    REQUESTED.store(true, Ordering::SeqCst);
}

/// A handle on the process's shutdown request. Copy it freely.
#[derive(Clone, Copy, Debug)]
pub struct Shutdown(());

impl Shutdown {
    /// Install the SIGINT and SIGTERM handlers (idempotent), and ignore
    /// SIGXFSZ so that a file-size limit fails a write instead of killing
    /// the process (the log must not take the controller down).
    pub fn install() -> Self {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
        }
        Shutdown(())
    }

    /// Whether a shutdown was requested (by a signal or [`Self::request`]).
    pub fn requested(&self) -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    /// Ask for shutdown from inside the process.
    pub fn request(&self) {
        REQUESTED.store(true, Ordering::SeqCst);
    }

    /// The flag itself, for APIs that poll an `AtomicBool`.
    pub fn flag(&self) -> &'static AtomicBool {
        &REQUESTED
    }
}
