//! What crosses the graph. A records batch is bytes inside a
//! std_msgs/UInt8MultiArray (no custom message package to build); the
//! acknowledgement and the revocation are JSON inside std_msgs/String, so
//! `ros2 topic echo` reads them. Decoding is strict and bounded: a
//! malformed message is an error, never a panic or an unbounded
//! allocation (fuzzed with the other decoders).
//!
//! Batch layout (little-endian):
//!
//! ```text
//! b"FPB1"
//! u16 n, robot id (n bytes, a valid robot id)
//! u16 n, source log file name (n bytes)
//! u64 seq        stream position of the first record
//! u64 prev_end   the robot holds no record in [prev_end, seq)
//! u16 n, then n × (u16 k, key, u16 v, value)   the source file's metadata
//! u32 n, then n × (u32 len, CDR record)          the records, in order
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

const MAGIC: &[u8; 4] = b"FPB1";
/// Most records in one batch.
pub const MAX_RECORDS: usize = 512;
/// Largest CDR record accepted (a full-width record is ~2.2 KB).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
const MAX_META: usize = 64;
const MAX_NAME: usize = 255;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    #[error("not a flowpilot records batch (bad magic)")]
    Magic,
    #[error("records batch cut short at byte {0}")]
    Short(usize),
    #[error("records batch field {field}: {value} exceeds the limit {limit}")]
    TooLarge {
        field: &'static str,
        value: usize,
        limit: usize,
    },
    #[error("records batch field {0} is not UTF-8")]
    Utf8(&'static str),
    #[error("invalid robot id '{0}' (a ROS name token of at most 64 characters)")]
    RobotId(String),
    #[error("records batch: prev_end {prev_end} is after seq {seq}")]
    Order { prev_end: u64, seq: u64 },
    #[error("{0} trailing bytes after the records")]
    Trailing(usize),
    #[error("invalid JSON: {0}")]
    Json(String),
}

/// Records of one robot, consecutive in its stream and from one log file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub robot: String,
    pub file: String,
    pub seq: u64,
    pub prev_end: u64,
    pub metadata: BTreeMap<String, String>,
    pub records: Vec<Vec<u8>>,
}

impl Batch {
    /// Stream position after the last record.
    pub fn end(&self) -> u64 {
        self.seq + self.records.len() as u64
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(64 + self.records.iter().map(|r| r.len() + 4).sum::<usize>());
        out.extend_from_slice(MAGIC);
        let s16 = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        s16(&mut out, &self.robot);
        s16(&mut out, &self.file);
        out.extend_from_slice(&self.seq.to_le_bytes());
        out.extend_from_slice(&self.prev_end.to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u16).to_le_bytes());
        for (k, v) in &self.metadata {
            s16(&mut out, k);
            s16(&mut out, v);
        }
        out.extend_from_slice(&(self.records.len() as u32).to_le_bytes());
        for r in &self.records {
            out.extend_from_slice(&(r.len() as u32).to_le_bytes());
            out.extend_from_slice(r);
        }
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        let mut r = Reader { buf, at: 0 };
        if r.take(4)? != MAGIC {
            return Err(WireError::Magic);
        }
        let robot = r.str16("robot")?;
        if !super::valid_robot_id(&robot) {
            return Err(WireError::RobotId(robot));
        }
        let file = r.str16("file")?;
        let seq = r.u64()?;
        let prev_end = r.u64()?;
        if prev_end > seq {
            return Err(WireError::Order { prev_end, seq });
        }
        let n_meta = limit("metadata", r.u16()? as usize, MAX_META)?;
        let mut metadata = BTreeMap::new();
        for _ in 0..n_meta {
            let k = r.str16("metadata key")?;
            metadata.insert(k, r.str16("metadata value")?);
        }
        let n = limit("records", r.u32()? as usize, MAX_RECORDS)?;
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let len = limit("record length", r.u32()? as usize, MAX_RECORD_BYTES)?;
            records.push(r.take(len)?.to_vec());
        }
        if r.at != buf.len() {
            return Err(WireError::Trailing(buf.len() - r.at));
        }
        Ok(Self {
            robot,
            file,
            seq,
            prev_end,
            metadata,
            records,
        })
    }
}

