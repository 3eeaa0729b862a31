//! Reading transition logs, including files cut short by a crash and files
//! still being written. MCAP's record framing (opcode u8, length u64, body)
//! is walked here so that reading can stop cleanly before a torn record and
//! resume from the same offset when the file grows; each complete record's
//! body is decoded by the `mcap` crate's parser, and each message on our
//! channel by [`Transition::decode`].
//!
//! Torn and corrupt are kept apart: a record whose framing runs past the end
//! of the file is not yet complete, and is waited for (left for the next
//! poll). A complete record that the MCAP parser refuses, or a message whose
//! CDR payload does not decode, is corrupt: it is skipped, counted
//! ([`Tail::corrupt`]) and logged with `tracing::warn!`, and reading goes on
//! with the next record, so a follower never re-reads it.
//!
//! Real-time: none of this runs on the control thread (the learner and
//! offline tools read the files the writer thread produced); it does file
//! I/O and allocates freely.

use crate::contract::log_meta::{EPOCH, SEQ_BASE};
use std::collections::{BTreeMap, HashMap};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mcap::records::Record;

use super::{IoStep, LogError, Result, Transition, SCHEMA_NAME};

/// Largest record body parsed (Schema, Channel, Metadata, Footer): a
/// larger one is corrupt (skipped, counted), never an allocation of its
/// declared size.
const MAX_BODY: u64 = 16 << 20;
/// Largest message payload decoded (a full-width transition is ~2.2 KB).
const MAX_MESSAGE: u64 = 1 << 20;
/// Read-ahead of the bounded reader: the most file bytes held at once.
const READ_AHEAD: usize = 64 << 10;

/// Follows one log file: each [`Tail::poll`] returns the records completed
/// since the last call. The file is read through a fixed read-ahead
/// buffer, one record at a time, so what a poll holds is its result, never
/// the file; [`Tail::open_at`] starts at any record through the file's
/// index ([`super::index`]), [`Tail::poll_max`] bounds a poll.
pub struct Tail {
    path: PathBuf,
    offset: u64,
    /// channel id -> carries our schema
    channels: HashMap<u16, bool>,
    schemas: HashMap<u16, bool>,
    /// A footer or data-end record was seen: the writer closed the file.
    pub closed: bool,
    /// The "flowpilot" metadata record (model dims, bounds, rate).
    pub metadata: BTreeMap<String, String>,
    /// Complete records skipped as corrupt (see [`Tail::corrupt`]).
    corrupt: u64,
    /// Messages of the transition channel passed so far, corrupt ones
    /// included: the index in the file of the next record.
    messages: u64,
    /// Records walked over (read or skipped) since this reader was made;
    /// an index jump walks none.
    scanned: u64,
}

/// What [`Tail::advance`] does with the transition messages it passes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Decode each and hand it on.
    Decode,
    /// Count it only (read its 22-byte header, skip its payload).
    Skip,
    /// Stop before the first one (read the file's head).
    Head,
}

