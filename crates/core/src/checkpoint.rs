//! The checkpoint directory: the one owner of its file contract (names,
//! the node's record, lineage), shared by the learner (writes versions,
//! reads the record) and the node's hot swap (reads versions, writes the
//! record). Runs off the control thread only (file I/O).
//!
//! ```text
//! <dir>/policy_v000042.safetensors        a policy version (atomic write)
//! <dir>/.<name>.tmp<pid>                  an atomic write in progress: never read;
//!                                         removed by the next learner if it was killed
//! <dir>/.learner/state.safetensors        the learner's critics, optimisers, α
//! <dir>/.flowpilot_accepted               the node's record: `accepted <path>` lines
//!                                         (oldest first), `revoked <digest>` lines
//! ```
//!
//! Each version names its parent (`parent_digest`), so the versions form
//! lines of descent ([`Lineage`]). A revoked digest (rolled back) condemns
//! its whole line: no version descending from it is accepted, and a learner
//! whose line holds one restarts from the accepted version. A learner
//! numbers a new version above every version in the directory, so a new
//! line never overwrites a file of an old one ([`next_version`]: it never
//! wraps, and stays within what a node accepts, [`check_successor`]).
//!
//! ```
//! use flowpilot_core::checkpoint::CheckpointDir;
//! let dir = CheckpointDir::new("/tmp/ckpt");
//! assert!(dir.policy_path(7).ends_with("policy_v000007.safetensors"));
//! assert!(CheckpointDir::is_policy_file(&dir.policy_path(7)));
//! ```

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::model::{ModelFile, ModelSpec};

