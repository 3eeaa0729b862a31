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

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use mcap::records::Record;

use super::{IoStep, LogError, Result, Transition, SCHEMA_NAME};

/// Follows one log file: each [`Tail::poll`] returns the records completed
/// since the last call.
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
        }
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

    /// Bytes past the last complete record (a torn tail, or a record still
    /// being written).
    pub fn pending_bytes(&self) -> Result<u64> {
        let len = std::fs::metadata(&self.path)?.len();
        Ok(len.saturating_sub(self.offset))
    }

    /// Read every record completed since the last poll.
    pub fn poll(&mut self) -> Result<Vec<Transition>> {
        let mut out = Vec::new();
        if self.closed {
            return Ok(out);
        }
        let mut f = std::fs::File::open(&self.path).map_err(|source| LogError::Path {
            step: IoStep::Opening,
            path: self.path.clone(),
            source,
        })?;
        let mut buf = Vec::new();
        f.seek(SeekFrom::Start(self.offset))?;
        f.read_to_end(&mut buf)?;
        let mut pos = 0usize;
        if self.offset == 0 {
            if buf.len() < mcap::MAGIC.len() {
                return Ok(out);
            }
            if &buf[..mcap::MAGIC.len()] != mcap::MAGIC {
                return Err(LogError::NotMcap {
                    path: self.path.clone(),
                });
            }
            pos = mcap::MAGIC.len();
        }
        while buf.len() - pos >= 9 {
            let op = buf[pos];
            let len = u64::from_le_bytes(buf[pos + 1..pos + 9].try_into().expect("8 bytes"));
            let Some(end) = (pos as u64 + 9).checked_add(len) else {
                break;
            };
            if end > buf.len() as u64 {
                break; // torn or still being written
            }
            let at = self.offset + pos as u64;
            let body = &buf[pos + 9..end as usize];
            pos = end as usize;
            // Only the records this reader uses are parsed, and only once
            // their length-prefixed fields fit inside the record: the mcap
            // parser reserves a field's declared length before reading it,
            // so a corrupt 4 GB length would be a 4 GB allocation.
            if !USED_OPCODES.contains(&op) {
                continue;
            }
            let parsed = if fields_fit(op, body) {
                mcap::read::parse_record(op, body)
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
                Ok(Record::Message { header, data }) => {
                    if *self.channels.get(&header.channel_id).unwrap_or(&false) {
                        match Transition::decode(&data) {
                            Ok(t) => out.push(t),
                            Err(error) => {
                                self.corrupt += 1;
                                tracing::warn!(
                                    path = %self.path.display(),
                                    offset = at,
                                    sequence = header.sequence,
                                    "skipping a transition whose CDR payload does not decode: {}",
                                    error.chain()
                                );
                            }
                        }
                    }
                }
                Ok(Record::DataEnd(_)) | Ok(Record::Footer(_)) => {
                    self.closed = true;
                    pos = buf.len();
                    break;
                }
                Ok(_) => {}
                // A complete but unparsable record: corrupt, not torn. Its
                // framing is whole, so skip past it and go on.
                Err(error) => {
                    self.corrupt += 1;
                    let e = LogError::CorruptRecord {
                        path: self.path.clone(),
                        offset: at,
                        error,
                    };
                    tracing::warn!(opcode = op, "skipping it: {}", e.chain());
                }
            }
        }
        self.offset += pos as u64;
        Ok(out)
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

/// The stream position the next log file in `dir` starts at: the newest
/// file's [`super::SEQ_BASE_KEY`] plus its complete records (files written
/// before the key existed count from 0 in name order). Reads files from
/// the newest back to the first that carries a base.
pub fn stream_base(dir: &Path) -> Result<u64> {
    let files = match log_files(dir) {
        Ok(f) => f,
        Err(LogError::Path { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(0)
        }
        Err(e) => return Err(e),
    };
    let mut after = 0u64;
    for f in files.iter().rev() {
        let mut t = Tail::new(f);
        after += t.poll()?.len() as u64;
        if let Some(base) = file_base(&t.metadata) {
            return Ok(base + after);
        }
    }
    Ok(after)
}

/// A file's stream base from its metadata (None: written before bases).
pub fn file_base(metadata: &BTreeMap<String, String>) -> Option<u64> {
    metadata.get(super::SEQ_BASE_KEY)?.parse().ok()
}
