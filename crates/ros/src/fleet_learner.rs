//! `flowpilot_fleet`: the learner's end of the fleet link (docs/fleet.md),
//! started by `flowpilot finetune --from-graph` beside the learner and
//! killed with it. It stores every robot's records in per-robot shards
//! (exactly once, in order, flushed before acknowledged), acknowledges
//! each robot's position, publishes the learner's newest version on a
//! latched topic (a robot joining late gets it), and writes the robots'
//! revocations into the learner's checkpoint record, so the learner's
//! rollback rule holds fleet-wide. One thread, no candle: the learner
//! process does the training from the shard directory.
//!
//! Its acknowledgements carry a lasting learner id (made once, kept in
//! `<shards>/.flowpilot_learner_id`: a restart keeps it, so robots follow
//! it through restarts and ignore a second learner on the domain) and
//! each stream's position by (robot, epoch). Every message is size-capped
//! before it is parsed, and the batches waiting between spins are bounded
//! in bytes. Two robots claiming one id are detected, logged, flagged in
//! the acknowledgements (the robots report it) and on `/diagnostics`.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::fleet::qos;
use anyhow::{Context, Result};
use clap::Parser;
use futures::stream::StreamExt;
use futures::task::LocalSpawnExt;
use r2r::diagnostic_msgs::msg::{DiagnosticArray, DiagnosticStatus, KeyValue};
use r2r::std_msgs::msg::{String as StringMsg, UInt8MultiArray};

use flowpilot_core::checkpoint::CheckpointDir;
use flowpilot_core::contract::flags;
use flowpilot_core::fleet::auth::RobotKeys;
use flowpilot_core::fleet::shards::ShardStore;
use flowpilot_core::fleet::topics;
use flowpilot_core::fleet::wire::{
    to_json, Ack, Batch, Revocation, MAX_BATCH_BYTES, MAX_REVOCATION_BYTES,
};
use flowpilot_core::log::reader::epoch_hex;
use flowpilot_core::rt::board::mono_ns;
use flowpilot_core::versions::{Lineage, Revocations};

/// Batches held between spins; past this the oldest is dropped (its robot
/// resends it).
const QUEUE: usize = 4096;
/// Bytes of batches held between spins (the same rule past it).
const QUEUE_BYTES: usize = 64 << 20;
/// Where the learner keeps its lasting id, in the shard directory.
const ID_FILE: &str = flowpilot_core::contract::files::LEARNER_ID;

#[derive(Parser, Debug)]
#[command(
    name = "flowpilot_fleet",
    about = "The fleet learner's link to its robots over ROS 2"
)]
struct Args {
    /// Per-robot shard directory (the learner reads it).
    #[arg(long = flags::SHARDS)]
    shards: PathBuf,
    /// The learner's checkpoint directory (versions published from here).
    #[arg(long = flags::OUT)]
    out: PathBuf,
    /// Serve one robot only, on its own policy topic (fleet.policy: own).
    #[arg(long = flags::ROBOT)]
    robot: Option<String>,
    /// Seconds between acknowledgements.
    #[arg(long, default_value_t = 0.2)]
    ack_period: f64,
    /// Store records only from the robots listed here, each batch signed by
    /// its robot's key (docs/security.md): `<robot id> <public key or key
    /// file>` per line. Without it any peer can send records under any id.
    #[arg(long = flags::ROBOT_KEYS)]
    robot_keys: Option<PathBuf>,
    /// Seconds between the per-robot counter reports in the log.
    #[arg(long, default_value_t = 10.0)]
    report_period: f64,
}

pub fn main() {
    crate::binary_main("flowpilot_fleet", || run(Args::parse()));
}

