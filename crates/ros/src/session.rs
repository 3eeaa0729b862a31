//! On-robot fine-tuning sessions: the inputs the transition log needs from
//! ROS (reward, episode boundaries, human override) and the learner child
//! process started and stopped through `~/finetune`.

use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;
use r2r::QosProfile;

use flowpilot_core::board::Board;

/// Reward and episode state shared by the subscribers and the control thread.
#[derive(Default)]
pub struct LogInputs {
    /// Rewards received since the last logged tick: (sum, count).
    reward: Mutex<(f64, u32)>,
    /// Episode boundaries seen.
    pub episode: AtomicU64,
    /// Whether the latest boundary was a terminal state.
    pub last_terminal: AtomicBool,
}

impl LogInputs {
    /// Sum of the rewards received since the previous call, NaN if none.
    /// Never blocks: if a subscriber holds the lock this instant, the
    /// rewards stay for the next call.
    pub fn take_reward(&self) -> f64 {
        match self.reward.try_lock() {
            Ok(mut g) if g.1 > 0 => {
                let r = g.0;
                *g = (0.0, 0);
                r
            }
            _ => f64::NAN,
        }
    }

    fn add_reward(&self, r: f64) {
        let mut g = self.reward.lock().expect("reward lock");
        g.0 += r;
        g.1 += 1;
    }

    fn boundary(&self, terminal: bool) {
        self.last_terminal.store(terminal, Ordering::SeqCst);
        self.episode.fetch_add(1, Ordering::SeqCst);
    }
}

/// Subscribe the reward topic (std_msgs/Float64) and the episode-boundary
/// topics (std_msgs/Int64: an episode just ended by time limit / terminal).
pub fn subscribe_log_inputs(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    reward_topic: Option<&str>,
    episode_topic: Option<&str>,
    terminal_topic: Option<&str>,
) -> Result<Arc<LogInputs>> {
    let inputs = Arc::new(LogInputs::default());
    let q = QosProfile::default().reliable().keep_last(100);
    if let Some(t) = reward_topic {
        let s = node.subscribe::<r2r::std_msgs::msg::Float64>(t, q.clone())?;
        let i = inputs.clone();
        spawner.spawn_local(s.for_each(move |m| {
            if m.data.is_finite() {
                i.add_reward(m.data);
            }
            futures::future::ready(())
        }))?;
    }
    for (topic, terminal) in [(episode_topic, false), (terminal_topic, true)] {
        if let Some(t) = topic {
            let s = node.subscribe::<r2r::std_msgs::msg::Int64>(t, q.clone())?;
            let i = inputs.clone();
            spawner.spawn_local(s.for_each(move |_| {
                i.boundary(terminal);
                futures::future::ready(())
            }))?;
        }
    }
    Ok(inputs)
}

/// Subscribe the human override topic (std_msgs/Float64MultiArray,
/// act_dim values, physical units) into a one-slot board.
pub fn subscribe_override(
    node: &mut r2r::Node,
    spawner: &futures::executor::LocalSpawner,
    topic: &str,
    act_dim: usize,
) -> Result<Arc<Board>> {
    let board = Arc::new(Board::new(&[act_dim]));
    let s = node.subscribe::<r2r::std_msgs::msg::Float64MultiArray>(
        topic,
        QosProfile::default().keep_last(1),
    )?;
    let b = board.clone();
    spawner.spawn_local(s.for_each(move |m| {
        if m.data.len() == act_dim && m.data.iter().all(|v| v.is_finite()) {
            b.write(0, &m.data, None);
        } else {
            tracing::warn!(
                len = m.data.len(),
                "rejected a malformed override message (needs {act_dim} finite values)"
            );
        }
        futures::future::ready(())
    }))?;
    Ok(board)
}

/// The learner process of a fine-tuning session.
pub struct Learner {
    exe: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
    /// When a requested stop escalates to SIGKILL.
    stop_deadline: Option<std::time::Instant>,
    /// Last exit, for /diagnostics.
    pub last_exit: String,
}

impl Learner {
    /// `exe` defaults to the `flowpilot` binary next to this node's.
    pub fn new(exe: Option<PathBuf>, args: Vec<String>) -> Result<Self> {
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

    pub fn running(&mut self) -> Option<u32> {
        self.poll();
        self.child.as_ref().map(Child::id)
    }

    /// Reap an exited learner (it never takes the node down with it).
    pub fn poll(&mut self) {
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
    pub fn start(&mut self) -> Result<String> {
        if let Some(pid) = self.running() {
            return Ok(format!("learner already running (pid {pid})"));
        }
        let mut cmd = Command::new(&self.exe);
        cmd.arg("finetune").args(&self.args);
        // One candle/rayon thread unless configured otherwise.
        for v in ["RAYON_NUM_THREADS", "CANDLE_NUM_THREADS"] {
            if std::env::var_os(v).is_none() {
                cmd.env(v, "1");
            }
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
    pub fn request_stop(&mut self) -> bool {
        let Some(c) = self.child.as_ref() else {
            return false;
        };
        // SAFETY: signalling our own child process.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        self.stop_deadline = Some(std::time::Instant::now() + std::time::Duration::from_secs(5));
        true
    }

    /// After [`Self::request_stop`]: Some(outcome) once the learner has
    /// exited, or was killed for not exiting within 5 s; None meanwhile.
    pub fn stop_progress(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        if let Ok(Some(st)) = c.try_wait() {
            self.last_exit = st.to_string();
            self.child = None;
            self.stop_deadline = None;
            return Some(format!("learner stopped ({st})"));
        }
        if self
            .stop_deadline
            .is_some_and(|d| std::time::Instant::now() >= d)
        {
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
    pub fn stop(&mut self) -> String {
        if !self.request_stop() {
            return "no learner running".into();
        }
        loop {
            if let Some(m) = self.stop_progress() {
                return m;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
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