/// Name of the node's record of accepted and revoked versions.
pub const ACCEPTED_FILE: &str = ".flowpilot_accepted";
const LEARNER_DIR: &str = ".learner";
const LEARNER_STATE: &str = "state.safetensors";
const POLICY_EXT: &str = "safetensors";

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

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("creating {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("syncing/renaming to {path}: {source}")]
    Commit {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What the node recorded: accepted versions (oldest first; the last one
/// runs) and the revoked digests: versions rolled back (by an operator or
/// the return guard) and versions found descending from one. Neither they
/// nor their descendants are accepted again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AcceptedRecord {
    pub accepted: Vec<PathBuf>,
    pub revoked: BTreeSet<String>,
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

/// A checkpoint directory (it need not exist yet).
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    root: PathBuf,
}

impl CheckpointDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Create the directory (and its parents).
    pub fn create(&self) -> Result<(), StoreError> {
        std::fs::create_dir_all(&self.root).map_err(|source| StoreError::CreateDir {
            path: self.root.clone(),
            source,
        })
    }

    /// File name of a policy version.
    pub fn policy_file_name(version: u64) -> String {
        format!("policy_v{version:06}.{POLICY_EXT}")
    }

    pub fn policy_path(&self, version: u64) -> PathBuf {
        self.root.join(Self::policy_file_name(version))
    }

    /// Whether a path names a policy file (not a temp file, not hidden).
    pub fn is_policy_file(path: &Path) -> bool {
        path.extension().is_some_and(|x| x == POLICY_EXT)
            && path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| !n.starts_with('.'))
    }

    /// Policy files with their modification times, sorted by path.
    pub fn policies(&self) -> Vec<(PathBuf, SystemTime)> {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return Vec::new();
        };
        let mut v: Vec<_> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| Self::is_policy_file(p))
            .filter_map(|p| {
                std::fs::metadata(&p)
                    .and_then(|m| m.modified())
                    .ok()
                    .map(|t| (p, t))
            })
            .collect();
        v.sort();
        v
    }

    /// The newest valid policy (highest version), if any. Files that fail
    /// validation are skipped with a warning.
    pub fn latest(&self) -> Option<(PathBuf, ModelFile)> {
        let mut best: Option<(PathBuf, ModelFile)> = None;
        for (p, _) in self.policies() {
            match ModelFile::load(&p) {
                Ok(m) => {
                    if best
                        .as_ref()
                        .is_none_or(|(_, b)| m.spec.version > b.spec.version)
                    {
                        best = Some((p, m));
                    }
                }
                Err(e) => tracing::warn!(path = %p.display(), "skipping checkpoint: {e}"),
            }
        }
        best
    }

    /// The lines of descent of every valid policy in the directory (files
    /// that fail validation are skipped with a warning). Loads each file.
    pub fn lineage(&self) -> Lineage {
        let mut l = Lineage::default();
        for (p, _) in self.policies() {
            match ModelFile::load(&p) {
                Ok(m) => l.insert(&m.spec, Some(&p)),
                Err(e) => tracing::warn!(path = %p.display(), "skipping checkpoint: {e}"),
            }
        }
        l
    }

    /// The newest valid policy in the directory (highest version) whose
    /// line holds no revoked digest: where a learner resumes.
    pub fn latest_unrevoked(
        &self,
        lineage: &Lineage,
        revoked: &BTreeSet<String>,
    ) -> Option<(PathBuf, ModelFile)> {
        self.latest_unrevoked_where(lineage, revoked, |_| true)
    }

    /// [`Self::latest_unrevoked`] among the versions `accept` takes (a
    /// learner with a signing key: the versions it signed itself).
    pub fn latest_unrevoked_where(
        &self,
        lineage: &Lineage,
        revoked: &BTreeSet<String>,
        accept: impl Fn(&ModelFile) -> bool,
    ) -> Option<(PathBuf, ModelFile)> {
        let mut files: Vec<_> = lineage
            .known
            .iter()
            .filter_map(|(d, k)| k.path.as_ref().map(|p| (k.version, d, k, p)))
            .collect();
        files.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.3.cmp(b.3)));
        for (_, digest, k, path) in files {
            let clean = lineage
                .walk(digest, k.parent.as_deref(), |d| revoked.contains(d))
                .is_none();
            if !clean {
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

    /// Where the learner keeps its non-policy state.
    pub fn learner_state_path(&self) -> PathBuf {
        self.root.join(LEARNER_DIR).join(LEARNER_STATE)
    }

    /// Remove the temp files of atomic writes that never finished (a
    /// learner killed mid-write). Returns how many were removed.
    pub fn remove_partials(&self) -> usize {
        let mut n = 0;
        for dir in [self.root.clone(), self.root.join(LEARNER_DIR)] {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if is_temp_name(&name) && std::fs::remove_file(e.path()).is_ok() {
                    tracing::info!(file = %name, "removed a partial file left by a killed writer");
                    n += 1;
                }
            }
        }
        n
    }

    /// The node's record (empty if none).
    pub fn accepted(&self) -> AcceptedRecord {
        let text = std::fs::read_to_string(self.root.join(ACCEPTED_FILE)).unwrap_or_default();
        let mut r = AcceptedRecord::default();
        for l in text.lines() {
            if let Some(p) = l.strip_prefix("accepted ") {
                r.accepted.push(PathBuf::from(p.trim()));
            } else if let Some(d) = l.strip_prefix("revoked ") {
                r.revoked.insert(d.trim().to_string());
            }
        }
        r
    }

    /// Replace the node's record (atomically).
    pub fn record_accepted(&self, r: &AcceptedRecord) -> Result<(), StoreError> {
        let mut text: String = r.revoked.iter().map(|d| format!("revoked {d}\n")).collect();
        text.extend(
            r.accepted
                .iter()
                .map(|p| format!("accepted {}\n", p.display())),
        );
        write_atomic(&self.root.join(ACCEPTED_FILE), |tmp| {
            std::fs::write(tmp, &text)
        })
    }
}

/// The temp file an atomic write of `path` goes through.
fn temp_path(path: &Path) -> PathBuf {
    let dir = parent_dir(path);
    dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|s| s.to_str()).unwrap_or("file"),
        std::process::id()
    ))
}

/// A model or learner-state file whose atomic write never finished (the
/// node's own record is not touched: it may be mid-write right now).
fn is_temp_name(name: &str) -> bool {
    name.starts_with('.') && name.contains(&format!(".{POLICY_EXT}.tmp"))
}

fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Create `path` atomically: `write` fills a temp file `.<name>.tmp<pid>` in
/// the same directory, which is fsynced and renamed over `path`, so readers
/// (the hot swap, a resuming learner) see the old file or the new one, never
/// a partial one; a crash leaves at most the temp file. A failed write
/// (a full disk) removes its temp file: a partial model kept there would
/// hold the space the next try needs.
pub fn write_atomic<E>(
    path: &Path,
    write: impl FnOnce(&Path) -> Result<(), E>,
) -> Result<(), StoreError>
where
    E: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let tmp = temp_path(path);
    let discard = |e: StoreError| {
        let _ = std::fs::remove_file(&tmp);
        e
    };
    write(&tmp)
        .map_err(|e| StoreError::Write {
            path: tmp.clone(),
            source: e.into(),
        })
        .map_err(discard)?;
    let commit = |source| {
        discard(StoreError::Commit {
            path: path.to_path_buf(),
            source,
        })
    };
    std::fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .map_err(commit)?;
    std::fs::rename(&tmp, path).map_err(commit)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_partials() {
        let t = tempfile::tempdir().unwrap();
        let d = CheckpointDir::new(t.path());
        let p = d.policy_path(12);
        assert_eq!(p.file_name().unwrap(), "policy_v000012.safetensors");
        assert!(CheckpointDir::is_policy_file(&p));
        assert!(is_temp_name(
            temp_path(&p).file_name().unwrap().to_str().unwrap()
        ));
        // what a writer killed mid-write (another pid) left behind
        let tmp = t.path().join(".policy_v000012.safetensors.tmp4242");
        assert!(!CheckpointDir::is_policy_file(&tmp));
        std::fs::write(&tmp, b"half").unwrap();
        std::fs::create_dir_all(d.learner_state_path().parent().unwrap()).unwrap();
        std::fs::write(temp_path(&d.learner_state_path()), b"half").unwrap();
        write_atomic(&p, |f| std::fs::write(f, b"whole")).unwrap();
        assert_eq!(d.remove_partials(), 2);
        assert!(!tmp.exists());
        assert_eq!(std::fs::read(&p).unwrap(), b"whole");
        // listing sees only the policy file (and latest skips it: not a model)
        assert_eq!(d.policies().len(), 1);
        assert!(d.latest().is_none());
    }

    #[test]
    fn a_failed_write_leaves_no_temp_file_and_the_old_file_whole() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("policy_v000001.safetensors");
        write_atomic(&p, |f| std::fs::write(f, b"old")).unwrap();
        // half written, then the disk is full
        let e = write_atomic(&p, |f| {
            std::fs::write(f, b"ne")?;
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        })
        .unwrap_err();
        assert!(e.to_string().contains(".tmp"), "{e}");
        let names: Vec<_> = std::fs::read_dir(t.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["policy_v000001.safetensors"]);
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }

    #[test]
    fn accepted_record_round_trips() {
        let t = tempfile::tempdir().unwrap();
        let d = CheckpointDir::new(t.path());
        assert_eq!(d.accepted(), AcceptedRecord::default());
        let r = AcceptedRecord {
            accepted: vec![d.policy_path(1), d.policy_path(3)],
            revoked: ["sha256:ab".to_string()].into_iter().collect(),
        };
        d.record_accepted(&r).unwrap();
        assert_eq!(d.accepted(), r);
    }

    #[test]
    fn a_revoked_version_condemns_its_line() {
        use crate::model::{Direction, PolicyKind};
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
        let l = d.lineage();
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
        let (p, m) = d.latest_unrevoked(&l, &revoked).unwrap();
        assert_eq!(
            (p, m.spec.digest),
            (d.policy_path(2), v2.spec.digest.clone())
        );
        // a grandchild of the revoked one, its parent known only from a scan
        let v5 = child(&v4, 5, 5);
        let l = d.lineage();
        assert_eq!(
            l.first_revoked(&v5.spec, is_revoked),
            Some(v3.spec.digest.clone())
        );
        // a new line from version 2, numbered above the old one, is clean
        let v6 = child(&v2, 6, 6);
        let l = d.lineage();
        assert_eq!(l.first_revoked(&v6.spec, is_revoked), None);
        let (p, _) = d.latest_unrevoked(&l, &revoked).unwrap();
        assert_eq!(p, d.policy_path(6));
        assert_eq!(
            d.latest_unrevoked(&l, &BTreeSet::new()).unwrap().0,
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

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.safetensors");
        std::fs::write(&p, b"old").unwrap();
        let e = write_atomic(&p, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }
}
