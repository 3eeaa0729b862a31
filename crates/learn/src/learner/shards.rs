//! The learner's online data as replay shards: one for a single robot's
//! log directory, or one per robot of a fleet shard directory
//! (`<root>/<robot>/*.mcap`, written by `flowpilot_fleet`; robots that
//! appear later are picked up at the next poll). Each batch is split
//! equally among the shards that hold data, so a robot that logs faster
//! does not drown the others (the mix docs/fleet.md states).

use std::path::PathBuf;

use super::error::Result;
use super::follower::LogFollower;
use super::replay::ReplayBuffer;
use flowpilot_core::policy::model::ModelSpec;

/// Most transitions one shard keeps.
const SHARD_CAPACITY: usize = 1_000_000;

struct Shard {
    name: String,
    follower: Option<LogFollower>,
    rb: ReplayBuffer,
}

pub(crate) struct Shards {
    /// A fleet shard directory (robots discovered), or None.
    fleet: Option<PathBuf>,
    shards: Vec<Shard>,
    gamma: f64,
    in_dim: usize,
    act_dim: usize,
}

impl Shards {
    /// A fixed replay (offline data): never polled.
    pub(crate) fn fixed(rb: ReplayBuffer) -> Self {
        Self {
            fleet: None,
            gamma: 0.0,
            in_dim: 0,
            act_dim: 0,
            shards: vec![Shard {
                name: "data".into(),
                follower: None,
                rb,
            }],
        }
    }

    /// One robot's log directory (transitions discounted by `gamma`).
    pub(crate) fn log_dir(dir: PathBuf, spec: &ModelSpec, gamma: f64) -> Self {
        let mut s = Self::empty(None, spec, gamma);
        s.add("log".into(), dir);
        s
    }

    /// A fleet shard directory: one shard per robot subdirectory.
    pub(crate) fn fleet(root: PathBuf, spec: &ModelSpec, gamma: f64) -> Self {
        Self::empty(Some(root), spec, gamma)
    }

    fn empty(fleet: Option<PathBuf>, spec: &ModelSpec, gamma: f64) -> Self {
        Self {
            fleet,
            gamma,
            shards: Vec::new(),
            in_dim: spec.obs_dim + spec.goal_dim,
            act_dim: spec.act_dim,
        }
    }

    fn add(&mut self, name: String, dir: PathBuf) {
        tracing::info!(shard = %name, dir = %dir.display(), "replay shard");
        self.shards.push(Shard {
            name,
            follower: Some(LogFollower::new(&dir, self.gamma)),
            rb: ReplayBuffer::new(self.in_dim, self.act_dim, SHARD_CAPACITY),
        });
    }

    /// Read what was appended (and robots new to the fleet directory);
    /// returns the new transitions.
    pub(crate) fn poll(&mut self, spec: &ModelSpec) -> Result<usize> {
        if let Some(root) = self.fleet.clone() {
            let mut dirs: Vec<_> = std::fs::read_dir(&root)
                .into_iter()
                .flatten()
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
                .filter(|(n, _)| flowpilot_core::fleet::valid_robot_id(n))
                .collect();
            dirs.sort();
            for (name, dir) in dirs {
                if !self.shards.iter().any(|s| s.name == name) {
                    self.add(name, dir);
                }
            }
        }
        let mut added = 0;
        for s in &mut self.shards {
            if let Some(f) = s.follower.as_mut() {
                added += f.poll(&mut s.rb, spec)?;
            }
        }
        Ok(added)
    }

    /// Transitions held in all shards.
    pub(crate) fn len(&self) -> usize {
        self.shards.iter().map(|s| s.rb.len()).sum()
    }

    /// (records read, records that formed no transition) over all shards.
    pub(crate) fn records(&self) -> (u64, u64) {
        self.shards
            .iter()
            .filter_map(|s| s.follower.as_ref())
            .fold((0, 0), |(r, k), f| (r + f.records(), k + f.skipped()))
    }

    /// `n` draws split equally among the shards holding data (the first
    /// shards take the remainder).
    pub(crate) fn parts(&self, n: usize) -> Vec<(&ReplayBuffer, usize)> {
        let full: Vec<&ReplayBuffer> = self
            .shards
            .iter()
            .map(|s| &s.rb)
            .filter(|rb| !rb.is_empty())
            .collect();
        let k = full.len().max(1);
        full.into_iter()
            .enumerate()
            .map(|(i, rb)| (rb, n / k + usize::from(i < n % k)))
            .filter(|(_, m)| *m > 0)
            .collect()
    }

    /// The shard holding the most data (for estimates over the data).
    pub(crate) fn largest(&self) -> Option<&ReplayBuffer> {
        self.shards.iter().map(|s| &s.rb).max_by_key(|rb| rb.len())
    }

    /// Per shard: (name, transitions).
    pub(crate) fn sizes(&self) -> Vec<(String, usize)> {
        self.shards
            .iter()
            .map(|s| (s.name.clone(), s.rb.len()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use flowpilot_core::policy::model::{Direction, PolicyKind};
    use flowpilot_core::testkit::random_model;

    #[test]
    fn batches_split_equally_among_shards_with_data() {
        let spec = random_model(2, 0, false, Direction::Inverse, PolicyKind::Flow, 1).spec;
        let dir = tempfile::tempdir().unwrap();
        let mut s = Shards::fleet(dir.path().into(), &spec, 0.99);
        for name in ["r1", "r2", "r3"] {
            s.add(name.into(), dir.path().join(name));
        }
        let (i, a) = (spec.obs_dim + spec.goal_dim, spec.act_dim);
        for _ in 0..100 {
            s.shards[0]
                .rb
                .push(&vec![0.0; i], &vec![0.0; a], 0.0, &vec![0.0; i], 0.99);
        }
        for _ in 0..5 {
            s.shards[1]
                .rb
                .push(&vec![0.0; i], &vec![0.0; a], 0.0, &vec![0.0; i], 0.99);
        }
        let parts: Vec<usize> = s.parts(255).iter().map(|p| p.1).collect();
        assert_eq!(
            parts,
            vec![128, 127],
            "equal shares, the empty robot left out"
        );
        assert_eq!(s.len(), 105);
    }
}
