//! The transition log's one error type.
//!
//! Messages read as the log's errors always have: where a step adds context
//! (`"opening <path>"`, `"flushing the log"`, ...), [`Display`](std::fmt::Display) is that context
//! and the cause is the [`source`](std::error::Error::source), so anyhow's
//! `{:#}` (and [`LogError::chain`]) print `context: cause` as before.

use std::fmt;
use std::path::PathBuf;

use mcap::McapError;

/// A file-system step of the log, named in messages as `"<step> <path>"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoStep {
    /// Opening a log file to read it.
    Opening,
    /// Creating a log file.
    Creating,
    /// Creating the log directory.
    CreatingDir,
    /// Listing the log directory.
    ReadingDir,
    /// Writing the directory's rosbag2 `metadata.yaml`.
    WritingBagMetadata,
}

impl fmt::Display for IoStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoStep::Opening => "opening",
            IoStep::Creating => "creating",
            IoStep::CreatingDir => "creating log dir",
            IoStep::ReadingDir => "reading log dir",
            IoStep::WritingBagMetadata => "writing rosbag2 metadata",
        })
    }
}

/// A writer step whose MCAP error is reported with context.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteStep {
    WritingRecord,
    Flushing,
    Closing,
}

impl fmt::Display for WriteStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WriteStep::WritingRecord => "writing a record",
            WriteStep::Flushing => "flushing the log",
            WriteStep::Closing => "closing the log",
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    // CDR decoding of one message ([`super::Transition::decode`]).
    #[error("not little-endian CDR")]
    NotCdr,
    #[error("truncated message")]
    Truncated,
    #[error("sequence too long")]
    SequenceTooLong,
    #[error("observation too wide")]
    ObsTooWide,
    #[error("action too wide")]
    ActionTooWide,
    #[error("applied and sampled actions differ in width")]
    AppliedWidth,
    /// A digest string that is not UTF-8.
    #[error(transparent)]
    DigestUtf8(#[from] std::str::Utf8Error),
    /// A digest string that is not 64 hex digits.
    #[error(transparent)]
    DigestHex(#[from] hex::FromHexError),

    /// A file-system step on `path` failed.
    #[error("{step} {}", path.display())]
    Path {
        step: IoStep,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Other I/O (seeking/reading an open log, its metadata, spawning the
    /// writer thread): reported as the I/O error itself.
    #[error(transparent)]
    Io(#[from] std::io::Error),

    #[error("{} is not an MCAP file", path.display())]
    NotMcap { path: PathBuf },
    /// A complete record that the MCAP parser refuses (corrupt, not torn).
    #[error("{}: corrupt record at byte {offset}: {error}", path.display())]
    CorruptRecord {
        path: PathBuf,
        offset: u64,
        /// Part of the message (as it always was), so not also a `source`.
        error: McapError,
    },
    /// An MCAP error while writing, with the step it stopped.
    #[error("{step}")]
    Write {
        step: WriteStep,
        #[source]
        source: McapError,
    },
    /// An MCAP error starting a log file (header, schema, channel, metadata).
    #[error(transparent)]
    Mcap(#[from] McapError),
}

impl LogError {
    /// The message and every cause after it, `": "`-separated (what anyhow's
    /// `{:#}` prints).
    pub fn chain(&self) -> String {
        let mut s = self.to_string();
        let mut cur: &dyn std::error::Error = self;
        while let Some(next) = cur.source() {
            s.push_str(": ");
            s.push_str(&next.to_string());
            cur = next;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::super::reader::{log_files, read_file};
    use super::super::Transition;
    use super::*;

    /// Callers add context with anyhow, which needs these bounds.
    #[test]
    fn is_send_sync_static() {
        fn ok<E: std::error::Error + Send + Sync + 'static>() {}
        ok::<LogError>();
    }

    #[test]
    fn messages_read_as_before() {
        let e = read_file(std::path::Path::new("/nonexistent/x.mcap")).unwrap_err();
        assert_eq!(e.to_string(), "opening /nonexistent/x.mcap");
        assert!(
            e.chain()
                .starts_with("opening /nonexistent/x.mcap: No such file"),
            "{}",
            e.chain()
        );
        let e = log_files(std::path::Path::new("/nonexistent")).unwrap_err();
        assert_eq!(e.to_string(), "reading log dir /nonexistent");
        let mut buf = Vec::new();
        Transition::default().encode(&mut buf);
        let e = Transition::decode(&buf[..buf.len() - 3]).unwrap_err();
        assert_eq!(e.to_string(), "truncated message");
        assert_eq!(
            Transition::decode(&[1, 0, 0, 0]).unwrap_err().to_string(),
            "not little-endian CDR"
        );
        let e = LogError::Write {
            step: WriteStep::Flushing,
            source: McapError::Io(std::io::Error::other("disk gone")),
        };
        assert!(e.chain().starts_with("flushing the log: "), "{}", e.chain());
        assert!(e.chain().ends_with("disk gone"), "{}", e.chain());
    }
}
