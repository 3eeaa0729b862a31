//! The robot's end of the fleet link (docs/fleet.md): its transition log
//! streamed to a fleet learner over the graph, the learner's versions
//! taken into the hot-swap directory (so they pass exactly the checks a
//! local learner's do), and this robot's rollbacks told to the learner.
//!
//! The subscriptions run on the spin thread (which also serves the e-stop)
//! and only queue what arrives: acknowledgements as their raw serialized
//! bytes, checked against a size cap and never parsed there. Decoding
//! them, reading the log, publishing batches, validating and writing
//! versions and reading the accepted record run on the link's own thread.
//! The link follows one learner (`fleet.learner`, or the first heard) and
//! ignores, counts and reports the others ([`Follow`]). Nothing
//! here touches the control thread: when the link is down the robot keeps
//! controlling and logging, and the log is resent from where the learner's
//! acknowledgement says.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use crossbeam_queue::ArrayQueue;
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;
use r2r::std_msgs::msg::{String as StringMsg, UInt8MultiArray};

use flowpilot_core::checkpoint::{write_atomic, CheckpointDir};
use flowpilot_core::fleet::cursor::LogCursor;
use flowpilot_core::fleet::outbox::{Admit, Follow, Outbox, OutboxConfig};
use flowpilot_core::fleet::topics;
use flowpilot_core::fleet::wire::{cdr_string, to_json, Ack, Revocation, MAX_ACK_BYTES};
use flowpilot_core::log::reader::epoch_hex;
use flowpilot_core::node::config::{FleetPolicy, FleetSettings, NodeConfig};
use flowpilot_core::policy::model::ModelFile;
use flowpilot_core::rt::board::mono_ns;

/// Most records in one published batch.
const BATCH_RECORDS: usize = 256;
/// Most records published per period (a catch-up after an outage is
/// spread over periods rather than sent in one burst).
const PERIOD_RECORDS: u64 = 1024;
/// How long a stopping node keeps sending what the learner lacks.
const DRAIN: Duration = Duration::from_secs(3);

/// Acknowledgement messages waiting for the link thread (one arrives
/// every 0.2 s per learner; the newest are what matter).
const ACK_QUEUE: usize = 16;
/// Largest serialized acknowledgement queued: the JSON cap plus the CDR
/// string framing (encapsulation, length, NUL).
const ACK_MESSAGE_CAP: usize = MAX_ACK_BYTES + 16;

/// The link's counters, for /diagnostics and the shutdown summary.
#[derive(Default)]
pub(crate) struct FleetStats {
    pub(crate) sent: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) rewinds: AtomicU64,
    pub(crate) versions_taken: AtomicU64,
    pub(crate) versions_refused: AtomicU64,
    /// Acknowledgements refused: over the size cap (on the spin thread,
    /// unread) or malformed (on the link thread).
    pub(crate) acks_refused: AtomicU64,
    /// Acknowledgements of learners other than the one followed.
    pub(crate) acks_foreign: AtomicU64,
    /// The learner followed should say another stream claims this robot
    /// id (two robots with one id).
    pub(crate) id_conflict: AtomicBool,
    /// The log stream sent (its epoch; 0 before one is known or from
    /// before epochs).
    pub(crate) epoch: AtomicU64,
    /// The learner id followed, and the other learner ids heard.
    pub(crate) learners: Mutex<(String, Vec<String>)>,
}

pub(crate) struct FleetLink {
    stop: Arc<AtomicBool>,
    /// Stop without draining (a faulted node; drop).
    abort: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    stats: Arc<FleetStats>,
    robot: String,
}

/// The fleet topics' QoS, for both ends of the link (the words in
/// `flowpilot_core::fleet::topics`).
pub(crate) mod qos {
    use crate::qos::profile;
    use flowpilot_core::contract::qos as role;
    use r2r::QosProfile;

    pub(crate) fn records() -> QosProfile {
        profile(role::FLEET_RECORDS)
    }
    pub(crate) fn acks() -> QosProfile {
        profile(role::FLEET_ACKS)
    }
    pub(crate) fn policy() -> QosProfile {
        profile(role::FLEET_POLICY)
    }
    pub(crate) fn revoked() -> QosProfile {
        profile(role::FLEET_REVOKED)
    }
}

