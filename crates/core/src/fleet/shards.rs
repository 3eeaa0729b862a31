//! The learner's store of what robots sent: one directory per robot, one
//! MCAP part file per run of consecutive records from one robot log file,
//! in the node's own log format (so the learner's follower reads a shard
//! directory like a robot's log directory). A record is acknowledged only
//! once it is flushed to the kernel, so a kill -9 of the learner loses no
//! acknowledged record; a restart recovers each stream's position from the
//! part files (torn tails ignored; a part a kill left without a record is
//! removed) and opens new parts.
//!
//! Records are keyed by (robot, epoch): each robot log stream
//! (`log::reader::EPOCH`) has its own positions, so a reinstalled
//! robot whose log starts at 0 again is a new stream, stored from its
//! first record, and two robots that claim one id are two streams that
//! cannot overwrite or shadow each other; that case is detected
//! ([`ShardStore::take_conflicts`]) and flagged in the acknowledgements.
//!
//! ```text
//! <root>/<robot>/<source file stem>.<epoch, 16 hex>.<first position, 12 digits>.mcap
//! ```
//! (parts from before epochs: `<stem>.<first position>.mcap`, epoch 0.)
//!
//! Off the control thread: file I/O, allocates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::inbox::{Inbox, Verdict};
use super::wire::{Batch, RobotAck};
use crate::contract::log_meta::{EPOCH, FLEET_ROBOT, FLEET_SOURCE, SEQ_BASE};
use crate::log::reader::{count, epoch_hex, file_base, file_epoch, log_files};
use crate::log::writer::FileWriter;
use crate::log::{IoStep, LogError, Transition};

/// Two epochs of one robot id each sending within this long of the other,
/// alternately: two live robots with one id.
pub const CONFLICT_WINDOW_NS: i64 = 30_000_000_000;
/// Most streams per robot listed in an acknowledgement (the most recently
/// heard): what one robot id can add to an acknowledgement is bounded.
pub const MAX_ACKED_STREAMS: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("creating {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("robot {robot}: record {seq} does not decode ({source}); batch refused")]
    Record {
        robot: String,
        seq: u64,
        source: LogError,
    },
    #[error("robot {robot}: source file name '{file}' is not a log file name")]
    FileName { robot: String, file: String },
}

struct Part {
    source: String,
    /// Stream position of the next record this part would take.
    end: u64,
    writer: FileWriter,
}

struct Stream {
    inbox: Inbox,
    part: Option<Part>,
    /// When this instance last received a batch of it (None: recovered
    /// from parts only).
    heard_ns: Option<i64>,
    /// Flagged as one of two live streams of one robot id until then.
    conflict_until_ns: i64,
}

impl Stream {
    fn new(inbox: Inbox) -> Self {
        Self {
            inbox,
            part: None,
            heard_ns: None,
            conflict_until_ns: i64::MIN,
        }
    }
}

/// Two streams (epochs) of one robot id heard alternately: two robots
/// that claim one id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub robot: String,
    pub epochs: (u64, u64),
}

pub struct ShardStore {
    root: PathBuf,
    streams: BTreeMap<(String, u64), Stream>,
    /// Per robot: the epoch of the last batch received.
    last_epoch: BTreeMap<String, u64>,
    conflicts: Vec<Conflict>,
    conflicts_total: u64,
}

