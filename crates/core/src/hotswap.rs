//! Checked weight hand-off to the running node.
//!
//! A learner writes versioned model files into a directory (atomically:
//! temp file, fsync, rename — `ModelFile::save`). The spin thread polls the
//! directory, validates each new file (format, finite weights and digest by
//! `ModelFile::load`; dims and architecture against the running model; an
//! optional cap on action divergence over recent observations), builds its
//! sampler off the control thread and offers it through a one-slot queue.
//! The control thread swaps it in between two ticks (a move, no allocation)
//! and hands the old sampler back to be dropped here. Accepted versions are
//! recorded in `<dir>/.flowpilot_accepted` so a restarted node resumes with
//! the last accepted version; a rollback restores the previous one.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use crossbeam_queue::ArrayQueue;

use crate::model::{ModelFile, ModelSpec};
use crate::sampler::Sampler;

/// Name of the state file: `accepted <path>` lines (oldest first) and
/// `revoked <digest>` lines (versions rolled back, never re-accepted).
pub const STATE_FILE: &str = ".flowpilot_accepted";

/// Queues between the spin thread and the control thread.
pub struct SwapChannel {
    /// New samplers for the control thread (capacity 1).
    pub incoming: ArrayQueue<Sampler>,
    /// Retired samplers, dropped off the control thread.
    pub retired: ArrayQueue<Sampler>,
}

impl SwapChannel {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            incoming: ArrayQueue::new(1),
            retired: ArrayQueue::new(4),
        })
    }
}

/// The spin thread's view of hot-swapping.
pub struct HotSwap {
    dir: PathBuf,
    max_divergence: f64,
    /// Accepted models, oldest first; the last one is running (or offered).
    accepted: Vec<(PathBuf, ModelFile)>,
    seen: HashSet<(PathBuf, std::time::SystemTime)>,
    /// Digests rolled back by an operator: not offered again.
    revoked: HashSet<String>,
    pub rejected: u64,
    pub last_rejection: String,
    pub swaps: u64,
}

/// Why two specs cannot be swapped.
fn compatible(running: &ModelSpec, new: &ModelSpec) -> Result<()> {
    let same = running.obs_dim == new.obs_dim
        && running.goal_dim == new.goal_dim
        && running.act_dim == new.act_dim
        && running.kind == new.kind;
    if !same {
        bail!(
            "dims/kind differ from the running model (obs {} goal {} act {} {:?} vs obs {} goal {} act {} {:?})",
            new.obs_dim,
            new.goal_dim,
            new.act_dim,
            new.kind,
            running.obs_dim,
            running.goal_dim,
            running.act_dim,
            running.kind
        );
    }
    Ok(())
}