impl FleetLink {
    /// Subscribe and start the link thread, if `fleet.robot_id` is set.
    pub(crate) fn start(
        node: &mut r2r::Node,
        spawner: &futures::executor::LocalSpawner,
        cfg: &NodeConfig,
    ) -> Result<Option<Self>> {
        let Some(f) = cfg.fleet.clone() else {
            return Ok(None);
        };
        let stats = Arc::new(FleetStats::default());
        let acks = Arc::new(ArrayQueue::<Vec<u8>>::new(ACK_QUEUE));
        let versions = Arc::new(ArrayQueue::<Vec<u8>>::new(2));
        // Raw serialized messages: the spin thread checks a length and
        // queues; the link thread decodes.
        let (q, st) = (acks.clone(), stats.clone());
        let sub = node.subscribe_raw(topics::ACKS, "std_msgs/msg/String", qos::acks())?;
        spawner.spawn_local(sub.for_each(move |raw| {
            if raw.len() > ACK_MESSAGE_CAP {
                st.acks_refused.fetch_add(1, Ordering::Relaxed);
            } else {
                q.force_push(raw);
            }
            futures::future::ready(())
        }))?;
        let policy_topic = match f.policy {
            FleetPolicy::None => None,
            FleetPolicy::Shared => Some(topics::POLICY.to_string()),
            FleetPolicy::Own => Some(topics::own_policy(&f.robot_id)),
        };
        if let Some(t) = &policy_topic {
            let q = versions.clone();
            let sub = node.subscribe::<UInt8MultiArray>(t, qos::policy())?;
            spawner.spawn_local(sub.for_each(move |m| {
                q.force_push(m.data);
                futures::future::ready(())
            }))?;
        }
        let records = node.create_publisher::<UInt8MultiArray>(topics::RECORDS, qos::records())?;
        let revoked = node.create_publisher::<StringMsg>(topics::REVOKED, qos::revoked())?;
        let stop = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let link = Link {
            log_dir: cfg
                .log
                .as_ref()
                .filter(|_| f.stream)
                .map(|l| PathBuf::from(&l.dir)),
            swap_dir: cfg.hot_swap_dir.as_ref().map(CheckpointDir::new),
            trusted: cfg.hot_swap_trusted_keys.clone(),
            f: f.clone(),
            acks,
            versions,
            records,
            revoked,
            stats: stats.clone(),
        };
        let thread = {
            let (stop, abort) = (stop.clone(), abort.clone());
            std::thread::Builder::new()
                .name("flowpilot-fleet".into())
                .spawn(move || link.run(&stop, &abort))?
        };
        tracing::info!(robot = %f.robot_id, stream = f.stream, policy = ?policy_topic, learner = f.learner.as_deref().unwrap_or("(the first heard)"), signed = f.signer.is_some(), "fleet link started");
        if f.stream && f.signer.is_none() {
            tracing::warn!("fleet: records are sent unsigned: a learner with robot keys refuses them (fleet.signing_key, docs/security.md)");
        }
        Ok(Some(Self {
            stop,
            abort,
            thread: Some(thread),
            stats,
            robot: f.robot_id.clone(),
        }))
    }

    pub(crate) fn stats(&self) -> &Arc<FleetStats> {
        &self.stats
    }

    /// The counters in words, for /diagnostics.
    pub(crate) fn describe(&self) -> String {
        let s = &self.stats;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = format!(
            "{}: records sent {}, acknowledged up to {}, resends {}, versions taken {}, refused {}, stream {}",
            self.robot,
            l(&s.sent),
            l(&s.acked),
            l(&s.rewinds),
            l(&s.versions_taken),
            l(&s.versions_refused),
            epoch_hex(l(&s.epoch)),
        );
        let (followed, others) = s.learners.lock().expect("fleet learners").clone();
        if !followed.is_empty() {
            out += &format!(", learner {followed}");
        }
        if l(&s.acks_foreign) > 0 {
            out += &format!(
                ", ignored {} acknowledgements of other learners ({})",
                l(&s.acks_foreign),
                others.join(", ")
            );
        }
        if l(&s.acks_refused) > 0 {
            out += &format!(
                ", refused {} malformed or oversize acknowledgements",
                l(&s.acks_refused)
            );
        }
        if s.id_conflict.load(Ordering::Relaxed) {
            out += &format!(
                "; WARNING: another robot streams as '{}' (two robots with one id: the learner keeps both streams apart)",
                self.robot
            );
        }
        out
    }

