//! The transition log on real files: round trip, interoperability with the
//! mcap crate's standard reader, torn tails, the flush window, episode
//! boundary flags, and a full disk (/dev/full).

use std::sync::atomic::Ordering;
use std::time::Duration;

use flowpilot_core::log::reader::{log_files, read_file, Tail};
use flowpilot_core::log::writer::{DistanceReward, LogConfig, LogHandle};
use flowpilot_core::log::{PolicyId, Transition, SCHEMA_NAME, TOPIC};

fn cfg(dir: &std::path::Path) -> LogConfig {
    LogConfig {
        dir: dir.into(),
        flush_period: Duration::from_millis(20),
        queue_capacity: 10_000,
        reward: None,
        metadata: [("every".to_string(), "1".to_string())].into(),
    }
}

fn record(i: u64, episode: u64) -> Transition {
    let mut t = Transition {
        tick: i,
        mono_ns: 1_000 + i as i64,
        wall_ns: 1_700_000_000_000_000_000 + i as i64,
        episode,
        decision: (i % 6) as u8,
        intervention: i % 6 == 5,
        reward: if i % 4 == 0 {
            f64::NAN
        } else {
            -(i as f64) * 0.5
        },
        log_prob: 0.25 * i as f32,
        policy: PolicyId {
            version: 3,
            digest: [7; 32],
            normalizer_digest: [9; 32],
        },
        seed: 42,
        n_obs: 3,
        n_goal: 2,
        n_act: 2,
        applied_valid: i % 3 != 0,
        ..Default::default()
    };
    for k in 0..5 {
        t.inputs[k] = (i * 10 + k as u64) as f32 * 0.1;
    }
    t.sampled[..2].copy_from_slice(&[i as f32, -(i as f32)]);
    t.applied[..2].copy_from_slice(&[0.5 * i as f64, -0.25]);
    t
}

fn same(a: &Transition, b: &Transition) {
    assert_eq!(a.tick, b.tick);
    assert_eq!(
        (a.mono_ns, a.wall_ns, a.episode, a.decision),
        (b.mono_ns, b.wall_ns, b.episode, b.decision)
    );
    assert_eq!(a.intervention, b.intervention);
    assert!(a.reward == b.reward || (a.reward.is_nan() && b.reward.is_nan()));
    assert_eq!(a.log_prob, b.log_prob);
    assert_eq!(a.policy, b.policy);
    assert_eq!(a.seed, b.seed);
    assert_eq!(
        (a.obs(), a.goal(), a.sampled()),
        (b.obs(), b.goal(), b.sampled())
    );
    assert_eq!(a.applied(), b.applied());
}

#[test]
fn records_round_trip_and_standard_mcap_tools_read_them() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogHandle::start(cfg(dir.path())).unwrap();
    let sent: Vec<Transition> = (0..500).map(|i| record(i, 0)).collect();
    for t in &sent {
        log.push(t);
    }
    let stats = log.stats().clone();
    log.close();
    assert_eq!(stats.written.load(Ordering::Relaxed), 500);
    assert_eq!(stats.dropped.load(Ordering::Relaxed), 0);
    let path = &log_files(dir.path()).unwrap()[0];
    let got = read_file(path).unwrap();
    assert_eq!(got.len(), 500);
    for (a, b) in sent.iter().zip(&got) {
        same(a, b);
    }
    // the mcap crate's own reader: schema, encoding, every message
    let bytes = std::fs::read(path).unwrap();
    let mut n = 0;
    for m in mcap::MessageStream::new(&bytes).unwrap() {
        let m = m.unwrap();
        assert_eq!(m.channel.topic, TOPIC);
        assert_eq!(m.channel.message_encoding, "cdr");
        let s = m.channel.schema.as_ref().unwrap();
        assert_eq!(
            (s.name.as_str(), s.encoding.as_str()),
            (SCHEMA_NAME, "ros2msg")
        );
        same(&sent[n], &Transition::decode(&m.data).unwrap());
        n += 1;
    }
    assert_eq!(n, 500);
    let summary = mcap::Summary::read(&bytes)
        .unwrap()
        .expect("a closed file has a summary");
    assert_eq!(summary.stats.unwrap().message_count, 500);
}

