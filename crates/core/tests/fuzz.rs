//! Bounded-time fuzzing on stable Rust: a seeded mutation loop over valid
//! inputs (a real model file, a real CDR record, a real MCAP log, a real
//! parameter set) for each parser in `flowpilot_core::fuzz_targets`. A
//! panic or a call slower than 2 s fails the test and saves the input to
//! `target/fuzz-crashers/`; a single allocation over 1 GiB aborts the test
//! binary (a parser trusting a length field). Saved inputs in
//! `tests/fuzz_corpus/<target>/` are replayed first, every run
//! (regressions; `log_reader/oom-header-string-4gb.bin` made the reader
//! ask for 4 GiB before this harness refused it).
//!
//! `FLOWPILOT_FUZZ_SECS` sets the budget per target (default 2 s; CI sets
//! it in scripts/test.sh). `fuzz/` holds the same targets for cargo-fuzz.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use flowpilot_core::fuzz_targets as t;
use flowpilot_core::log::writer::{LogConfig, LogHandle};
use flowpilot_core::log::{PolicyId, Transition};
use flowpilot_core::policy::model::{Direction, PolicyKind};

/// The system allocator, refusing any single allocation over 1 GiB: a
/// parser that trusts a length field would otherwise "succeed" here (Linux
/// overcommits) and only fail on a robot with less memory. A refusal
/// aborts the test binary, which fails the test.
struct CappedAlloc;

const ALLOC_CAP: usize = 1 << 30;

unsafe impl std::alloc::GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        if layout.size() > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        std::alloc::System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        std::alloc::System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        if new > ALLOC_CAP {
            return std::ptr::null_mut();
        }
        std::alloc::System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: cheap, deterministic, good enough to pick mutations
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One to eight random edits: byte flips, interesting values, inserted or
/// deleted ranges, truncation, duplicated chunks.
fn mutate(rng: &mut Rng, seed: &[u8]) -> Vec<u8> {
    let mut d = seed.to_vec();
    for _ in 0..1 + rng.below(8) {
        let len = d.len();
        match rng.below(7) {
            0 if len > 0 => {
                let i = rng.below(len);
                d[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                d[i] = [0, 1, 0x7f, 0x80, 0xff][rng.below(5)];
            }
            2 if len >= 8 => {
                // a little-endian length or count field set to an extreme
                let i = rng.below(len - 7);
                let v: u64 = [0, 1, u32::MAX as u64, u64::MAX, 1 << 40][rng.below(5)];
                d[i..i + 8].copy_from_slice(&v.to_le_bytes());
            }
            3 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(16);
                let fill: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                d.splice(i..i, fill);
            }
            4 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                d.drain(i..i + n);
            }
            5 => d.truncate(rng.below(len + 1)),
            _ if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(256));
                let chunk = d[i..i + n].to_vec();
                let j = rng.below(len + 1);
                d.splice(j..j, chunk);
            }
            _ => {}
        }
    }
    d
}

fn budget() -> Duration {
    let s: f64 = std::env::var("FLOWPILOT_FUZZ_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2.0);
    Duration::from_secs_f64(s)
}

/// This thread's CPU time so far.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

fn corpus(name: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_corpus")
        .join(name);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|r| r.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default();
    files.sort();
    files.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

/// Run `target` on the saved corpus, then on mutations of `seeds` for the
/// budget. Returns the number of inputs run.
fn fuzz(name: &str, seeds: &[Vec<u8>], target: fn(&[u8])) -> u64 {
    let run = |input: &[u8]| {
        // CPU time of this thread, not wall time: a loaded machine that
        // deschedules the test must not make an input look slow.
        let t0 = thread_cpu();
        let r = catch_unwind(AssertUnwindSafe(|| target(input)));
        let slow = thread_cpu() - t0 > Duration::from_secs(2);
        if r.is_err() || slow {
            let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/fuzz-crashers");
            let _ = std::fs::create_dir_all(&dir);
            let path = dir.join(format!("{name}-{:016x}.bin", hash(input)));
            let _ = std::fs::write(&path, input);
            panic!(
                "{name}: {} on a {}-byte input, saved to {}",
                if slow { "took over 2 s" } else { "panicked" },
                input.len(),
                path.display()
            );
        }
    };
    let mut n = 0;
    for input in corpus(name) {
        run(&input);
        n += 1;
    }
    for s in seeds {
        run(s);
    }
    let mut rng = Rng(0x5EED ^ hash(name.as_bytes()));
    let end = Instant::now() + budget();
    while Instant::now() < end {
        let seed = &seeds[rng.below(seeds.len())];
        run(&mutate(&mut rng, seed));
        n += 1;
    }
    eprintln!("fuzz {name}: {n} inputs in {:?}", budget());
    n
}

fn hash(d: &[u8]) -> u64 {
    d.iter().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ *b as u64).wrapping_mul(0x100000001b3)
    })
}

