//! Checked weight hand-off to the running node.
//!
//! A learner writes versioned model files into a directory (atomically:
//! temp file, fsync, rename — `ModelFile::save`). The spin thread polls the
//! directory and checks each new file before offering it:
//! - format, finite weights and digest (`ModelFile::load`);
//! - its number: newer than the running version, by at most
//!   [`crate::versions::MAX_VERSION_JUMP`] and not u64::MAX
//!   ([`crate::versions::check_successor`]); an older file that appears
//!   while the node runs is refused (a replay), the older files found at
//!   the first scan are the directory's history and are passed over;
//! - with trusted keys ([`HotSwap::with_trusted_keys`],
//!   `hot_swap.trusted_keys`): a valid signature by one of them over its
//!   digest, version and lineage ([`crate::signing`]), whether the file
//!   came from a local learner or the fleet link;
//! - its line of descent: a version that was rolled back, or descends from
//!   one ([`crate::versions::Lineage`]), is refused;
//! - dims and policy kind against the running model
//!   (`ModelSpec::check_compatible`);
//! - action bounds and observation/goal normalisers unchanged, unless
//!   [`HotSwap::allow_spec_changes`] says otherwise;
//! - a smoke sample on recent observations (or the zero observation):
//!   every action finite and within the candidate's bounds, every log-prob
//!   finite;
//! - an optional cap on action divergence over recent observations.
//!
//! The sampler that passed the smoke sample is offered through a one-slot
//! queue. The control thread swaps it in between two ticks (a move, no
//! allocation) and hands the old sampler back to be dropped here. Accepted
//! and revoked versions are recorded in the directory's accepted record
//! ([`crate::checkpoint`]) so a restarted node resumes with the last
//! accepted version and keeps refusing revoked lines; a rollback restores
//! the previous one. Nothing here runs on the control thread but the two
//! queue operations of [`SwapChannel`].

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::checkpoint::{AcceptedRecord, CheckpointDir};
use crate::policy::model::{Incompatible, ModelError, ModelFile};
use crate::policy::sampler::{SampleError, Sampler, UnsupportedModel};
use crate::rt::handoff::Handoff;
use crate::signing::{SignatureError, TrustedKeys};
use crate::versions::{
    check_successor, resume_order, Lineage, RevocationError, Revocations, VersionError,
};