impl HotSwap {
    /// `initial` is the model the node starts with (from `model` or the
    /// state file).
    pub fn new(
        dir: PathBuf,
        max_divergence: f64,
        initial_path: PathBuf,
        initial: ModelFile,
    ) -> Self {
        let revoked = std::fs::read_to_string(dir.join(STATE_FILE))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("revoked "))
            .map(str::to_string)
            .collect();
        Self {
            dir,
            max_divergence,
            accepted: vec![(initial_path, initial)],
            seen: HashSet::new(),
            revoked,
            rejected: 0,
            last_rejection: String::new(),
            swaps: 0,
        }
    }

    /// The last accepted model recorded in `dir`, if any and loadable.
    pub fn resume(dir: &Path) -> Option<(PathBuf, ModelFile)> {
        let text = std::fs::read_to_string(dir.join(STATE_FILE)).ok()?;
        let path = PathBuf::from(
            text.lines()
                .rev()
                .find_map(|l| l.strip_prefix("accepted "))?
                .trim(),
        );
        match ModelFile::load(&path) {
            Ok(m) => Some((path, m)),
            Err(e) => {
                tracing::warn!(path = %path.display(), "last accepted model no longer loads ({e}); using `model`");
                None
            }
        }
    }

    pub fn current(&self) -> &ModelFile {
        &self.accepted.last().expect("never empty").1
    }

    fn record(&self) {
        let mut text: String = self
            .revoked
            .iter()
            .map(|d| format!("revoked {d}\n"))
            .collect();
        text.extend(
            self.accepted
                .iter()
                .map(|(p, _)| format!("accepted {}\n", p.display())),
        );
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let ok = std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, self.dir.join(STATE_FILE)));
        if let Err(e) = ok {
            tracing::warn!(
                "cannot record the accepted version in {}: {e}",
                self.dir.display()
            );
        }
    }

    /// Look for new versions; offer the newest valid one. `recent` holds
    /// recent (obs, goal) snapshots for the divergence check.
    pub fn poll(&mut self, chan: &SwapChannel, recent: &[(Vec<f32>, Vec<f32>)]) {
        while let Some(old) = chan.retired.pop() {
            drop(old); // freed here, not on the control thread
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        let mut candidates: Vec<(PathBuf, std::time::SystemTime)> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .filter_map(|p| {
                std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .ok()
                    .map(|t| (p, t))
            })
            .filter(|k| !self.seen.contains(k))
            .collect();
        candidates.sort();
        for (path, mtime) in candidates {
            self.seen.insert((path.clone(), mtime));
            match self.check(&path, recent) {
                Ok(None) => {}
                Ok(Some(m)) => {
                    let version = m.spec.version;
                    let digest = m.spec.digest.clone();
                    let sampler = match Sampler::new(&m) {
                        Ok(s) => s,
                        Err(e) => {
                            self.reject(&path, &e.to_string());
                            continue;
                        }
                    };
                    // A pending offer not yet taken is replaced by the newer one.
                    if let Some(stale) = chan.incoming.force_push(sampler) {
                        drop(stale);
                        self.accepted.pop();
                    }
                    self.accepted.push((path.clone(), m));
                    self.swaps += 1;
                    self.record();
                    tracing::info!(path = %path.display(), version, digest = %digest, "policy accepted; swapping in");
                }
                Err(e) => self.reject(&path, &format!("{e:#}")),
            }
        }
    }

    fn reject(&mut self, path: &Path, why: &str) {
        self.rejected += 1;
        self.last_rejection = format!("{}: {why}", path.display());
        tracing::error!(path = %path.display(), "policy rejected, keeping the running one: {why}");
    }

    /// Ok(None): not newer than the running version (ignored).
    fn check(&self, path: &Path, recent: &[(Vec<f32>, Vec<f32>)]) -> Result<Option<ModelFile>> {
        let m = ModelFile::load(path).context("validation")?;
        let cur = self.current();
        if m.spec.version <= cur.spec.version || m.spec.digest == cur.spec.digest {
            return Ok(None);
        }
        if self.revoked.contains(&m.spec.digest) {
            bail!(
                "version {} ({}) was rolled back; not accepting it again",
                m.spec.version,
                m.spec.digest
            );
        }
        compatible(&cur.spec, &m.spec)?;
        if self.max_divergence > 0.0 && !recent.is_empty() {
            let d = divergence(cur, &m, recent)?;
            if d > self.max_divergence {
                bail!(
                    "mean action divergence {d:.4} on {} recent observations exceeds {}",
                    recent.len(),
                    self.max_divergence
                );
            }
        }
        Ok(Some(m))
    }

    /// Offer the previous accepted version again. Returns its description.
    pub fn rollback(&mut self, chan: &SwapChannel) -> Result<String> {
        if self.accepted.len() < 2 {
            bail!("no previous version to roll back to");
        }
        let (path, undone) = self.accepted.pop().expect("len >= 2");
        self.revoked.insert(undone.spec.digest.clone());
        let (prev_path, prev) = self.accepted.last().expect("len >= 1");
        let sampler = Sampler::new(prev)?;
        if let Some(stale) = chan.incoming.force_push(sampler) {
            drop(stale);
        }
        let msg = format!(
            "rolled back from {} to {} (version {}, {})",
            path.display(),
            prev_path.display(),
            prev.spec.version,
            prev.spec.digest
        );
        self.record();
        tracing::warn!("{msg}");
        Ok(msg)
    }
}

/// Mean absolute difference of the two policies' z = 0 actions (physical
/// units) over the given observations.
fn divergence(a: &ModelFile, b: &ModelFile, recent: &[(Vec<f32>, Vec<f32>)]) -> Result<f64> {
    let (mut sa, mut sb) = (Sampler::new(a)?, Sampler::new(b)?);
    let d = a.spec.act_dim;
    let z = vec![0.0; d];
    let (mut xa, mut xb) = (vec![0.0; d], vec![0.0; d]);
    let mut total = 0.0;
    for (obs, goal) in recent {
        sa.sample_with_noise(obs, goal, &z, &mut xa)?;
        sb.sample_with_noise(obs, goal, &z, &mut xb)?;
        total += xa
            .iter()
            .zip(&xb)
            .map(|(p, q)| (p - q).abs() as f64)
            .sum::<f64>()
            / d as f64;
    }
    Ok(total / recent.len() as f64)
}
