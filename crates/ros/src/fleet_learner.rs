//! `flowpilot_fleet`: the learner's end of the fleet link (docs/fleet.md),
//! started by `flowpilot finetune --from-graph` beside the learner and
//! killed with it. It stores every robot's records in per-robot shards
//! (exactly once, in order, flushed before acknowledged), acknowledges
//! each robot's position, publishes the learner's newest version on a
//! latched topic (a robot joining late gets it), and writes the robots'
//! revocations into the learner's checkpoint record, so the learner's
//! rollback rule holds fleet-wide. One thread, no candle: the learner
//! process does the training from the shard directory.

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
use r2r::std_msgs::msg::{String as StringMsg, UInt8MultiArray};

use flowpilot_core::checkpoint::CheckpointDir;
use flowpilot_core::fleet::shards::ShardStore;
use flowpilot_core::fleet::topics;
use flowpilot_core::fleet::wire::{from_json, to_json, Ack, Batch, Revocation};

/// Batches held between spins; past this the oldest is dropped (its robot
/// resends it).
const QUEUE: usize = 4096;

#[derive(Parser, Debug)]
#[command(
    name = "flowpilot_fleet",
    about = "The fleet learner's link to its robots over ROS 2"
)]
struct Args {
    /// Per-robot shard directory (the learner reads it).
    #[arg(long)]
    shards: PathBuf,
    /// The learner's checkpoint directory (versions published from here).
    #[arg(long)]
    out: PathBuf,
    /// Serve one robot only, on its own policy topic (fleet.policy: own).
    #[arg(long)]
    robot: Option<String>,
    /// Seconds between acknowledgements.
    #[arg(long, default_value_t = 0.2)]
    ack_period: f64,
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
    let shutdown = flowpilot_core::shutdown::Shutdown::install();
    let mut store = ShardStore::open(&a.shards).context("opening the shard directory")?;
    for (r, ack) in store.acks() {
        tracing::info!(robot = %r, next = ack.next, "recovered shards");
    }
    let ckpt = CheckpointDir::new(&a.out);
    let instance = format!(
        "{}-{}",
        std::process::id(),
        flowpilot_core::board::wall_ns()
    );
    let ctx = r2r::Context::create().context("creating the ROS context")?;
    let mut node = r2r::Node::create(ctx, "flowpilot_fleet", "").context("creating the node")?;
    let mut pool = futures::executor::LocalPool::new();
    let spawner = pool.spawner();
    let batches: Rc<RefCell<VecDeque<Vec<u8>>>> = Rc::default();
    let q = batches.clone();
    let sub = node.subscribe::<UInt8MultiArray>(topics::RECORDS, qos::records())?;
    spawner.spawn_local(sub.for_each(move |m| {
        let mut q = q.borrow_mut();
        if q.len() >= QUEUE {
            q.pop_front();
        }
        q.push_back(m.data);
        futures::future::ready(())
    }))?;
    let revocations: Rc<RefCell<Vec<Revocation>>> = Rc::default();
    let q = revocations.clone();
    let sub = node.subscribe::<StringMsg>(topics::REVOKED, qos::revoked())?;
    spawner.spawn_local(sub.for_each(move |m| {
        match from_json::<Revocation>(&m.data) {
            Ok(r) => q.borrow_mut().push(r),
            Err(e) => tracing::warn!("ignoring a malformed revocation: {e}"),
        }
        futures::future::ready(())
    }))?;
    let acks = node.create_publisher::<StringMsg>(topics::ACKS, qos::acks())?;
    let policy_topic = match &a.robot {
        Some(r) => topics::own_policy(r),
        None => topics::POLICY.to_string(),
    };
    let policy = node.create_publisher::<UInt8MultiArray>(&policy_topic, qos::policy())?;
    tracing::info!(instance = %instance, shards = %a.shards.display(), out = %a.out.display(), policy = %policy_topic, "fleet learner link up");

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
        let pending: Vec<Vec<u8>> = batches.borrow_mut().drain(..).collect();
        for bytes in pending {
            let b = match Batch::decode(&bytes) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!("ignoring a malformed records batch: {e}");
                    continue;
                }
            };
            if a.robot.as_ref().is_some_and(|r| *r != b.robot) {
                continue;
            }
            *bytes_in.entry(b.robot.clone()).or_default() += bytes.len() as u64;
            if let Err(e) = store.receive(&b) {
                tracing::warn!("records batch not stored: {e}");
            }
        }
        if Instant::now() >= next_ack {
            next_ack = Instant::now() + ack_period;
            let ack = Ack {
                learner: instance.clone(),
                only: a.robot.clone(),
                robots: store.acks(),
            };
            let _ = acks.publish(&StringMsg {
                data: to_json(&ack),
            });
        }
        let fresh: Vec<Revocation> = revocations.borrow_mut().drain(..).collect();
        let mut changed = false;
        if !fresh.is_empty() {
            let mut rec = ckpt.accepted();
            for r in fresh {
                if rec.revoked.insert(r.digest.clone()) {
                    tracing::warn!(robot = %r.robot, digest = %r.digest, "a robot revoked a version: revoked for the learner too");
                    changed = true;
                }
            }
            if changed {
                if let Err(e) = ckpt.record_accepted(&rec) {
                    tracing::error!("recording a revocation: {e}");
                }
            }
        }
        if changed || Instant::now() >= next_scan {
            next_scan = Instant::now() + Duration::from_millis(500);
            let now = ckpt.policies();
            if changed || scanned.as_ref() != Some(&now) {
                scanned = Some(now);
                let record = ckpt.accepted();
                if let Some((path, m)) = ckpt.latest_unrevoked(&ckpt.lineage(), &record.revoked) {
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
            let acks = store.acks();
            for (r, (stored, dup, ahead)) in store.counters() {
                let ack = acks[&r];
                let bytes = bytes_in.get(&r).copied().unwrap_or(0);
                tracing::info!(robot = %r, next = ack.next, stored, duplicates = dup, ahead, gap_records = ack.gap_records, bytes, "fleet shards");
            }
        }
    }
    for (r, ack) in store.acks() {
        if ack.gap_records > 0 {
            tracing::warn!(robot = %r, gap_records = ack.gap_records, "records the robot no longer had (never received)");
        }
    }
    store.close().context("closing the shards")?;
    Ok(())
}