fn record(i: u64) -> Transition {
    let mut t = Transition {
        tick: i,
        mono_ns: 1_000 + i as i64,
        wall_ns: 1_700_000_000_000_000_000,
        decision: (i % 6) as u8,
        reward: -0.5,
        log_prob: 0.25,
        policy: PolicyId {
            version: 3,
            digest: [7; 32],
            normalizer_digest: [9; 32],
        },
        n_obs: 3,
        n_goal: 1,
        n_act: 2,
        applied_valid: true,
        ..Default::default()
    };
    t.inputs[..4].copy_from_slice(&[0.1, 0.2, 0.3, 0.4]);
    t.applied[..2].copy_from_slice(&[0.5, -0.25]);
    t
}

#[test]
fn model_loader_never_panics() {
    // (act, goal, encoder, direction, kind): every feature of the format.
    let seeds: Vec<Vec<u8>> = [
        (2, 0, false, Direction::Inverse, PolicyKind::Flow),
        (3, 2, true, Direction::Forward, PolicyKind::Flow),
        (2, 1, false, Direction::Inverse, PolicyKind::Gaussian),
    ]
    .into_iter()
    .enumerate()
    .map(|(i, (a, g, e, d, k))| {
        flowpilot_core::testkit::random_model(a, g, e, d, k, i as u64).to_bytes()
    })
    .collect();
    assert!(fuzz("model_loader", &seeds, t::model_loader) > 0);
}

#[test]
fn cdr_decoder_never_panics() {
    let seeds: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let mut b = Vec::new();
            record(i).encode(&mut b);
            b
        })
        .collect();
    assert!(fuzz("cdr_decoder", &seeds, t::cdr_decoder) > 0);
}

#[test]
fn fleet_batch_decoder_never_panics() {
    let seeds: Vec<Vec<u8>> = (0..3)
        .map(|i| {
            let mut rec = Vec::new();
            record(i).encode(&mut rec);
            flowpilot_core::fleet::wire::Batch {
                robot: "r1".into(),
                epoch: 0x0123_4567_89ab_cdef * i,
                file: "flowpilot_1_2.mcap".into(),
                seq: i,
                prev_end: i,
                metadata: [("every".to_string(), "1".to_string())].into(),
                records: vec![rec; i as usize + 1],
                auth: vec![7; i as usize],
            }
            .encode()
        })
        .chain([
            br#"{"learner":"a","only":null,"robots":{"r1":{"next":3,"gap_records":0}}}"#.to_vec(),
            br#"{"learner":"a","id":"0011","only":null,"robots":{},"streams":{"r1":{"0123456789abcdef":{"next":3,"gap_records":0,"conflict":true}}}}"#.to_vec(),
            // the same as a serialized std_msgs/String (what the robot queues)
            {
                let j = br#"{"learner":"a","id":"0011","robots":{}}"#;
                let mut m = vec![0, 1, 0, 0];
                m.extend_from_slice(&(j.len() as u32 + 1).to_le_bytes());
                m.extend_from_slice(j);
                m.push(0);
                m
            },
        ])
        .collect();
    assert!(fuzz("fleet_batch", &seeds, t::fleet_batch) > 0);
}

#[test]
fn log_reader_never_panics_or_loops() {
    let dir = tempfile::tempdir().unwrap();
    let handle = LogHandle::start(LogConfig {
        dir: dir.path().into(),
        flush_period: Duration::from_millis(5),
        queue_capacity: 64,
        reward: None,
        metadata: [("every".to_string(), "1".to_string())].into(),
    })
    .unwrap();
    for i in 0..5 {
        handle.push(&record(i));
    }
    drop(handle);
    let file = flowpilot_core::log::reader::log_files(dir.path()).unwrap()[0].clone();
    let seeds = vec![std::fs::read(file).unwrap()];
    assert!(fuzz("log_reader", &seeds, t::log_reader) > 0);
}

#[test]
fn config_parser_never_panics() {
    // Bytes that decode to a plausible parameter set, and some noise.
    let seeds: Vec<Vec<u8>> = vec![
        (0u8..120).collect(),
        vec![0, 3, 4, 3, 8, 2, 12, 5, 2, 1, 1, 0, 3, 6],
        vec![0xff; 40],
    ];
    // The mapping reaches every parameter name.
    assert!(!t::params_from_bytes(&seeds[0]).is_empty());
    assert!(fuzz("config_parser", &seeds, t::config_parser) > 0);
}