    /// Ask the link to finish: it sends what the learner still lacks for
    /// up to [`DRAIN`] (the log is closed by then), then ends. The caller
    /// keeps spinning (acknowledgements arrive on the spin thread) until
    /// [`Self::finished`].
    pub(crate) fn request_stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
    }

    pub(crate) fn finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for FleetLink {
    fn drop(&mut self) {
        self.abort.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Link {
    log_dir: Option<PathBuf>,
    swap_dir: Option<CheckpointDir>,
    /// `hot_swap.trusted_keys`: a version no trusted key signed is refused
    /// here, before it could take a version number's file name from the
    /// genuine one (the hot swap checks again).
    trusted: flowpilot_core::signing::TrustedKeys,
    f: FleetSettings,
    acks: Arc<ArrayQueue<Vec<u8>>>,
    versions: Arc<ArrayQueue<Vec<u8>>>,
    records: r2r::Publisher<UInt8MultiArray>,
    revoked: r2r::Publisher<StringMsg>,
    stats: Arc<FleetStats>,
}

impl Link {
    fn run(self, stop: &AtomicBool, abort: &AtomicBool) {
        let mut out = Outbox::new(OutboxConfig {
            window: self.f.window,
            ..Default::default()
        });
        let mut cursor = self
            .log_dir
            .as_ref()
            .map(|d| LogCursor::new(&self.f.robot_id, d));
        let mut follow = Follow::new(self.f.learner.clone());
        let mut epoch: Option<u64> = None;
        let mut told: BTreeSet<String> = BTreeSet::new();
        let mut next_record_check = Instant::now();
        let mut drain_until: Option<Instant> = None;
        let period = Duration::from_secs_f64(self.f.batch_period_s);
        loop {
            if abort.load(Ordering::SeqCst) {
                break;
            }
            if stop.load(Ordering::SeqCst) && drain_until.is_none() {
                drain_until = Some(Instant::now() + DRAIN);
            }
            let now = mono_ns();
            if let Some(c) = cursor.as_mut() {
                if epoch.is_none() {
                    // The stream's epoch (the log's newest file), before
                    // any acknowledgement is read for it.
                    if let Err(e) = c.refresh() {
                        tracing::warn!("fleet: reading the log directory: {e}");
                    }
                }
                if c.epoch() != epoch {
                    epoch = c.epoch();
                    out.forget_learner();
                    self.stats
                        .epoch
                        .store(epoch.unwrap_or(0), Ordering::Relaxed);
                    if let Some(e) = epoch {
                        tracing::info!(epoch = %epoch_hex(e), "fleet: streaming this log stream");
                    }
                }
            }
            while let Some(raw) = self.acks.pop() {
                self.on_ack(&raw, &mut follow, &mut out, cursor.as_mut(), epoch, now);
            }
            if let Some(c) = cursor.as_mut() {
                if let Some(pos) = out.poll(now) {
                    tracing::info!(
                        from = pos,
                        "fleet: no acknowledgement; resending from the log"
                    );
                    c.seek(pos);
                }
                let mut left = out.budget().min(PERIOD_RECORDS);
                while left > 0 {
                    match c.next_batch((left as usize).min(BATCH_RECORDS)) {
                        Ok(Some(mut b)) => {
                            let n = b.records.len() as u64;
                            if let Some(s) = &self.f.signer {
                                b.auth = s.sign_records(&b.body());
                            }
                            let msg = UInt8MultiArray {
                                data: b.encode(),
                                ..Default::default()
                            };
                            if let Err(e) = self.records.publish(&msg) {
                                tracing::warn!("fleet: publishing records: {e}");
                                break;
                            }
                            out.sent(b.end(), now);
                            self.stats.sent.fetch_add(n, Ordering::Relaxed);
                            left = left.saturating_sub(n);
                        }
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!("fleet: reading the log: {e} (streaming paused)");
                            cursor = None;
                            break;
                        }
                    }
                }
                self.stats.acked.store(out.acked(), Ordering::Relaxed);
                self.stats.rewinds.store(out.rewinds(), Ordering::Relaxed);
            }
            while let Some(bytes) = self.versions.pop() {
                self.take_version(&bytes);
            }
            if next_record_check <= Instant::now() {
                next_record_check = Instant::now() + Duration::from_secs(1);
                self.tell_revocations(&mut told);
            }
            if let Some(until) = drain_until {
                let done = cursor
                    .as_ref()
                    .is_none_or(|c| out.learner().is_none() || out.acked() >= c.position());
                if done || Instant::now() >= until {
                    if !done {
                        tracing::warn!(
                            acked = out.acked(),
                            logged = cursor.as_ref().map(|c| c.position()),
                            "fleet: stopping before the learner acknowledged everything (it is resent at the next start)"
                        );
                    }
                    break;
                }
            }
            std::thread::sleep(period);
        }
        if follow.ignored() > 0 {
            tracing::warn!(
                followed = follow.followed().unwrap_or(""),
                ignored = follow.ignored(),
                others = %follow.foreign().collect::<Vec<_>>().join(","),
                "fleet: acknowledgements of other learners were ignored during this run"
            );
        }
    }

    /// One acknowledgement message (raw, from the spin thread): decoded
    /// here, then acted on if it comes from the learner followed and
    /// serves this robot.
    fn on_ack(
        &self,
        raw: &[u8],
        follow: &mut Follow,
        out: &mut Outbox,
        cursor: Option<&mut LogCursor>,
        epoch: Option<u64>,
        now: i64,
    ) {
        let ack = match cdr_string(raw).and_then(Ack::from_capped) {
            Ok(a) => a,
            Err(e) => {
                if self.stats.acks_refused.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!("fleet: ignoring a malformed acknowledgement: {e}");
                }
                return;
            }
        };
        let (Some(c), Some(epoch)) = (cursor, epoch) else {
            return;
        };
        let Some(held) = ack.stream(&self.f.robot_id, epoch) else {
            return; // a learner serving another robot alone
        };
        match follow.admit(&ack) {
            Admit::Followed => {}
            Admit::Foreign { id, first } => {
                self.stats.acks_foreign.fetch_add(1, Ordering::Relaxed);
                if first {
                    tracing::warn!(
                        ignored = %id,
                        followed = follow.followed().unwrap_or(""),
                        "fleet: another learner on the domain; its acknowledgements are ignored (this robot follows one learner: fleet.learner)"
                    );
                    let mut l = self.stats.learners.lock().expect("fleet learners");
                    l.1 = follow.foreign().map(String::from).collect();
                }
                return;
            }
        }
        {
            let mut l = self.stats.learners.lock().expect("fleet learners");
            if l.0.is_empty() {
                l.0 = follow.followed().unwrap_or("").to_string();
                tracing::info!(learner = %l.0, pinned = follow.pinned(), "fleet: following this learner");
            }
        }
        let was = self
            .stats
            .id_conflict
            .swap(held.conflict, Ordering::Relaxed);
        if held.conflict && !was {
            tracing::warn!(
                robot = %self.f.robot_id,
                "fleet: the learner reports another robot streaming under this robot's id (two robots with one id)"
            );
        }
        if let Some(pos) = out.on_ack(&ack.learner, held.next, now) {
            c.seek(pos);
        }
    }

    /// A version from the learner: validated, then written atomically into
    /// the hot-swap directory, where the hot swap takes it through its own
    /// checks (compatibility, lineage, divergence, the return guard).
    fn take_version(&self, bytes: &[u8]) {
        let Some(dir) = &self.swap_dir else { return };
        let m = match ModelFile::from_bytes(bytes) {
            Ok(m) => m,
            Err(e) => {
                self.stats.versions_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!("fleet: refused a version from the learner: {e}");
                return;
            }
        };
        if !self.trusted.is_empty() {
            if let Err(e) = self.trusted.verify(&m) {
                self.stats.versions_refused.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(
                    version = m.spec.version,
                    "fleet: refused a version: not authenticated: {e}"
                );
                return;
            }
        }
        let path = dir.policy_path(m.spec.version);
        if path.exists() {
            // A version's file is never replaced: the hot swap and the
            // accepted record name versions by path.
            match ModelFile::load(&path) {
                Ok(have) if have.spec.digest == m.spec.digest => {} // a latched repeat
                _ => {
                    self.stats.versions_refused.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        version = m.spec.version,
                        path = %path.display(),
                        "fleet: refused a version whose number is taken by another file here (two learners?)"
                    );
                }
            }
            return;
        }
        if let Err(e) = dir.create().map_err(anyhow::Error::from).and_then(|()| {
            write_atomic(&path, |tmp| std::fs::write(tmp, bytes)).map_err(Into::into)
        }) {
            self.stats.versions_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("fleet: writing version {}: {e:#}", m.spec.version);
            return;
        }
        self.stats.versions_taken.fetch_add(1, Ordering::Relaxed);
        tracing::info!(version = m.spec.version, digest = %m.spec.digest, "fleet: version from the learner handed to the hot swap");
    }

    /// Publish revocations in this robot's accepted record not yet told.
    fn tell_revocations(&self, told: &mut BTreeSet<String>) {
        let Some(dir) = &self.swap_dir else { return };
        let revoked = match flowpilot_core::versions::Revocations::load(dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("fleet: {e}");
                return;
            }
        };
        for d in revoked.iter().cloned() {
            if told.contains(&d) {
                continue;
            }
            let msg = StringMsg {
                data: to_json(&Revocation {
                    robot: self.f.robot_id.clone(),
                    digest: d.clone(),
                }),
            };
            match self.revoked.publish(&msg) {
                Ok(()) => {
                    tracing::info!(digest = %d, "fleet: told the learner of a revoked version");
                    told.insert(d);
                }
                Err(e) => tracing::warn!("fleet: publishing a revocation: {e}"),
            }
        }
    }
}
