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
use crate::policy::model::{Incompatible, ModelError, ModelFile, ModelSpec};
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

/// The first differences between two sets of named vectors, as
/// `name[i] old -> new` (at most three, then how many more).
fn differences(fields: &[(&str, &[f32], &[f32])]) -> Option<String> {
    let mut found = Vec::new();
    for (name, old, new) in fields {
        if old.len() != new.len() {
            found.push(format!("{name}: {} -> {} entries", old.len(), new.len()));
            continue;
        }
        for (i, (a, b)) in old.iter().zip(*new).enumerate() {
            if a != b {
                found.push(format!("{name}[{i}] {a:?} -> {b:?}"));
            }
        }
    }
    match found.len() {
        0 => None,
        n if n <= 3 => Some(found.join(", ")),
        n => Some(format!("{} (and {} more)", found[..3].join(", "), n - 3)),
    }
}

/// Refuse a candidate whose action bounds or observation/goal normalisers
/// differ from the running model's: the same robot signals would mean
/// something else to it.
fn unchanged_spec(cur: &ModelSpec, new: &ModelSpec) -> Result<(), SwapError> {
    if let Some(d) = differences(&[
        ("action_low", &cur.action_low, &new.action_low),
        ("action_high", &cur.action_high, &new.action_high),
    ]) {
        return Err(SwapError::BoundsChanged(d));
    }
    fn parts(n: &Option<crate::policy::model::Normalizer>) -> (&[f32], &[f32]) {
        n.as_ref()
            .map_or((&[][..], &[][..]), |n| (&n.mean[..], &n.std[..]))
    }
    let (cgm, cgs) = parts(&cur.goal_norm);
    let (ngm, ngs) = parts(&new.goal_norm);
    if let Some(d) = differences(&[
        ("obs_norm.mean", &cur.obs_norm.mean, &new.obs_norm.mean),
        ("obs_norm.std", &cur.obs_norm.std, &new.obs_norm.std),
        ("goal_norm.mean", cgm, ngm),
        ("goal_norm.std", cgs, ngs),
    ]) {
        return Err(SwapError::NormalizerChanged(d));
    }
    Ok(())
}

/// Sample the candidate on each recent observation (the zero observation
/// if there is none), with z = 0 and with one seeded z ~ N(0, I): every
/// action must be finite and within the candidate's bounds, every log-prob
/// finite.
fn smoke_sample(s: &mut Sampler, recent: &[(Vec<f32>, Vec<f32>)]) -> Result<(), SwapError> {
    let spec = s.spec();
    let (d, low, high) = (
        spec.act_dim,
        spec.action_low.clone(),
        spec.action_high.clone(),
    );
    let zero = [(vec![0.0; spec.obs_dim], vec![0.0; spec.goal_dim])];
    let obs = if recent.is_empty() { &zero[..] } else { recent };
    let n = obs.len();
    let (z, mut act) = (vec![0.0; d], vec![0.0; d]);
    for (index, (o, g)) in obs.iter().enumerate() {
        for seeded in [false, true] {
            let lp = if seeded {
                s.sample_seeded(o, g, 0x5EED, index as u64, &mut act)
            } else {
                s.sample_with_noise(o, g, &z, &mut act)
            };
            let fail = |failure| SwapError::Smoke { index, n, failure };
            let lp = lp.map_err(|e| fail(e.into()))?;
            if !lp.is_finite() {
                return Err(fail(SmokeFailure::LogProbNotFinite(lp)));
            }
            for (dim, &value) in act.iter().enumerate() {
                let (lo, hi) = (low[dim], high[dim]);
                if !value.is_finite() {
                    return Err(fail(SmokeFailure::ActionNotFinite { dim, value }));
                }
                // mid + half·1 may round a few ulps past a bound.
                let tol = 4.0 * f32::EPSILON * lo.abs().max(hi.abs()).max(1.0);
                if value < lo - tol || value > hi + tol {
                    return Err(fail(SmokeFailure::OutOfBounds {
                        dim,
                        value,
                        low: lo,
                        high: hi,
                    }));
                }
            }
        }
    }
    Ok(())
}

