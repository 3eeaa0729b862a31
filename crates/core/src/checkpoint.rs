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
//!                                         (oldest first), `revoked <digest>` lines (a copy)
//! <dir>/.flowpilot_revoked                the revocation log: append-only, one
//!                                         `revoked <digest> ...` line per version
//! ```
//!
//! The rules over these files (which version may run, numbering, lines of
//! descent, revocation) are [`crate::versions`]'.
//!
//! ```
//! use flowpilot_core::checkpoint::CheckpointDir;
//! let dir = CheckpointDir::new("/tmp/ckpt");
//! assert!(dir.policy_path(7).ends_with("policy_v000007.safetensors"));
//! assert!(CheckpointDir::is_policy_file(&dir.policy_path(7)));
//! ```

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::policy::model::ModelFile;

use crate::contract::files::{
    ACCEPTED as ACCEPTED_FILE, LEARNER_DIR, LEARNER_STATE, POLICY_DIGITS, POLICY_EXT,
    POLICY_PREFIX, REVOKED as REVOKED_FILE, SET_ASIDE_SUFFIX,
};

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
        format!("{POLICY_PREFIX}{version:0POLICY_DIGITS$}.{POLICY_EXT}")
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

    /// The append-only revocation log ([`crate::versions::Revocations`]).
    pub fn revocation_log_path(&self) -> PathBuf {
        self.root.join(REVOKED_FILE)
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

/// Append `bytes` to `path` (created mode 0600 if missing) and fsync it
/// (and, when it was created, its directory) before returning: when this
/// returns Ok the bytes survive a crash. A failed write may leave a torn
/// last line, which readers of an append-only log ignore.
pub fn append_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let existed = path.exists();
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    if !existed {
        std::fs::File::open(parent_dir(path))?.sync_all()?;
    }
    Ok(())
}

/// Where a revoked version's file goes when its revocation cannot be
/// recorded: `<name>.revoked`, which no scan reads as a policy.
pub fn set_aside_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(SET_ASIDE_SUFFIX);
    path.with_file_name(name)
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
    fn a_failed_write_leaves_the_old_file() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("x.safetensors");
        std::fs::write(&p, b"old").unwrap();
        let e = write_atomic(&p, |_| Err(std::io::Error::other("disk full"))).unwrap_err();
        assert!(e.to_string().contains("disk full"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), b"old");
    }
}
