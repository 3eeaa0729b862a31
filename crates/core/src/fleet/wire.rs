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
//! b"FPB2"
//! u16 n, robot id (n bytes, a valid robot id)
//! u64 epoch      the robot's log stream (log::reader::EPOCH; 0: a
//!                stream from before epochs)
//! u16 n, source log file name (n bytes)
//! u64 seq        stream position of the first record (in that epoch)
//! u64 prev_end   the robot holds no record in [prev_end, seq)
//! u16 n, then n × (u16 k, key, u16 v, value)   the source file's metadata,
//!                keys strictly increasing (one encoding per batch)
//! u32 n, then n × (u32 len, CDR record)          the records, in order
//! u16 n, auth (n bytes)   an authenticator of every byte before this
//!                field ([`Batch::body`]); empty: none. The robot's
//!                signature ([`super::auth`]), checked by a learner
//!                given robot keys.
//! ```
//!
//! `FPB1` (before epochs) is the same without `epoch` and `auth`; it is
//! still read, as epoch 0.
//!
//! Every message is size-capped before it is parsed: a records message
//! over [`MAX_BATCH_BYTES`], an acknowledgement over [`MAX_ACK_BYTES`] or
//! a revocation over [`MAX_REVOCATION_BYTES`] is refused unread.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::log::reader::{epoch_hex, parse_epoch};

const MAGIC_V1: &[u8; 4] = b"FPB1";
const MAGIC: &[u8; 4] = b"FPB2";
/// Most records in one batch.
pub const MAX_RECORDS: usize = 512;
/// Largest CDR record accepted (a full-width record is ~2.2 KB).
pub const MAX_RECORD_BYTES: usize = 16 * 1024;
const MAX_META: usize = 64;
const MAX_NAME: usize = 255;
/// Largest authenticator (a signature and a key id).
pub const MAX_AUTH: usize = 1024;
/// Largest records message: every field at its limit. Checked on the
/// message's length before [`Batch::decode`] reads a byte of it.
pub const MAX_BATCH_BYTES: usize = 4
    + (2 + MAX_NAME)
    + 8
    + (2 + MAX_NAME)
    + 16
    + 2
    + MAX_META * (4 + 2 * MAX_NAME)
    + 4
    + MAX_RECORDS * (4 + MAX_RECORD_BYTES)
    + 2
    + MAX_AUTH;
/// Largest acknowledgement JSON (a few hundred robots' streams; a
/// 64-robot fleet's is ~10 kB).
pub const MAX_ACK_BYTES: usize = 256 * 1024;
/// Largest revocation JSON (a robot id and a digest: ~150 bytes).
pub const MAX_REVOCATION_BYTES: usize = 4096;

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
    #[error("{what} of {len} bytes exceeds the cap of {cap} (refused unread)")]
    Oversize {
        what: &'static str,
        len: usize,
        cap: usize,
    },
    #[error("records batch metadata keys are not strictly increasing at '{0}'")]
    MetaOrder(String),
    #[error("not a CDR std_msgs/String: {0}")]
    Cdr(&'static str),
}

/// Refuse `len` bytes of `what` over `cap` before parsing them.
pub fn check_size(what: &'static str, len: usize, cap: usize) -> Result<(), WireError> {
    if len > cap {
        return Err(WireError::Oversize { what, len, cap });
    }
    Ok(())
}

/// Records of one robot, consecutive in its stream and from one log file.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Batch {
    pub robot: String,
    /// The robot's log stream: positions count within it (0: before epochs).
    pub epoch: u64,
    pub file: String,
    pub seq: u64,
    pub prev_end: u64,
    pub metadata: BTreeMap<String, String>,
    pub records: Vec<Vec<u8>>,
    /// An authenticator of [`Self::body`] (empty: none): the robot's
    /// signature, checked by a learner with robot keys ([`super::auth`]).
    pub auth: Vec<u8>,
}

impl Batch {
    /// Stream position after the last record.
    pub fn end(&self) -> u64 {
        self.seq + self.records.len() as u64
    }