impl ShardStore {
    /// Open `root`, recovering every stream's position from its parts.
    pub fn open(root: &Path) -> Result<Self, ShardError> {
        std::fs::create_dir_all(root).map_err(|source| ShardError::CreateDir {
            path: root.into(),
            source,
        })?;
        let mut streams = BTreeMap::new();
        let entries = std::fs::read_dir(root).map_err(|source| ShardError::CreateDir {
            path: root.into(),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.path().is_dir() || !super::valid_robot_id(&name) {
                continue;
            }
            for (epoch, next) in recover(&e.path())? {
                streams.insert((name.clone(), epoch), Stream::new(Inbox::resume(next)));
            }
        }
        Ok(Self {
            root: root.into(),
            streams,
            last_epoch: BTreeMap::new(),
            conflicts: Vec::new(),
            conflicts_total: 0,
        })
    }

    /// The directory of one robot's shards.
    pub fn robot_dir(&self, robot: &str) -> PathBuf {
        self.root.join(robot)
    }

    /// [`Self::receive_at`] now.
    pub fn receive(&mut self, b: &Batch) -> Result<Verdict, ShardError> {
        self.receive_at(b, crate::rt::board::mono_ns())
    }

    /// Store the new part of a batch (durably, flushed) and return what
    /// was done with it. `now_ns`: a monotonic clock (conflict detection).
    pub fn receive_at(&mut self, b: &Batch, now_ns: i64) -> Result<Verdict, ShardError> {
        self.watch_epochs(b, now_ns);
        let dir = self.robot_dir(&b.robot);
        let stream = self
            .streams
            .entry((b.robot.clone(), b.epoch))
            .or_insert_with(|| Stream::new(Inbox::default()));
        stream.heard_ns = Some(now_ns);
        let verdict = stream.inbox.judge(b.seq, b.prev_end, b.records.len());
        let Verdict::Store { skip, gap } = verdict else {
            return Ok(verdict);
        };
        let first = b.seq + skip as u64;
        let records = b.records[skip..]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Transition::decode(r).map_err(|source| ShardError::Record {
                    robot: b.robot.clone(),
                    seq: first + i as u64,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fits = stream
            .part
            .as_ref()
            .is_some_and(|p| p.source == b.file && p.end == first);
        if !fits {
            if let Some(p) = stream.part.take() {
                p.writer.finish()?;
            }
            let stem = b
                .file
                .strip_suffix(".mcap")
                .filter(|s| !s.is_empty() && !s.contains('/') && !s.starts_with('.'))
                .ok_or_else(|| ShardError::FileName {
                    robot: b.robot.clone(),
                    file: b.file.clone(),
                })?;
            std::fs::create_dir_all(&dir).map_err(|source| ShardError::CreateDir {
                path: dir.clone(),
                source,
            })?;
            let mut metadata = b.metadata.clone();
            metadata.insert(SEQ_BASE.into(), first.to_string());
            metadata.insert(EPOCH.into(), epoch_hex(b.epoch));
            metadata.insert(FLEET_ROBOT.into(), b.robot.clone());
            metadata.insert(FLEET_SOURCE.into(), b.file.clone());
            let name = format!("{stem}.{}.{first:012}", epoch_hex(b.epoch));
            stream.part = Some(Part {
                source: b.file.clone(),
                end: first,
                writer: create_part(&dir, &name, &metadata)?,
            });
        }
        let part = stream.part.as_mut().expect("opened");
        for t in &records {
            part.writer.append(t)?;
        }
        part.writer.flush()?;
        part.end += records.len() as u64;
        stream.inbox.advance(gap, records.len() as u64);
        Ok(verdict)
    }

    /// Two live streams claiming one robot id: a batch of epoch `e` after
    /// one of another epoch, both heard within [`CONFLICT_WINDOW_NS`] and
    /// `e` heard before that other one (a restarted robot's old stream
    /// never comes back; a second robot's keeps alternating with it).
    fn watch_epochs(&mut self, b: &Batch, now_ns: i64) {
        let prev = self.last_epoch.insert(b.robot.clone(), b.epoch);
        let Some(prev) = prev.filter(|&p| p != b.epoch) else {
            return;
        };
        let recent = |s: Option<&Stream>| {
            s.and_then(|s| s.heard_ns)
                .is_some_and(|t| now_ns - t <= CONFLICT_WINDOW_NS)
        };
        let key = |e: u64| (b.robot.clone(), e);
        if !(recent(self.streams.get(&key(b.epoch))) && recent(self.streams.get(&key(prev)))) {
            return;
        }
        let until = now_ns + CONFLICT_WINDOW_NS;
        let mut fresh = false;
        for e in [b.epoch, prev] {
            if let Some(s) = self.streams.get_mut(&key(e)) {
                fresh |= s.conflict_until_ns < now_ns;
                s.conflict_until_ns = until;
            }
        }
        if fresh {
            self.conflicts_total += 1;
            self.conflicts.push(Conflict {
                robot: b.robot.clone(),
                epochs: (prev, b.epoch),
            });
        }
    }

    /// Conflicts detected since the last call (each reported once while it
    /// lasts; it lasts while both streams keep alternating).
    pub fn take_conflicts(&mut self) -> Vec<Conflict> {
        std::mem::take(&mut self.conflicts)
    }

    /// Conflicts detected by this instance.
    pub fn conflicts_total(&self) -> u64 {
        self.conflicts_total
    }

    /// Every stream's acknowledgement as (robot, epoch, ack): per robot the
    /// [`MAX_ACKED_STREAMS`] most recently heard. `now_ns` dates conflicts.
    pub fn stream_acks(&self, now_ns: i64) -> Vec<(String, u64, RobotAck)> {
        let mut by_robot: BTreeMap<&str, Vec<(&u64, &Stream)>> = BTreeMap::new();
        for ((r, e), s) in &self.streams {
            by_robot.entry(r).or_default().push((e, s));
        }
        let mut out = Vec::new();
        for (r, mut v) in by_robot {
            v.sort_by_key(|(_, s)| std::cmp::Reverse((s.heard_ns, s.inbox.next())));
            for (e, s) in v.into_iter().take(MAX_ACKED_STREAMS) {
                out.push((
                    r.to_string(),
                    *e,
                    RobotAck {
                        next: s.inbox.next(),
                        gap_records: s.inbox.gap_records(),
                        conflict: s.conflict_until_ns >= now_ns,
                    },
                ));
            }
        }
        out
    }

    /// Per robot, its most recently heard stream's acknowledgement (the
    /// one with most records when none was heard yet).
    pub fn acks(&self) -> BTreeMap<String, RobotAck> {
        let mut out: BTreeMap<String, RobotAck> = BTreeMap::new();
        for (r, _, a) in self.stream_acks(crate::rt::board::mono_ns()) {
            out.entry(r).or_insert(a); // the first listed is the latest
        }
        out
    }

    /// Per robot: (records stored by this instance, duplicates, batches
    /// ahead), summed over its streams.
    pub fn counters(&self) -> BTreeMap<String, (u64, u64, u64)> {
        let mut out: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for ((r, _), s) in &self.streams {
            let i = &s.inbox;
            let c = out.entry(r.clone()).or_default();
            c.0 += i.stored();
            c.1 += i.duplicates();
            c.2 += i.ahead();
        }
        out
    }

    /// Streams per robot (epochs held).
    pub fn epochs(&self, robot: &str) -> Vec<u64> {
        self.streams
            .keys()
            .filter(|(r, _)| r == robot)
            .map(|(_, e)| *e)
            .collect()
    }

    /// Close every open part (a clean stop).
    pub fn close(self) -> Result<(), ShardError> {
        for (_, s) in self.streams {
            if let Some(p) = s.part {
                p.writer.finish()?;
            }
        }
        Ok(())
    }
}

/// A new part file `<dir>/<name>.mcap`. A file already there is one a
/// killed learner left with no record (recovery removes those; one more
/// may come from a crash between recovery and now): it is replaced. One
/// that holds records is never touched: the part takes the next free
/// `<name>-<k>.mcap` instead.
fn create_part(
    dir: &Path,
    name: &str,
    metadata: &BTreeMap<String, String>,
) -> Result<FileWriter, ShardError> {
    for k in 0..64 {
        let path = match k {
            0 => dir.join(format!("{name}.mcap")),
            k => dir.join(format!("{name}-{k}.mcap")),
        };
        match FileWriter::create(&path, metadata) {
            Ok(w) => return Ok(w),
            Err(LogError::Path { source, .. })
                if source.kind() == std::io::ErrorKind::AlreadyExists =>
            {
                if count(&path).is_ok_and(|(n, _)| n == 0) {
                    tracing::warn!(path = %path.display(), "replacing a part file left without a record (a killed learner)");
                    remove_part(&path);
                    if let Ok(w) = FileWriter::create(&path, metadata) {
                        return Ok(w);
                    }
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ShardError::Log(LogError::Path {
        step: IoStep::Creating,
        path: dir.join(format!("{name}.mcap")),
        source: std::io::ErrorKind::AlreadyExists.into(),
    }))
}

fn remove_part(path: &Path) {
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(crate::log::index::path_for(path));
}

/// A robot's next position per stream (epoch) from its part files: the end
/// of the part that reaches furthest (parts are only ever written
/// contiguously). Each part is counted through its index; a part holding
/// no record (a learner killed right after creating it) is removed.
fn recover(dir: &Path) -> Result<BTreeMap<u64, u64>, ShardError> {
    let mut next = BTreeMap::new();
    for p in log_files(dir)? {
        let (n, metadata) = count(&p)?;
        if n == 0 {
            tracing::warn!(path = %p.display(), "removing a part file left without a record (a killed learner)");
            remove_part(&p);
            continue;
        }
        if let Some(base) = file_base(&metadata) {
            let epoch = file_epoch(&metadata).unwrap_or(0);
            let e = next.entry(epoch).or_insert(0);
            *e = (*e).max(base + n);
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn batch(epoch: u64, seq: u64, n: u64) -> Batch {
        let mut buf = Vec::new();
        let records = (seq..seq + n)
            .map(|i| {
                let t = Transition {
                    tick: i,
                    n_obs: 1,
                    n_act: 1,
                    ..Default::default()
                };
                t.encode(&mut buf);
                buf.clone()
            })
            .collect();
        Batch {
            robot: "r1".into(),
            epoch,
            file: format!("flowpilot_1_{epoch}.mcap"),
            seq,
            prev_end: seq,
            metadata: Default::default(),
            records,
            auth: Vec::new(),
        }
    }

    fn stored(store: &ShardStore, epoch: u64) -> u64 {
        store
            .stream_acks(0)
            .into_iter()
            .find(|(r, e, _)| r == "r1" && *e == epoch)
            .map_or(0, |(_, _, a)| a.next)
    }

    #[test]
    fn two_robots_with_one_id_are_kept_apart_and_reported_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ShardStore::open(dir.path()).unwrap();
        // robot A and robot B both call themselves r1, batches interleaved
        for k in 0..10u64 {
            let t = k as i64 * S / 10;
            store.receive_at(&batch(0xa, k * 5, 5), t).unwrap();
            store.receive_at(&batch(0xb, k * 3, 3), t).unwrap();
        }
        assert_eq!((stored(&store, 0xa), stored(&store, 0xb)), (50, 30));
        let c = store.take_conflicts();
        assert_eq!(c.len(), 1, "reported once while it lasts: {c:?}");
        assert_eq!(c[0].robot, "r1");
        assert!(store.stream_acks(S).iter().all(|(_, _, a)| a.conflict));
        assert!(store.take_conflicts().is_empty());
        // the flag ends when one stream stops
        assert!(store
            .stream_acks(2 * CONFLICT_WINDOW_NS)
            .iter()
            .all(|(_, _, a)| !a.conflict));
        store.close().unwrap();
        // and a restart reads both streams back apart
        let store = ShardStore::open(dir.path()).unwrap();
        assert_eq!((stored(&store, 0xa), stored(&store, 0xb)), (50, 30));
        assert_eq!(store.epochs("r1"), vec![0xa, 0xb]);
    }

    #[test]
    fn a_restarted_robot_is_a_new_stream_not_a_conflict() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = ShardStore::open(dir.path()).unwrap();
        for k in 0..5u64 {
            store
                .receive_at(&batch(0xa, k * 5, 5), k as i64 * S)
                .unwrap();
        }
        // reinstalled one second later: a new epoch from position 0
        for k in 0..5u64 {
            let v = store
                .receive_at(&batch(0xc, k * 5, 5), (6 + k as i64) * S)
                .unwrap();
            assert!(matches!(v, Verdict::Store { skip: 0, gap: 0 }), "{v:?}");
        }
        assert!(store.take_conflicts().is_empty());
        assert_eq!((stored(&store, 0xa), stored(&store, 0xc)), (25, 25));
    }

    #[test]
    fn an_empty_part_under_the_name_a_new_part_takes_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let robot = dir.path().join("r1");
        std::fs::create_dir_all(&robot).unwrap();
        let mut store = ShardStore::open(dir.path()).unwrap();
        // a part left with no record where this store's next part goes (a
        // crash between recovery and now; recovery removes earlier ones)
        let name = format!("flowpilot_1_{}.{}.{:012}", 0x10, epoch_hex(0x10), 0);
        let meta = [(SEQ_BASE.to_string(), "0".to_string())].into();
        FileWriter::create(&robot.join(format!("{name}.mcap")), &meta)
            .unwrap()
            .flush()
            .unwrap();
        store.receive_at(&batch(0x10, 0, 4), 0).unwrap();
        assert_eq!(stored(&store, 0x10), 4);
        // a part that holds records is never replaced: the next name
        let mut other = ShardStore::open(&dir.path().join("other")).unwrap();
        let odir = dir.path().join("other").join("r1");
        std::fs::create_dir_all(&odir).unwrap();
        let mut w = FileWriter::create(&odir.join(format!("{name}.mcap")), &meta).unwrap();
        w.append(&Transition::default()).unwrap();
        w.finish().unwrap();
        other.receive_at(&batch(0x10, 0, 4), 0).unwrap();
        assert!(odir.join(format!("{name}-1.mcap")).exists());
        assert_eq!(count(&odir.join(format!("{name}.mcap"))).unwrap().0, 1);
        store.close().unwrap();
        other.close().unwrap();
        // recovery removes a part without a record
        let empty = robot.join("flowpilot_9_9.mcap");
        FileWriter::create(&empty, &meta).unwrap().flush().unwrap();
        let store = ShardStore::open(dir.path()).unwrap();
        assert!(!empty.exists());
        assert_eq!(stored(&store, 0x10), 4);
    }
}