fn run(a: Args) -> Result<()> {
    // Ends with the learner that started it (a kill -9 included).
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    if let Some(r) = &a.robot {
        anyhow::ensure!(
            flowpilot_core::fleet::valid_robot_id(r),
            "--robot '{r}' is not a valid robot id"
        );
    }
    let robot_keys = match &a.robot_keys {
        Some(p) => {
            let k = RobotKeys::load(p).context("--robot-keys")?;
            tracing::info!(
                robots = k.len(),
                "storing records only from listed robots, signed by their keys"
            );
            Some(k)
        }
        None => {
            tracing::warn!("records are not authenticated: any peer on the graph can store records under any robot id (--robot-keys, docs/security.md)");
            None
        }
    };
    let shutdown = flowpilot_core::shutdown::Shutdown::install();
    let mut store = ShardStore::open(&a.shards).context("opening the shard directory")?;
    for (r, epoch, ack) in store.stream_acks(mono_ns()) {
        tracing::info!(robot = %r, epoch = %epoch_hex(epoch), next = ack.next, "recovered shards");
    }
    let ckpt = CheckpointDir::new(&a.out);
    let id = learner_id(&a.shards)?;
    let instance = format!(
        "{}-{}",
        std::process::id(),
        flowpilot_core::rt::board::wall_ns()
    );
    let ctx = r2r::Context::create().context("creating the ROS context")?;
    let mut node = r2r::Node::create(ctx, "flowpilot_fleet", "").context("creating the node")?;
    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    let counts: Rc<RefCell<Counts>> = Rc::default();
    let batches: Rc<RefCell<Pending>> = Rc::default();
    let (q, c) = (batches.clone(), counts.clone());
    let sub = node.subscribe::<UInt8MultiArray>(topics::RECORDS, qos::records())?;
    spawner.spawn_local(sub.for_each(move |m| {
        // Capped before anything reads it.
        if m.data.len() > MAX_BATCH_BYTES {
            c.borrow_mut().oversize += 1;
        } else {
            let dropped = q.borrow_mut().push(m.data);
            c.borrow_mut().queue_dropped += dropped;
        }
        futures::future::ready(())
    }))?;
    let revocations: Rc<RefCell<Vec<Revocation>>> = Rc::default();
    let (q, c) = (revocations.clone(), counts.clone());
    let sub = node.subscribe::<StringMsg>(topics::REVOKED, qos::revoked())?;
    spawner.spawn_local(sub.for_each(move |m| {
        match Revocation::from_capped(&m.data) {
            // (drained at every spin; each one capped in size)
            Ok(r) => q.borrow_mut().push(r),
            Err(e) => {
                let mut c = c.borrow_mut();
                if c.malformed == 0 {
                    tracing::warn!(
                        cap = MAX_REVOCATION_BYTES,
                        "ignoring a malformed revocation: {e}"
                    );
                }
                c.malformed += 1;
            }
        }
        futures::future::ready(())
    }))?;
    let acks = node.create_publisher::<StringMsg>(topics::ACKS, qos::acks())?;
    let policy_topic = match &a.robot {
        Some(r) => topics::own_policy(r),
        None => topics::POLICY.to_string(),
    };
    let policy = node.create_publisher::<UInt8MultiArray>(&policy_topic, qos::policy())?;
    let diagnostics = node.create_publisher::<DiagnosticArray>(
        "/diagnostics",
        crate::qos::profile(flowpilot_core::contract::qos::DIAGNOSTICS),
    )?;
    tracing::info!(id = %id, instance = %instance, shards = %a.shards.display(), out = %a.out.display(), policy = %policy_topic, "fleet learner link up (robots follow this id; pin it with fleet.learner)");
    let mut next_diag = Instant::now();
    let mut warned = false;

    let ack_period = Duration::from_secs_f64(a.ack_period.clamp(0.01, 10.0));
    let mut next_ack = Instant::now();
    let mut next_scan = Instant::now();
    let report_every = Duration::from_secs_f64(a.report_period.clamp(0.1, 3600.0));
    let mut next_report = Instant::now() + report_every;
    let mut scanned: Option<Vec<(PathBuf, std::time::SystemTime)>> = None;
    let mut published: Option<String> = None;
    // Wire bytes received per robot (the link's bandwidth, for the report).
    let mut bytes_in: std::collections::BTreeMap<String, u64> = Default::default();
    while !shutdown.requested() {
        node.spin_once(Duration::from_millis(5));
        pool.run_until_stalled();
        let pending = batches.borrow_mut().take();
        for bytes in pending {
            let b = match Batch::decode(&bytes) {
                Ok(b) => b,
                Err(e) => {
                    let mut c = counts.borrow_mut();
                    if c.malformed.is_multiple_of(100) {
                        tracing::warn!(
                            seen = c.malformed + 1,
                            "ignoring a malformed records batch: {e}"
                        );
                    }
                    c.malformed += 1;
                    continue;
                }
            };
            if a.robot.as_ref().is_some_and(|r| *r != b.robot) {
                continue;
            }
            // Before the store sees it: a refused batch moves no position.
            if let Some(Err(e)) = robot_keys.as_ref().map(|k| k.check(&b)) {
                let mut c = counts.borrow_mut();
                let why = e.to_string();
                // Each new reason, then every 100th: a flood cannot fill the log.
                if why != c.last_refused || c.refused.is_multiple_of(100) {
                    tracing::warn!(seen = c.refused + 1, "records batch refused: {why}");
                }
                c.refused += 1;
                c.last_refused = why;
                continue;
            }
            *bytes_in.entry(b.robot.clone()).or_default() += bytes.len() as u64;
            if let Err(e) = store.receive_at(&b, mono_ns()) {
                tracing::warn!("records batch not stored: {e}");
            }
        }
        for c in store.take_conflicts() {
            tracing::warn!(
                robot = %c.robot,
                epochs = %format!("{} {}", epoch_hex(c.epochs.0), epoch_hex(c.epochs.1)),
                "two live streams claim one robot id (two robots with one id?): both are stored apart; rename one robot (fleet.robot_id)"
            );
        }
        if Instant::now() >= next_ack {
            next_ack = Instant::now() + ack_period;
            let mut ack = Ack {
                learner: instance.clone(),
                id: Some(id.clone()),
                only: a.robot.clone(),
                robots: Default::default(),
                streams: Default::default(),
            };
            for (r, epoch, held) in store.stream_acks(mono_ns()) {
                ack.insert(&r, epoch, held);
            }
            let _ = acks.publish(&StringMsg {
                data: to_json(&ack),
            });
        }
        if Instant::now() >= next_diag {
            // Only while there is something to warn about (and once when it
            // ends): the robots' nodes own /diagnostics otherwise.
            next_diag = Instant::now() + Duration::from_secs(1);
            let d = diagnostics_of(&store, &id, &counts.borrow());
            let warn = d.status[0].level != flowpilot_core::node::diagnostics::Level::Ok as u8;
            if warn || warned {
                let _ = diagnostics.publish(&d);
            }
            warned = warn;
        }
        let fresh: Vec<Revocation> = revocations.borrow_mut().drain(..).collect();
        let mut changed = false;
        if !fresh.is_empty() {
            match Revocations::load(&ckpt) {
                Ok(mut revs) => {
                    for r in fresh {
                        if revs.contains(&r.digest) {
                            continue;
                        }
                        let why = format!("revoked by robot {}", r.robot);
                        match revs.revoke(&ckpt, &[(&r.digest, 0)], &why) {
                            Ok(()) => {
                                tracing::warn!(robot = %r.robot, digest = %r.digest, "a robot revoked a version: revoked for the learner too")
                            }
                            Err(e) => tracing::error!("{e}"),
                        }
                        changed = true;
                    }
                }
                Err(e) => tracing::error!("{e}"),
            }
        }
        if changed || Instant::now() >= next_scan {
            next_scan = Instant::now() + Duration::from_millis(500);
            let now = ckpt.policies();
            if changed || scanned.as_ref() != Some(&now) {
                scanned = Some(now);
                // Unreadable revocations: publish nothing (fail closed).
                let newest = Revocations::load(&ckpt)
                    .map_err(|e| tracing::error!("not publishing a version: {e}"))
                    .ok()
                    .and_then(|revs| Lineage::scan(&ckpt).newest_clean(&revs, |_| true));
                if let Some((path, m)) = newest {
                    if published.as_deref() != Some(m.spec.digest.as_str()) {
                        match std::fs::read(&path) {
                            Ok(data) => {
                                let msg = UInt8MultiArray {
                                    data,
                                    ..Default::default()
                                };
                                match policy.publish(&msg) {
                                    Ok(()) => {
                                        tracing::info!(version = m.spec.version, digest = %m.spec.digest, "published a version to the fleet");
                                        published = Some(m.spec.digest.clone());
                                    }
                                    Err(e) => tracing::warn!("publishing a version: {e}"),
                                }
                            }
                            Err(e) => {
                                tracing::warn!(path = %path.display(), "reading a version: {e}")
                            }
                        }
                    }
                }
            }
        }
        if Instant::now() >= next_report {
            next_report = Instant::now() + report_every;
            let counters = store.counters();
            for (r, epoch, ack) in store.stream_acks(mono_ns()) {
                let (stored, dup, ahead) = counters.get(&r).copied().unwrap_or_default();
                let bytes = bytes_in.get(&r).copied().unwrap_or(0);
                tracing::info!(robot = %r, epoch = %epoch_hex(epoch), next = ack.next, stored, duplicates = dup, ahead, gap_records = ack.gap_records, conflict = ack.conflict, bytes, "fleet shards");
            }
        }
    }
    for (r, epoch, ack) in store.stream_acks(mono_ns()) {
        if ack.gap_records > 0 {
            tracing::warn!(robot = %r, epoch = %epoch_hex(epoch), gap_records = ack.gap_records, "records the robot no longer had (never received)");
        }
    }
    let c = counts.borrow();
    tracing::info!(
        id = %id,
        robot_id_conflicts = store.conflicts_total(),
        oversize_messages = c.oversize,
        malformed_messages = c.malformed,
        queue_dropped = c.queue_dropped,
        "fleet learner link summary"
    );
    store.close().context("closing the shards")?;
    Ok(())
}

