//! A log directory as a rosbag2 bag: `metadata.yaml` listing the directory's
//! MCAP files as one recording (storage `mcap`, one topic, CDR), so that
//! `ros2 bag info` / `ros2 bag play` and rosbag2 readers (rosbags) open it.
//! Written by the log writer thread when it closes a file, never on the
//! control thread. Files the previous `metadata.yaml` already lists keep
//! their entries; only the others are read (tail-tolerant), so a restart
//! costs one read of the file a killed node left unlisted, not of the
//! whole directory.

use std::path::Path;

use super::reader::{log_files, Tail};
use super::{Result, SCHEMA_NAME, TOPIC};

/// The rosbag2 metadata file name (its own, not ours to choose).
pub const METADATA_FILE: &str = "metadata.yaml";

/// Write `<dir>/metadata.yaml` describing every `*.mcap` file in `dir` as
/// one bag, atomically (temp file, rename). Files that hold no complete
/// record are left out.
pub fn write_metadata(dir: &Path) -> Result<()> {
    let known = listed_files(dir);
    let mut files = Vec::new();
    for path in log_files(dir)? {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if let Some(f) = known.iter().find(|f| f.0 == name) {
            files.push(f.clone());
            continue;
        }
        // Read in bounded slices: closing an hour-long log must not hold
        // the whole file (the node's writer thread calls this).
        let mut tail = Tail::new(&path);
        let (mut start, mut end, mut n) = (i64::MAX, i64::MIN, 0usize);
        loop {
            let before = tail.position();
            let recs = tail.poll_max(4096)?;
            if tail.position() == before {
                break;
            }
            n += recs.len();
            for r in &recs {
                start = start.min(r.wall_ns);
                end = end.max(r.wall_ns);
            }
        }
        if n == 0 {
            continue;
        }
        files.push((name, start, end - start, n));
    }
    let total: usize = files.iter().map(|f| f.3).sum();
    let start = files.iter().map(|f| f.1).min().unwrap_or(0);
    let end = files.iter().map(|f| f.1 + f.2).max().unwrap_or(0);
    let mut y = String::new();
    y += "rosbag2_bagfile_information:\n";
    y += "  version: 5\n";
    y += "  storage_identifier: mcap\n";
    y += &format!("  duration:\n    nanoseconds: {}\n", end - start);
    y += &format!("  starting_time:\n    nanoseconds_since_epoch: {start}\n");
    y += &format!("  message_count: {total}\n");
    y += "  topics_with_message_count:\n";
    y += &format!(
        "    - topic_metadata:\n        name: {TOPIC}\n        type: {SCHEMA_NAME}\n        serialization_format: cdr\n        offered_qos_profiles: \"\"\n      message_count: {total}\n"
    );
    y += "  compression_format: \"\"\n  compression_mode: \"\"\n";
    y += "  relative_file_paths:\n";
    for (name, ..) in &files {
        y += &format!("    - {name}\n");
    }
    y += "  files:\n";
    for (name, s, d, n) in &files {
        y += &format!(
            "    - path: {name}\n      starting_time:\n        nanoseconds_since_epoch: {s}\n      duration:\n        nanoseconds: {d}\n      message_count: {n}\n"
        );
    }
    let tmp = dir.join(format!(".{METADATA_FILE}.tmp{}", std::process::id()));
    let io = |source| super::LogError::Path {
        step: super::IoStep::WritingBagMetadata,
        path: dir.join(METADATA_FILE),
        source,
    };
    std::fs::write(&tmp, y).map_err(io)?;
    std::fs::rename(&tmp, dir.join(METADATA_FILE)).map_err(io)
}

/// One file's entry: name, first wall-clock ns, duration ns, records.
type FileEntry = (String, i64, i64, usize);

/// The `files:` entries of the metadata this module wrote before (none if
/// it is missing or not in that layout), except the newest file, which a
/// writer may have extended since.
fn listed_files(dir: &Path) -> Vec<FileEntry> {
    let Ok(text) = std::fs::read_to_string(dir.join(METADATA_FILE)) else {
        return Vec::new();
    };
    let Some((_, section)) = text.split_once("\n  files:\n") else {
        return Vec::new();
    };
    let mut out: Vec<FileEntry> = Vec::new();
    let mut cur: Option<(String, Vec<i64>)> = None;
    for line in section.lines() {
        let line = line.trim();
        if let Some(p) = line.strip_prefix("- path: ") {
            if let Some((n, v)) = cur.take() {
                if let [s, d, c] = v[..] {
                    out.push((n, s, d, c as usize));
                }
            }
            cur = Some((p.to_string(), Vec::new()));
        } else if let (Some((_, v)), Some((_, num))) = (cur.as_mut(), line.split_once(": ")) {
            if let Ok(x) = num.parse() {
                v.push(x);
            }
        }
    }
    if let Some((n, v)) = cur {
        if let [s, d, c] = v[..] {
            out.push((n, s, d, c as usize));
        }
    }
    out.pop();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log::writer::{LogConfig, LogHandle};
    use crate::log::Transition;

    fn run(dir: &Path, ticks: std::ops::Range<u64>) {
        let log = LogHandle::start(LogConfig {
            dir: dir.into(),
            flush_period: std::time::Duration::from_millis(5),
            queue_capacity: 1024,
            reward: None,
            metadata: Default::default(),
        })
        .unwrap();
        for i in ticks {
            let t = Transition {
                tick: i,
                wall_ns: 1_000_000_000 + 1_000_000 * i as i64,
                n_obs: 1,
                n_act: 1,
                ..Default::default()
            };
            log.push(&t);
        }
        log.close();
    }

    #[test]
    fn closing_a_log_indexes_the_directory_as_one_rosbag2_bag() {
        let dir = tempfile::tempdir().unwrap();
        run(dir.path(), 0..10);
        // a second run (another file) re-indexes; the first file's entry is kept
        std::thread::sleep(std::time::Duration::from_millis(1100));
        run(dir.path(), 10..15);
        let y = std::fs::read_to_string(dir.path().join(METADATA_FILE)).unwrap();
        assert!(
            y.starts_with(
                "rosbag2_bagfile_information:\n  version: 5\n  storage_identifier: mcap\n"
            ),
            "{y}"
        );
        assert!(y.contains("  message_count: 15\n"), "{y}");
        assert!(y.contains("name: /flowpilot/transitions\n        type: flowpilot_msgs/msg/Transition\n        serialization_format: cdr"), "{y}");
        assert!(y.contains("nanoseconds_since_epoch: 1000000000\n"), "{y}");
        assert!(
            y.contains("  duration:\n    nanoseconds: 14000000\n"),
            "{y}"
        );
        let files = log_files(dir.path()).unwrap();
        assert_eq!(files.len(), 2);
        let listed = {
            // with the newest one too
            let mut v = listed_files(dir.path());
            v.push(("newest".into(), 0, 0, 0));
            v
        };
        assert_eq!(listed[0].3, 10);
        assert_eq!(listed[0].1, 1_000_000_000);
        assert_eq!(listed[0].2, 9_000_000);
    }
}
