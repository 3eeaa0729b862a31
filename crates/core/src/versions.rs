//! Which version may run: the one owner of the rules that say which policy
//! version a node may run and a learner may continue, used by the node's hot
//! swap ([`crate::node::hotswap`]), its fleet link and the learner alike.
//!
//! - **Numbers**: a new version is newer than the running one, by at most
//!   [`MAX_VERSION_JUMP`], never u64::MAX ([`check_successor`]); a learner
//!   numbers above every version in its directory and never wraps
//!   ([`next_version`]).
//! - **Lines of descent** ([`Lineage`]): each version names its parent; a
//!   revoked digest condemns its whole line.
//! - **Revocations** ([`Revocations`]): append-only and durable. A rollback
//!   appends (and fsyncs) the versions it undoes *before* it is
//!   acknowledged; the list is read back as the union of its own log and
//!   the revoked lines of the node's accepted record, so losing either one
//!   re-admits nothing. A log that cannot be read fails closed: the caller
//!   admits no version but the one the operator named.
//! - **Where to resume or restore** ([`Lineage::newest_clean`],
//!   [`resume_order`]): the newest version whose line is clean; the checks
//!   a file must pass to run (signature, smoke sample, ...) are the hot
//!   swap's, applied to a resumed version as to a new one.
//!
//! File I/O only; nothing here runs on the control thread.
//!
//! ```
//! use flowpilot_core::versions::{check_successor, next_version};
//! assert!(check_successor(3, 4).is_ok());
//! assert!(check_successor(3, 3).is_err()); // a replay
//! assert_eq!(next_version(4, Some(9)), Ok(10)); // above every file
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use crate::checkpoint::{AcceptedRecord, CheckpointDir};
use crate::policy::model::{ModelFile, ModelSpec};

/// The most a new version's number may exceed the running version's. A
/// learner counts up by one per checkpoint and numbers above every file in
/// its directory, so real jumps are small; a number far ahead (u64::MAX
/// above all) would make every later genuine version look old and be
/// ignored. Documented in docs/security.md.
pub const MAX_VERSION_JUMP: u64 = 1_000_000;

/// Why a version number cannot follow the running one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VersionError {
    #[error(
        "version {version} is not newer than the running version {running} \
         (an old version replayed, or out of order)"
    )]
    NotNewer { version: u64, running: u64 },
    #[error(
        "version {version} is implausible after the running version {running}: more than \
         {MAX_VERSION_JUMP} above it, or the largest number (no version could follow it)"
    )]
    Implausible { version: u64, running: u64 },
}

/// Whether `version` may follow `running`: newer, at most
/// [`MAX_VERSION_JUMP`] above it, and not u64::MAX. The hot swap's rule.
pub fn check_successor(running: u64, version: u64) -> Result<(), VersionError> {
    if version <= running {
        return Err(VersionError::NotNewer { version, running });
    }
    if version == u64::MAX || version - running > MAX_VERSION_JUMP {
        return Err(VersionError::Implausible { version, running });
    }
    Ok(())
}

/// Why a learner cannot number its next version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NumberingError {
    #[error(
        "no version number is left above {newest}: a policy file in the checkpoint directory \
         claims it (remove that file; a node refuses such a version anyway)"
    )]
    Exhausted { newest: u64 },
    #[error(
        "the next version would be {next}, more than {MAX_VERSION_JUMP} above its parent, \
         version {parent}, which a node refuses: a policy file in the checkpoint directory \
         claims version {newest} (remove it)"
    )]
    TooFar { next: u64, parent: u64, newest: u64 },
}

/// The number of the next version of `parent`, given the newest version
/// known in the directory: one above both, so that it never replaces a
/// file of an abandoned line. Checked: it never wraps to 0, and it is a
/// number a node accepts after `parent` ([`check_successor`]).
pub fn next_version(parent: u64, newest: Option<u64>) -> Result<u64, NumberingError> {
    let newest = newest.unwrap_or(parent).max(parent);
    let next = newest
        .checked_add(1)
        .ok_or(NumberingError::Exhausted { newest })?;
    match check_successor(parent, next) {
        Ok(()) => Ok(next),
        Err(_) if next == u64::MAX => Err(NumberingError::Exhausted { newest }),
        Err(_) => Err(NumberingError::TooFar {
            next,
            parent,
            newest,
        }),
    }
}

/// Lines of descent among known versions: each digest with its parent's
/// digest, its version number and (if known) its file.
#[derive(Debug, Clone, Default)]
pub struct Lineage {
    known: HashMap<String, Known>,
}

#[derive(Debug, Clone)]
struct Known {
    parent: Option<String>,
    version: u64,
    path: Option<PathBuf>,
}