/// Messages refused or dropped on the way in.
#[derive(Default)]
struct Counts {
    /// Over their size cap (refused unread).
    oversize: u64,
    /// Not a valid batch or revocation.
    malformed: u64,
    /// Dropped from a full queue (their robots resend them).
    queue_dropped: u64,
    /// Refused by the robot keys (unsigned, forged, unknown robot).
    refused: u64,
    last_refused: String,
}

/// Batches waiting between spins, bounded in count and bytes: the oldest
/// goes first when either bound is passed.
#[derive(Default)]
struct Pending {
    q: VecDeque<Vec<u8>>,
    bytes: usize,
}

impl Pending {
    /// Queue one; returns how many old ones were dropped for it.
    fn push(&mut self, m: Vec<u8>) -> u64 {
        let mut dropped = 0;
        while !self.q.is_empty() && (self.q.len() >= QUEUE || self.bytes + m.len() > QUEUE_BYTES) {
            let old = self.q.pop_front().expect("non-empty");
            self.bytes -= old.len();
            dropped += 1;
        }
        self.bytes += m.len();
        self.q.push_back(m);
        dropped
    }

    fn take(&mut self) -> VecDeque<Vec<u8>> {
        self.bytes = 0;
        std::mem::take(&mut self.q)
    }
}

