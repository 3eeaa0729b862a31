//! The log follower: transition logs (*.mcap) in a directory, replayed and
//! then followed as the node appends to them, turned into replay-buffer
//! transitions. Off the control thread (it only reads the files the node's
//! log writer produces).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::error::Result;
use super::replay::ReplayBuffer;
use flowpilot_core::action_space::ActionSpace;
use flowpilot_core::log::reader::{log_files, Tail};
use flowpilot_core::log::Transition;
use flowpilot_core::model::ModelSpec;

/// Follows every `*.mcap` log in a directory (new files included) and turns
/// consecutive records into transitions: record i's state and applied
/// action, record i+1's reward (rewards received after the action) and
/// state. Records without an applied action, across an episode boundary
/// or a gap (dropped records) form no transition.
pub struct LogFollower {
    dir: PathBuf,
    tails: BTreeMap<PathBuf, (Tail, Option<Transition>)>,
    records: u64,
    skipped: u64,
}

impl LogFollower {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            tails: BTreeMap::new(),
            records: 0,
            skipped: 0,
        }
    }

    /// Records read so far.
    pub(crate) fn records(&self) -> u64 {
        self.records
    }

    /// Records that formed no transition (see [`usable`]).
    pub(crate) fn skipped(&self) -> u64 {
        self.skipped
    }

    /// Read what was appended since the last poll; returns new transitions.
    pub fn poll(&mut self, rb: &mut ReplayBuffer, spec: &ModelSpec) -> Result<usize> {
        let actions = ActionSpace::new(spec);
        let mut added = 0;
        for p in log_files(&self.dir)? {
            let (tail, prev) = self
                .tails
                .entry(p.clone())
                .or_insert_with(|| (Tail::new(&p), None));
            let recs = match tail.poll() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e:#}");
                    continue;
                }
            };
            let step: u64 = tail
                .metadata
                .get("every")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            for r in recs {
                self.records += 1;
                if let Some(p) = prev.take() {
                    if usable(&p, &r, step, spec) {
                        let a = actions.to_flow_vec(
                            &p.applied()
                                .expect("checked")
                                .iter()
                                .map(|&v| v as f32)
                                .collect::<Vec<_>>(),
                        );
                        let s = &p.inputs[..p.n_obs + p.n_goal];
                        let s2 = &r.inputs[..r.n_obs + r.n_goal];
                        rb.push(s, &a, r.reward as f32, s2, p.terminated);
                        added += 1;
                    } else {
                        self.skipped += 1;
                    }
                }
                *prev = Some(r);
            }
        }
        Ok(added)
    }
}

fn usable(p: &Transition, r: &Transition, step: u64, spec: &ModelSpec) -> bool {
    let dims = p.n_obs == spec.obs_dim && p.n_goal == spec.goal_dim && p.n_act == spec.act_dim;
    let same = r.tick == p.tick + step && (r.episode == p.episode || p.terminated);
    p.acted() && dims && same && !p.truncated && r.reward.is_finite()
}
