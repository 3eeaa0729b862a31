//! Records only from the robots they name: a learner given robot keys
//! (`flowpilot finetune --from-graph --robot-keys FILE`, passed on to
//! `flowpilot_fleet`) stores a records batch only if it carries a valid
//! signature by the key listed for the robot id it names. A robot signs
//! each batch it sends with its own key (`fleet.signing_key`, made by
//! `flowpilot keygen`): [`crate::signing::PolicySigner::sign_records`] over
//! [`super::wire::Batch::body`], which covers the robot id, the stream's
//! epoch, the positions, the source file's metadata and every record. So a
//! peer without a robot's key cannot store records under its id, move its
//! acknowledged position, or open a stream for an id nobody listed.
//!
//! The robot-keys file is text, one robot per line, `#` comments:
//!
//! ```text
//! r1  ed25519:H6BDfhI2q18bLux+F5JR85+sAlTL3UsO7uqxwqLgbdE=   # inline
//! r2  /etc/flowpilot/r2.key.pub   # or the path of a public key file
//! ```
//!
//! Checked on the learner's link thread before the shard store sees the
//! batch; ed25519 verification is ~50 µs a batch. Nothing here runs on a
//! robot's control thread.
//!
//! ```
//! use flowpilot_core::fleet::auth::RobotKeys;
//! let keys = RobotKeys::parse("r1 ed25519:H6BDfhI2q18bLux+F5JR85+sAlTL3UsO7uqxwqLgbdE=\n").unwrap();
//! assert!(keys.knows("r1") && !keys.knows("r2"));
//! ```

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::wire::Batch;
use crate::signing::{PublicKey, SignatureError};

/// Largest robot-keys file read.
const MAX_FILE: u64 = 1 << 20;

/// Why a robot-keys file was refused.
#[derive(Debug, thiserror::Error)]
pub enum RobotKeysError {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{}: writable by group or others (mode {mode:04o}): anyone who can write it chooses \
         whose records the learner stores; `chmod 644 {}`",
        path.display(), path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("robot keys line {line}: {why}")]
    Line { line: usize, why: String },
    #[error("robot keys: no robot listed")]
    Empty,
}

/// Why a records batch was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchAuthError {
    #[error("robot '{robot}' is not in the robot keys: its records are not stored")]
    UnknownRobot { robot: String },
    #[error(
        "records from robot '{robot}' refused: unsigned (the robot has no fleet.signing_key?)"
    )]
    Unsigned { robot: String },
    #[error("records from robot '{robot}' refused: signed by {key}, not the key listed for it")]
    WrongKey { robot: String, key: PublicKey },
    #[error(
        "records from robot '{robot}' refused: the signature does not verify (forged, or \
         altered or moved to another position after it was signed)"
    )]
    BadSignature { robot: String },
    #[error("records from robot '{robot}' refused: malformed authenticator: {why}")]
    Malformed { robot: String, why: String },
}

/// The key each robot id signs its batches with.
#[derive(Debug, Clone, Default)]
pub struct RobotKeys(BTreeMap<String, PublicKey>);

