//! Process and thread scheduling: the control thread's real-time settings
//! (timer slack, SCHED_FIFO, CPU affinity, mlockall) and the learner's and
//! spin thread's way out of its way (niceness, SCHED_IDLE).
//!
//! Not real-time: each is called once, at the start of the thread it
//! configures (the control thread calls [`apply_rt_settings`] before its
//! first tick); failures come back as messages or errors for the caller to
//! log.

/// The control thread's settings: 1 ns timer slack always, and the
/// optional real-time ones; each failure is returned as a message for the
/// caller to log (the loop still runs, without that guarantee).
pub fn apply_rt_settings(
    fifo_priority: Option<i32>,
    cpu: Option<usize>,
    mlockall: bool,
) -> Vec<String> {
    let mut warnings = Vec::new();
    // Timer slack: Linux may defer a normal thread's wake-up by up to 50 µs
    // to batch timers; the loop's deadlines are not to be batched.
    // SAFETY: plain prctl on the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) } != 0 {
        warnings.push(format!(
            "timer slack not set ({})",
            std::io::Error::last_os_error()
        ));
    }
    if let Some(p) = fifo_priority {
        let param = libc::sched_param { sched_priority: p };
        // SAFETY: plain syscall on the calling thread (tid 0).
        if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
            warnings.push(format!(
                "SCHED_FIFO priority {p} not permitted ({}); running with normal scheduling",
                std::io::Error::last_os_error()
            ));
        }
    }
    if let Some(c) = cpu.filter(|&c| c > crate::node::config::MAX_CPU) {
        // The config rejects these; CPU_SET would panic on them.
        warnings.push(format!("CPU {c} is beyond the affinity set; not pinned"));
    } else if let Some(c) = cpu {
        // SAFETY: cpu_set_t is plain data; c is within its size (checked above).
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(c, &mut set);
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
                warnings.push(format!(
                    "pinning to CPU {c} failed ({})",
                    std::io::Error::last_os_error()
                ));
            }
        }
    }
    if mlockall {
        // SAFETY: plain syscall.
        if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) } != 0 {
            warnings.push(format!(
                "mlockall failed ({}); page faults may add latency",
                std::io::Error::last_os_error()
            ));
        }
    }
    warnings
}

/// Lower (or raise, if permitted) the calling process's CPU niceness: the
/// learner runs at 19 so that it never delays the control thread.
pub fn set_niceness(nice: i32) -> std::io::Result<()> {
    // SAFETY: plain syscall on the calling process.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Put the calling thread in Linux's SCHED_IDLE class: it runs only when
/// no normal-class thread wants the CPU, and a waking normal thread (the
/// control thread at default scheduling) preempts it at once. Nice 19
/// alone is not enough under EEVDF: a waking nice-0 thread may wait for a
/// nice-19 one's slice to end.
pub fn set_idle_scheduling() -> std::io::Result<()> {
    let p = libc::sched_param { sched_priority: 0 };
    // SAFETY: plain syscall on the calling thread (pid 0), valid param.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &p) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