impl Lineage {
    /// Remember a version (and where it lies, if it is a file).
    pub fn insert(&mut self, spec: &ModelSpec, path: Option<&Path>) {
        let e = self.known.entry(spec.digest.clone()).or_insert(Known {
            parent: spec.parent_digest.clone(),
            version: spec.version,
            path: None,
        });
        if e.path.is_none() {
            e.path = path.map(Path::to_path_buf);
        }
    }

    /// Add every version `other` knows.
    pub fn extend(&mut self, other: Lineage) {
        for (d, k) in other.known {
            let e = self.known.entry(d).or_insert(Known {
                path: None,
                ..k.clone()
            });
            if e.path.is_none() {
                e.path = k.path;
            }
        }
    }

    /// The highest version number known, if any.
    pub fn newest_version(&self) -> Option<u64> {
        self.known.values().map(|k| k.version).max()
    }

    /// The first revoked digest on `spec`'s line: `spec` itself, then its
    /// parent, that one's parent and so on, as far as the parents are
    /// known. None if the line is clean.
    pub fn first_revoked(
        &self,
        spec: &ModelSpec,
        is_revoked: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.walk(&spec.digest, spec.parent_digest.as_deref(), is_revoked)
    }

    fn walk(
        &self,
        digest: &str,
        parent: Option<&str>,
        is_revoked: impl Fn(&str) -> bool,
    ) -> Option<String> {
        if is_revoked(digest) {
            return Some(digest.to_string());
        }
        let mut next = parent;
        // A line is at most as long as the versions known (a cycle would
        // need a digest collision; the bound keeps the walk finite anyway).
        for _ in 0..=self.known.len() {
            let d = next?;
            if is_revoked(d) {
                return Some(d.to_string());
            }
            next = self.known.get(d).and_then(|k| k.parent.as_deref());
        }
        None
    }
}

impl Lineage {
    /// The lines of descent of every valid policy in `dir` (files that fail
    /// validation are skipped with a warning). Loads each file.
    pub fn scan(dir: &CheckpointDir) -> Self {
        let mut l = Lineage::default();
        for (p, _) in dir.policies() {
            match ModelFile::load(&p) {
                Ok(m) => l.insert(&m.spec, Some(&p)),
                Err(e) => tracing::warn!(path = %p.display(), "skipping checkpoint: {e}"),
            }
        }
        l
    }

    /// The newest version with a file whose line holds no revoked digest
    /// and that `accept` takes (a learner with a signing key: the versions
    /// it signed itself): where a learner resumes, and the version a fleet
    /// learner publishes.
    pub fn newest_clean(
        &self,
        revoked: &Revocations,
        accept: impl Fn(&ModelFile) -> bool,
    ) -> Option<(PathBuf, ModelFile)> {
        let mut files: Vec<_> = self
            .known
            .iter()
            .filter_map(|(d, k)| k.path.as_ref().map(|p| (k.version, d, k, p)))
            .collect();
        files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.3.cmp(b.3)));
        for (_, digest, k, path) in files {
            if self
                .walk(digest, k.parent.as_deref(), |d| revoked.contains(d))
                .is_some()
            {
                continue;
            }
            // The file may have changed since the scan: take it only if it
            // still holds the version scanned.
            match ModelFile::load(path) {
                Ok(m) if m.spec.digest == *digest && accept(&m) => return Some((path.clone(), m)),
                Ok(m) if m.spec.digest == *digest => {
                    tracing::warn!(path = %path.display(), version = m.spec.version, "not resuming from a checkpoint this learner did not sign");
                }
                Ok(_) => {
                    tracing::warn!(path = %path.display(), "checkpoint changed while resuming; skipping it")
                }
                Err(e) => tracing::warn!(path = %path.display(), "skipping checkpoint: {e}"),
            }
        }
        None
    }
}

/// Why the revocation list cannot be read or extended.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error(
        "the revocation list {path} cannot be read ({source}): no version but `model` is \
         admitted until it can (fix its permissions or disk; never delete it)"
    )]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the revocation list {path} is malformed at line {line}: no version but `model` is \
         admitted until it is repaired (never delete it)"
    )]
    Malformed { path: PathBuf, line: usize },
    #[error("recording the revocation in {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The revoked digests of a checkpoint directory: rolled back by an
/// operator or the return guard, or found descending from such a version.
/// Append-only: nothing here removes one.
#[derive(Debug, Clone, Default)]
pub struct Revocations {
    set: BTreeSet<String>,
}