impl Tail {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            offset: 0,
            channels: HashMap::new(),
            schemas: HashMap::new(),
            closed: false,
            metadata: BTreeMap::new(),
            corrupt: 0,
            messages: 0,
            scanned: 0,
        }
    }

    /// A reader of `path` whose next record is the file's record `index`
    /// (counted from 0; corrupt records keep their index), or the end of
    /// the file's complete records when it has fewer
    /// ([`Self::position`] says which). Reads the file's head (schema,
    /// channel, metadata), one index entry and at most
    /// [`super::index::STRIDE`] records; without a usable index, every
    /// record before `index` (one at a time: memory stays bounded).
    pub fn open_at(path: &Path, index: u64) -> Result<Self> {
        let mut t = Self::new(path);
        t.advance(u64::MAX, Mode::Head, &mut |_, _| {})?;
        if index == 0 || t.closed {
            return Ok(t);
        }
        if let Some((n, at)) = super::index::lookup(path, index) {
            if n > 0 && at >= t.offset && t.message_at(at) {
                t.offset = at;
                t.messages = n;
            }
        }
        t.advance(index - t.messages, Mode::Skip, &mut |_, _| {})?;
        Ok(t)
    }

    /// Complete records skipped as corrupt so far: records the MCAP parser
    /// refuses, and messages on our channel whose CDR payload does not
    /// decode. A torn tail is not counted (it is waited for).
    pub fn corrupt(&self) -> u64 {
        self.corrupt
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The index in the file of the next record (records passed so far,
    /// corrupt ones included).
    pub fn position(&self) -> u64 {
        self.messages
    }

    /// Records walked over since this reader was made (what a seek cost).
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Bytes past the last complete record (a torn tail, or a record still
    /// being written).
    pub fn pending_bytes(&self) -> Result<u64> {
        let len = std::fs::metadata(&self.path)?.len();
        Ok(len.saturating_sub(self.offset))
    }

    /// Read every record completed since the last poll.
    pub fn poll(&mut self) -> Result<Vec<Transition>> {
        self.poll_max(usize::MAX)
    }

    /// As [`Self::poll`], passing at most `max` records (a corrupt one
    /// counts): what one call holds is bounded, however far the file grew.
    pub fn poll_max(&mut self, max: usize) -> Result<Vec<Transition>> {
        let mut out = Vec::new();
        self.advance(max as u64, Mode::Decode, &mut |_, t| out.push(t))?;
        Ok(out)
    }

    /// As [`Self::poll_max`], each record with its index in the file (a
    /// corrupt record leaves its index out).
    pub fn poll_indexed(&mut self, max: usize) -> Result<Vec<(u64, Transition)>> {
        let mut out = Vec::new();
        self.advance(max as u64, Mode::Decode, &mut |i, t| out.push((i, t)))?;
        Ok(out)
    }

    /// Whether a whole transition message record starts at byte `at`.
    fn message_at(&self, at: u64) -> bool {
        let check = || -> std::io::Result<bool> {
            let mut f = std::fs::File::open(&self.path)?;
            let len = f.metadata()?.len();
            let mut h = [0u8; 11];
            f.seek(SeekFrom::Start(at))?;
            f.read_exact(&mut h)?;
            let blen = u64::from_le_bytes(h[1..9].try_into().expect("8"));
            let channel = u16::from_le_bytes([h[9], h[10]]);
            Ok(h[0] == 0x05
                && blen >= 22
                && at.checked_add(9 + blen).is_some_and(|e| e <= len)
                && self.channels.get(&channel) == Some(&true))
        };
        check().unwrap_or(false)
    }

    /// Walk the complete records from the offset reached, passing at most
    /// `max` transition messages; stops before a torn or growing record.
    fn advance(
        &mut self,
        max: u64,
        mode: Mode,
        sink: &mut dyn FnMut(u64, Transition),
    ) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        let f = std::fs::File::open(&self.path).map_err(|source| LogError::Path {
            step: IoStep::Opening,
            path: self.path.clone(),
            source,
        })?;
        let len = f.metadata()?.len();
        let mut r = BufReader::with_capacity(READ_AHEAD, f);
        let mut at = self.offset;
        if at == 0 {
            let mut magic = [0u8; 8];
            if len < magic.len() as u64 {
                return Ok(());
            }
            r.read_exact(&mut magic)?;
            if magic[..] != mcap::MAGIC[..] {
                return Err(LogError::NotMcap {
                    path: self.path.clone(),
                });
            }
            at = magic.len() as u64;
        } else {
            r.seek(SeekFrom::Start(at))?;
        }
        let mut passed = 0u64;
        let mut body = Vec::new();
        // A read cut short (the file shrank under us) ends this poll at the
        // last whole record, like a torn tail.
        let short = |e: std::io::Error| -> Result<bool> {
            if e.kind() == std::io::ErrorKind::UnexpectedEof {
                Ok(true)
            } else {
                Err(e.into())
            }
        };
        while passed < max && len.saturating_sub(at) >= 9 {
            let mut h = [0u8; 9];
            if let Err(e) = r.read_exact(&mut h) {
                if short(e)? {
                    break;
                }
            }
            let op = h[0];
            let blen = u64::from_le_bytes(h[1..9].try_into().expect("8 bytes"));
            let Some(end) = (at + 9).checked_add(blen) else {
                break;
            };
            if end > len {
                break; // torn or still being written
            }
            let rec = at;
            if op == 0x05 {
                if mode == Mode::Head {
                    break; // left for the next read
                }
                if blen < 22 {
                    // Too short for a message header: corrupt, and (the
                    // writer writes transitions only) a record's index.
                    self.messages += 1;
                    passed += 1;
                    self.skip_corrupt(op, rec, "a message record too short for its header");
                    r.seek_relative(blen as i64)?;
                    at = end;
                    continue;
                }
                let mut mh = [0u8; 22];
                if let Err(e) = r.read_exact(&mut mh) {
                    if short(e)? {
                        break;
                    }
                }
                let channel = u16::from_le_bytes([mh[0], mh[1]]);
                let sequence = u32::from_le_bytes(mh[2..6].try_into().expect("4"));
                let data = blen - 22;
                if self.channels.get(&channel) != Some(&true) {
                    r.seek_relative(data as i64)?;
                    at = end;
                    continue;
                }
                let index = self.messages;
                self.messages += 1;
                passed += 1;
                if mode == Mode::Skip || data > MAX_MESSAGE {
                    if mode != Mode::Skip {
                        self.skip_corrupt(op, rec, "a transition larger than any record");
                    }
                    r.seek_relative(data as i64)?;
                    at = end;
                    continue;
                }
                body.resize(data as usize, 0);
                if let Err(e) = r.read_exact(&mut body) {
                    if short(e)? {
                        self.messages -= 1;
                        break;
                    }
                }
                at = end;
                match Transition::decode(&body) {
                    Ok(t) => sink(index, t),
                    Err(error) => {
                        self.corrupt += 1;
                        tracing::warn!(
                            path = %self.path.display(),
                            offset = rec,
                            sequence,
                            "skipping a transition whose CDR payload does not decode: {}",
                            error.chain()
                        );
                    }
                }
                continue;
            }
            // Only the records this reader uses are parsed, and only once
            // their length-prefixed fields fit inside the record: the mcap
            // parser reserves a field's declared length before reading it,
            // so a corrupt 4 GB length would be a 4 GB allocation.
            if !USED_OPCODES.contains(&op) {
                r.seek_relative(blen as i64)?;
                at = end;
                continue;
            }
            if blen > MAX_BODY {
                self.skip_corrupt(op, rec, "a record larger than any this reader uses");
                r.seek_relative(blen as i64)?;
                at = end;
                continue;
            }
            body.resize(blen as usize, 0);
            if let Err(e) = r.read_exact(&mut body) {
                if short(e)? {
                    break;
                }
            }
            at = end;
            let parsed = if fields_fit(op, &body) {
                mcap::read::parse_record(op, &body)
            } else {
                // A field runs past the record's end.
                Err(mcap::McapError::UnexpectedEof)
            };
            match parsed {
                Ok(Record::Schema { header, .. }) => {
                    self.schemas.insert(header.id, header.name == SCHEMA_NAME);
                }
                Ok(Record::Channel(c)) => {
                    let ours = *self.schemas.get(&c.schema_id).unwrap_or(&false);
                    self.channels
                        .insert(c.id, ours && c.message_encoding == "cdr");
                }
                Ok(Record::Metadata(m)) if m.name == "flowpilot" => self.metadata = m.metadata,
                Ok(Record::DataEnd(_)) | Ok(Record::Footer(_)) => {
                    self.closed = true;
                    at = len;
                    break;
                }
                Ok(_) => {}
                // A complete but unparsable record: corrupt, not torn. Its
                // framing is whole, so skip past it and go on.
                Err(error) => {
                    self.corrupt += 1;
                    let e = LogError::CorruptRecord {
                        path: self.path.clone(),
                        offset: rec,
                        error,
                    };
                    tracing::warn!(opcode = op, "skipping it: {}", e.chain());
                }
            }
        }
        self.offset = at;
        self.scanned += passed;
        Ok(())
    }

    fn skip_corrupt(&mut self, op: u8, offset: u64, what: &str) {
        self.corrupt += 1;
        tracing::warn!(path = %self.path.display(), opcode = op, offset, "skipping {what} (corrupt)");
    }
}

/// MCAP opcodes the reader acts on (Footer, Schema, Channel, Message,
/// Metadata, DataEnd); every other record is skipped unparsed.
const USED_OPCODES: [u8; 6] = [0x02, 0x03, 0x04, 0x05, 0x0C, 0x0F];

/// Whether every length-prefixed field of a record of these opcodes lies
/// inside its body (the MCAP layouts of the records in [`USED_OPCODES`]).
fn fields_fit(op: u8, body: &[u8]) -> bool {
    struct Cur<'a>(&'a [u8]);
    impl Cur<'_> {
        fn skip(&mut self, n: usize) -> Option<()> {
            self.0 = self.0.get(n..)?;
            Some(())
        }
        fn len32(&mut self) -> Option<usize> {
            let b = self.0.get(..4)?;
            self.0 = &self.0[4..];
            Some(u32::from_le_bytes(b.try_into().ok()?) as usize)
        }
        /// A u32-length-prefixed string or byte array.
        fn prefixed(&mut self) -> Option<()> {
            let n = self.len32()?;
            self.skip(n)
        }
        /// A map: u32 byte length, then (string, string) pairs inside it.
        fn map(&mut self) -> Option<()> {
            let n = self.len32()?;
            let mut inner = Cur(self.0.get(..n)?);
            while !inner.0.is_empty() {
                inner.prefixed()?;
                inner.prefixed()?;
            }
            self.skip(n)
        }
    }
    let walk = |c: &mut Cur| -> Option<()> {
        match op {
            // Schema: id u16, name, encoding, data
            0x03 => {
                c.skip(2)?;
                c.prefixed()?;
                c.prefixed()?;
                c.prefixed()
            }
            // Channel: id u16, schema id u16, topic, encoding, metadata map
            0x04 => {
                c.skip(4)?;
                c.prefixed()?;
                c.prefixed()?;
                c.map()
            }
            // Metadata: name, map
            0x0C => {
                c.prefixed()?;
                c.map()
            }
            // Message header; Footer; DataEnd: fixed sizes
            0x05 => c.skip(22),
            0x02 => c.skip(20),
            0x0F => c.skip(4),
            _ => None,
        }
    };
    walk(&mut Cur(body)).is_some()
}

