//! The log writer thread. The control thread only pushes fixed-size records
//! into a bounded lock-free [`Handoff`] ([`LogHandle::push`]: never blocks,
//! a full queue refuses and counts the record). This thread encodes them as CDR
//! messages into an unchunked MCAP file and flushes it to the kernel every
//! `flush_period`, so a kill -9 loses at most that window and never an
//! earlier record. A write error (disk full) stops logging with an error;
//! the control loop is unaffected.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::index::IndexWriter;
use super::{schema_text, IoStep, LogError, Result, Transition, WriteStep, SCHEMA_NAME, TOPIC};
use crate::rt::handoff::Handoff;

/// A reward computed from the logged observation, for robots without a
/// reward topic: `-‖x[a] − x[b]‖ − action_cost·‖applied‖²`, with x the
/// observation followed by the goal.
#[derive(Debug, Clone, PartialEq)]
pub struct DistanceReward {
    pub a: Vec<usize>,
    pub b: Vec<usize>,
    pub action_cost: f64,
}

impl DistanceReward {
    pub fn eval(&self, t: &Transition) -> f64 {
        let x = &t.inputs[..t.n_obs + t.n_goal];
        let d2: f64 = self
            .a
            .iter()
            .zip(&self.b)
            // The config bounds the indices; a record narrower than them
            // (another model's) gives NaN, never a panic on this thread.
            .map(|(&i, &j)| match (x.get(i), x.get(j)) {
                (Some(&p), Some(&q)) => (p as f64 - q as f64).powi(2),
                _ => f64::NAN,
            })
            .sum();
        let u2: f64 = t.applied().map_or(0.0, |a| a.iter().map(|v| v * v).sum());
        -d2.sqrt() - self.action_cost * u2
    }
}

#[derive(Debug, Clone)]
pub struct LogConfig {
    pub dir: PathBuf,
    pub flush_period: Duration,
    pub queue_capacity: usize,
    /// Replace the reward field with this (None: keep the topic's reward).
    pub reward: Option<DistanceReward>,
    /// Written once as MCAP metadata "flowpilot" (model dims, bounds, rate).
    pub metadata: BTreeMap<String, String>,
}

/// Counters for /diagnostics.
#[derive(Default)]
pub struct LogStats {
    pub written: AtomicU64,
    /// Records refused by [`LogHandle::push`] (queue full, or logging failed).
    pub dropped: AtomicU64,
    /// Records already queued when logging failed, never written. Counted
    /// apart from `dropped` so that each counter has one writer thread and
    /// a reader sees push-side refusals exactly.
    pub lost: AtomicU64,
    pub failed: AtomicBool,
    /// The error that stopped logging, and the file (read off the RT path).
    pub error: Mutex<String>,
    pub path: Mutex<String>,
}

/// The control thread's end: push records; the writer thread owns the file.
pub struct LogHandle {
    queue: Arc<Handoff<Transition>>,
    /// Named metadata records (parameter changes, say) from other threads.
    notes: Arc<Handoff<Note>>,
    stats: Arc<LogStats>,
    stop: Arc<AtomicBool>,
    /// Taken when joined ([`Self::finish`] may come through a shared
    /// handle; never locked by the control thread).
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl LogStats {
    /// Every record that did not reach the file: refused or lost.
    pub fn not_written(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed) + self.lost.load(Ordering::Relaxed)
    }
}

impl LogHandle {
    /// The writer's counters and state, shared with whoever reports them.
    pub fn stats(&self) -> &Arc<LogStats> {
        &self.stats
    }

    /// Create the log file in `cfg.dir` and start the writer thread. The
    /// file's metadata gets its stream base and epoch (numbering on from
    /// the newest file already there, in its epoch; a directory with no
    /// file starts a new epoch: [`crate::contract::log_meta::EPOCH`]).
    pub fn start(mut cfg: LogConfig) -> Result<Self> {
        std::fs::create_dir_all(&cfg.dir).map_err(|source| LogError::Path {
            step: IoStep::CreatingDir,
            path: cfg.dir.clone(),
            source,
        })?;
        remove_orphan_indexes(&cfg.dir);
        let head = super::reader::stream_head(&cfg.dir)?;
        let epoch = head.epoch.unwrap_or_else(new_epoch);
        cfg.metadata.insert(
            crate::contract::log_meta::SEQ_BASE.into(),
            head.base.to_string(),
        );
        cfg.metadata.insert(
            crate::contract::log_meta::EPOCH.into(),
            super::reader::epoch_hex(epoch),
        );
        let secs = crate::rt::board::wall_ns() / 1_000_000_000;
        let stem = format!("flowpilot_{secs}_{}", std::process::id());
        // A session re-configured within the second must not truncate the
        // file before it; the suffix keeps name order = stream order.
        let path = (0..)
            .map(|n| match n {
                0 => cfg.dir.join(format!("{stem}.mcap")),
                n => cfg.dir.join(format!("{stem}_{n:04}.mcap")),
            })
            .find(|p| !p.exists())
            .expect("some name is free");
        Self::start_at(&path, cfg)
    }