impl Revocations {
    /// Read `dir`'s revocation log and its accepted record's revoked lines
    /// (their union). A missing log is an empty one; an unreadable or
    /// malformed one is an error (fail closed).
    pub fn load(dir: &CheckpointDir) -> Result<Self, RevocationError> {
        let path = dir.revocation_log_path();
        let mut set = dir.accepted().revoked;
        match std::fs::read(&path) {
            Ok(bytes) => {
                // A torn last line (a crash mid-append, never acknowledged)
                // is ignored; anything else malformed is not.
                let complete = match bytes.iter().rposition(|&b| b == b'\n') {
                    Some(i) => &bytes[..=i],
                    None => &[][..],
                };
                let text =
                    std::str::from_utf8(complete).map_err(|_| RevocationError::Malformed {
                        path: path.clone(),
                        line: 0,
                    })?;
                for (i, l) in text.lines().enumerate() {
                    let digest = l
                        .strip_prefix("revoked ")
                        .and_then(|r| r.split_whitespace().next())
                        .filter(|d| d.starts_with("sha256:"))
                        .ok_or(RevocationError::Malformed {
                            path: path.clone(),
                            line: i + 1,
                        })?;
                    set.insert(digest.to_string());
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(RevocationError::Unreadable { path, source }),
        }
        Ok(Self { set })
    }

    pub fn contains(&self, digest: &str) -> bool {
        self.set.contains(digest)
    }

    pub fn len(&self) -> usize {
        self.set.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &String> {
        self.set.iter()
    }

    /// A copy of the set (for the accepted record's redundant copy).
    pub fn to_set(&self) -> BTreeSet<String> {
        self.set.clone()
    }

    /// Revoke `digests` durably: append them to `dir`'s log and fsync it
    /// before they count, so a caller that acknowledges a rollback after
    /// this returned Ok knows a restart keeps refusing them. On error none
    /// of them is taken as recorded (the caller must not acknowledge).
    /// Digests already revoked are skipped.
    pub fn revoke(
        &mut self,
        dir: &CheckpointDir,
        digests: &[(&str, u64)],
        reason: &str,
    ) -> Result<(), RevocationError> {
        let fresh: Vec<_> = digests
            .iter()
            .filter(|(d, _)| !self.set.contains(*d))
            .collect();
        if fresh.is_empty() {
            return Ok(());
        }
        let when = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // One line per digest; the reason is free text on its own line's tail.
        let reason: String = reason
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let text: String = fresh
            .iter()
            .map(|(d, v)| format!("revoked {d} version={v} unix={when} {reason}\n"))
            .collect();
        let path = dir.revocation_log_path();
        crate::checkpoint::append_durable(&path, text.as_bytes())
            .map_err(|source| RevocationError::Write { path, source })?;
        self.set
            .extend(fresh.into_iter().map(|(d, _)| d.to_string()));
        Ok(())
    }

    /// Count `digest` as revoked in memory only (a descendant of a revoked
    /// version, whose refusal follows from the durable entry anyway).
    pub fn insert_derived(&mut self, digest: &str) {
        self.set.insert(digest.to_string());
    }
}

/// Where a learner restarts its actor after the node rolled its line back:
/// the version the node runs (the accepted record's last entry), else the
/// newest version with a clean line; either must have a clean line and be
/// one `fits` takes (compatible with the learner's model; with a signing
/// key, signed by it).
pub fn restore_point(
    dir: &CheckpointDir,
    lineage: &Lineage,
    revoked: &Revocations,
    fits: impl Fn(&ModelFile) -> bool,
) -> Option<(PathBuf, ModelFile)> {
    let clean = |m: &ModelFile| {
        lineage
            .first_revoked(&m.spec, |d| revoked.contains(d))
            .is_none()
    };
    if let Some(p) = dir.accepted().accepted.last() {
        match ModelFile::load(p) {
            Ok(m) if clean(&m) && fits(&m) => return Some((p.clone(), m)),
            Ok(_) => {
                tracing::warn!(path = %p.display(), "the accepted version does not fit the learner's model")
            }
            Err(e) => {
                tracing::warn!(path = %p.display(), "the accepted version does not load: {e}")
            }
        }
    }
    lineage
        .newest_clean(revoked, &fits)
        .filter(|(_, m)| fits(m))
}

/// The accepted versions to try on a restart, newest first: the record's
/// own order reversed, each tried in turn (the first that passes every
/// check runs), so a lost or stale last entry falls back to the one
/// before, never to a revoked one.
pub fn resume_order(record: &AcceptedRecord) -> impl Iterator<Item = &Path> {
    record.accepted.iter().rev().map(PathBuf::as_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_revoked_version_condemns_its_line() {
        use crate::policy::model::{Direction, PolicyKind};
        let t = tempfile::tempdir().unwrap();
        let d = CheckpointDir::new(t.path());
        let root =
            crate::testkit::random_model(2, 0, false, Direction::Inverse, PolicyKind::Flow, 1);
        let child = |parent: &ModelFile, version: u64, seed: u64| {
            let m = crate::testkit::random_model(
                2,
                0,
                false,
                Direction::Inverse,
                PolicyKind::Flow,
                seed,
            );
            let mut spec = m.spec.clone();
            spec.version = version;
            spec.parent_digest = Some(parent.spec.digest.clone());
            spec.parent_version = Some(parent.spec.version);
            let m = ModelFile::new(spec, m.tensors().clone()).unwrap();
            m.save(d.policy_path(version)).unwrap();
            m
        };
        root.save(d.policy_path(1)).unwrap();
        // 1 -> 2 -> 3 (revoked) -> 4
        let v2 = child(&root, 2, 2);
        let v3 = child(&v2, 3, 3);
        let v4 = child(&v3, 4, 4);
        let revoked: BTreeSet<String> = [v3.spec.digest.clone()].into();
        let is_revoked = |x: &str| revoked.contains(x);
        let l = Lineage::scan(&d);
        assert_eq!(l.newest_version(), Some(4));
        assert_eq!(
            l.first_revoked(&v4.spec, is_revoked),
            Some(v3.spec.digest.clone())
        );
        assert_eq!(
            l.first_revoked(&v3.spec, is_revoked),
            Some(v3.spec.digest.clone())
        );
        assert_eq!(l.first_revoked(&v2.spec, is_revoked), None);
        let revs = Revocations {
            set: revoked.clone(),
        };
        let (p, m) = l.newest_clean(&revs, |_| true).unwrap();
        assert_eq!(
            (p, m.spec.digest),
            (d.policy_path(2), v2.spec.digest.clone())
        );
        // a grandchild of the revoked one, its parent known only from a scan
        let v5 = child(&v4, 5, 5);
        let l = Lineage::scan(&d);
        assert_eq!(
            l.first_revoked(&v5.spec, is_revoked),
            Some(v3.spec.digest.clone())
        );
        // a new line from version 2, numbered above the old one, is clean
        let v6 = child(&v2, 6, 6);
        let l = Lineage::scan(&d);
        assert_eq!(l.first_revoked(&v6.spec, is_revoked), None);
        let (p, _) = l.newest_clean(&revs, |_| true).unwrap();
        assert_eq!(p, d.policy_path(6));
        assert_eq!(
            l.newest_clean(&Revocations::default(), |_| true).unwrap().0,
            d.policy_path(6)
        );
    }

    #[test]
    fn version_numbers_go_up_within_bounds_and_never_wrap() {
        use VersionError::*;
        assert_eq!(check_successor(3, 4), Ok(()));
        assert_eq!(check_successor(3, 3 + MAX_VERSION_JUMP), Ok(()));
        assert_eq!(
            check_successor(3, 3),
            Err(NotNewer {
                version: 3,
                running: 3
            })
        );
        assert_eq!(
            check_successor(3, 2),
            Err(NotNewer {
                version: 2,
                running: 3
            })
        );
        assert_eq!(
            check_successor(3, 4 + MAX_VERSION_JUMP),
            Err(Implausible {
                version: 4 + MAX_VERSION_JUMP,
                running: 3
            })
        );
        let e = check_successor(1, u64::MAX).unwrap_err();
        assert!(e.to_string().contains("18446744073709551615"), "{e}");
        assert_eq!(
            check_successor(u64::MAX - 1, u64::MAX),
            Err(Implausible {
                version: u64::MAX,
                running: u64::MAX - 1
            })
        );
        // the learner's numbering
        assert_eq!(next_version(1, None), Ok(2));
        assert_eq!(next_version(4, Some(2)), Ok(5));
        assert_eq!(next_version(2, Some(9)), Ok(10));
        assert_eq!(
            next_version(2, Some(u64::MAX)),
            Err(NumberingError::Exhausted { newest: u64::MAX })
        );
        assert_eq!(
            next_version(u64::MAX, None),
            Err(NumberingError::Exhausted { newest: u64::MAX })
        );
        assert_eq!(
            next_version(2, Some(u64::MAX - 1)),
            Err(NumberingError::Exhausted {
                newest: u64::MAX - 1
            })
        );
        let e = next_version(2, Some(5_000_000)).unwrap_err();
        assert!(
            matches!(
                e,
                NumberingError::TooFar {
                    next: 5_000_001,
                    parent: 2,
                    newest: 5_000_000
                }
            ),
            "{e}"
        );
    }
}