/// Why a new version was not swapped in (or a rollback not made).
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    #[error("validation: {0}")]
    Invalid(#[from] ModelError),
    #[error(transparent)]
    Incompatible(#[from] Incompatible),
    #[error(transparent)]
    Version(#[from] VersionError),
    #[error("not authenticated: {0}")]
    Signature(#[from] SignatureError),
    #[error("version {version} ({digest}) was rolled back; not accepting it again")]
    Revoked { version: u64, digest: String },
    #[error(
        "version {version} ({digest}) descends from {ancestor}, which was rolled back \
         (or descends from a rolled-back version); not accepting it"
    )]
    RevokedAncestor {
        version: u64,
        digest: String,
        ancestor: String,
    },
    #[error("action bounds changed: {0}")]
    BoundsChanged(String),
    #[error("normaliser changed: {0}")]
    NormalizerChanged(String),
    #[error("smoke sample failed on observation {index} of {n}: {failure}")]
    Smoke {
        index: usize,
        n: usize,
        failure: SmokeFailure,
    },
    #[error("mean action divergence {divergence:.4} on {n} recent observations exceeds {max}")]
    Divergent { divergence: f64, n: usize, max: f64 },
    #[error("building the sampler: {0}")]
    Unsupported(#[from] UnsupportedModel),
    #[error("comparing actions: {0}")]
    Sample(#[from] SampleError),
    #[error("no previous version to roll back to")]
    NoPrevious,
    #[error(transparent)]
    Revocations(#[from] RevocationError),
    #[error("{0}")]
    RevocationsUnreadable(String),
    #[error(
        "{done}, in memory only: the revocation could not be recorded ({source}); \
         the undone versions' files were {aside} so that a restart cannot resume them"
    )]
    Unrecorded {
        done: String,
        source: RevocationError,
        aside: String,
    },
    #[error("no version has run the return guard's episodes yet (or the guard is off)")]
    NoJudged,
}

/// What a candidate's smoke sample got wrong.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
pub enum SmokeFailure {
    #[error("{0}")]
    Sample(#[from] SampleError),
    #[error("action[{dim}] = {value:?} is not finite")]
    ActionNotFinite { dim: usize, value: f32 },
    #[error("action[{dim}] = {value:?} is outside the bounds [{low:?}, {high:?}]")]
    OutOfBounds {
        dim: usize,
        value: f32,
        low: f32,
        high: f32,
    },
    #[error("log-prob {0:?} is not finite")]
    LogProbNotFinite(f32),
}

/// Queues between the spin thread and the control thread: two
/// [`Handoff`]s.
pub struct SwapChannel {
    /// New samplers for the control thread (capacity 1, replace the oldest).
    incoming: Handoff<Sampler>,
    /// Retired samplers, dropped off the control thread (refuse when full).
    retired: Handoff<Sampler>,
}

impl SwapChannel {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            incoming: Handoff::new(1),
            retired: Handoff::new(4),
        })
    }

    /// Offer a checked sampler (spin thread). A pending offer not yet taken
    /// is replaced and returned, to be dropped by the caller.
    pub fn offer(&self, s: Sampler) -> Option<Sampler> {
        self.incoming.push_replacing(s)
    }

    /// Take the offered sampler, if any (control thread: lock-free, no
    /// allocation).
    pub fn take(&self) -> Option<Sampler> {
        self.incoming.pop()
    }

    /// Hand a replaced sampler back to be freed off the control thread;
    /// returns it if the queue is full (the caller then drops it itself).
    pub fn retire(&self, old: Sampler) -> Result<(), Sampler> {
        self.retired.push(old)
    }

    /// A retired sampler, to drop here (spin thread).
    pub fn take_retired(&self) -> Option<Sampler> {
        self.retired.pop()
    }
}

