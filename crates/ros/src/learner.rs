//! The learner child process of an on-robot fine-tuning session
//! (`flowpilot finetune --follow`), started and stopped through
//! `~/finetune`. Lives on the spin thread; every call but the shutdown-only
//! [`Learner::stop`] is non-blocking. The learner never takes the node down.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use flowpilot_core::node::config::NodeConfig;
use flowpilot_core::node::diagnostics::LearnerState;

/// The learner process of a fine-tuning session.
pub(crate) struct Learner {
    exe: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// When a requested stop escalates to SIGKILL.
    stop_deadline: Option<Instant>,
    /// Last exit, for /diagnostics.
    last_exit: String,
}

impl Learner {
    /// The session's learner if both `log.dir` and `hot_swap.dir` are set:
    /// it reads the log, starts from the running model and writes
    /// checkpoints for the hot swap.
    pub(crate) fn for_config(cfg: &NodeConfig, model_path: &Path) -> Result<Option<Self>> {
        let (Some(l), Some(out)) = (&cfg.log, &cfg.hot_swap_dir) else {
            return Ok(None);
        };
        use flowpilot_core::contract::flags;
        let flag = |f: &str| format!("--{f}");
        let mut args: Vec<String> = vec![
            flag(flags::LOG_DIR),
            l.dir.clone(),
            flag(flags::OUT),
            out.clone(),
            flag(flags::INIT),
            model_path.display().to_string(),
            flag(flags::FOLLOW),
        ];
        args.extend(cfg.finetune_args.iter().cloned());
        Self::new(cfg.finetune_exe.as_ref().map(Into::into), args).map(Some)
    }

    /// `exe` defaults to the `flowpilot` binary next to this node's.
    fn new(exe: Option<PathBuf>, args: Vec<String>) -> Result<Self> {
        let exe = match exe {
            Some(e) => e,
            None => std::env::current_exe()
                .context("locating flowpilot_node")?
                .with_file_name("flowpilot"),
        };
        Ok(Self {
            exe,
            args,
            child: None,
            stop_deadline: None,
            last_exit: String::new(),
        })
    }

    pub(crate) fn running(&mut self) -> Option<u32> {
        self.poll();
        self.child.as_ref().map(Child::id)
    }

    /// For /diagnostics.
    pub(crate) fn state(&mut self) -> LearnerState {
        match self.running() {
            Some(pid) => LearnerState::Running { pid },
            None if self.last_exit.is_empty() => LearnerState::Stopped,
            None => LearnerState::Exited {
                status: self.last_exit.clone(),
            },
        }
    }

    /// Reap an exited learner.
    fn poll(&mut self) {
        if self.stop_deadline.is_some() {
            return; // a requested stop reports through stop_progress
        }
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                self.last_exit = st.to_string();
                tracing::warn!(status = %st, "learner exited");
                self.child = None;
            }
        }
    }

    /// Start `flowpilot finetune <args>` at the lowest CPU priority.
    pub(crate) fn start(&mut self) -> Result<String> {
        if let Some(pid) = self.running() {
            return Ok(format!("learner already running (pid {pid})"));
        }
        let mut cmd = Command::new(&self.exe);
        cmd.arg(flowpilot_core::contract::flags::FINETUNE)
            .args(&self.args);
        // One candle/rayon thread unless configured otherwise.
        for v in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
            if std::env::var_os(v).is_none() {
                cmd.env(v, "1");
            }
        }
        // Its progress (updates, losses, checkpoints) goes to the node's log.
        if std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "info");
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} finetune", self.exe.display()))?;
        let pid = child.id();
        // SAFETY: setpriority on a child we own; failure is only logged.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, pid, 19) };
        if rc != 0 {
            tracing::warn!(pid, "could not lower the learner's priority");
        }
        tracing::info!(pid, args = ?self.args, "learner started");
        self.child = Some(child);
        Ok(format!("learner started (pid {pid})"))
    }

    /// Ask the learner to stop (SIGTERM: it finishes its update and writes
    /// a last checkpoint). Non-blocking: follow with [`Self::stop_progress`].
    pub(crate) fn request_stop(&mut self) -> bool {
        let Some(c) = self.child.as_ref() else {
            return false;
        };
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        self.stop_deadline = Some(Instant::now() + Duration::from_secs(5));
        true
    }

    /// After [`Self::request_stop`]: Some(outcome) once the learner has
    /// exited, or was killed for not exiting within 5 s; None meanwhile.
    pub(crate) fn stop_progress(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        if let Ok(Some(st)) = c.try_wait() {
            self.last_exit = st.to_string();
            self.child = None;
            self.stop_deadline = None;
            return Some(format!("learner stopped ({st})"));
        }
        if self.stop_deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = c.kill();
            let _ = c.wait();
            self.child = None;
            self.stop_deadline = None;
            self.last_exit = "killed after 5 s".into();
            return Some("learner killed (did not stop within 5 s)".into());
        }
        None
    }

    /// Blocking stop (shutdown only: the control loop has already ended).
    pub(crate) fn stop(&mut self) -> String {
        if !self.request_stop() {
            return "no learner running".into();
        }
        loop {
            if let Some(m) = self.stop_progress() {
                return m;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Learner {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.stop();
        }
    }
}