/// Mean absolute difference of the running policy's and the candidate's
/// z = 0 actions (physical units) over the given observations.
fn divergence(
    a: &ModelFile,
    sb: &mut Sampler,
    recent: &[(Vec<f32>, Vec<f32>)],
) -> Result<f64, SwapError> {
    let mut sa = Sampler::new(a)?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Direction, PolicyKind};
    use crate::testkit::random_model;

    /// A policy version with its own weights (so its own digest).
    fn version(v: u64, act: usize, seed: u64) -> ModelFile {
        let m = random_model(act, 0, false, Direction::Inverse, PolicyKind::Flow, seed);
        let mut spec = m.spec.clone();
        spec.version = v;
        ModelFile::new(spec, m.tensors().clone()).unwrap()
    }

    /// A version of `parent`'s line, as a learner writes it.
    fn child(parent: &ModelFile, v: u64, seed: u64) -> ModelFile {
        with_spec(v, seed, |spec| {
            spec.parent_digest = Some(parent.spec.digest.clone());
            spec.parent_version = Some(parent.spec.version);
        })
    }

    /// A version with its spec edited.
    fn with_spec(v: u64, seed: u64, edit: impl FnOnce(&mut ModelSpec)) -> ModelFile {
        let m = version(v, 2, seed);
        let mut spec = m.spec.clone();
        edit(&mut spec);
        ModelFile::new(spec, m.tensors().clone()).unwrap()
    }

    struct Setup {
        _tmp: tempfile::TempDir,
        dir: CheckpointDir,
        chan: Arc<SwapChannel>,
        hot: HotSwap,
    }

    fn setup(max_divergence: f64) -> Setup {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path());
        let v1 = version(1, 2, 1);
        let p1 = dir.policy_path(1);
        v1.save(&p1).unwrap();
        let hot = HotSwap::new(tmp.path().into(), max_divergence, p1, v1);
        Setup {
            _tmp: tmp,
            dir,
            chan: SwapChannel::new(),
            hot,
        }
    }

    #[test]
    fn accepts_a_newer_compatible_version_and_records_it() {
        let mut s = setup(0.0);
        let v2 = version(2, 2, 2);
        v2.save(s.dir.policy_path(2)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!(s.hot.swaps(), 1);
        assert_eq!(s.hot.current().spec.digest, v2.spec.digest);
        let offered = s.chan.take().expect("a sampler is offered");
        assert_eq!(offered.spec().digest, v2.spec.digest);
        // polled again, nothing new
        s.hot.poll(&s.chan, &[]);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 0));
        // resume after a restart picks the last accepted version
        let (p, m) = restarted(&s).resume().unwrap();
        assert_eq!((p, m.spec.digest), (s.dir.policy_path(2), v2.spec.digest));
    }

    #[test]
    fn rejects_bad_files_other_dims_and_divergent_versions() {
        let mut s = setup(1e-6);
        std::fs::write(s.dir.policy_path(5), b"not a model").unwrap();
        version(6, 3, 3).save(s.dir.policy_path(6)).unwrap(); // act 3, running act 2
        s.hot.poll(&s.chan, &[]);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 2));
        assert!(
            s.hot.last_rejection().contains("dims/kind differ"),
            "{}",
            s.hot.last_rejection()
        );
        // different weights act differently: over the divergence cap
        version(7, 2, 4).save(s.dir.policy_path(7)).unwrap();
        let recent = vec![(vec![0.1; 5], vec![]), (vec![-0.3; 5], vec![])];
        s.hot.poll(&s.chan, &recent);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 3));
        assert!(
            s.hot.last_rejection().contains("divergence"),
            "{}",
            s.hot.last_rejection()
        );
        assert!(s.chan.take().is_none(), "nothing offered");
        assert_eq!(s.hot.current().spec.version, 1);
        // an older version appearing while the node runs is refused (a
        // replay, or out of order)
        version(0, 2, 5)
            .save(s.dir.path().join("old.safetensors"))
            .unwrap();
        s.hot.poll(&s.chan, &recent);
        assert_eq!(s.hot.rejected(), 4);
        assert!(
            s.hot
                .last_rejection()
                .ends_with("version 0 is not newer than the running version 1 (an old version replayed, or out of order)"),
            "{}",
            s.hot.last_rejection()
        );
    }

    #[test]
    fn older_files_found_at_the_first_scan_are_history_not_rejections() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CheckpointDir::new(tmp.path());
        for v in 1..=3 {
            version(v, 2, v).save(dir.policy_path(v)).unwrap();
        }
        let v3 = ModelFile::load(dir.policy_path(3)).unwrap();
        let mut hot = HotSwap::new(tmp.path().into(), 0.0, dir.policy_path(3), v3);
        let chan = SwapChannel::new();
        hot.poll(&chan, &[]);
        assert_eq!((hot.swaps(), hot.rejected()), (0, 0));
        // two new versions in one scan, the newer one first by name: the
        // older is superseded within the scan, not refused
        version(5, 2, 5)
            .save(tmp.path().join("a_v5.safetensors"))
            .unwrap();
        version(4, 2, 4)
            .save(tmp.path().join("b_v4.safetensors"))
            .unwrap();
        hot.poll(&chan, &[]);
        assert_eq!(
            (hot.swaps(), hot.rejected()),
            (1, 0),
            "{}",
            hot.last_rejection()
        );
        assert_eq!(hot.current().spec.version, 5);
    }

    #[test]
    fn an_implausible_version_number_is_refused_and_later_versions_still_run() {
        use crate::versions::MAX_VERSION_JUMP;
        let mut s = setup(0.0);
        version(u64::MAX, 2, 2)
            .save(s.dir.policy_path(u64::MAX))
            .unwrap();
        assert_only_rejection(
            &mut s,
            "version 18446744073709551615 is implausible after the running version 1: more than \
             1000000 above it, or the largest number (no version could follow it)",
        );
        let far = 2 + MAX_VERSION_JUMP;
        version(far, 2, 3).save(s.dir.policy_path(far)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 2));
        assert!(
            s.hot.last_rejection().contains("is implausible"),
            "{}",
            s.hot.last_rejection()
        );
        // nothing is stuck: the next genuine version runs
        version(2, 2, 4).save(s.dir.policy_path(2)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 2));
        assert_eq!(s.chan.take().unwrap().spec().version, 2);
    }

    /// `s` restarted trusting `keys`.
    fn keyed(s: &mut Setup, keys: &[&crate::signing::PolicySigner]) {
        let (p1, m1) = (s.dir.policy_path(1), s.hot.current().clone());
        let keys = TrustedKeys::new(keys.iter().map(|k| k.public_key()).collect());
        s.hot = HotSwap::new(s.dir.path().into(), 0.0, p1, m1).with_trusted_keys(keys);
    }

    #[test]
    fn with_trusted_keys_only_versions_signed_by_one_of_them_run() {
        use crate::signing::PolicySigner;
        let (ours, theirs) = (
            PolicySigner::generate().unwrap(),
            PolicySigner::generate().unwrap(),
        );
        let mut s = setup(0.0);
        keyed(&mut s, &[&ours]);
        let v1 = s.hot.current().clone();
        // unsigned
        child(&v1, 2, 2).save(s.dir.policy_path(2)).unwrap();
        assert_only_rejection(
            &mut s,
            "not authenticated: unsigned: this node accepts only versions signed by a key in hot_swap.trusted_keys",
        );
        // signed by a key the node does not trust
        theirs
            .sign(child(&v1, 3, 3))
            .save(s.dir.policy_path(3))
            .unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 2));
        let why = s.hot.last_rejection();
        assert!(
            why.ends_with(&format!(
                "not authenticated: signed by {}, which is not in hot_swap.trusted_keys",
                theirs.public_key()
            )),
            "{why}"
        );
        // a genuine version
        let v4 = ours.sign(child(&v1, 4, 4));
        v4.save(s.dir.policy_path(4)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!(
            (s.hot.swaps(), s.hot.rejected()),
            (1, 2),
            "{}",
            s.hot.last_rejection()
        );
        assert_eq!(s.chan.take().unwrap().spec().digest, v4.spec.digest);
        // the genuine version replayed as a newer one: renumbered, its
        // digest restamped, the signature kept
        let mut spec = v4.spec.clone();
        spec.version = 9;
        let replay = ModelFile::new(spec, v4.tensors().clone())
            .unwrap()
            .with_signature(v4.signature().unwrap().to_string());
        replay.save(s.dir.policy_path(9)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 3));
        let why = s.hot.last_rejection();
        assert!(
            why.contains("not authenticated: the signature by")
                && why.contains("renumbered or altered after it was signed"),
            "{why}"
        );
        // an old genuine version offered again (same number): not newer
        let old = ours.sign(child(&v1, 3, 30));
        old.save(s.dir.path().join("again.safetensors")).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 4));
        assert!(
            s.hot
                .last_rejection()
                .contains("is not newer than the running version 4"),
            "{}",
            s.hot.last_rejection()
        );
        assert_eq!(s.hot.current().spec.digest, v4.spec.digest);
        assert!(s.chan.take().is_none());
        // refused versions are not revoked (nothing recorded for them)
        assert!(s.dir.accepted().revoked.is_empty());
    }

    #[test]
    fn two_trusted_keys_during_a_change_over() {
        use crate::signing::PolicySigner;
        let (old, new) = (
            PolicySigner::generate().unwrap(),
            PolicySigner::generate().unwrap(),
        );
        let mut s = setup(0.0);
        keyed(&mut s, &[&old, &new]);
        let v1 = s.hot.current().clone();
        let v2 = old.sign(child(&v1, 2, 2));
        v2.save(s.dir.policy_path(2)).unwrap();
        s.hot.poll(&s.chan, &[]);
        let v3 = new.sign(child(&v2, 3, 3));
        v3.save(s.dir.policy_path(3)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!(
            (s.hot.swaps(), s.hot.rejected()),
            (2, 0),
            "{}",
            s.hot.last_rejection()
        );
        assert_eq!(s.hot.current().spec.digest, v3.spec.digest);
    }

    #[test]
    fn rollback_offers_the_previous_version_and_revokes_the_undone_one() {
        let mut s = setup(0.0);
        assert!(matches!(
            s.hot.rollback(&s.chan),
            Err(SwapError::NoPrevious)
        ));
        let v1 = s.hot.current().spec.digest.clone();
        let v2 = version(2, 2, 2);
        v2.save(s.dir.policy_path(2)).unwrap();
        s.hot.poll(&s.chan, &[]);
        s.chan.take().unwrap();
        let msg = s.hot.rollback(&s.chan).unwrap();
        assert!(msg.contains("rolled back"), "{msg}");
        assert_eq!(s.chan.take().unwrap().spec().digest, v1);
        assert_eq!(s.hot.current().spec.digest, v1);
        // the revoked version is remembered across a restart and refused
        let rec = s.dir.accepted();
        assert!(rec.revoked.contains(&v2.spec.digest));
        assert_eq!(rec.accepted, vec![s.dir.policy_path(1)]);
        let m1 = ModelFile::load(s.dir.policy_path(1)).unwrap();
        let mut again = HotSwap::new(s.dir.path().into(), 0.0, s.dir.policy_path(1), m1);
        std::fs::remove_file(s.dir.policy_path(2)).unwrap();
        v2.save(s.dir.policy_path(2)).unwrap();
        again.poll(&s.chan, &[]);
        assert_eq!((again.swaps(), again.rejected()), (0, 1));
        assert!(
            again.last_rejection().contains("rolled back"),
            "{}",
            again.last_rejection()
        );
    }

    /// A node restarted on `s`'s directory with `model` = version 1.
    fn restarted(s: &Setup) -> HotSwap {
        let m1 = ModelFile::load(s.dir.policy_path(1)).unwrap();
        HotSwap::new(s.dir.path().into(), 0.0, s.dir.policy_path(1), m1)
    }

    /// `s` with version 2 accepted and then rolled back.
    fn rolled_back_v2(s: &mut Setup) -> ModelFile {
        let v2 = child(s.hot.current(), 2, 2);
        v2.save(s.dir.policy_path(2)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!(s.hot.swaps(), 1);
        s.chan.take().unwrap();
        v2
    }

    #[test]
    fn a_revocation_outlives_a_lost_accepted_record() {
        let mut s = setup(0.0);
        let v2 = rolled_back_v2(&mut s);
        s.hot.rollback(&s.chan).unwrap();
        s.chan.take().unwrap();
        let log = std::fs::read_to_string(s.dir.revocation_log_path()).unwrap();
        assert!(
            log.starts_with(&format!("revoked {} version=2 ", v2.spec.digest)),
            "{log}"
        );
        // what the old warning advised: delete the record
        std::fs::remove_file(s.dir.path().join(".flowpilot_accepted")).unwrap();
        let mut again = restarted(&s);
        assert!(again.resume().is_none());
        again.poll(&s.chan, &[]);
        assert_eq!((again.swaps(), again.rejected()), (0, 1));
        assert!(
            again.last_rejection().contains("was rolled back"),
            "{}",
            again.last_rejection()
        );
        // and its descendants, written after the rollback
        child(&v2, 3, 3).save(s.dir.policy_path(3)).unwrap();
        again.poll(&s.chan, &[]);
        assert_eq!((again.swaps(), again.rejected()), (0, 2));
        assert!(
            again.last_rejection().contains("descends from"),
            "{}",
            again.last_rejection()
        );
        assert!(s.chan.take().is_none());
    }

    #[test]
    fn a_rollback_whose_revocation_cannot_be_written_is_not_acknowledged_and_fails_closed() {
        let mut s = setup(0.0);
        let v2 = rolled_back_v2(&mut s);
        // every write to the revocation log fails with ENOSPC
        std::os::unix::fs::symlink("/dev/full", s.dir.revocation_log_path()).unwrap();
        let e = s.hot.rollback(&s.chan).unwrap_err();
        assert!(matches!(e, SwapError::Unrecorded { .. }), "{e}");
        let why = e.to_string();
        assert!(
            why.contains("in memory only") && why.contains("No space left"),
            "{why}"
        );
        // the robot runs version 1 anyway
        assert_eq!(
            s.chan.take().unwrap().spec().digest,
            s.hot.current().spec.digest
        );
        assert_eq!(s.hot.current().spec.version, 1);
        assert!(!s.hot.record_error().is_empty());
        // the undone file is out of every scan, and a stale record that
        // still names it (its write failed too) resumes nothing
        assert!(!s.dir.policy_path(2).exists());
        assert!(crate::checkpoint::set_aside_path(&s.dir.policy_path(2)).exists());
        std::fs::remove_file(s.dir.revocation_log_path()).unwrap();
        s.dir
            .record_accepted(&AcceptedRecord {
                accepted: vec![s.dir.policy_path(1), s.dir.policy_path(2)],
                revoked: Default::default(),
            })
            .unwrap();
        let mut again = restarted(&s);
        assert!(again.resume().is_none());
        again.poll(&s.chan, &[]);
        assert_eq!(again.swaps(), 0);
        let _ = v2;
    }

    #[test]
    fn an_unreadable_revocation_list_admits_nothing() {
        let mut s = setup(0.0);
        let v2 = rolled_back_v2(&mut s);
        s.dir
            .record_accepted(&AcceptedRecord {
                accepted: vec![s.dir.policy_path(1), s.dir.policy_path(2)],
                revoked: Default::default(),
            })
            .unwrap();
        std::fs::write(
            s.dir.revocation_log_path(),
            "revoked sha256:00 version=2
garbage
",
        )
        .unwrap();
        let mut again = restarted(&s);
        assert!(
            again.resume().is_none(),
            "not resumed while the list is unreadable"
        );
        child(&v2, 3, 3).save(s.dir.policy_path(3)).unwrap();
        again.poll(&s.chan, &[]);
        assert_eq!(again.swaps(), 0);
        assert!(
            again.last_rejection().contains("malformed at line 2"),
            "{}",
            again.last_rejection()
        );
        // a torn last line (a crash mid-append) is not malformed
        std::fs::write(
            s.dir.revocation_log_path(),
            "revoked sha256:00 version=2
revoked sha2",
        )
        .unwrap();
        assert!(restarted(&s).resume().is_some());
    }

    #[test]
    fn resume_applies_every_check_a_hot_swap_applies() {
        let mut s = setup(0.0);
        let v1 = s.hot.current().clone();
        // a changed action bound, an unsigned version, then a good one
        let bounds = with_spec(2, 2, |spec| spec.action_high[1] = 4.0);
        bounds.save(s.dir.policy_path(2)).unwrap();
        let good = child(&v1, 3, 3);
        good.save(s.dir.policy_path(3)).unwrap();
        let record = |paths: &[u64]| AcceptedRecord {
            accepted: paths.iter().map(|v| s.dir.policy_path(*v)).collect(),
            revoked: Default::default(),
        };
        // a record naming the changed-bounds version last: refused, the
        // one before it (3) runs
        s.dir.record_accepted(&record(&[1, 3, 2])).unwrap();
        let (p, _) = restarted(&s).resume().expect("falls back to version 3");
        assert_eq!(p, s.dir.policy_path(3));
        // a revoked version named last (its record write lost)
        s.hot
            .revoked
            .revoke(&s.dir, &[(good.spec.digest.as_str(), 3)], "test")
            .unwrap();
        s.dir.record_accepted(&record(&[1, 3])).unwrap();
        assert!(restarted(&s).resume().is_none());
        // with trusted keys, an unsigned version is not resumed
        let key = crate::signing::PolicySigner::generate().unwrap();
        let signed = key.sign(child(&v1, 4, 4));
        signed.save(s.dir.policy_path(4)).unwrap();
        child(&v1, 5, 5).save(s.dir.policy_path(5)).unwrap();
        s.dir.record_accepted(&record(&[1, 4, 5])).unwrap();
        let mut keyed = restarted(&s)
            .with_trusted_keys(crate::signing::TrustedKeys::new(vec![key.public_key()]));
        let (p, _) = keyed.resume().expect("the signed one");
        assert_eq!(p, s.dir.policy_path(4));
        // a version numbered u64::MAX is not resumed
        with_spec(u64::MAX, 6, |_| {})
            .save(s.dir.policy_path(6))
            .unwrap();
        s.dir.record_accepted(&record(&[1, 6])).unwrap();
        assert!(restarted(&s).resume().is_none());
    }

    /// `s` restarted with a return guard judging on 3 episodes.
    fn guarded(s: &mut Setup, margin: f64) {
        guarded_holding(s, margin, false)
    }

    fn guarded_holding(s: &mut Setup, margin: f64, hold: bool) {
        s.hot = HotSwap::new(
            s.dir.path().into(),
            0.0,
            s.dir.policy_path(1),
            version(1, 2, 1),
        )
        .with_guard(crate::node::guard::GuardConfig {
            episodes: 3,
            margin,
            z: 2.0,
            hold,
        });
    }

    #[test]
    fn the_guard_rolls_a_slow_slide_back_to_the_best_version() {
        let mut s = setup(0.0);
        guarded(&mut s, 0.5);
        // each version runs one swap episode (booked to nobody), then 3
        let run = |s: &mut Setup, ret: f64| {
            for _ in 0..4 {
                s.hot.episode_ended(ret, &s.chan);
            }
        };
        run(&mut s, -5.0);
        let mut parent = s.hot.current().clone();
        for (v, ret) in [(2, -4.0), (3, -4.4), (4, -4.8)] {
            let m = child(&parent, v, v);
            m.save(s.dir.policy_path(v)).unwrap();
            s.hot.poll(&s.chan, &[]);
            s.chan.take().unwrap();
            run(&mut s, ret);
            parent = m;
        }
        // v4 is 0.4 below its parent, 0.8 below the best (v2): undone, and
        // v3 with it
        assert_eq!(s.hot.auto_rollbacks(), 1, "{}", s.hot.last_verdict());
        assert!(
            s.hot.last_verdict().contains("rolled back to version 2"),
            "{}",
            s.hot.last_verdict()
        );
        assert_eq!(s.hot.current().spec.version, 2);
        assert_eq!(s.chan.take().unwrap().spec().version, 2);
        let revoked = s.dir.accepted().revoked;
        for v in [3, 4] {
            let d = ModelFile::load(s.dir.policy_path(v)).unwrap().spec.digest;
            assert!(revoked.contains(&d), "version {v} revoked");
        }
        // v2 is the best so far: keeping the best changes nothing
        let msg = s.hot.keep_best(&s.chan).unwrap();
        assert!(msg.contains("version 2 is already the best"), "{msg}");
        // and the learner's next version on v4's line is refused
        child(&parent, 5, 5).save(s.dir.policy_path(5)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!(s.hot.current().spec.version, 2);
        assert!(
            s.hot.last_rejection().contains("rolled back"),
            "{}",
            s.hot.last_rejection()
        );
    }

    #[test]
    fn with_hold_a_new_version_waits_until_the_live_one_ran_its_episodes() {
        let mut s = setup(0.0);
        guarded_holding(&mut s, 0.5, true);
        let v2 = child(s.hot.current(), 2, 2);
        v2.save(s.dir.policy_path(2)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert!(s.chan.take().is_none(), "the start has run no episode");
        for _ in 0..3 {
            s.hot.episode_ended(-5.0, &s.chan); // the first is booked to nobody
        }
        s.hot.poll(&s.chan, &[]);
        assert!(s.chan.take().is_none(), "2 of 3 episodes");
        s.hot.episode_ended(-5.0, &s.chan);
        // v3 and v4 arrived meanwhile: the newest is offered, once
        for v in [3, 4] {
            child(&v2, v, v).save(s.dir.policy_path(v)).unwrap();
        }
        s.hot.poll(&s.chan, &[]);
        assert_eq!(s.chan.take().unwrap().spec().version, 4);
        assert_eq!(s.hot.current().spec.version, 4);
        // v4 in turn runs its episodes, is judged (kept), and lets v5 in
        let v4 = s.hot.current().clone();
        child(&v4, 5, 5).save(s.dir.policy_path(5)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert!(s.chan.take().is_none());
        for _ in 0..4 {
            s.hot.episode_ended(-5.0, &s.chan);
        }
        assert!(
            s.hot.last_verdict().contains("version 4 kept"),
            "{}",
            s.hot.last_verdict()
        );
        s.hot.poll(&s.chan, &[]);
        assert_eq!(s.chan.take().unwrap().spec().version, 5);
    }

    #[test]
    fn keep_best_swaps_in_the_best_judged_version() {
        let mut s = setup(0.0);
        assert!(matches!(s.hot.keep_best(&s.chan), Err(SwapError::NoJudged)));
        guarded(&mut s, 5.0); // wide: the guard itself never acts here
        let mut parent = s.hot.current().clone();
        for (v, ret) in [(1, -5.0), (2, -3.0), (3, -4.0), (4, -3.5)] {
            if v > 1 {
                let m = child(&parent, v, v);
                m.save(s.dir.policy_path(v)).unwrap();
                s.hot.poll(&s.chan, &[]);
                s.chan.take().unwrap();
                parent = m;
            }
            for _ in 0..4 {
                s.hot.episode_ended(ret, &s.chan);
            }
        }
        // a fifth, newest version that ran too few episodes to count
        child(&parent, 5, 5).save(s.dir.policy_path(5)).unwrap();
        s.hot.poll(&s.chan, &[]);
        s.chan.take().unwrap();
        s.hot.episode_ended(-1.0, &s.chan);
        s.hot.episode_ended(-1.0, &s.chan);
        assert_eq!(s.hot.auto_rollbacks(), 0);
        let msg = s.hot.keep_best(&s.chan).unwrap();
        assert!(msg.contains("-3.00 over 3 episodes"), "{msg}");
        assert_eq!(s.hot.current().spec.version, 2);
        assert_eq!(s.chan.take().unwrap().spec().version, 2);
        assert_eq!(s.dir.accepted().revoked.len(), 3, "versions 3, 4 and 5");
    }

    #[test]
    fn rejects_changed_action_bounds() {
        let mut s = setup(0.0);
        with_spec(2, 2, |spec| spec.action_high[1] = 4.0)
            .save(s.dir.policy_path(2))
            .unwrap();
        assert_only_rejection(&mut s, "action bounds changed: action_high[1] 3.0 -> 4.0");
    }

    /// One poll: nothing swapped, one rejection ending with `why`.
    fn assert_only_rejection(s: &mut Setup, why: &str) {
        s.hot.poll(&s.chan, &[]);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 1));
        assert!(
            s.hot.last_rejection().ends_with(why),
            "{}",
            s.hot.last_rejection()
        );
        assert!(s.chan.take().is_none());
    }

    #[test]
    fn rejects_changed_normalisers() {
        let mut s = setup(0.0);
        with_spec(2, 2, |spec| {
            spec.obs_norm.mean[0] = 0.5;
            spec.obs_norm.std[4] = 9.0;
        })
        .save(s.dir.policy_path(2))
        .unwrap();
        assert_only_rejection(
            &mut s,
            "normaliser changed: obs_norm.mean[0] 0.0 -> 0.5, obs_norm.std[4] 1.5 -> 9.0",
        );
    }

    #[test]
    fn accepts_changed_bounds_and_normalisers_when_allowed() {
        let mut s = setup(0.0);
        let (p1, m1) = (s.dir.policy_path(1), s.hot.current().clone());
        s.hot = HotSwap::new(s.dir.path().into(), 0.0, p1, m1).allow_spec_changes(true);
        let v2 = with_spec(2, 2, |spec| {
            spec.action_low[0] = -3.0;
            spec.obs_norm.mean[0] = 0.5;
        });
        v2.save(s.dir.policy_path(2)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!(
            (s.hot.swaps(), s.hot.rejected()),
            (1, 0),
            "{}",
            s.hot.last_rejection()
        );
        assert_eq!(s.chan.take().unwrap().spec().digest, v2.spec.digest);
    }

    #[test]
    fn rejects_a_version_whose_smoke_sample_is_not_finite() {
        // Finite weights (so the file is valid) that overflow when sampled:
        // S ≈ 100 in a coupling layer, exp(S) = inf in f32.
        let m = version(2, 2, 2);
        let mut tensors = m.tensors().clone();
        let b = tensors.get_mut("blocks.0.s.l2.b").unwrap();
        b.data = crate::policy::model::TensorData::F32(vec![100.0; b.shape[0]]);
        let bad = ModelFile::new(m.spec.clone(), tensors).expect("finite weights are valid");
        for recent in [
            vec![],
            vec![(vec![0.1; 5], vec![]), (vec![-0.3; 5], vec![])],
        ] {
            let mut s = setup(0.0);
            bad.save(s.dir.policy_path(2)).unwrap();
            s.hot.poll(&s.chan, &recent);
            assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 1));
            let why = s.hot.last_rejection();
            let n = recent.len().max(1);
            assert!(
                why.contains(&format!("smoke sample failed on observation 0 of {n}"))
                    && why.contains("non-finite"),
                "{why}"
            );
            assert!(s.chan.take().is_none());
            assert_eq!(s.hot.current().spec.version, 1);
        }
    }

    #[test]
    fn a_descendant_of_a_rolled_back_version_is_rejected() {
        let mut s = setup(0.0);
        let v1 = s.hot.current().clone();
        let v2 = child(&v1, 2, 2);
        v2.save(s.dir.policy_path(2)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!(s.hot.swaps(), 1);
        s.hot.rollback(&s.chan).unwrap();
        // the learner kept training the rolled-back line
        let v3 = child(&v2, 3, 3);
        v3.save(s.dir.policy_path(3)).unwrap();
        s.hot.poll(&s.chan, &[]);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 1));
        let why = s.hot.last_rejection().to_string();
        assert!(
            why.contains(&format!(
                "descends from {}, which was rolled back",
                v2.spec.digest
            )),
            "{why}"
        );
        // ... and its descendants, across a restart, even with the files
        // that link them to the rolled-back version gone
        let mut again = HotSwap::new(s.dir.path().into(), 0.0, s.dir.policy_path(1), v1.clone());
        std::fs::remove_file(s.dir.policy_path(2)).unwrap();
        std::fs::remove_file(s.dir.policy_path(3)).unwrap();
        child(&v3, 4, 4).save(s.dir.policy_path(4)).unwrap();
        again.poll(&s.chan, &[]);
        assert_eq!((again.swaps(), again.rejected()), (0, 1));
        assert!(
            again.last_rejection().contains("rolled back"),
            "{}",
            again.last_rejection()
        );
        // a new line from the restored version is accepted
        let v5 = child(&v1, 5, 5);
        v5.save(s.dir.policy_path(5)).unwrap();
        again.poll(&s.chan, &[]);
        assert_eq!(
            (again.swaps(), again.rejected()),
            (1, 1),
            "{}",
            again.last_rejection()
        );
        assert_eq!(again.current().spec.digest, v5.spec.digest);
    }
}