fn limit(field: &'static str, value: usize, limit: usize) -> Result<usize, WireError> {
    if value > limit {
        return Err(WireError::TooLarge {
            field,
            value,
            limit,
        });
    }
    Ok(value)
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.buf.len());
        let end = end.ok_or(WireError::Short(self.buf.len()))?;
        let s = &self.buf[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn str16(&mut self, field: &'static str) -> Result<String, WireError> {
        let n = limit(field, self.u16()? as usize, MAX_NAME)?;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| WireError::Utf8(field))
    }
}

/// What the learner has stored of one robot's stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RobotAck {
    /// Every record before this stream position is stored (or a gap).
    pub next: u64,
    /// Records the learner will never get (the robot no longer has them).
    pub gap_records: u64,
}

/// The learner's acknowledgement of every robot it has heard from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// This learner instance (changes when it restarts): a robot that sees
    /// a new instance resends from the acknowledged position at once.
    pub learner: String,
    /// A learner serving one robot alone (its own policy); None: every
    /// robot. A robot it does not serve ignores it.
    #[serde(default)]
    pub only: Option<String>,
    /// Robots it holds records of; a robot it serves and does not list
    /// starts from position 0.
    pub robots: BTreeMap<String, RobotAck>,
}

impl Ack {
    /// Where this learner wants `robot`'s stream from (None: it does not
    /// serve that robot).
    pub fn next_for(&self, robot: &str) -> Option<u64> {
        if self.only.as_deref().is_some_and(|o| o != robot) {
            return None;
        }
        Some(self.robots.get(robot).map_or(0, |r| r.next))
    }
}

/// A version a robot rolled back (its whole line is condemned).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    pub robot: String,
    /// `sha256:<hex>` of the revoked model file.
    pub digest: String,
}

/// JSON for the String topics.
pub fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

pub fn from_json<T: for<'de> Deserialize<'de>>(s: &str) -> Result<T, WireError> {
    serde_json::from_str(s).map_err(|e| WireError::Json(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch {
            robot: "r1".into(),
            file: "flowpilot_1_2.mcap".into(),
            seq: 40,
            prev_end: 38,
            metadata: [("every".to_string(), "1".to_string())].into(),
            records: vec![vec![1, 2, 3], vec![], vec![9; 100]],
        }
    }

    #[test]
    fn a_batch_round_trips() {
        let b = batch();
        assert_eq!(Batch::decode(&b.encode()).unwrap(), b);
        assert_eq!(b.end(), 43);
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_an_error() {
        let bytes = batch().encode();
        for n in 0..bytes.len() {
            assert!(Batch::decode(&bytes[..n]).is_err(), "cut at {n}");
        }
        let mut long = bytes.clone();
        long.push(0);
        assert_eq!(Batch::decode(&long), Err(WireError::Trailing(1)));
    }

    #[test]
    fn bounds_and_ids_are_checked() {
        let mut b = batch();
        b.robot = "../etc".into();
        assert!(matches!(
            Batch::decode(&b.encode()),
            Err(WireError::RobotId(_))
        ));
        let mut b = batch();
        b.prev_end = 41;
        assert!(matches!(
            Batch::decode(&b.encode()),
            Err(WireError::Order { .. })
        ));
        let mut bytes = batch().encode();
        // a record count far past the limit must not allocate for it
        let at = bytes.len() - (3 * 4 + 103) - 4;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Batch::decode(&bytes),
            Err(WireError::TooLarge {
                field: "records",
                ..
            })
        ));
    }

    #[test]
    fn acks_are_json() {
        let mut a = Ack {
            learner: "l-1".into(),
            only: None,
            robots: [(
                "r1".to_string(),
                RobotAck {
                    next: 5,
                    gap_records: 0,
                },
            )]
            .into(),
        };
        let s = to_json(&a);
        assert_eq!(from_json::<Ack>(&s).unwrap(), a);
        assert_eq!((a.next_for("r1"), a.next_for("r2")), (Some(5), Some(0)));
        a.only = Some("r2".into());
        assert_eq!((a.next_for("r1"), a.next_for("r2")), (None, Some(0)));
        assert!(from_json::<Ack>("{\"learner\":1}").is_err());
    }
}
