//! The fleet link's data path on real files, without the graph: robot log
//! files (the node's own writer) → cursor batches → wire bytes → the
//! learner's shard store, through lost batches, a learner killed without
//! closing its files (and one killed as it created a part), deleted robot
//! files and a reinstalled robot whose log starts at 0 again. Every
//! record must arrive exactly once, in order.

use std::path::Path;
use std::time::Duration;

use flowpilot_core::fleet::cursor::LogCursor;
use flowpilot_core::fleet::inbox::Verdict;
use flowpilot_core::fleet::shards::ShardStore;
use flowpilot_core::fleet::wire::Batch;
use flowpilot_core::log::reader::{file_base, log_files, read_file, stream_base, Tail};
use flowpilot_core::log::writer::{LogConfig, LogHandle};
use flowpilot_core::log::Transition;

fn write_log(dir: &Path, ticks: std::ops::Range<u64>) {
    let log = LogHandle::start(LogConfig {
        dir: dir.into(),
        flush_period: Duration::from_millis(5),
        queue_capacity: 10_000,
        reward: None,
        metadata: [("every".to_string(), "1".to_string())].into(),
    })
    .unwrap();
    for i in ticks {
        let mut t = Transition {
            tick: i,
            episode: i / 50,
            n_obs: 2,
            n_act: 1,
            reward: -(i as f64),
            ..Default::default()
        };
        t.inputs[0] = i as f32;
        log.push(&t);
    }
    log.close();
}

fn ticks_in(dir: &Path) -> Vec<u64> {
    log_files(dir)
        .unwrap()
        .iter()
        .flat_map(|p| read_file(p).unwrap())
        .map(|t| t.tick)
        .collect()
}

/// Deliver every batch the cursor yields (through the wire encoding) except
/// those `lose` picks; returns how many were stored.
fn pump(cur: &mut LogCursor, store: &mut ShardStore, lose: impl Fn(usize) -> bool) -> usize {
    let mut stored = 0;
    let mut i = 0;
    while let Some(b) = cur.next_batch(7).unwrap() {
        let bytes = b.encode();
        if !lose(i) {
            if let Verdict::Store { .. } = store.receive(&Batch::decode(&bytes).unwrap()).unwrap() {
                stored += 1;
            }
        }
        i += 1;
    }
    stored
}

#[test]
fn log_files_number_the_stream_on_from_the_previous_file() {
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(stream_base(dir.path()).unwrap(), 0);
    write_log(dir.path(), 0..30);
    write_log(dir.path(), 100..120);
    let files = log_files(dir.path()).unwrap();
    let bases: Vec<u64> = files
        .iter()
        .map(|p| {
            let mut t = Tail::new(p);
            t.poll().unwrap();
            file_base(&t.metadata).unwrap()
        })
        .collect();
    assert_eq!(bases, vec![0, 30]);
    assert_eq!(stream_base(dir.path()).unwrap(), 50);
}

#[test]
fn every_record_arrives_once_in_order_through_loss_and_a_killed_learner() {
    let robot = tempfile::tempdir().unwrap();
    let learner = tempfile::tempdir().unwrap();
    write_log(robot.path(), 0..100);
    write_log(robot.path(), 1000..1060);
    let mut cur = LogCursor::new("r1", robot.path());
    let mut store = ShardStore::open(learner.path()).unwrap();

    // Every third batch is lost on the link: the learner stores up to the
    // first loss and refuses what comes after it (ahead of a hole).
    pump(&mut cur, &mut store, |i| i % 3 == 2);
    let acked = store.acks()["r1"].next;
    assert_eq!(acked, 14, "two batches of 7, then a loss");
    // The robot goes back to the acknowledgement (go-back-N) until done.
    for _ in 0..40 {
        let next = store.acks()["r1"].next;
        if next == 160 {
            break;
        }
        cur.seek(next);
        pump(&mut cur, &mut store, |i| i % 3 == 2);
    }
    assert_eq!(store.acks()["r1"].next, 160);

    // More records; the learner is killed (files left open, torn) half-way.
    write_log(robot.path(), 2000..2040);
    cur.seek(160);
    let b = cur.next_batch(7).unwrap().unwrap();
    store.receive(&b).unwrap();
    std::mem::forget(store); // kill -9: no close, no footer
    let mut store = ShardStore::open(learner.path()).unwrap();
    assert_eq!(
        store.acks()["r1"].next,
        167,
        "recovered from the part files"
    );
    cur.seek(store.acks()["r1"].next);
    pump(&mut cur, &mut store, |_| false);
    assert_eq!(store.acks()["r1"].next, 200);
    assert_eq!(store.acks()["r1"].gap_records, 0);
    store.close().unwrap();

    let robot_ticks = ticks_in(robot.path());
    assert_eq!(robot_ticks.len(), 200);
    assert_eq!(
        ticks_in(&learner.path().join("r1")),
        robot_ticks,
        "exactly once, in order"
    );
}