    /// As [`Self::start`], writing to exactly `path` (tests use /dev/full).
    pub fn start_at(path: &Path, cfg: LogConfig) -> Result<Self> {
        let file = File::create(path).map_err(|source| LogError::Path {
            step: IoStep::Creating,
            path: path.to_path_buf(),
            source,
        })?;
        let index = index_for(path, &file);
        let stats = Arc::new(LogStats::default());
        *stats.path.lock().expect("fresh") = path.display().to_string();
        let queue = Arc::new(Handoff::new(cfg.queue_capacity));
        let stop = Arc::new(AtomicBool::new(false));
        let notes = Arc::new(Handoff::new(NOTES));
        let thread = {
            let (q, n, stats, stop) = (queue.clone(), notes.clone(), stats.clone(), stop.clone());
            std::thread::Builder::new()
                .name("flowpilot-log".into())
                .spawn(move || writer_thread(file, index, cfg, q, n, stats, stop))?
        };
        Ok(Self {
            queue,
            notes,
            stats,
            stop,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Hand a record to the writer. Lock-free and allocation-free; when the
    /// queue is full (or logging has failed) the record is dropped and counted.
    pub fn push(&self, t: &Transition) {
        if self.stats.failed.load(Ordering::Relaxed)
            || self.stop.load(Ordering::Relaxed)
            || self.queue.push(*t).is_err()
        {
            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Write a named MCAP metadata record beside the transitions (an
    /// accepted parameter change, say), in order with the records around
    /// it. Not for the control thread: the record is built by the caller.
    pub fn note(&self, name: &str, metadata: BTreeMap<String, String>) {
        if self.notes.push((name.to_string(), metadata)).is_err() {
            tracing::warn!("log note '{name}' dropped: {NOTES} notes already waiting");
        }
        if let Some(t) = self.thread.lock().expect("log thread lock").as_ref() {
            t.thread().unpark();
        }
    }

    /// Flush everything queued, write the MCAP summary and close the file.
    pub fn close(self) {
        self.finish();
    }

    /// As [`Self::close`] through a shared handle (others may still hold
    /// clones: records pushed after this are dropped and counted). The
    /// node calls it at stop so that the file is whole before the fleet
    /// link sends its end.
    pub fn finish(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let t = self.thread.lock().expect("log thread lock").take();
        if let Some(t) = t {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

impl Drop for LogHandle {
    fn drop(&mut self) {
        self.finish();
    }
}

/// A named MCAP metadata record.
type Note = (String, BTreeMap<String, String>);

/// Notes waiting for the writer; one arriving when full is dropped (and
/// logged): they are rare, human-paced events.
const NOTES: usize = 64;

/// A log file written synchronously by its caller (not the control
/// thread's writer): the fleet learner's per-robot shards, which must know
/// a record is in the kernel before acknowledging it. Same format as the
/// node's files, so the same reader and follower read them.
pub struct FileWriter {
    open: Open,
    path: PathBuf,
}

impl FileWriter {
    /// Create `path` (refusing to replace a file) with this metadata.
    pub fn create(path: &Path, metadata: &BTreeMap<String, String>) -> Result<Self> {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|source| LogError::Path {
                step: IoStep::Creating,
                path: path.to_path_buf(),
                source,
            })?;
        let index = index_for(path, &file);
        Ok(Self {
            open: Open::new(file, index, metadata)?,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Append one record (buffered until [`Self::flush`]).
    pub fn append(&mut self, t: &Transition) -> Result<()> {
        self.open.write(t).map_err(|source| LogError::Write {
            step: WriteStep::WritingRecord,
            source,
        })
    }

    /// Hand everything appended to the kernel (survives a kill -9 of this
    /// process, not a power cut).
    pub fn flush(&mut self) -> Result<()> {
        self.open.flush().map_err(|source| LogError::Write {
            step: WriteStep::Flushing,
            source,
        })
    }

    /// Write the summary and close.
    pub fn finish(self) -> Result<()> {
        self.open.finish().map_err(|source| LogError::Write {
            step: WriteStep::Closing,
            source,
        })
    }
}

/// A new stream's epoch: 64 random bits from the kernel (never 0, which
/// names the streams from before epochs).
pub fn new_epoch() -> u64 {
    let mut b = [0u8; 8];
    // SAFETY: getrandom writes at most b.len() bytes into b.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    let mut e = u64::from_le_bytes(b);
    if n != b.len() as isize {
        // No getrandom (very old kernel): the clock and the pid, mixed.
        let t = crate::rt::board::wall_ns() as u64 ^ crate::rt::board::mono_ns() as u64;
        e = (t ^ (u64::from(std::process::id()) << 32)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
    e.max(1)
}

/// The index of a log file being created, if it is a regular file (not
/// /dev/full, say) and its sidecar can be made: the index only speeds
/// seeking up, so a failure to make one is logged, never an error.
fn index_for(path: &Path, file: &File) -> Option<IndexWriter> {
    if !file.metadata().is_ok_and(|m| m.is_file()) {
        return None;
    }
    match IndexWriter::create(path) {
        Ok(i) => Some(i),
        Err(e) => {
            tracing::warn!(path = %path.display(), "no index for this log file (seeking in it scans it): {e}");
            None
        }
    }
}

/// Sidecar indexes whose log file was deleted.
fn remove_orphan_indexes(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = p.to_string_lossy();
        if let Some(log) = name.strip_suffix(".idx").filter(|l| l.ends_with(".mcap")) {
            if !Path::new(log).exists() {
                let _ = std::fs::remove_file(&p);
            }
        }
    }
}

/// The file under the MCAP writer, counting the bytes written so that the
/// index knows each record's offset without asking the file (a
/// `stream_position` on the buffered file would flush it).
struct Counted {
    inner: BufWriter<File>,
    pos: Arc<AtomicU64>,
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.pos.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

impl Seek for Counted {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        if to == SeekFrom::Current(0) {
            return Ok(self.pos.load(Ordering::Relaxed));
        }
        let p = self.inner.seek(to)?;
        self.pos.store(p, Ordering::Relaxed);
        Ok(p)
    }
    fn stream_position(&mut self) -> std::io::Result<u64> {
        Ok(self.pos.load(Ordering::Relaxed))
    }
}

struct Open {
    w: mcap::Writer<Counted>,
    channel: u16,
    seq: u32,
    buf: Vec<u8>,
    /// Bytes written so far (the next record's offset).
    pos: Arc<AtomicU64>,
    /// Transition messages written so far.
    count: u64,
    index: Option<IndexWriter>,
}

impl Open {
    fn new(
        file: File,
        index: Option<IndexWriter>,
        metadata: &BTreeMap<String, String>,
    ) -> Result<Self> {
        let pos = Arc::new(AtomicU64::new(0));
        let out = Counted {
            inner: BufWriter::with_capacity(1 << 16, file),
            pos: pos.clone(),
        };
        let mut w = mcap::WriteOptions::new()
            .use_chunks(false)
            .compression(None)
            .profile("ros2")
            .library(concat!("flowpilot ", env!("CARGO_PKG_VERSION")))
            .create(out)?;
        let schema = w.add_schema(SCHEMA_NAME, "ros2msg", schema_text().as_bytes())?;
        let channel = w.add_channel(schema, TOPIC, "cdr", &BTreeMap::new())?;
        w.write_metadata(&mcap::records::Metadata {
            name: "flowpilot".into(),
            metadata: metadata.clone(),
        })?;
        w.flush()?;
        Ok(Self {
            w,
            channel,
            seq: 0,
            buf: Vec::with_capacity(1024),
            pos,
            count: 0,
            index,
        })
    }

    fn write(&mut self, t: &Transition) -> Result<(), mcap::McapError> {
        if let Some(i) = self.index.as_mut() {
            i.note(self.count, self.pos.load(Ordering::Relaxed));
        }
        self.count += 1;
        t.encode(&mut self.buf);
        self.seq = self.seq.wrapping_add(1);
        let header = mcap::records::MessageHeader {
            channel_id: self.channel,
            sequence: self.seq,
            log_time: t.wall_ns.max(0) as u64,
            publish_time: t.wall_ns.max(0) as u64,
        };
        self.w.write_to_known_channel(&header, &self.buf)
    }

    /// Hand the records to the kernel, then the index entries naming them
    /// (an entry never points past what a kill -9 leaves).
    fn flush(&mut self) -> Result<(), mcap::McapError> {
        self.w.flush()?;
        self.flush_index();
        Ok(())
    }

    fn flush_index(&mut self) {
        if let Some(i) = self.index.as_mut() {
            if let Err(e) = i.flush() {
                // Only seeking is slower without it: readers check each
                // entry and scan instead.
                tracing::warn!("log index not written (seeking scans this file): {e}");
                self.index = None;
            }
        }
    }

    /// Write the summary and close, then the last index entries.
    fn finish(self) -> Result<(), mcap::McapError> {
        let Self { mut w, index, .. } = self;
        w.finish()?;
        w.into_inner().flush()?;
        if let Some(mut i) = index {
            if let Err(e) = i.flush() {
                tracing::warn!("log index not written (seeking scans this file): {e}");
            }
        }
        Ok(())
    }
}

fn writer_thread(
    file: File,
    index: Option<IndexWriter>,
    cfg: LogConfig,
    q: Arc<Handoff<Transition>>,
    notes: Arc<Handoff<Note>>,
    stats: Arc<LogStats>,
    stop: Arc<AtomicBool>,
) {
    let fail = |e: LogError| {
        let msg = e.chain();
        tracing::error!("transition log stopped: {msg} (control continues without logging)");
        *stats.error.lock().expect("log error lock") = msg;
        stats.failed.store(true, Ordering::SeqCst);
    };
    let mut open = match Open::new(file, index, &cfg.metadata) {
        Ok(o) => Some(o),
        Err(e) => {
            fail(e);
            None
        }
    };
    // One record is held back so that an episode boundary can be marked on
    // the last record of the episode it ends.
    let mut pending: Option<Transition> = None;
    let mut last_flush = Instant::now();
    let emit = |open: &mut Option<Open>, t: &Transition| {
        if let Some(o) = open.as_mut() {
            match o.write(t) {
                Ok(()) => {
                    stats.written.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    fail(LogError::Write {
                        step: WriteStep::WritingRecord,
                        source: e,
                    });
                    *open = None;
                }
            }
        } else {
            stats.lost.fetch_add(1, Ordering::Relaxed);
        }
    };
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        while let Some((name, metadata)) = notes.pop() {
            if let Some(o) = open.as_mut() {
                if let Err(e) =
                    o.w.write_metadata(&mcap::records::Metadata { name, metadata })
                {
                    fail(LogError::Write {
                        step: WriteStep::WritingRecord,
                        source: e,
                    });
                    open = None;
                }
            }
        }
        while let Some(mut t) = q.pop() {
            if let Some(r) = &cfg.reward {
                t.reward = r.eval(&t);
            }
            if let Some(mut p) = pending.take() {
                if t.episode != p.episode {
                    p.terminated = t.began_after_terminal;
                    p.truncated = !t.began_after_terminal;
                }
                emit(&mut open, &p);
            }
            pending = Some(t);
        }
        if stopping {
            break;
        }
        if last_flush.elapsed() >= cfg.flush_period {
            last_flush = Instant::now();
            if let Some(o) = open.as_mut() {
                if let Err(e) = o.flush() {
                    fail(LogError::Write {
                        step: WriteStep::Flushing,
                        source: e,
                    });
                    open = None;
                }
            }
        }
        std::thread::park_timeout(Duration::from_millis(5).min(cfg.flush_period));
    }
    if let Some(p) = pending.take() {
        emit(&mut open, &p);
    }
    if let Some(o) = open {
        if let Err(e) = o.finish() {
            fail(LogError::Write {
                step: WriteStep::Closing,
                source: e,
            });
        } else if let Err(e) = super::bag::write_metadata(&cfg.dir) {
            // The log itself is whole; only the rosbag2 index is missing.
            tracing::warn!("{}", e.chain());
        }
    }
}