/// Every complete record of one file (a torn tail is ignored, corrupt
/// records are skipped).
pub fn read_file(path: &Path) -> Result<Vec<Transition>> {
    Tail::new(path).poll()
}

/// The `*.mcap` files in a directory, oldest name first.
pub fn log_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| LogError::Path {
            step: IoStep::ReadingDir,
            path: dir.to_path_buf(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "mcap"))
        .collect();
    v.sort();
    Ok(v)
}

/// Records in a file and its "flowpilot" metadata, without decoding
/// them or holding the file: through its index, the head and at most
/// [`super::index::STRIDE`] records; a file without an index (written
/// before it) is walked record by record, in bounded memory. Corrupt
/// records count (they keep their positions).
pub fn count(path: &Path) -> Result<(u64, BTreeMap<String, String>)> {
    let t = Tail::open_at(path, u64::MAX)?;
    Ok((t.position(), t.metadata))
}

/// Where a log directory's stream stands: the position the next file
/// starts at, and the epoch it continues (None: no file to continue, a
/// new stream starts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHead {
    pub base: u64,
    pub epoch: Option<u64>,
}

/// [`StreamHead`] of `dir`: the newest file's [`SEQ_BASE`] plus
/// its records, and its [`EPOCH`] (files written before the base
/// count from 0 in name order; before the epoch, epoch 0). Reads files
/// from the newest back to the first that carries a base, each through
/// [`count`] (its index: bounded time and memory per file).
pub fn stream_head(dir: &Path) -> Result<StreamHead> {
    let files = match log_files(dir) {
        Ok(f) => f,
        Err(LogError::Path { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(StreamHead {
                base: 0,
                epoch: None,
            })
        }
        Err(e) => return Err(e),
    };
    let mut after = 0u64;
    let mut any_metadata = false;
    for f in files.iter().rev() {
        let (n, metadata) = count(f)?;
        after += n;
        any_metadata |= !metadata.is_empty();
        if let Some(base) = file_base(&metadata) {
            return Ok(StreamHead {
                base: base + after,
                epoch: Some(file_epoch(&metadata).unwrap_or(0)),
            });
        }
    }
    // Files from before bases continue as epoch 0; files without even a
    // metadata record (killed as they were created) hold no stream.
    Ok(StreamHead {
        base: after,
        epoch: (any_metadata || after > 0).then_some(0),
    })
}

/// The stream position the next log file in `dir` starts at
/// ([`stream_head`]).
pub fn stream_base(dir: &Path) -> Result<u64> {
    Ok(stream_head(dir)?.base)
}

/// A file's stream base from its metadata (None: written before bases).
pub fn file_base(metadata: &BTreeMap<String, String>) -> Option<u64> {
    metadata.get(SEQ_BASE)?.parse().ok()
}

/// A file's stream epoch from its metadata (None: written before epochs,
/// which is epoch 0).
pub fn file_epoch(metadata: &BTreeMap<String, String>) -> Option<u64> {
    parse_epoch(metadata.get(EPOCH)?)
}

/// An epoch as it is written: 16 lower-case hex digits.
pub fn epoch_hex(epoch: u64) -> String {
    format!("{epoch:016x}")
}

/// [`epoch_hex`]'s inverse (exactly 16 hex digits).
pub fn parse_epoch(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::index::{self, STRIDE};
    use crate::log::writer::FileWriter;

    fn rec(i: u64) -> Transition {
        let mut t = Transition {
            tick: i,
            n_obs: 2,
            n_act: 1,
            ..Default::default()
        };
        t.inputs[0] = i as f32;
        t
    }

    /// A closed log file of `n` records.
    fn log(dir: &Path, name: &str, base: u64, epoch: Option<u64>, n: u64) -> PathBuf {
        let path = dir.join(name);
        let mut meta: BTreeMap<String, String> = [(SEQ_BASE.to_string(), base.to_string())].into();
        if let Some(e) = epoch {
            meta.insert(EPOCH.into(), epoch_hex(e));
        }
        let mut w = FileWriter::create(&path, &meta).unwrap();
        for i in 0..n {
            w.append(&rec(i)).unwrap();
        }
        w.finish().unwrap();
        path
    }

    #[test]
    fn a_seek_reads_one_index_entry_and_at_most_a_stride_of_records() {
        let dir = tempfile::tempdir().unwrap();
        let n = 5 * STRIDE + 100;
        let path = log(dir.path(), "a.mcap", 0, Some(7), n);
        assert!(index::path_for(&path).exists(), "the writer indexes");
        for target in [0, 1, STRIDE - 1, STRIDE, 3 * STRIDE + 17, n - 1] {
            let mut t = Tail::open_at(&path, target).unwrap();
            assert_eq!(t.position(), target);
            assert!(t.scanned() < STRIDE, "{target}: scanned {}", t.scanned());
            let got = t.poll_indexed(3).unwrap();
            assert_eq!(got[0].0, target);
            assert_eq!(got[0].1.tick, target, "lands on the record");
            assert_eq!(t.metadata.get(EPOCH).unwrap(), &epoch_hex(7));
        }
        // past the end: the end, and the file's records counted
        let t = Tail::open_at(&path, u64::MAX).unwrap();
        assert_eq!((t.position(), t.closed), (n, true));
        assert!(t.scanned() <= STRIDE + 100);
        assert_eq!(count(&path).unwrap().0, n);
    }

    #[test]
    fn the_node_writers_index_holds_with_notes_between_the_records() {
        use crate::log::writer::{LogConfig, LogHandle};
        let dir = tempfile::tempdir().unwrap();
        let log = LogHandle::start(LogConfig {
            dir: dir.path().into(),
            flush_period: std::time::Duration::from_millis(5),
            queue_capacity: 10_000,
            reward: None,
            metadata: BTreeMap::new(),
        })
        .unwrap();
        let n = 3 * STRIDE + 9;
        for i in 0..n {
            if i % 100 == 0 {
                // parameter changes: metadata records among the messages
                log.note(
                    "parameter_change",
                    [("name".into(), format!("p{i}"))].into(),
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            log.push(&rec(i));
        }
        log.close();
        let path = log_files(dir.path()).unwrap()[0].clone();
        let head = stream_head(dir.path()).unwrap();
        assert_eq!(head.base, n);
        let epoch = head.epoch.unwrap();
        assert_ne!(epoch, 0, "a new directory starts a new epoch");
        for target in [STRIDE + 1, 3 * STRIDE + 8] {
            let mut t = Tail::open_at(&path, target).unwrap();
            assert!(t.scanned() < STRIDE);
            assert_eq!(t.poll_max(1).unwrap()[0].tick, target);
        }
        // the next file of the directory keeps the stream
        let log = LogHandle::start(LogConfig {
            dir: dir.path().into(),
            flush_period: std::time::Duration::from_millis(5),
            queue_capacity: 16,
            reward: None,
            metadata: BTreeMap::new(),
        })
        .unwrap();
        log.close();
        assert_eq!(
            stream_head(dir.path()).unwrap(),
            StreamHead {
                base: n,
                epoch: Some(epoch)
            }
        );
        // an emptied directory starts another (and its orphan index goes)
        for p in log_files(dir.path()).unwrap() {
            std::fs::remove_file(p).unwrap();
        }
        let log = LogHandle::start(LogConfig {
            dir: dir.path().into(),
            flush_period: std::time::Duration::from_millis(5),
            queue_capacity: 16,
            reward: None,
            metadata: BTreeMap::new(),
        })
        .unwrap();
        log.close();
        let head = stream_head(dir.path()).unwrap();
        assert_eq!(head.base, 0);
        assert!(head.epoch.is_some_and(|e| e != epoch && e != 0));
        let idx = std::fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "idx")
            })
            .count();
        assert_eq!(idx, 1, "only the live file's index is left");
    }

    #[test]
    fn without_an_index_a_seek_scans_and_a_bad_index_is_not_trusted() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * STRIDE;
        let path = log(dir.path(), "a.mcap", 0, None, n);
        let target = 2 * STRIDE + 5;
        // a log from before the index
        std::fs::remove_file(index::path_for(&path)).unwrap();
        let mut t = Tail::open_at(&path, target).unwrap();
        assert_eq!((t.position(), t.scanned()), (target, target));
        assert_eq!(t.poll_max(1).unwrap()[0].tick, target);
        // an index of another file (offsets that hold no message here)
        let other = log(dir.path(), "b.mcap", 0, None, n);
        let mut bytes = std::fs::read(index::path_for(&other)).unwrap();
        let last = bytes.len() - 8;
        let off = u64::from_le_bytes(bytes[last..].try_into().unwrap()) + 3;
        bytes[last..].copy_from_slice(&off.to_le_bytes());
        std::fs::write(index::path_for(&path), &bytes).unwrap();
        let mut t = Tail::open_at(&path, target).unwrap();
        assert_eq!(t.position(), target);
        assert_eq!(
            t.poll_max(1).unwrap()[0].tick,
            target,
            "fell back to a scan"
        );
    }

    #[test]
    fn an_unclosed_file_is_counted_and_followed_past_its_index() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.mcap");
        let meta = [(SEQ_BASE.to_string(), "10".to_string())].into();
        let mut w = FileWriter::create(&path, &meta).unwrap();
        for i in 0..2 * STRIDE + 3 {
            w.append(&rec(i)).unwrap();
        }
        w.flush().unwrap();
        // a kill -9 now: no footer; the index names what was flushed
        let (n, m) = count(&path).unwrap();
        assert_eq!((n, file_base(&m)), (2 * STRIDE + 3, Some(10)));
        let mut t = Tail::open_at(&path, 2 * STRIDE + 1).unwrap();
        assert!(!t.closed && t.scanned() <= 1);
        assert_eq!(t.poll().unwrap().len(), 2);
        for i in 0..5 {
            w.append(&rec(2 * STRIDE + 3 + i)).unwrap();
        }
        w.flush().unwrap();
        let got = t.poll_max(3).unwrap();
        assert_eq!(
            got.iter().map(|r| r.tick).collect::<Vec<_>>(),
            [1027, 1028, 1029]
        );
        assert_eq!(t.poll().unwrap().len(), 2, "bounded polls lose nothing");
        drop(w);
    }

    #[test]
    fn the_stream_head_numbers_on_in_the_newest_files_epoch() {
        let dir = tempfile::tempdir().unwrap();
        let none = StreamHead {
            base: 0,
            epoch: None,
        };
        assert_eq!(stream_head(&dir.path().join("absent")).unwrap(), none);
        assert_eq!(
            stream_head(dir.path()).unwrap(),
            none,
            "no file: a new stream"
        );
        log(dir.path(), "a.mcap", 0, Some(42), 30);
        log(dir.path(), "b.mcap", 30, Some(42), 20);
        let head = stream_head(dir.path()).unwrap();
        assert_eq!((head.base, head.epoch), (50, Some(42)));
        // a file killed as it was created (no metadata) holds nothing
        std::fs::write(dir.path().join("c.mcap"), b"").unwrap();
        assert_eq!(stream_head(dir.path()).unwrap().base, 50);
        // files from before epochs continue epoch 0
        let old = tempfile::tempdir().unwrap();
        log(old.path(), "a.mcap", 5, None, 10);
        assert_eq!(
            stream_head(old.path()).unwrap(),
            StreamHead {
                base: 15,
                epoch: Some(0)
            }
        );
        assert_eq!(parse_epoch(&epoch_hex(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_epoch("+000000000000001"), None);
    }
}