#[test]
fn records_the_robot_deleted_become_a_reported_gap() {
    let robot = tempfile::tempdir().unwrap();
    let learner = tempfile::tempdir().unwrap();
    write_log(robot.path(), 0..40);
    write_log(robot.path(), 40..60);
    std::fs::remove_file(&log_files(robot.path()).unwrap()[0]).unwrap();
    let mut cur = LogCursor::new("r1", robot.path());
    let mut store = ShardStore::open(learner.path()).unwrap();
    pump(&mut cur, &mut store, |_| false);
    let ack = store.acks()["r1"];
    assert_eq!((ack.next, ack.gap_records), (60, 40));
    assert_eq!(
        ticks_in(&learner.path().join("r1")),
        (40..60).collect::<Vec<_>>()
    );
}

/// Each shard part's ticks, parts in the order of their first tick (parts
/// of two streams written in one second share a stem: name order is not
/// stream order).
fn parts_in(dir: &Path) -> Vec<Vec<u64>> {
    let mut parts: Vec<Vec<u64>> = log_files(dir)
        .unwrap()
        .iter()
        .map(|p| {
            read_file(p)
                .unwrap()
                .iter()
                .map(|t| t.tick)
                .collect::<Vec<_>>()
        })
        .filter(|p| !p.is_empty())
        .collect();
    parts.sort_by_key(|p| p[0]);
    parts
}

#[test]
fn a_reinstalled_robot_whose_log_starts_at_0_again_loses_nothing() {
    let robot = tempfile::tempdir().unwrap();
    let learner = tempfile::tempdir().unwrap();
    write_log(robot.path(), 0..100);
    let mut store = ShardStore::open(learner.path()).unwrap();
    pump(&mut LogCursor::new("r1", robot.path()), &mut store, |_| {
        false
    });
    assert_eq!(store.acks()["r1"].next, 100);

    // Reinstalled: the log directory emptied, the node logs from 0 again.
    for f in std::fs::read_dir(robot.path()).unwrap().flatten() {
        std::fs::remove_file(f.path()).unwrap();
    }
    write_log(robot.path(), 5000..5060);
    assert_eq!(
        stream_base(robot.path()).unwrap(),
        60,
        "positions restart at 0"
    );
    // A new node: its link sends from where the learner holds its stream,
    // which is nothing yet (position 0).
    let stored = pump(&mut LogCursor::new("r1", robot.path()), &mut store, |_| {
        false
    });
    assert!(stored > 0, "the new records were judged duplicates");
    store.close().unwrap();
    let got: Vec<u64> = parts_in(&learner.path().join("r1")).concat();
    let want: Vec<u64> = (0..100).chain(5000..5060).collect();
    assert_eq!(got, want, "both streams, each once and in order");
}

#[test]
fn a_part_file_a_killed_learner_left_empty_is_recovered() {
    let robot = tempfile::tempdir().unwrap();
    let learner = tempfile::tempdir().unwrap();
    write_log(robot.path(), 0..40);
    write_log(robot.path(), 100..120);
    let mut store = ShardStore::open(learner.path()).unwrap();
    pump(&mut LogCursor::new("r1", robot.path()), &mut store, |_| {
        false
    });
    assert_eq!(store.acks()["r1"].next, 60);
    std::mem::forget(store); // kill -9
                             // ...as it had created the second part and before a record of it was
                             // flushed: that part holds its header and no record.
    let part = log_files(&learner.path().join("r1"))
        .unwrap()
        .into_iter()
        .find(|p| {
            let mut t = Tail::new(p);
            t.poll().unwrap();
            file_base(&t.metadata) == Some(40)
        })
        .unwrap();
    let bytes = std::fs::read(&part).unwrap();
    let mut at = mcap::MAGIC.len();
    while bytes[at] != 0x05 {
        at += 9 + u64::from_le_bytes(bytes[at + 1..at + 9].try_into().unwrap()) as usize;
    }
    std::fs::write(&part, &bytes[..at]).unwrap();
    assert!(read_file(&part).unwrap().is_empty());

    // The restarted learner holds 0..40; the robot resends from there and
    // the learner must store it (before: `create_new` of the same part
    // name failed, for good).
    let mut store = ShardStore::open(learner.path()).unwrap();
    assert_eq!(store.acks()["r1"].next, 40);
    let mut cur = LogCursor::new("r1", robot.path());
    cur.seek(40);
    while let Some(b) = cur.next_batch(7).unwrap() {
        store
            .receive(&b)
            .unwrap_or_else(|e| panic!("batch at {} not stored: {e}", b.seq));
    }
    assert_eq!(store.acks()["r1"].next, 60);
    store.close().unwrap();
    let got: Vec<u64> = parts_in(&learner.path().join("r1")).concat();
    assert_eq!(got, (0..40).chain(100..120).collect::<Vec<_>>());
}