#[test]
fn a_torn_tail_loses_only_the_torn_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogHandle::start(cfg(dir.path())).unwrap();
    for i in 0..200 {
        log.push(&record(i, 0));
    }
    log.close();
    let path = &log_files(dir.path()).unwrap()[0];
    let bytes = std::fs::read(path).unwrap();
    let cut_dir = tempfile::tempdir().unwrap();
    let cut = cut_dir.path().join("cut.mcap");
    let mut prev = 0;
    // every cut point from the header to the end: a prefix, never an error
    for at in (8..bytes.len()).step_by(37) {
        std::fs::write(&cut, &bytes[..at]).unwrap();
        let got = read_file(&cut).unwrap();
        assert!(got.len() >= prev, "more bytes never give fewer records");
        for (i, t) in got.iter().enumerate() {
            same(&record(i as u64, 0), t);
        }
        prev = got.len();
    }
    assert!(prev >= 199);
}

#[test]
fn an_open_file_holds_everything_older_than_the_flush_period() {
    let dir = tempfile::tempdir().unwrap();
    let log = LogHandle::start(cfg(dir.path())).unwrap();
    let path = log_files(dir.path()).unwrap()[0].clone();
    let mut tail = Tail::new(&path);
    let mut seen = 0;
    for batch in 0..5u64 {
        for i in 0..100 {
            log.push(&record(batch * 100 + i, 0));
        }
        // what a kill -9 now would leave on disk: the file as it stands
        std::thread::sleep(Duration::from_millis(150));
        let got = tail.poll().unwrap();
        seen += got.len();
        // one record is held back to mark episode ends
        assert_eq!(
            seen as u64,
            batch * 100 + 99,
            "records on disk after 150 ms"
        );
    }
    assert!(!tail.closed);
    drop(log);
}

#[test]
fn episode_boundaries_mark_the_last_record() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path());
    c.reward = Some(DistanceReward {
        a: vec![0, 1],
        b: vec![3, 4],
        action_cost: 0.1,
    });
    let log = LogHandle::start(c).unwrap();
    let eps = [0, 0, 0, 1, 1, 2, 2];
    for (i, &e) in eps.iter().enumerate() {
        let mut t = record(i as u64, e);
        t.began_after_terminal = e == 2;
        log.push(&t);
    }
    log.close();
    let got = read_file(&log_files(dir.path()).unwrap()[0]).unwrap();
    let flags: Vec<(bool, bool)> = got.iter().map(|t| (t.terminated, t.truncated)).collect();
    assert_eq!(
        flags,
        vec![
            (false, false),
            (false, false),
            (false, true),
            (false, false),
            (true, false),
            (false, false),
            (false, false)
        ]
    );
    // configured reward: −‖x[0,1] − x[3,4]‖ − 0.1‖applied‖²
    for t in &got {
        let x = &t.inputs;
        let f = |i: usize| x[i] as f64;
        let d = ((f(0) - f(3)).powi(2) + (f(1) - f(4)).powi(2)).sqrt();
        let u: f64 = t.applied().map_or(0.0, |a| a.iter().map(|v| v * v).sum());
        assert!((t.reward - (-d - 0.1 * u)).abs() < 1e-9);
    }
}

