//! The fine-tuning session driver (`flowpilot finetune`): resume from the
//! newest checkpoint whose line the node has not rolled back, and from the
//! learner state; fill the replay from logs or a dataset, run updates at
//! the requested ratio, and write versioned checkpoints atomically for the
//! node's hot swap. It honours the node's rollbacks: when the directory's
//! record revokes a version on the line it trains, it restarts its actor
//! from the accepted version (critics kept), and numbers new versions above
//! every file in the directory (checked: never wrapping, never beyond what a
//! node accepts). With a signing key it signs every version it writes
//! (`flowpilot_core::signing`) and resumes only from versions it signed (or
//! its `init`). Off the control thread.

use std::path::PathBuf;
use std::sync::Arc;

use super::error::{LearnerError, Result};
use super::replay::ReplayBuffer;
use super::sac::{Draw, Sac, SacConfig};
use super::shards::Shards;
use crate::demos::Demos;
use flowpilot_core::checkpoint::CheckpointDir;
use flowpilot_core::policy::model::ModelFile;
use flowpilot_core::signing::{signed_by, PolicySigner};
use flowpilot_core::versions::{next_version, restore_point, Lineage, Revocations};

/// What `flowpilot finetune` runs on.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// Transition logs in a directory; `follow` keeps reading new records.
    Logs { dir: PathBuf, follow: bool },
    /// A fleet shard directory (`<dir>/<robot>/*.mcap`, kept by
    /// `flowpilot_fleet`), followed; one replay shard per robot.
    Fleet { dir: PathBuf },
    /// A fixed dataset (demos .npz with rewards): offline RL.
    Offline(PathBuf),
}

#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    pub data: DataSource,
    /// Starting policy (ignored when `out` already holds a newer checkpoint
    /// that could replace it and whose line the node has not rolled back: a
    /// restarted learner resumes from it).
    pub init: PathBuf,
    pub out: PathBuf,
    pub sac: SacConfig,
    /// Stop after this many updates in total (0: until stopped).
    pub max_updates: u64,
    /// Updates per new transition when following logs.
    pub utd: f64,
    /// No updates before the replay holds this many transitions.
    pub min_transitions: usize,
    pub checkpoint_every: u64,
    pub poll_period: std::time::Duration,
    /// Prior data (demos .npz with rewards) mixed into every batch
    /// (RLPD-style symmetric sampling) when learning from logs.
    pub prior: Option<PathBuf>,
    /// Share of each batch drawn from the prior data once the online
    /// replay holds `min_transitions` (before that, all of it).
    pub prior_share: f64,
    /// Critic-only updates on the prior data before any online update
    /// (policy evaluation of the starting policy, offline to online).
    pub critic_pretrain: u64,
    /// Sign every version written with this key (`--signing-key`); a node
    /// with `hot_swap.trusted_keys` takes only signed versions. None:
    /// versions are written unsigned.
    pub signer: Option<Arc<PolicySigner>>,
}

/// Which versions a learner may continue from: with a signing key, only
/// its own (signed by it) and `init` (the operator's, or the version the
/// node runs); without one, any.
struct Trust<'a> {
    signer: Option<&'a PolicySigner>,
    init_digest: String,
}

impl Trust<'_> {
    fn accepts(&self, m: &ModelFile) -> bool {
        match self.signer {
            None => true,
            Some(s) => m.spec.digest == self.init_digest || signed_by(m, &s.public_key()),
        }
    }
}