/// The spin thread's view of hot-swapping.
pub struct HotSwap {
    dir: CheckpointDir,
    max_divergence: f64,
    /// Accepted models, oldest first; the last one is running (or offered).
    accepted: Vec<(PathBuf, ModelFile)>,
    seen: HashSet<(PathBuf, std::time::SystemTime)>,
    /// Digests rolled back (by an operator or the guard), and versions
    /// found descending from one: neither they nor their descendants are
    /// offered again ([`crate::versions::Revocations`]: durable).
    revoked: Revocations,
    /// Why the revocation list could not be read at start: then no version
    /// is admitted (fail closed) until the node restarts with it readable.
    revocations_unreadable: Option<String>,
    /// Parent links of every version loaded (for the revoked-line check).
    lineage: Lineage,
    /// Accept changed action bounds and normalisers.
    allow_spec_changes: bool,
    /// Accept only versions signed by one of these (empty: any).
    trusted: TrustedKeys,
    /// Whether the directory was scanned once: older files found then are
    /// its history; an older file that appears later is refused.
    scanned: bool,
    rejected: u64,
    last_rejection: String,
    record_error: String,
    swaps: u64,
    guard: crate::node::guard::ReturnGuard,
    auto_rollbacks: u64,
    last_verdict: String,
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
        let dir = CheckpointDir::new(dir);
        let (revoked, revocations_unreadable) = match Revocations::load(&dir) {
            Ok(r) => (r, None),
            Err(e) => {
                tracing::error!("{e}");
                (Revocations::default(), Some(e.to_string()))
            }
        };
        let mut lineage = Lineage::default();
        lineage.insert(&initial.spec, Some(&initial_path));
        Self {
            dir,
            max_divergence,
            accepted: vec![(initial_path, initial)],
            seen: HashSet::new(),
            revoked,
            revocations_unreadable,
            lineage,
            allow_spec_changes: false,
            trusted: TrustedKeys::default(),
            scanned: false,
            rejected: 0,
            last_rejection: String::new(),
            record_error: String::new(),
            swaps: 0,
            guard: crate::node::guard::ReturnGuard::new(crate::node::guard::GuardConfig {
                episodes: 0,
                margin: 0.0,
                z: 0.0,
                hold: false,
            }),
            auto_rollbacks: 0,
            last_verdict: String::new(),
        }
    }

    /// Accept a version whose action bounds or observation/goal normalisers
    /// differ from the running one's (default: refused, as
    /// [`SwapError::BoundsChanged`] / [`SwapError::NormalizerChanged`]).
    pub fn allow_spec_changes(mut self, allow: bool) -> Self {
        self.allow_spec_changes = allow;
        self
    }

    /// Accept only versions signed by one of `keys` ([`crate::signing`]);
    /// unsigned, forged and foreign-signed versions are refused
    /// ([`SwapError::Signature`]). Empty (the default): versions are not
    /// authenticated. The starting model needs no signature: the operator
    /// chose it.
    pub fn with_trusted_keys(mut self, keys: TrustedKeys) -> Self {
        self.trusted = keys;
        self
    }

    /// The keys versions must be signed by (empty: not authenticated).
    pub fn trusted_keys(&self) -> &TrustedKeys {
        &self.trusted
    }

    /// Judge new versions by their online return ([`crate::node::guard`]) and
    /// roll back one that is clearly worse than its parent.
    pub fn with_guard(mut self, cfg: crate::node::guard::GuardConfig) -> Self {
        self.guard = crate::node::guard::ReturnGuard::new(cfg);
        self
    }

    /// An episode just ended with return `ret`: book it to the running
    /// version; roll back to the best version so far if the guard says so.
    pub fn episode_ended(&mut self, ret: f64, chan: &SwapChannel) {
        let unjudged = self.guard.unjudged();
        let mut line = digests(&self.accepted);
        let live = line.pop().expect("never empty");
        let verdict = self.guard.episode(ret, live, &line);
        if self.guard.unjudged() > unjudged {
            tracing::warn!(
                unjudged = self.guard.unjudged(),
                "a version was replaced before the return guard could judge it; \
                 give each version more episodes (the learner's checkpoint period)"
            );
        }
        let Some(v) = verdict else { return };
        let version = self.current().spec.version;
        let best = v.best().to_string();
        let best_version = self
            .accepted
            .iter()
            .find(|(_, m)| m.spec.digest == best)
            .map_or(0, |(_, m)| m.spec.version);
        match v {
            crate::node::guard::Verdict::Keep {
                new_mean,
                best_mean,
                ..
            } => {
                self.last_verdict = format!(
                    "version {version} kept: mean return {new_mean:.2} against the best so far, version {best_version}'s {best_mean:.2}"
                );
                tracing::info!("{}", self.last_verdict);
            }
            crate::node::guard::Verdict::RollBack {
                new_mean,
                best_mean,
                threshold,
                ..
            } => {
                self.last_verdict = format!(
                    "version {version} rolled back to version {best_version}: mean return {new_mean:.2} is below the best so far ({best_mean:.2}) by more than {threshold:.2}"
                );
                tracing::warn!("{}", self.last_verdict);
                match self.rollback_to(&best, chan) {
                    Ok(_) => self.auto_rollbacks += 1,
                    Err(e) => tracing::error!("automatic rollback failed: {e}"),
                }
            }
        }
    }

    /// Swap in the best version so far by the return guard's bookkeeping
    /// (the highest mean return among accepted versions that ran the
    /// guard's episodes, the running one included), revoking every version
    /// after it: how a session ends on the robot's best policy rather than
    /// the newest, unjudged one. Returns what it did.
    pub fn keep_best(&mut self, chan: &SwapChannel) -> Result<String, SwapError> {
        let (best, mean, n) = self
            .guard
            .best(&digests(&self.accepted))
            .ok_or(SwapError::NoJudged)?;
        let best = best.to_string();
        let cur = self.current();
        if cur.spec.digest == best {
            return Ok(format!(
                "version {} is already the best so far (mean return {mean:.2} over {n} episodes)",
                cur.spec.version
            ));
        }
        let msg = self.rollback_to(&best, chan)?;
        Ok(format!(
            "the best so far (mean return {mean:.2} over {n} episodes): {msg}"
        ))
    }

    /// Rollbacks made by the return guard, and its latest verdict.
    pub fn auto_rollbacks(&self) -> u64 {
        self.auto_rollbacks
    }
    pub fn last_verdict(&self) -> &str {
        &self.last_verdict
    }

    /// After a restart: the newest version in the accepted record that
    /// passes every check a hot swap applies ([`Self::admit`]: signature,
    /// revoked line, compatibility, unchanged bounds and normalisers, smoke
    /// sample) and is newer than the starting model; older entries are
    /// tried in turn when a newer one fails. None: start with the starting
    /// model (the record is empty, every entry fails, the starting model is
    /// as new, or the revocation list is unreadable). Call before the node
    /// runs, then build the running hot swap from what it returns.
    pub fn resume(&mut self) -> Option<(PathBuf, ModelFile)> {
        if let Some(e) = &self.revocations_unreadable {
            tracing::error!("not resuming an accepted version: {e}");
            return None;
        }
        // Every ancestor on disk, for the revoked-line check.
        self.lineage.extend(Lineage::scan(&self.dir));
        let record = self.dir.accepted();
        let start = self.current().clone();
        for path in resume_order(&record) {
            let m = match ModelFile::load(path) {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(path = %path.display(), "an accepted version no longer loads ({e}); trying the one before");
                    continue;
                }
            };
            if m.spec.digest == start.spec.digest {
                return None;
            }
            if let Err(e) = check_successor(start.spec.version, m.spec.version) {
                tracing::warn!(path = %path.display(), "not resuming the last accepted version: {e}; starting from `model`");
                return None;
            }
            self.lineage.insert(&m.spec, Some(path));
            match self.admit(&m, &[]) {
                Ok(_) => return Some((path.to_path_buf(), m)),
                Err(e) => {
                    tracing::warn!(path = %path.display(), version = m.spec.version, "not resuming an accepted version: {e}; trying the one before");
                }
            }
        }
        None
    }

    pub fn current(&self) -> &ModelFile {
        &self.accepted.last().expect("never empty").1
    }

    /// Rejections since start, and the last one's reason.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }
    pub fn last_rejection(&self) -> &str {
        &self.last_rejection
    }
    /// Versions swapped in since start.
    pub fn swaps(&self) -> u64 {
        self.swaps
    }

    /// Why the accepted record could not be written last time (empty when
    /// the latest write succeeded). The swap itself stands; a restart would
    /// resume from the older record.
    pub fn record_error(&self) -> &str {
        &self.record_error
    }

    fn record(&mut self) {
        let r = AcceptedRecord {
            accepted: self.accepted.iter().map(|(p, _)| p.clone()).collect(),
            revoked: self.revoked.to_set(),
        };
        match self.dir.record_accepted(&r) {
            Ok(()) => self.record_error.clear(),
            Err(e) => {
                tracing::warn!("cannot record the accepted version: {e}");
                self.record_error = e.to_string();
            }
        }
    }

    /// Look for new versions; offer the newest valid one. `recent` holds
    /// recent (obs, goal) snapshots for the divergence check.
    pub fn poll(&mut self, chan: &SwapChannel, recent: &[(Vec<f32>, Vec<f32>)]) {
        while let Some(old) = chan.take_retired() {
            drop(old); // freed here, not on the control thread
        }
        // The running version (or the offer not yet taken) first runs the
        // return guard's episodes; newer files wait in the directory and
        // the newest valid one is offered once it has.
        let live = &self.accepted.last().expect("never empty").1.spec.digest;
        if self.guard.holds(live) {
            return;
        }
        let candidates: Vec<_> = self
            .dir
            .policies()
            .into_iter()
            .filter(|k| !self.seen.contains(k))
            .collect();
        // A file older than what runs now but newer than what ran when
        // this scan began was superseded within the scan: passed over.
        let base = self.current().spec.version;
        for (path, mtime) in candidates {
            self.seen.insert((path.clone(), mtime));
            let m = match ModelFile::load(&path) {
                Ok(m) => m,
                Err(e) => {
                    self.reject(&path, &SwapError::from(e).to_string());
                    continue;
                }
            };
            self.lineage.insert(&m.spec, Some(&path));
            match self.check(m, recent, base) {
                Ok(None) => {}
                Ok(Some((m, sampler))) => {
                    let version = m.spec.version;
                    let digest = m.spec.digest.clone();
                    // A pending offer not yet taken is replaced by the newer one.
                    if let Some(stale) = chan.offer(sampler) {
                        drop(stale);
                        self.accepted.pop();
                    }
                    self.accepted.push((path.clone(), m));
                    self.swaps += 1;
                    self.record();
                    tracing::info!(path = %path.display(), version, digest = %digest, "policy accepted; swapping in");
                }
                Err(e) => {
                    if let SwapError::RevokedAncestor {
                        version,
                        digest,
                        ancestor,
                    } = &e
                    {
                        // Condemn it too: its own descendants are then
                        // refused even if its ancestors' files are gone.
                        let (d, v) = (digest.clone(), *version);
                        let why = format!("descends from the revoked {ancestor}");
                        if let Err(w) = self.revoked.revoke(&self.dir, &[(&d, v)], &why) {
                            tracing::warn!("{w}");
                            self.revoked.insert_derived(&d);
                        }
                        self.record();
                    }
                    self.reject(&path, &e.to_string());
                }
            }
        }
        self.scanned = true;
    }

    fn reject(&mut self, path: &Path, why: &str) {
        self.rejected += 1;
        self.last_rejection = format!("{}: {why}", path.display());
        tracing::error!(path = %path.display(), "policy rejected, keeping the running one: {why}");
    }

    /// Ok(None): passed over (a version accepted before, the directory's
    /// history at the first scan, or superseded within this scan, whose
    /// version was `base` when it began). Ok(Some): the model with the
    /// sampler that passed the smoke sample, to offer.
    fn check(
        &self,
        m: ModelFile,
        recent: &[(Vec<f32>, Vec<f32>)],
        base: u64,
    ) -> Result<Option<(ModelFile, Sampler)>, SwapError> {
        let cur = self.current();
        if self
            .accepted
            .iter()
            .any(|(_, a)| a.spec.digest == m.spec.digest)
        {
            return Ok(None);
        }
        match check_successor(cur.spec.version, m.spec.version) {
            Ok(()) => {}
            Err(VersionError::NotNewer { version, .. }) if !self.scanned || version > base => {
                return Ok(None)
            }
            Err(e) => return Err(e.into()),
        }
        let sampler = self.admit(&m, recent)?;
        Ok(Some((m, sampler)))
    }

    /// Every check a version must pass to run in place of the running one,
    /// whether it is new (a poll) or resumed after a restart: the
    /// revocation list is readable; signed by a trusted key (when keys are
    /// set); no revoked version on its line; compatible; unchanged bounds
    /// and normalisers (unless allowed); a smoke sample on `recent` (or the
    /// zero observation); the divergence cap. Returns the sampler that
    /// passed the smoke sample.
    fn admit(&self, m: &ModelFile, recent: &[(Vec<f32>, Vec<f32>)]) -> Result<Sampler, SwapError> {
        let cur = self.current();
        if let Some(e) = &self.revocations_unreadable {
            return Err(SwapError::RevocationsUnreadable(e.clone()));
        }
        if !self.trusted.is_empty() {
            self.trusted.verify(m)?;
        }
        if let Some(r) = self
            .lineage
            .first_revoked(&m.spec, |d| self.revoked.contains(d))
        {
            let (version, digest) = (m.spec.version, m.spec.digest.clone());
            return Err(if r == digest {
                SwapError::Revoked { version, digest }
            } else {
                SwapError::RevokedAncestor {
                    version,
                    digest,
                    ancestor: r,
                }
            });
        }
        cur.spec.check_compatible(&m.spec)?;
        if !self.allow_spec_changes {
            unchanged_spec(&cur.spec, &m.spec)?;
        }
        let mut sampler = Sampler::new(m)?;
        smoke_sample(&mut sampler, recent)?;
        if self.max_divergence > 0.0 && !recent.is_empty() {
            let d = divergence(cur, &mut sampler, recent)?;
            if d > self.max_divergence {
                return Err(SwapError::Divergent {
                    divergence: d,
                    n: recent.len(),
                    max: self.max_divergence,
                });
            }
        }
        Ok(sampler)
    }

    /// Offer the previous accepted version again. Returns its description.
    pub fn rollback(&mut self, chan: &SwapChannel) -> Result<String, SwapError> {
        let n = self.accepted.len();
        if n < 2 {
            return Err(SwapError::NoPrevious);
        }
        let prev = self.accepted[n - 2].1.spec.digest.clone();
        self.rollback_to(&prev, chan)
    }

    /// Revoke every version accepted after `digest` and offer `digest`
    /// again (an earlier accepted version). Returns its description.
    fn rollback_to(&mut self, digest: &str, chan: &SwapChannel) -> Result<String, SwapError> {
        let Some(keep) = self.accepted[..self.accepted.len() - 1]
            .iter()
            .rposition(|(_, m)| m.spec.digest == digest)
        else {
            return Err(SwapError::NoPrevious);
        };
        let sampler = Sampler::new(&self.accepted[keep].1)?;
        let (path, _) = self.accepted.last().expect("len >= 2").clone();
        let undone: Vec<(PathBuf, ModelFile)> = self.accepted.drain(keep + 1..).collect();
        let (prev_path, prev) = self.accepted.last().expect("kept");
        let msg = format!(
            "rolled back from {} to {} (version {}, {})",
            path.display(),
            prev_path.display(),
            prev.spec.version,
            prev.spec.digest
        );
        // Durable before anything is acknowledged; the running version is
        // replaced either way (the robot stops running the undone one).
        let entries: Vec<(&str, u64)> = undone
            .iter()
            .map(|(_, m)| (m.spec.digest.as_str(), m.spec.version))
            .collect();
        let recorded = self
            .revoked
            .revoke(&self.dir, &entries, &format!("rollback: {msg}"));
        if let Some(stale) = chan.offer(sampler) {
            drop(stale);
        }
        if let Err(source) = recorded {
            for (_, m) in &undone {
                self.revoked.insert_derived(&m.spec.digest);
            }
            // Fail closed on disk without needing space: rename the undone
            // files out of every scan (a rename allocates no data blocks).
            let aside: Vec<String> = undone
                .iter()
                .filter_map(|(p, _)| {
                    let to = crate::checkpoint::set_aside_path(p);
                    match std::fs::rename(p, &to) {
                        Ok(()) => Some(to.display().to_string()),
                        Err(e) => {
                            tracing::error!(path = %p.display(), "cannot set a revoked version aside: {e}");
                            None
                        }
                    }
                })
                .collect();
            self.record();
            let e = SwapError::Unrecorded {
                done: msg,
                source,
                aside: if aside.is_empty() {
                    "NOT renamed either".into()
                } else {
                    format!("renamed to {}", aside.join(", "))
                },
            };
            self.record_error = e.to_string();
            tracing::error!("{e}");
            return Err(e);
        }
        self.record();
        tracing::warn!("{msg}");
        Ok(msg)
    }
}

/// The digests of `accepted`, oldest first (the running one last).
fn digests(accepted: &[(PathBuf, ModelFile)]) -> Vec<&str> {
    accepted
        .iter()
        .map(|(_, m)| m.spec.digest.as_str())
        .collect()
}

mod checks;
#[cfg(test)]
mod tests;

use checks::{divergence, smoke_sample, unchanged_spec};
