//! The learner's live metrics: one small JSON file the learner rewrites
//! (write, then rename) in its checkpoint directory about once a second,
//! and a node republishes on the ROS graph (`~/learner/<name>`, one
//! `std_msgs/Float64` topic per series, so PlotJuggler, Foxglove and
//! rqt_plot plot them with no plugin). The side channel between the two
//! processes: the learner never talks to the graph and the control thread
//! never sees any of this.
//!
//! Real-time: none of this runs on the control thread. [`read`] is one
//! bounded read (at most [`MAX_BYTES`]) on the node's spin thread.
//!
//! ```
//! use flowpilot_core::learner_metrics::{read, write, LearnerMetrics};
//! let dir = tempfile::tempdir()?;
//! assert!(read(dir.path())?.is_none(), "no learner yet");
//! let m = LearnerMetrics { updates: 1200, q: 0.4, ..Default::default() };
//! write(dir.path(), &m)?;
//! assert_eq!(read(dir.path())?, Some(m));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::contract::files;

/// The largest metrics file a reader takes (a real one is ~400 bytes).
pub const MAX_BYTES: u64 = 8 * 1024;

/// One snapshot of the learner, as the learner last wrote it.
/// A field this reader does not know is ignored (a newer learner); a
/// missing one makes the file malformed.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct LearnerMetrics {
    /// Gradient updates so far.
    pub updates: u64,
    /// Transitions in the replay buffer (the robot's own, all shards).
    pub replay_size: u64,
    /// The newest policy version the learner wrote (0: none yet).
    pub version: u64,
    /// Updates per second since the previous snapshot.
    pub updates_per_s: f64,
    /// The last update's losses and estimates.
    pub critic_loss: f64,
    pub actor_loss: f64,
    /// Mean Q over the batch.
    pub q: f64,
    /// Entropy estimate −E[log π] over the batch.
    pub entropy: f64,
    /// The SAC temperature α.
    pub alpha: f64,
    /// The weight of the BC term.
    pub bc_lambda: f64,
    /// When the snapshot was taken (wall-clock ns).
    pub wall_ns: i64,
}

impl LearnerMetrics {
    /// Each series by its topic name (`~/learner/<name>`): the one list
    /// that names them, for the node, the docs' table and the layouts.
    pub fn series(&self) -> [(&'static str, f64); 10] {
        [
            ("critic_loss", self.critic_loss),
            ("actor_loss", self.actor_loss),
            ("q", self.q),
            ("entropy", self.entropy),
            ("alpha", self.alpha),
            ("bc_lambda", self.bc_lambda),
            ("updates_per_s", self.updates_per_s),
            ("replay_size", self.replay_size as f64),
            ("updates", self.updates as f64),
            ("version", self.version as f64),
        ]
    }
    /// The series' names, in [`Self::series`] order.
    pub fn names() -> [&'static str; 10] {
        Self::default().series().map(|(n, _)| n)
    }
}

/// Why a metrics file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: larger than {MAX_BYTES} bytes: not a learner's metrics file")]
    TooLarge { path: PathBuf },
    #[error("{path}: not a learner's metrics file: {source}")]
    Malformed {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// Where the metrics live in a checkpoint directory.
pub fn path(ckpt_dir: &Path) -> PathBuf {
    ckpt_dir
        .join(files::LEARNER_DIR)
        .join(files::LEARNER_METRICS)
}

/// The learner: replace the snapshot (written beside it, then renamed, so
/// a reader never sees half a file). Not fsynced: telemetry, not state.
pub fn write(ckpt_dir: &Path, m: &LearnerMetrics) -> std::io::Result<()> {
    let p = path(ckpt_dir);
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d)?;
    }
    let tmp = p.with_extension("json.tmp");
    let body = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, &p)
}

/// Where the snapshots' history lives: one JSON line per snapshot, for
/// the report's learner curves (~400 bytes a second: ~1.4 MB an hour).
pub fn history_path(ckpt_dir: &Path) -> PathBuf {
    ckpt_dir
        .join(files::LEARNER_DIR)
        .join(files::LEARNER_METRICS_HISTORY)
}