/// Run a fine-tuning session until `max_updates`, the end of the data
/// (offline or not following), or `stop` is set (SIGTERM). Writes a
/// checkpoint every `checkpoint_every` updates and at the end.
pub fn run(opts: &FinetuneOptions, stop: &std::sync::atomic::AtomicBool) -> Result<u64> {
    use std::sync::atomic::Ordering;
    std::fs::create_dir_all(&opts.out).map_err(|source| LearnerError::CreateDir {
        path: opts.out.clone(),
        source,
    })?;
    let store = CheckpointDir::new(&opts.out);
    // Temp files of a learner killed mid-write: never renamed, never read.
    store.remove_partials();
    let init = ModelFile::load(&opts.init).map_err(|source| LearnerError::LoadModel {
        path: opts.init.clone(),
        source,
    })?;
    match &opts.signer {
        Some(s) => tracing::info!(key = %s.public_key(), "signing every version written"),
        None => tracing::warn!(
            "versions are written unsigned: a node with hot_swap.trusted_keys refuses them (--signing-key)"
        ),
    }
    let trust = Trust {
        signer: opts.signer.as_deref(),
        init_digest: init.spec.digest.clone(),
    };
    // The versions in `out` (and `init`) with their parents, to tell
    // whether the line being trained was rolled back by the node.
    let mut lineage = Lineage::scan(&store);
    lineage.insert(&init.spec, Some(&opts.init));
    // Resume: the newest checkpoint in `out` that could replace `init`,
    // whose line holds no revoked version and that this learner may
    // continue (with a signing key: one it signed).
    let revoked = Revocations::load(&store)?;
    let mut current = match lineage.newest_clean(&revoked, |m| trust.accepts(m)) {
        Some((p, m))
            if m.spec.version > init.spec.version
                && init.spec.check_compatible(&m.spec).is_ok() =>
        {
            tracing::info!(path = %p.display(), version = m.spec.version, "resuming from checkpoint");
            m
        }
        _ => init,
    };
    // Newer versions left behind: their line was rolled back (or they do
    // not fit `init`); the critics trained alongside them are kept.
    let abandoned = lineage
        .newest_version()
        .is_some_and(|n| n > current.spec.version);
    if abandoned {
        tracing::warn!(
            version = current.spec.version,
            newest = lineage.newest_version(),
            "resuming from an older version: the newer checkpoints descend from one the node rolled back, do not fit `init`, or (with --signing-key) were not signed by this learner"
        );
    }
    // Fail now, not at every checkpoint, if no version can be numbered
    // (a file in `out` claims u64::MAX, or a number far ahead).
    next_version(current.spec.version, lineage.newest_version())?;
    let mut sac = Sac::new(&current, opts.sac.clone())?;
    let sp = store.learner_state_path();
    if sp.exists() && (current.spec.version > 1 || abandoned) {
        match sac.load_state(&sp) {
            Ok(()) => tracing::info!(updates = sac.updates(), "resumed critics and temperature"),
            Err(e) => tracing::warn!("ignoring learner state: {e:#} (critics start fresh)"),
        }
    }
    let spec = current.spec.clone();
    let (mut online, follow) = match &opts.data {
        DataSource::Offline(p) => {
            let demos = Demos::load(p)?;
            (
                Shards::fixed(ReplayBuffer::from_demos(&demos, &spec, opts.sac.gamma)?),
                false,
            )
        }
        DataSource::Logs { dir, follow } => {
            (Shards::log_dir(dir.clone(), &spec, opts.sac.gamma), *follow)
        }
        DataSource::Fleet { dir } => (Shards::fleet(dir.clone(), &spec, opts.sac.gamma), true),
    };
    {
        let n = online.poll(&spec)?;
        let (records, skipped) = online.records();
        tracing::info!(transitions = n, records, skipped, "replayed the logs");
    }
    let prior = match &opts.prior {
        Some(p) if !matches!(opts.data, DataSource::Offline(_)) => {
            let rb = ReplayBuffer::from_demos(&Demos::load(p)?, &spec, opts.sac.gamma)?;
            tracing::info!(path = %p.display(), transitions = rb.len(), share = opts.prior_share, "prior data");
            Some(rb)
        }
        _ => None,
    };
    if opts.sac.bc_demos_only && prior.is_none() {
        return Err(LearnerError::BcDemosWithoutPrior);
    }
    if opts.sac.target_entropy_from_policy {
        let on = prior
            .as_ref()
            .filter(|p| !p.is_empty())
            .or(online.largest());
        if let Some(on) = on.filter(|on| !on.is_empty()) {
            let h = sac.policy_entropy(on, 2048)?;
            tracing::info!(
                target_entropy = h,
                "target entropy: the starting policy's own"
            );
            sac.set_target_entropy(h);
        }
    }
    if let Some(p) = prior.as_ref().filter(|_| sac.updates() == 0) {
        let b = sac.cfg().batch;
        for i in 0..opts.critic_pretrain {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let all = Draw {
                from: p,
                rows: b,
                imitate: true,
            };
            let st = sac.update_mixed(&[all], false)?;
            if (i + 1) % 200 == 0 {
                tracing::info!(
                    updates = i + 1,
                    critic = st.critic_loss,
                    q = st.q,
                    "critic pre-training on prior data"
                );
            }
        }
    }
    let min = opts.min_transitions.max(1);
    let start_updates = sac.updates();
    let mut budget: f64 = if follow {
        online.len() as f64 * opts.utd
    } else {
        f64::INFINITY
    };
    // The last checkpoint tried (for the cadence) and the last one that
    // holds what was learned (a written one, or a restart point).
    let mut last_ckpt = sac.updates();
    let mut saved = sac.updates();
    let mut next_poll = std::time::Instant::now() + opts.poll_period;
    let mut metrics = MetricsOut::new(&opts.out, sac.updates());
    while !stop.load(Ordering::SeqCst) {
        if opts.max_updates > 0 && sac.updates() - start_updates >= opts.max_updates {
            break;
        }
        if follow && std::time::Instant::now() >= next_poll {
            next_poll = std::time::Instant::now() + opts.poll_period;
            budget += online.poll(&spec)? as f64 * opts.utd;
            if follow_rollback(&store, &lineage, &trust, &mut sac, &mut current)? {
                last_ckpt = sac.updates();
                saved = sac.updates();
            }
        }
        if online.len() < min || budget < 1.0 {
            if !follow {
                if online.len() < min {
                    return Err(LearnerError::TooFewTransitions {
                        have: online.len(),
                        min,
                    });
                }
                break;
            }
            std::thread::sleep(opts.poll_period.min(std::time::Duration::from_millis(100)));
            continue;
        }
        let st = {
            let b = sac.cfg().batch;
            let n_prior = match &prior {
                Some(_) => ((b as f64 * opts.prior_share).round() as usize).min(b),
                None => 0,
            };
            // The BC term imitates the demonstrations, and the robot's own
            // logged actions too unless --bc-demos-only.
            let own = !sac.cfg().bc_demos_only;
            let mut parts: Vec<Draw> = online
                .parts(b - n_prior)
                .into_iter()
                .map(|(from, rows)| Draw {
                    from,
                    rows,
                    imitate: own,
                })
                .collect();
            if let Some(p) = prior.as_ref().filter(|_| n_prior > 0) {
                parts.push(Draw {
                    from: p,
                    rows: n_prior,
                    imitate: true,
                });
            }
            sac.update_mixed(&parts, true)?
        };
        budget -= 1.0;
        if sac.updates() % 100 == 0 {
            tracing::info!(
                updates = sac.updates(),
                transitions = online.len(),
                shards = ?online.sizes(),
                critic = st.critic_loss,
                actor = st.actor_loss,
                alpha = st.alpha,
                entropy = st.entropy,
                q = st.q,
                bc_lambda = st.bc_lambda,
                bc_nll = st.bc_nll,
                bc_dist = st.bc_dist,
                "update"
            );
            metrics.offer(&st, sac.updates(), online.len(), current.spec.version);
        }
        if sac.updates() > sac.cfg().critic_warmup
            && sac.updates() - last_ckpt >= opts.checkpoint_every
        {
            last_ckpt = sac.updates();
            // Nothing learned since a restart from the accepted version is
            // worth a checkpoint yet.
            if follow_rollback(&store, &lineage, &trust, &mut sac, &mut current)? {
                saved = sac.updates();
            } else {
                // A full disk (or any write failure) costs this checkpoint,
                // not the session: its temp file is gone, training goes on
                // and the next checkpoint tries again.
                match checkpoint(
                    &store,
                    &mut lineage,
                    opts.signer.as_deref(),
                    &sac,
                    &mut current,
                ) {
                    Ok(()) => saved = sac.updates(),
                    Err(e) => tracing::warn!(
                        updates = sac.updates(),
                        "checkpoint not written: {e:#}; training on, the next try in {} updates",
                        opts.checkpoint_every
                    ),
                }
            }
        }
    }
    if sac.updates() > saved
        && sac.updates() > sac.cfg().critic_warmup
        && !follow_rollback(&store, &lineage, &trust, &mut sac, &mut current)?
    {
        // The last chance to keep what was learned: its failure is the
        // session's, so that the exit status says so.
        checkpoint(
            &store,
            &mut lineage,
            opts.signer.as_deref(),
            &sac,
            &mut current,
        )
        .map_err(|e| LearnerError::FinalCheckpoint {
            updates: sac.updates(),
            source: Box::new(e),
        })?;
    }
    Ok(sac.updates() - start_updates)
}