#[test]
fn a_full_disk_stops_logging_with_an_error_and_push_never_blocks() {
    let log = LogHandle::start_at(
        std::path::Path::new("/dev/full"),
        cfg(std::path::Path::new("/tmp")),
    )
    .unwrap();
    let t0 = std::time::Instant::now();
    let mut i = 0;
    while !log.stats().failed.load(Ordering::SeqCst) && t0.elapsed() < Duration::from_secs(10) {
        log.push(&record(i, 0));
        i += 1;
        if i % 1000 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert!(
        log.stats().failed.load(Ordering::SeqCst),
        "writing to /dev/full must fail"
    );
    let err = log.stats().error.lock().unwrap().clone();
    assert!(
        err.contains("No space left"),
        "error names the cause: {err}"
    );
    // pushes after the failure return at once and are counted
    let dropped = log.stats().dropped.load(Ordering::SeqCst);
    let t1 = std::time::Instant::now();
    for j in 0..10_000 {
        log.push(&record(j, 0));
    }
    assert!(t1.elapsed() < Duration::from_millis(500));
    assert_eq!(log.stats().dropped.load(Ordering::SeqCst), dropped + 10_000);
}

#[test]
fn cdr_encoding_is_stable() {
    // byte layout check against the schema: header, aligned u64s, strings
    let mut buf = Vec::new();
    record(1, 0).encode(&mut buf);
    assert_eq!(&buf[..4], &[0, 1, 0, 0]);
    assert_eq!(u64::from_le_bytes(buf[4..12].try_into().unwrap()), 1); // tick
    assert_eq!(u64::from_le_bytes(buf[28..36].try_into().unwrap()), 0); // episode
    assert_eq!(buf[36], 1); // decision
    assert_eq!(f64::from_le_bytes(buf[44..52].try_into().unwrap()), -0.5); // reward (aligned to 8)
    let s = String::from_utf8_lossy(&buf);
    assert!(s.contains("sha256:0707"));
    assert!(
        Transition::decode(&buf[..buf.len() - 3]).is_err(),
        "a truncated message is refused"
    );
}

/// (opcode, start, end) of every MCAP record after the magic, up to the
/// footer: the framing the writer produced (opcode u8, length u64, body).
fn mcap_records(bytes: &[u8]) -> Vec<(u8, usize, usize)> {
    let mut out = Vec::new();
    let mut pos = mcap::MAGIC.len();
    while pos + 9 <= bytes.len() {
        let len = u64::from_le_bytes(bytes[pos + 1..pos + 9].try_into().unwrap()) as usize;
        out.push((bytes[pos], pos, pos + 9 + len));
        pos += 9 + len;
    }
    out
}

/// A closed log of `n` records, then the bytes of that file with message
/// `bad` corrupted one of two ways; returns the bytes and where the corrupt
/// record starts and ends.
fn log_with_a_corrupt_record(n: u64, bad: usize, mcap_level: bool) -> (Vec<u8>, usize, usize) {
    let dir = tempfile::tempdir().unwrap();
    let log = LogHandle::start(cfg(dir.path())).unwrap();
    for i in 0..n {
        log.push(&record(i, 0));
    }
    log.close();
    let bytes = std::fs::read(&log_files(dir.path()).unwrap()[0]).unwrap();
    let (_, start, end) = mcap_records(&bytes)
        .into_iter()
        .filter(|r| r.0 == 0x05)
        .nth(bad)
        .unwrap();
    // the message really is record `bad` (tick at CDR offset 4, after the
    // 22-byte message header)
    let data = start + 9 + 22;
    assert_eq!(
        u64::from_le_bytes(bytes[data + 4..data + 12].try_into().unwrap()),
        bad as u64
    );
    if mcap_level {
        // A whole message record whose body is too short for a message
        // header: the MCAP parser refuses it.
        let mut out = bytes[..start].to_vec();
        out.push(0x05);
        out.extend_from_slice(&5u64.to_le_bytes());
        out.extend_from_slice(b"\xde\xad\xbe\xef\x00");
        let new_end = out.len();
        out.extend_from_slice(&bytes[end..]);
        (out, start, new_end)
    } else {
        // Same framing and length, but the observation sequence claims
        // 1000 floats: the CDR payload fails to decode.
        let mut out = bytes.clone();
        // encapsulation 4, fixed fields 72, two digest strings of 4 + 72
        let obs_len = data + 4 + 72 + 2 * 76;
        assert_eq!(
            u32::from_le_bytes(out[obs_len..obs_len + 4].try_into().unwrap()),
            3,
            "the observation sequence length"
        );
        out[obs_len..obs_len + 4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(Transition::decode(&out[data..end]).is_err());
        (out, start, end)
    }
}

#[test]
fn a_corrupt_complete_record_is_skipped_counted_and_reading_goes_on() {
    let n = 200u64;
    let bad = 100usize;
    let expected: Vec<u64> = (0..n).filter(|&i| i != bad as u64).collect();
    for mcap_level in [true, false] {
        let what = if mcap_level { "mcap" } else { "cdr" };
        let (bytes, start, end) = log_with_a_corrupt_record(n, bad, mcap_level);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("corrupt.mcap");

        // the closed file: every other record, in order, one skipped
        std::fs::write(&path, &bytes).unwrap();
        let mut tail = Tail::new(&path);
        let got = tail
            .poll()
            .unwrap_or_else(|e| panic!("{what}: {}", e.chain()));
        let ticks: Vec<u64> = got.iter().map(|t| t.tick).collect();
        assert_eq!(ticks, expected, "{what}: every other record, in order");
        for t in &got {
            same(&record(t.tick, 0), t);
        }
        assert_eq!(tail.corrupt(), 1, "{what}: exactly one record skipped");
        assert!(tail.closed, "{what}: read through to the end");
        assert!(tail.poll().unwrap().is_empty());
        assert_eq!(tail.corrupt(), 1, "{what}: not counted again");
        assert_eq!(read_file(&path).unwrap().len(), expected.len());

        // still being written, cut inside the corrupt record: a torn record
        // to wait for, not a corrupt one
        std::fs::write(&path, &bytes[..end - 1]).unwrap();
        let mut tail = Tail::new(&path);
        assert_eq!(tail.poll().unwrap().len(), bad, "{what}");
        assert_eq!(tail.corrupt(), 0, "{what}: torn is not corrupt");
        assert_eq!(tail.pending_bytes().unwrap(), (end - 1 - start) as u64);
        // the file grows past it (no footer yet): the reader moves on past
        // the corrupt record and does not come back to it
        let after = mcap_records(&bytes)
            .into_iter()
            .filter(|r| r.0 == 0x05 && r.1 >= end)
            .nth(10)
            .unwrap()
            .1;
        std::fs::write(&path, &bytes[..after]).unwrap();
        let got = tail
            .poll()
            .unwrap_or_else(|e| panic!("{what}: {}", e.chain()));
        assert_eq!(
            got.iter().map(|t| t.tick).collect::<Vec<_>>(),
            (bad as u64 + 1..bad as u64 + 11).collect::<Vec<_>>(),
            "{what}"
        );
        assert_eq!(tail.corrupt(), 1, "{what}");
        assert_eq!(tail.pending_bytes().unwrap(), 0, "{what}: past it");
        for _ in 0..3 {
            assert!(tail.poll().unwrap().is_empty(), "{what}: no re-read");
        }
        assert_eq!(tail.corrupt(), 1, "{what}: counted once");
        assert!(!tail.closed);

        // followed as it grows, 37 bytes at a time: never an error, every
        // other record once, in order, and one skipped
        let mut tail = Tail::new(&path);
        let mut ticks = Vec::new();
        let mut polls = 0;
        for at in (0..=bytes.len()).step_by(37).chain([bytes.len()]) {
            std::fs::write(&path, &bytes[..at]).unwrap();
            let got = tail
                .poll()
                .unwrap_or_else(|e| panic!("{what} at {at}: {}", e.chain()));
            ticks.extend(got.iter().map(|t| t.tick));
            assert_eq!(tail.corrupt(), u64::from(at >= end), "{what} at {at}");
            polls += 1;
        }
        assert!(polls > 10 && tail.closed, "{what}");
        assert_eq!(ticks, expected, "{what}: followed");
    }
}

#[test]
fn chunk_fields_round_trip_and_records_written_before_them_still_decode() {
    let mut t = record(5, 1);
    (t.chunk, t.chunk_index, t.temperature, t.robot_step) = (7, 3, 0.5, 11);
    let mut buf = Vec::new();
    t.encode(&mut buf);
    let back = Transition::decode(&buf).unwrap();
    same(&t, &back);
    assert_eq!((back.chunk, back.chunk_index), (7, 3));
    // A record from before chunks ends after `temperature` (u64 + u32 + the
    // u8 stop, and up to 4 bytes of alignment later): it reads as chunk 0,
    // step 0.
    let old = [13, 17]
        .iter()
        .find_map(|k| Transition::decode(&buf[..buf.len() - k]).ok())
        .expect("the pre-chunk layout decodes");
    assert_eq!((old.chunk, old.chunk_index), (0, 0));
    assert_eq!((old.temperature, old.robot_step), (0.5, 11));
}

#[test]
fn the_stop_field_round_trips_and_records_written_before_it_read_as_none() {
    let mut t = record(5, 1);
    (t.chunk, t.chunk_index, t.stop) = (7, 3, 1);
    let mut buf = Vec::new();
    t.encode(&mut buf);
    let back = Transition::decode(&buf).unwrap();
    same(&t, &back);
    assert_eq!(back.stop, 1);
    // A record from before the stop field ends after `chunk_index`.
    let old = Transition::decode(&buf[..buf.len() - 1]).unwrap();
    assert_eq!((old.stop, old.chunk, old.chunk_index), (0, 7, 3));
}
