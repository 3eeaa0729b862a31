//! The log follower: transition logs (*.mcap) in a directory, replayed and
//! then followed as the node appends to them, turned into replay-buffer
//! transitions. Off the control thread (it only reads the files the node's
//! log writer produces).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::Result;
use super::replay::ReplayBuffer;
use super::windows::Windows;
use flowpilot_core::log::reader::{log_files, Tail};
use flowpilot_core::log::Transition;
use flowpilot_core::policy::model::ModelSpec;

/// One log file being followed: its reader, its last record, and the run
/// of robot steps its records are forming.
struct Followed {
    tail: Tail,
    prev: Option<Transition>,
    windows: Windows,
}

/// Follows every `*.mcap` log in a directory (new files included) and turns
/// consecutive records into robot steps by [`pair`] (record i's state, the
/// action, record i+1's reward and state), and runs of steps into the
/// policy's transitions by [`Windows`] (its observation history and action
/// chunk; one step for a one-step policy). Records without an action,
/// across an episode boundary or a gap (dropped records or missed robot
/// steps) form no step and end the run.
pub struct LogFollower {
    dir: PathBuf,
    gamma: f64,
    files: BTreeMap<PathBuf, Followed>,
    records: u64,
    skipped: u64,
}

impl LogFollower {
    /// Follow `dir`, discounting multi-step transitions by `gamma` (the
    /// learner's).
    pub fn new(dir: &Path, gamma: f64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            gamma,
            files: BTreeMap::new(),
            records: 0,
            skipped: 0,
        }
    }

    /// Records read so far.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// Records that formed no step (see [`pair`]).
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Read what was appended since the last poll; returns new transitions.
    pub fn poll(&mut self, rb: &mut ReplayBuffer, spec: &ModelSpec) -> Result<usize> {
        let mut added = 0;
        for p in log_files(&self.dir)? {
            let f = self.files.entry(p.clone()).or_insert_with(|| Followed {
                tail: Tail::new(&p),
                prev: None,
                windows: Windows::new(spec, self.gamma),
            });
            let recs = match f.tail.poll() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e:#}");
                    continue;
                }
            };
            let step: u64 = f
                .tail
                .metadata
                .get(flowpilot_core::contract::log_meta::EVERY)
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            for r in recs {
                self.records += 1;
                if let Some(p) = f.prev.take() {
                    match pair(&p, &r, step, spec) {
                        Some((a, done)) => {
                            let a: Vec<f32> = a.iter().map(|&v| v as f32).collect();
                            let (s, s2) = (&p.inputs, &r.inputs);
                            let (o, o2) = (p.n_obs, r.n_obs);
                            f.windows.push(
                                &s[..o],
                                &s[o..o + p.n_goal],
                                &a,
                                r.reward as f32,
                                done,
                                &s2[..o2],
                                &s2[o2..o2 + r.n_goal],
                                |w| {
                                    rb.push(&w.s, &w.a, w.r, &w.s2, w.discount);
                                    added += 1;
                                },
                            );
                        }
                        None => {
                            self.skipped += 1;
                            f.windows.break_run();
                        }
                    }
                }
                f.prev = Some(r);
            }
        }
        Ok(added)
    }
}

/// The transition two consecutive records form, as (action, done), or
/// None (see [`LogFollower`]).
///
/// - Step-logged records (`robot_step > 0`, docs/log-format.md): record
///   i + 1 carries the action the robot reports it executed from record
///   i's state, the reward of that step and the state it produced; the two
///   must be consecutive robot steps of one episode.
/// - Tick-logged records: record i's applied action, record i + 1's reward
///   and state, `every` ticks apart (an episode's last record may pair with
///   the next one when the episode ended in a terminal state).
fn pair<'a>(
    p: &'a Transition,
    r: &'a Transition,
    step: u64,
    spec: &ModelSpec,
) -> Option<(&'a [f64], bool)> {
    // A record holds one step: one observation step, one action step.
    let dims = p.n_obs == spec.step_obs_dim()
        && p.n_goal == spec.goal_dim
        && p.n_act == spec.step_act_dim()
        && (r.n_obs, r.n_goal) == (p.n_obs, p.n_goal);
    if !dims || p.truncated || !r.reward.is_finite() {
        return None;
    }
    if r.robot_step > 0 {
        let next = r.robot_step == p.robot_step + 1 && r.episode == p.episode;
        return r.executed().filter(|_| next).map(|a| (a, r.terminated));
    }
    let same = r.tick == p.tick + step && (r.episode == p.episode || p.terminated);
    (p.acted() && same).then(|| (p.applied().expect("acted"), p.terminated))
}

#[cfg(test)]
mod tests {
    use super::pair;
    use flowpilot_core::log::Transition;
    use flowpilot_core::policy::model::{Direction, PolicyKind};
    use flowpilot_core::testkit::random_model;

    fn rec(robot_step: u64, episode: u64, executed: f64, reward: f64) -> Transition {
        let mut t = Transition {
            n_obs: 5,
            n_act: 2,
            robot_step,
            episode,
            reward,
            applied_valid: true,
            executed_valid: true,
            ..Default::default()
        };
        t.applied[..2].copy_from_slice(&[9.0, 9.0]);
        t.executed[..2].copy_from_slice(&[executed, -executed]);
        t
    }

    #[test]
    fn step_logged_records_pair_with_the_next_records_executed_action() {
        let spec = random_model(2, 0, false, Direction::Inverse, PolicyKind::Flow, 1).spec;
        let (p, r) = (rec(7, 0, 0.1, -1.0), rec(8, 0, 0.3, -2.0));
        let (a, done) = pair(&p, &r, 1, &spec).unwrap();
        assert_eq!(
            (a, done),
            (&[0.3, -0.3][..], false),
            "not the sent action 9.0"
        );
        let mut t = r;
        t.terminated = true;
        assert!(
            pair(&p, &t, 1, &spec).unwrap().1,
            "done from the later record"
        );
        assert!(
            pair(&p, &rec(9, 0, 0.3, -2.0), 1, &spec).is_none(),
            "a missed step"
        );
        assert!(
            pair(&p, &rec(8, 1, 0.3, -2.0), 1, &spec).is_none(),
            "a new episode"
        );
        assert!(
            pair(&p, &rec(8, 0, 0.3, f64::NAN), 1, &spec).is_none(),
            "no reward"
        );
        let mut unreported = rec(8, 0, 0.3, -2.0);
        unreported.executed_valid = false;
        assert!(pair(&p, &unreported, 1, &spec).is_none());
    }
}