/// The live metrics file (`flowpilot_core::learner_metrics`), rewritten at
/// most once a second; a failed write costs a snapshot, never training.
struct MetricsOut {
    dir: std::path::PathBuf,
    last: std::time::Instant,
    last_updates: u64,
    warned: bool,
}

impl MetricsOut {
    const PERIOD: std::time::Duration = std::time::Duration::from_secs(1);

    fn new(dir: &std::path::Path, updates: u64) -> Self {
        Self {
            dir: dir.to_path_buf(),
            last: std::time::Instant::now(),
            last_updates: updates,
            warned: false,
        }
    }

    fn offer(&mut self, st: &super::sac::UpdateStats, updates: u64, replay: usize, version: u64) {
        let dt = self.last.elapsed();
        if dt < Self::PERIOD {
            return;
        }
        let m = flowpilot_core::learner_metrics::LearnerMetrics {
            updates,
            replay_size: replay as u64,
            version,
            updates_per_s: (updates - self.last_updates) as f64 / dt.as_secs_f64(),
            critic_loss: st.critic_loss as f64,
            actor_loss: st.actor_loss as f64,
            q: st.q as f64,
            entropy: st.entropy as f64,
            alpha: st.alpha as f64,
            bc_lambda: st.bc_lambda as f64,
            wall_ns: flowpilot_core::rt::board::wall_ns(),
        };
        self.last = std::time::Instant::now();
        self.last_updates = updates;
        let wrote = flowpilot_core::learner_metrics::write(&self.dir, &m)
            .and_then(|()| flowpilot_core::learner_metrics::append_history(&self.dir, &m));
        if let Err(e) = wrote {
            if !std::mem::replace(&mut self.warned, true) {
                tracing::warn!("live metrics not written (training goes on): {e}");
            }
        }
    }
}