/// The learner: append the snapshot to the history.
pub fn append_history(ckpt_dir: &Path, m: &LearnerMetrics) -> std::io::Result<()> {
    use std::io::Write;
    let mut line = serde_json::to_vec(m).map_err(std::io::Error::other)?;
    line.push(b'\n');
    // One write of a whole line in append mode: a reader sees whole lines
    // (a torn last line after a crash is skipped).
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(history_path(ckpt_dir))?
        .write_all(&line)
}

/// The report: every snapshot in the history, oldest first; lines that
/// do not parse (a torn last line) are skipped. Empty when there is none.
pub fn read_history(ckpt_dir: &Path) -> Result<Vec<LearnerMetrics>, MetricsError> {
    let path = history_path(ckpt_dir);
    match std::fs::read_to_string(&path) {
        Ok(t) => Ok(t
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(MetricsError::Io { path, source }),
    }
}

/// The node: the newest snapshot, None while no learner has written one.
pub fn read(ckpt_dir: &Path) -> Result<Option<LearnerMetrics>, MetricsError> {
    let path = path(ckpt_dir);
    let f = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(MetricsError::Io { path, source }),
    };
    let mut buf = Vec::with_capacity(1024);
    if let Err(source) = f.take(MAX_BYTES + 1).read_to_end(&mut buf) {
        return Err(MetricsError::Io { path, source });
    }
    if buf.len() as u64 > MAX_BYTES {
        return Err(MetricsError::TooLarge { path });
    }
    serde_json::from_slice(&buf)
        .map(Some)
        .map_err(|source| MetricsError::Malformed { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_round_trips_and_a_rewrite_replaces_it() {
        let d = tempfile::tempdir().unwrap();
        let mut m = LearnerMetrics {
            updates: 100,
            version: 2,
            alpha: 0.01,
            ..Default::default()
        };
        write(d.path(), &m).unwrap();
        m.updates = 200;
        write(d.path(), &m).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(m));
        assert!(!path(d.path()).with_extension("json.tmp").exists());
    }

    #[test]
    fn bad_files_are_named_errors_not_panics() {
        let d = tempfile::tempdir().unwrap();
        let p = path(d.path());
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, b"{\"updates\": 1, \"q\": ").unwrap();
        let e = read(d.path()).unwrap_err();
        assert!(matches!(e, MetricsError::Malformed { .. }), "{e}");
        assert!(e.to_string().contains("metrics.json"), "{e}");
        std::fs::write(&p, vec![b' '; MAX_BYTES as usize + 1]).unwrap();
        assert!(matches!(read(d.path()), Err(MetricsError::TooLarge { .. })));
        // a missing field is malformed; an extra one (a newer learner) is not
        std::fs::write(&p, br#"{"updates": 1}"#).unwrap();
        assert!(matches!(
            read(d.path()),
            Err(MetricsError::Malformed { .. })
        ));
        let mut v = serde_json::to_value(LearnerMetrics::default()).unwrap();
        v["newer"] = 1.into();
        std::fs::write(&p, v.to_string()).unwrap();
        assert_eq!(read(d.path()).unwrap(), Some(LearnerMetrics::default()));
    }

    #[test]
    fn the_history_keeps_every_snapshot_and_skips_a_torn_line() {
        let d = tempfile::tempdir().unwrap();
        assert!(read_history(d.path()).unwrap().is_empty());
        std::fs::create_dir_all(path(d.path()).parent().unwrap()).unwrap();
        for u in [100, 200, 300] {
            let m = LearnerMetrics {
                updates: u,
                ..Default::default()
            };
            append_history(d.path(), &m).unwrap();
        }
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(history_path(d.path()))
            .unwrap();
        std::io::Write::write_all(&mut f, b"{\"updates\": 4").unwrap();
        let h = read_history(d.path()).unwrap();
        assert_eq!(
            h.iter().map(|m| m.updates).collect::<Vec<_>>(),
            [100, 200, 300]
        );
    }

    #[test]
    fn every_series_has_a_distinct_name() {
        let n = LearnerMetrics::names();
        let set: std::collections::BTreeSet<_> = n.iter().collect();
        assert_eq!(set.len(), n.len());
    }
}