impl RobotKeys {
    /// Read a robot-keys file (refused when group or others may write it).
    pub fn load(path: &Path) -> Result<Self, RobotKeysError> {
        let io = |source| RobotKeysError::Io {
            path: path.into(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o022 != 0 {
            return Err(RobotKeysError::Writable {
                path: path.into(),
                mode,
            });
        }
        if meta.len() > MAX_FILE {
            return Err(io(std::io::Error::other(format!(
                "larger than {MAX_FILE} bytes"
            ))));
        }
        Self::parse(&std::fs::read_to_string(path).map_err(io)?)
    }

    /// Parse the text of a robot-keys file.
    pub fn parse(text: &str) -> Result<Self, RobotKeysError> {
        let mut keys = BTreeMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let bad = |why: String| RobotKeysError::Line { line: i + 1, why };
            let mut f = line.split_whitespace();
            let (Some(robot), Some(entry), None) = (f.next(), f.next(), f.next()) else {
                return Err(bad("want `<robot id> <public key or key file>`".into()));
            };
            if !super::valid_robot_id(robot) {
                return Err(bad(format!("'{robot}' is not a valid robot id")));
            }
            let key = PublicKey::from_entry(entry).map_err(|e| bad(e.to_string()))?;
            if keys.insert(robot.to_string(), key).is_some() {
                return Err(bad(format!("robot '{robot}' listed twice")));
            }
        }
        if keys.is_empty() {
            return Err(RobotKeysError::Empty);
        }
        Ok(Self(keys))
    }

    pub fn knows(&self, robot: &str) -> bool {
        self.0.contains_key(robot)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `b` is signed by the key listed for the robot it names.
    pub fn check(&self, b: &Batch) -> Result<(), BatchAuthError> {
        let key = self
            .0
            .get(&b.robot)
            .ok_or_else(|| BatchAuthError::UnknownRobot {
                robot: b.robot.clone(),
            })?;
        let robot = b.robot.clone();
        key.verify_records(&b.body(), &b.auth).map_err(|e| match e {
            SignatureError::Unsigned => BatchAuthError::Unsigned { robot },
            SignatureError::UntrustedKey { key } => BatchAuthError::WrongKey { robot, key },
            SignatureError::BadSignature { .. } => BatchAuthError::BadSignature { robot },
            SignatureError::Malformed(why) => BatchAuthError::Malformed { robot, why },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signing::PolicySigner;

    fn batch(robot: &str, seq: u64) -> Batch {
        Batch {
            robot: robot.into(),
            epoch: 7,
            file: "log_000000.mcap".into(),
            seq,
            prev_end: seq,
            metadata: Default::default(),
            records: vec![vec![1, 2, 3]],
            auth: Vec::new(),
        }
    }

    #[test]
    fn only_the_named_robots_key_opens_its_stream() {
        let (r1, r2) = (
            PolicySigner::generate().unwrap(),
            PolicySigner::generate().unwrap(),
        );
        let keys = RobotKeys::parse(&format!(
            "# the fleet\nr1 {}\nr2 {}  # second robot\n",
            r1.public_key(),
            r2.public_key()
        ))
        .unwrap();
        assert_eq!(keys.len(), 2);
        let mut b = batch("r1", 10);
        b.auth = r1.sign_records(&b.body());
        assert_eq!(keys.check(&b), Ok(()));
        // the same bytes through the wire
        assert_eq!(keys.check(&Batch::decode(&b.encode()).unwrap()), Ok(()));
        // unsigned
        let plain = batch("r1", 10);
        assert!(matches!(
            keys.check(&plain),
            Err(BatchAuthError::Unsigned { .. })
        ));
        // another robot's key naming r1
        let mut forged = batch("r1", 1_000_000);
        forged.auth = r2.sign_records(&forged.body());
        assert!(matches!(
            keys.check(&forged),
            Err(BatchAuthError::WrongKey { .. })
        ));
        // a genuine signature moved to another position
        let mut moved = b.clone();
        moved.seq = 1_000_000;
        moved.prev_end = 1_000_000;
        assert!(matches!(
            keys.check(&moved),
            Err(BatchAuthError::BadSignature { .. })
        ));
        // a record altered
        let mut altered = b.clone();
        altered.records[0][0] = 9;
        assert!(keys.check(&altered).is_err());
        // an id nobody listed
        let mut stranger = batch("r9", 0);
        stranger.auth = r1.sign_records(&stranger.body());
        assert_eq!(
            keys.check(&stranger),
            Err(BatchAuthError::UnknownRobot { robot: "r9".into() })
        );
        // a policy signature is not a records signature (domains differ)
        let mut short = batch("r1", 10);
        short.auth = vec![0; 5];
        assert!(matches!(
            keys.check(&short),
            Err(BatchAuthError::Malformed { .. })
        ));
    }

    #[test]
    fn malformed_files_are_refused_with_the_line() {
        let k = PolicySigner::generate().unwrap().public_key();
        for (text, want) in [
            (String::new(), "no robot listed".to_string()),
            (
                format!("r1 {k}\nr1 {k}\n"),
                "line 2: robot 'r1' listed twice".into(),
            ),
            (
                format!("9r {k}\n"),
                "line 1: '9r' is not a valid robot id".into(),
            ),
            ("r1\n".into(), "line 1: want".into()),
            (
                "r1 ed25519:nope\n".into(),
                "line 1: 'ed25519:nope' is not a public key".into(),
            ),
        ] {
            let e = RobotKeys::parse(&text).unwrap_err().to_string();
            assert!(e.contains(&want), "{e} / {want}");
        }
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("robots");
        std::fs::write(&p, format!("r1 {k}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(matches!(
            RobotKeys::load(&p),
            Err(RobotKeysError::Writable { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(RobotKeys::load(&p).unwrap().knows("r1"));
    }
}
