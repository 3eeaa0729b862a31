//! A log file's sparse index: a sidecar file `<log>.mcap.idx` beside each
//! file the node's writer (and the fleet learner's shard writer) produces,
//! naming the byte offset of every [`STRIDE`]-th message. Seeking to a
//! record (the fleet link after an outage, `reader::stream_base` at every
//! configure) reads one entry and then at most `STRIDE` records, instead
//! of the whole file: time and memory stay bounded however long the log.
//!
//! ```text
//! b"FPIDX\0\0\x01"   magic (format 1)
//! u64 stride         entry k names message k·stride
//! n × (u64 message number, u64 byte offset of its MCAP record)
//! ```
//!
//! Little-endian, append-only. The writer appends an entry only after the
//! data it points at was handed to the kernel, so after a kill -9 every
//! entry points at a whole record (a torn last entry is ignored). The
//! index is a hint: a reader checks that the entry's offset holds a
//! message record of the file's transition channel and falls back to a
//! bounded scan from the file's start when it does not (logs from before
//! the index, a deleted or foreign sidecar). Nothing else reads it: the
//! MCAP files stay standard, and `*.idx` is not a `*.mcap` file to
//! `log_files`, `ros2 bag` or `scripts/read_log.py`.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Messages between two entries: a seek scans at most this many records
/// (~0.2 MB of a 400-byte record log); 16 bytes of index per stride.
pub const STRIDE: u64 = 512;
const MAGIC: &[u8; 8] = b"FPIDX\0\0\x01";
const HEADER: u64 = 16;
const ENTRY: u64 = 16;

/// The sidecar of a log file: `<log>.idx` (`x.mcap` → `x.mcap.idx`).
pub fn path_for(log: &Path) -> PathBuf {
    let mut s = log.as_os_str().to_os_string();
    s.push(".idx");
    PathBuf::from(s)
}

/// Appends entries; off the control thread (the log writer's thread).
pub(crate) struct IndexWriter {
    file: File,
    pending: Vec<u8>,
}

impl IndexWriter {
    /// Create (truncate) the sidecar of `log`.
    pub(crate) fn create(log: &Path) -> io::Result<Self> {
        let mut file = File::create(path_for(log))?;
        let mut head = Vec::with_capacity(HEADER as usize);
        head.extend_from_slice(MAGIC);
        head.extend_from_slice(&STRIDE.to_le_bytes());
        file.write_all(&head)?;
        Ok(Self {
            file,
            pending: Vec::with_capacity(4 * ENTRY as usize),
        })
    }

    /// Message `n` (counted from 0 in this file) starts at byte `offset`;
    /// kept until [`Self::flush`] (only every STRIDE-th is kept).
    pub(crate) fn note(&mut self, n: u64, offset: u64) {
        if n.is_multiple_of(STRIDE) {
            self.pending.extend_from_slice(&n.to_le_bytes());
            self.pending.extend_from_slice(&offset.to_le_bytes());
        }
    }

    /// Append the kept entries. Call after the data they point at is
    /// flushed to the kernel.
    pub(crate) fn flush(&mut self) -> io::Result<()> {
        if !self.pending.is_empty() {
            self.file.write_all(&self.pending)?;
            self.pending.clear();
        }
        Ok(())
    }
}

/// The entry at or before message `target` of `log`: (message number,
/// byte offset). None without a usable index (absent, another format, no
/// entry, or an entry that does not name the message it should). Reads
/// the header and one entry: O(1) time and memory.
pub fn lookup(log: &Path, target: u64) -> Option<(u64, u64)> {
    let f = File::open(path_for(log)).ok()?;
    let len = f.metadata().ok()?.len();
    let mut head = [0u8; HEADER as usize];
    f.read_exact_at(&mut head, 0).ok()?;
    if &head[..8] != MAGIC {
        return None;
    }
    let stride = u64::from_le_bytes(head[8..16].try_into().ok()?);
    if stride == 0 {
        return None;
    }
    let entries = len.saturating_sub(HEADER) / ENTRY;
    if entries == 0 {
        return None;
    }
    let k = (target / stride).min(entries - 1);
    let mut e = [0u8; ENTRY as usize];
    f.read_exact_at(&mut e, HEADER + k * ENTRY).ok()?;
    let n = u64::from_le_bytes(e[..8].try_into().ok()?);
    let offset = u64::from_le_bytes(e[8..].try_into().ok()?);
    (n == k * stride && n <= target).then_some((n, offset))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_in_constant_time_and_a_torn_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("a.mcap");
        assert_eq!(path_for(&log), dir.path().join("a.mcap.idx"));
        assert_eq!(lookup(&log, 5), None, "no index");
        let mut w = IndexWriter::create(&log).unwrap();
        for n in 0..3 * STRIDE + 7 {
            w.note(n, 100 + 10 * n);
        }
        assert_eq!(lookup(&log, 0), None, "nothing flushed yet");
        w.flush().unwrap();
        assert_eq!(lookup(&log, 0), Some((0, 100)));
        assert_eq!(lookup(&log, STRIDE - 1), Some((0, 100)));
        assert_eq!(lookup(&log, STRIDE), Some((STRIDE, 100 + 10 * STRIDE)));
        assert_eq!(
            lookup(&log, u64::MAX),
            Some((3 * STRIDE, 100 + 30 * STRIDE)),
            "past the end: the last entry"
        );
        // a torn entry (kill -9 inside a write) is not read
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(path_for(&log))
            .unwrap();
        f.write_all(&[1, 2, 3]).unwrap();
        assert_eq!(
            lookup(&log, u64::MAX),
            Some((3 * STRIDE, 100 + 30 * STRIDE))
        );
        // a foreign file under the name is no index
        std::fs::write(path_for(&log), b"not an index at all").unwrap();
        assert_eq!(lookup(&log, 600), None);
    }
}