/// The learner's lasting id: read from the shard directory, or made (16
/// random hex digits) and kept there the first time.
fn learner_id(shards: &std::path::Path) -> Result<String> {
    let path = shards.join(ID_FILE);
    if let Ok(s) = std::fs::read_to_string(&path) {
        let s = s.trim().to_string();
        anyhow::ensure!(
            flowpilot_core::fleet::valid_learner_id(&s),
            "{} holds no learner id ('{s}'): remove it to make a new one (robots that pin the old one with fleet.learner then ignore this learner)",
            path.display()
        );
        return Ok(s);
    }
    let id = epoch_hex(flowpilot_core::log::writer::new_epoch());
    flowpilot_core::checkpoint::write_atomic(&path, |tmp| std::fs::write(tmp, format!("{id}\n")))
        .with_context(|| format!("writing {}", path.display()))?;
    tracing::info!(id = %id, path = %path.display(), "made this learner's id");
    Ok(id)
}

/// The learner's `/diagnostics` status (published while WARN, and once
/// when it ends): WARN while two robots claim one id; each stream's
/// position.
fn diagnostics_of(store: &ShardStore, id: &str, c: &Counts) -> DiagnosticArray {
    let streams = store.stream_acks(mono_ns());
    let conflicted: Vec<String> = streams
        .iter()
        .filter(|(_, _, a)| a.conflict)
        .map(|(r, e, _)| format!("{r}/{}", epoch_hex(*e)))
        .collect();
    let (level, message) = if !c.last_refused.is_empty() {
        (
            flowpilot_core::node::diagnostics::Level::Warn,
            format!(
                "{} records batches refused; last: {}",
                c.refused, c.last_refused
            ),
        )
    } else if conflicted.is_empty() {
        (
            flowpilot_core::node::diagnostics::Level::Ok,
            "running".to_string(),
        )
    } else {
        (
            flowpilot_core::node::diagnostics::Level::Warn,
            format!("two robots with one id: streams {}", conflicted.join(", ")),
        )
    };
    let mut values = vec![
        KeyValue {
            key: "learner_id".into(),
            value: id.into(),
        },
        KeyValue {
            key: "robot_id_conflicts".into(),
            value: store.conflicts_total().to_string(),
        },
        KeyValue {
            key: "oversize_messages".into(),
            value: c.oversize.to_string(),
        },
        KeyValue {
            key: "malformed_messages".into(),
            value: c.malformed.to_string(),
        },
        KeyValue {
            key: "refused_batches".into(),
            value: c.refused.to_string(),
        },
    ];
    for (r, e, a) in &streams {
        values.push(KeyValue {
            key: format!("stream {r}/{}", epoch_hex(*e)),
            value: format!(
                "next {} gap_records {}{}",
                a.next,
                a.gap_records,
                if a.conflict { " conflict" } else { "" }
            ),
        });
    }
    let mut arr = DiagnosticArray::default();
    arr.header.stamp = crate::outputs::to_time(flowpilot_core::rt::board::wall_ns());
    arr.status.push(DiagnosticStatus {
        level: level as u8,
        name: "flowpilot_fleet".into(),
        message,
        hardware_id: id.into(),
        values,
    });
    arr
}