    /// The message: [`Self::body`] and the authenticator.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = self.body();
        out.extend_from_slice(&(self.auth.len() as u16).to_le_bytes());
        out.extend_from_slice(&self.auth);
        out
    }

    /// The bytes an authenticator covers: the encoding up to the `auth`
    /// field. One encoding per batch (metadata keys sorted), so a decoded
    /// batch's body is the bytes that were received.
    pub fn body(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(80 + self.records.iter().map(|r| r.len() + 4).sum::<usize>());
        out.extend_from_slice(MAGIC);
        let s16 = |out: &mut Vec<u8>, s: &str| {
            out.extend_from_slice(&(s.len() as u16).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        };
        s16(&mut out, &self.robot);
        out.extend_from_slice(&self.epoch.to_le_bytes());
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

    /// Decode a records message (refused unread over [`MAX_BATCH_BYTES`]).
    pub fn decode(buf: &[u8]) -> Result<Self, WireError> {
        check_size("records message", buf.len(), MAX_BATCH_BYTES)?;
        let mut r = Reader { buf, at: 0 };
        let v2 = match r.take(4)? {
            m if m == MAGIC => true,
            m if m == MAGIC_V1 => false,
            _ => return Err(WireError::Magic),
        };
        let robot = r.str16("robot")?;
        if !super::valid_robot_id(&robot) {
            return Err(WireError::RobotId(robot));
        }
        let epoch = if v2 { r.u64()? } else { 0 };
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
            if v2
                && metadata
                    .last_key_value()
                    .is_some_and(|(last, _)| *last >= k)
            {
                return Err(WireError::MetaOrder(k));
            }
            let v = r.str16("metadata value")?;
            metadata.insert(k, v);
        }
        let n = limit("records", r.u32()? as usize, MAX_RECORDS)?;
        let mut records = Vec::with_capacity(n);
        for _ in 0..n {
            let len = limit("record length", r.u32()? as usize, MAX_RECORD_BYTES)?;
            records.push(r.take(len)?.to_vec());
        }
        let auth = if v2 {
            let n = limit("auth", r.u16()? as usize, MAX_AUTH)?;
            r.take(n)?.to_vec()
        } else {
            Vec::new()
        };
        if r.at != buf.len() {
            return Err(WireError::Trailing(buf.len() - r.at));
        }
        Ok(Self {
            robot,
            epoch,
            file,
            seq,
            prev_end,
            metadata,
            records,
            auth,
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
    /// Another stream (epoch) claims this robot id at the same time: two
    /// robots with one id. Each stream is kept apart; the robots report it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub conflict: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The learner's acknowledgement of every robot it has heard from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    /// This run of the learner (changes when it restarts): a robot that
    /// sees a new run resends from the acknowledged position at once.
    pub learner: String,
    /// The learner's lasting id (kept in its shard directory, so a
    /// restart keeps it): a robot follows one id and ignores the others
    /// (a second learner on the domain cannot reset it). None: a learner
    /// from before ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// A learner serving one robot alone (its own policy); None: every
    /// robot. A robot it does not serve ignores it.
    #[serde(default)]
    pub only: Option<String>,
    /// Streams from before epochs (epoch 0), by robot; a robot it serves
    /// and does not list starts from position 0.
    pub robots: BTreeMap<String, RobotAck>,
    /// Every other stream it holds, by robot and then epoch (16 hex
    /// digits); one it does not list starts from position 0.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub streams: BTreeMap<String, BTreeMap<String, RobotAck>>,
}

impl Ack {
    /// What this learner holds of `robot`'s stream `epoch` (None: it does
    /// not serve that robot; a stream it does not list is at 0).
    pub fn stream(&self, robot: &str, epoch: u64) -> Option<RobotAck> {
        if self.only.as_deref().is_some_and(|o| o != robot) {
            return None;
        }
        let held = if epoch == 0 {
            self.robots.get(robot).copied()
        } else {
            self.streams
                .get(robot)
                .and_then(|m| m.get(&epoch_hex(epoch)))
                .copied()
        };
        Some(held.unwrap_or(RobotAck {
            next: 0,
            gap_records: 0,
            conflict: false,
        }))
    }

    /// Where this learner wants `robot`'s stream `epoch` from (None: it
    /// does not serve that robot).
    pub fn next_for(&self, robot: &str, epoch: u64) -> Option<u64> {
        self.stream(robot, epoch).map(|s| s.next)
    }

    /// Set what is held of `robot`'s stream `epoch`.
    pub fn insert(&mut self, robot: &str, epoch: u64, ack: RobotAck) {
        if epoch == 0 {
            self.robots.insert(robot.into(), ack);
        } else {
            self.streams
                .entry(robot.into())
                .or_default()
                .insert(epoch_hex(epoch), ack);
        }
    }

    /// Every (robot, epoch, ack) listed.
    pub fn entries(&self) -> Vec<(String, u64, RobotAck)> {
        let mut v: Vec<_> = self
            .robots
            .iter()
            .map(|(r, a)| (r.clone(), 0, *a))
            .collect();
        for (r, m) in &self.streams {
            for (e, a) in m {
                if let Some(e) = parse_epoch(e) {
                    v.push((r.clone(), e, *a));
                }
            }
        }
        v
    }

    /// Decode an acknowledgement message's text, refused unread over
    /// [`MAX_ACK_BYTES`].
    pub fn from_capped(text: &str) -> Result<Self, WireError> {
        check_size("acknowledgement", text.len(), MAX_ACK_BYTES)?;
        from_json(text)
    }
}

/// The text of a serialized std_msgs/String (CDR: a 4-byte encapsulation
/// header, u32 length including the terminating NUL, the bytes), as a
/// raw subscription hands it over: the robot's spin thread only queues
/// the bytes; the link thread decodes them here.
pub fn cdr_string(buf: &[u8]) -> Result<&str, WireError> {
    if buf.len() < 8 || buf[0] != 0 || buf[1] > 1 {
        return Err(WireError::Cdr("no CDR encapsulation header"));
    }
    let n: [u8; 4] = buf[4..8].try_into().expect("4");
    let n = if buf[1] == 1 {
        u32::from_le_bytes(n)
    } else {
        u32::from_be_bytes(n)
    } as usize;
    let text = buf
        .get(8..8usize.saturating_add(n))
        .ok_or(WireError::Cdr("string length past the message"))?;
    let text = text.strip_suffix(&[0]).unwrap_or(text);
    std::str::from_utf8(text).map_err(|_| WireError::Cdr("not UTF-8"))
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

impl Revocation {
    /// Decode a revocation message's text, refused unread over
    /// [`MAX_REVOCATION_BYTES`].
    pub fn from_capped(text: &str) -> Result<Self, WireError> {
        check_size("revocation", text.len(), MAX_REVOCATION_BYTES)?;
        from_json(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> Batch {
        Batch {
            robot: "r1".into(),
            epoch: 0x0123_4567_89ab_cdef,
            file: "flowpilot_1_2.mcap".into(),
            seq: 40,
            prev_end: 38,
            metadata: [("every".to_string(), "1".to_string())].into(),
            records: vec![vec![1, 2, 3], vec![], vec![9; 100]],
            auth: vec![7; 5],
        }
    }

    /// The same batch as the robots before epochs sent it (FPB1).
    fn encode_v1(b: &Batch) -> Vec<u8> {
        let body = b.body();
        let mut out = b"FPB1".to_vec();
        // robot id, then skip the epoch
        let n = 2 + b.robot.len();
        out.extend_from_slice(&body[4..4 + n]);
        out.extend_from_slice(&body[4 + n + 8..]);
        out
    }

    #[test]
    fn a_batch_round_trips() {
        let b = batch();
        assert_eq!(Batch::decode(&b.encode()).unwrap(), b);
        assert_eq!(b.end(), 43);
        let bytes = b.encode();
        assert_eq!(
            &bytes[..b.body().len()],
            &b.body()[..],
            "auth covers the body"
        );
    }

    #[test]
    fn a_batch_from_before_epochs_reads_as_epoch_0() {
        let b = batch();
        let old = Batch::decode(&encode_v1(&b)).unwrap();
        assert_eq!((old.epoch, old.auth.len()), (0, 0));
        assert_eq!((old.seq, old.records.len()), (b.seq, 3));
    }

    #[test]
    fn every_truncation_and_trailing_byte_is_an_error() {
        for bytes in [batch().encode(), encode_v1(&batch())] {
            for n in 0..bytes.len() {
                assert!(Batch::decode(&bytes[..n]).is_err(), "cut at {n}");
            }
            let mut long = bytes.clone();
            long.push(0);
            assert_eq!(Batch::decode(&long), Err(WireError::Trailing(1)));
        }
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
        let at = bytes.len() - (2 + 5) - (3 * 4 + 103) - 4;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            Batch::decode(&bytes),
            Err(WireError::TooLarge {
                field: "records",
                ..
            })
        ));
        // metadata keys out of order: a second encoding of one batch
        let mut b = batch();
        b.metadata.insert("a".into(), "x".into());
        let mut bytes = b.encode();
        let a = bytes.windows(3).position(|w| w == b"\x01\x00a").unwrap();
        let e = bytes
            .windows(7)
            .position(|w| w == b"\x05\x00every")
            .unwrap();
        // swap the two (key, value) entries: "every"="1" first, then "a"="x"
        let (ea, ee) = (
            bytes[a..a + 3 + 2 + 1].to_vec(),
            bytes[e..e + 7 + 2 + 1].to_vec(),
        );
        let mut swapped = ee.clone();
        swapped.extend_from_slice(&ea);
        bytes.splice(a..e + ee.len(), swapped);
        assert!(matches!(
            Batch::decode(&bytes),
            Err(WireError::MetaOrder(_))
        ));
    }

    #[test]
    fn messages_over_their_caps_are_refused_unread() {
        // a records message one byte over the cap: refused on its length,
        // even though its first bytes are not a batch at all
        let big = vec![0u8; MAX_BATCH_BYTES + 1];
        assert!(matches!(
            Batch::decode(&big),
            Err(WireError::Oversize {
                what: "records message",
                ..
            })
        ));
        // the largest legal batch fits the cap
        let full = Batch {
            robot: "r".repeat(64),
            file: "f".repeat(MAX_NAME),
            metadata: (0..MAX_META)
                .map(|i| (format!("{i:0>255}"), "v".repeat(MAX_NAME)))
                .collect(),
            records: vec![vec![1; MAX_RECORD_BYTES]; MAX_RECORDS],
            auth: vec![1; MAX_AUTH],
            ..batch()
        };
        let bytes = full.encode();
        assert!(
            bytes.len() <= MAX_BATCH_BYTES,
            "{} > {MAX_BATCH_BYTES}",
            bytes.len()
        );
        assert_eq!(Batch::decode(&bytes).unwrap(), full);
        // an acknowledgement or a revocation over its cap is not parsed
        let pad = " ".repeat(MAX_ACK_BYTES);
        let ack = format!("{{\"learner\":\"l\",\"robots\":{{}}}}{pad}");
        assert!(from_json::<Ack>(&ack).is_ok(), "valid JSON under no cap");
        assert!(matches!(
            Ack::from_capped(&ack),
            Err(WireError::Oversize {
                what: "acknowledgement",
                ..
            })
        ));
        let rev = format!(
            "{{\"robot\":\"r1\",\"digest\":\"{}\"}}",
            "a".repeat(MAX_REVOCATION_BYTES)
        );
        assert!(matches!(
            Revocation::from_capped(&rev),
            Err(WireError::Oversize {
                what: "revocation",
                ..
            })
        ));
    }

    #[test]
    fn cdr_strings_decode_strictly() {
        let mut m = vec![0, 1, 0, 0];
        m.extend_from_slice(&6u32.to_le_bytes());
        m.extend_from_slice(b"hello\0");
        assert_eq!(cdr_string(&m).unwrap(), "hello");
        let mut be = vec![0, 0, 0, 0];
        be.extend_from_slice(&6u32.to_be_bytes());
        be.extend_from_slice(b"hello\0\0\0");
        assert_eq!(cdr_string(&be).unwrap(), "hello");
        for bad in [&m[..7], &m[..12], &[1, 1, 0, 0, 0, 0, 0, 0][..]] {
            assert!(cdr_string(bad).is_err());
        }
        let mut huge = m.clone();
        huge[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(cdr_string(&huge).is_err(), "a length past the end");
    }

    #[test]
    fn acks_are_json() {
        let mut a = Ack {
            learner: "l-1".into(),
            id: Some("abc".into()),
            only: None,
            robots: [(
                "r1".to_string(),
                RobotAck {
                    next: 5,
                    gap_records: 0,
                    conflict: false,
                },
            )]
            .into(),
            streams: BTreeMap::new(),
        };
        a.insert(
            "r1",
            9,
            RobotAck {
                next: 70,
                gap_records: 1,
                conflict: true,
            },
        );
        let s = to_json(&a);
        assert!(s.contains("\"0000000000000009\""), "{s}");
        assert_eq!(from_json::<Ack>(&s).unwrap(), a);
        assert_eq!(
            (a.next_for("r1", 0), a.next_for("r2", 0)),
            (Some(5), Some(0))
        );
        assert_eq!(
            (a.next_for("r1", 9), a.next_for("r1", 8)),
            (Some(70), Some(0))
        );
        assert!(a.stream("r1", 9).unwrap().conflict);
        assert_eq!(a.entries().len(), 2);
        a.only = Some("r2".into());
        assert_eq!((a.next_for("r1", 0), a.next_for("r2", 0)), (None, Some(0)));
        assert!(from_json::<Ack>("{\"learner\":1}").is_err());
        // an acknowledgement from before ids and epochs still reads
        let old: Ack = from_json(
            r#"{"learner":"1-2","only":null,"robots":{"r1":{"next":3,"gap_records":0}}}"#,
        )
        .unwrap();
        assert_eq!((old.id.as_deref(), old.next_for("r1", 0)), (None, Some(3)));
    }
}