/// Write the actor as the next version of `current` (numbered above every
/// version in the directory, so it never replaces a file of an abandoned
/// line; [`next_version`]), signed with `signer` if given, and the learner
/// state; it becomes `current`.
fn checkpoint(
    store: &CheckpointDir,
    lineage: &mut Lineage,
    signer: Option<&PolicySigner>,
    sac: &Sac,
    current: &mut ModelFile,
) -> Result<()> {
    let version = next_version(current.spec.version, lineage.newest_version())?;
    let mut next = sac.export(&current.spec)?;
    if next.spec.version != version {
        let mut spec = next.spec.clone();
        spec.version = version;
        next = ModelFile::new(spec, next.tensors().clone())?;
    }
    // Signed last: the signature covers the final digest, number and parent.
    if let Some(s) = signer {
        next = s.sign(next);
    }
    let path = store.policy_path(next.spec.version);
    next.save(&path)?;
    // The version exists from here on, whatever happens to the state file:
    // the next one must number above it, not overwrite it.
    lineage.insert(&next.spec, Some(&path));
    tracing::info!(path = %path.display(), version = next.spec.version, updates = sac.updates(), "checkpoint written");
    *current = next;
    sac.save_state(&store.learner_state_path())?;
    Ok(())
}

/// If the node's record revokes a version on the line being trained
/// (`current` or an ancestor), restart the actor from the version the node
/// runs (critics, temperature and update count kept; the actor's optimiser
/// starts fresh) and make it `current`. Returns whether it did.
fn follow_rollback(
    store: &CheckpointDir,
    lineage: &Lineage,
    trust: &Trust<'_>,
    sac: &mut Sac,
    current: &mut ModelFile,
) -> Result<bool> {
    let revoked = Revocations::load(store)?;
    let Some(bad) = lineage.first_revoked(&current.spec, |d| revoked.contains(d)) else {
        return Ok(false);
    };
    let fits = |m: &ModelFile| current.spec.check_compatible(&m.spec).is_ok() && trust.accepts(m);
    let Some((path, restored)) = restore_point(store, lineage, &revoked, fits) else {
        tracing::warn!(
            head = current.spec.version,
            revoked = %bad,
            "the line being trained was rolled back, but no accepted version to restart from loads; training on (the node will refuse these versions)"
        );
        return Ok(false);
    };
    // The same hand-over as a restart: the state file carries the critics.
    let sp = store.learner_state_path();
    sac.save_state(&sp)?;
    let mut fresh = Sac::new(&restored, sac.cfg().clone())?;
    fresh.load_state(&sp)?;
    *sac = fresh;
    tracing::warn!(
        head = current.spec.version,
        head_digest = %current.spec.digest,
        revoked = %bad,
        restored = %path.display(),
        restored_version = restored.spec.version,
        updates = sac.updates(),
        "the node rolled back the line being trained; restarting the actor from the accepted version (critics kept)"
    );
    *current = restored;
    Ok(true)
}
