//! The learner's store of what robots sent: one directory per robot, one
//! MCAP part file per run of consecutive records from one robot log file,
//! in the node's own log format (so the learner's follower reads a shard
//! directory like a robot's log directory). A record is acknowledged only
//! once it is flushed to the kernel, so a kill -9 of the learner loses no
//! acknowledged record; a restart recovers each robot's position from the
//! part files (torn tails ignored) and opens new parts.
//!
//! ```text
//! <root>/<robot>/<source file stem>.<seq_base, 12 digits>.mcap
//! ```
//!
//! Off the control thread: file I/O, allocates.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::inbox::{Inbox, Verdict};
use super::wire::{Batch, RobotAck};
use crate::log::reader::{file_base, log_files, Tail};
use crate::log::writer::FileWriter;
use crate::log::{LogError, Transition, SEQ_BASE_KEY};

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("creating {path}: {source}")]
    CreateDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("robot {robot}: record {seq} does not decode ({source}); batch refused")]
    Record {
        robot: String,
        seq: u64,
        source: LogError,
    },
    #[error("robot {robot}: source file name '{file}' is not a log file name")]
    FileName { robot: String, file: String },
}

struct Part {
    source: String,
    /// Stream position of the next record this part would take.
    end: u64,
    writer: FileWriter,
}

struct Robot {
    inbox: Inbox,
    part: Option<Part>,
}

pub struct ShardStore {
    root: PathBuf,
    robots: BTreeMap<String, Robot>,
}

impl ShardStore {
    /// Open `root`, recovering every robot's position from its parts.
    pub fn open(root: &Path) -> Result<Self, ShardError> {
        std::fs::create_dir_all(root).map_err(|source| ShardError::CreateDir {
            path: root.into(),
            source,
        })?;
        let mut robots = BTreeMap::new();
        let entries = std::fs::read_dir(root).map_err(|source| ShardError::CreateDir {
            path: root.into(),
            source,
        })?;
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if !e.path().is_dir() || !super::valid_robot_id(&name) {
                continue;
            }
            let next = recover(&e.path())?;
            robots.insert(
                name,
                Robot {
                    inbox: Inbox::resume(next),
                    part: None,
                },
            );
        }
        Ok(Self {
            root: root.into(),
            robots,
        })
    }

    /// The directory of one robot's shards.
    pub fn robot_dir(&self, robot: &str) -> PathBuf {
        self.root.join(robot)
    }

    /// Store the new part of a batch (durably, flushed) and return what
    /// was done with it.
    pub fn receive(&mut self, b: &Batch) -> Result<Verdict, ShardError> {
        let dir = self.robot_dir(&b.robot);
        let robot = self.robots.entry(b.robot.clone()).or_insert_with(|| Robot {
            inbox: Inbox::default(),
            part: None,
        });
        let verdict = robot.inbox.judge(b.seq, b.prev_end, b.records.len());
        let Verdict::Store { skip, gap } = verdict else {
            return Ok(verdict);
        };
        let first = b.seq + skip as u64;
        let records = b.records[skip..]
            .iter()
            .enumerate()
            .map(|(i, r)| {
                Transition::decode(r).map_err(|source| ShardError::Record {
                    robot: b.robot.clone(),
                    seq: first + i as u64,
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fits = robot
            .part
            .as_ref()
            .is_some_and(|p| p.source == b.file && p.end == first);
        if !fits {
            if let Some(p) = robot.part.take() {
                p.writer.finish()?;
            }
            let stem = b
                .file
                .strip_suffix(".mcap")
                .filter(|s| !s.is_empty() && !s.contains('/') && !s.starts_with('.'))
                .ok_or_else(|| ShardError::FileName {
                    robot: b.robot.clone(),
                    file: b.file.clone(),
                })?;
            std::fs::create_dir_all(&dir).map_err(|source| ShardError::CreateDir {
                path: dir.clone(),
                source,
            })?;
            let mut metadata = b.metadata.clone();
            metadata.insert(SEQ_BASE_KEY.into(), first.to_string());
            metadata.insert("fleet_robot".into(), b.robot.clone());
            metadata.insert("fleet_source".into(), b.file.clone());
            let path = dir.join(format!("{stem}.{first:012}.mcap"));
            robot.part = Some(Part {
                source: b.file.clone(),
                end: first,
                writer: FileWriter::create(&path, &metadata)?,
            });
        }
        let part = robot.part.as_mut().expect("opened");
        for t in &records {
            part.writer.append(t)?;
        }
        part.writer.flush()?;
        part.end += records.len() as u64;
        robot.inbox.advance(gap, records.len() as u64);
        Ok(verdict)
    }

    /// Each robot's acknowledgement.
    pub fn acks(&self) -> BTreeMap<String, RobotAck> {
        self.robots
            .iter()
            .map(|(r, s)| {
                (
                    r.clone(),
                    RobotAck {
                        next: s.inbox.next(),
                        gap_records: s.inbox.gap_records(),
                    },
                )
            })
            .collect()
    }

    /// Per robot: (records stored by this instance, duplicates, batches ahead).
    pub fn counters(&self) -> BTreeMap<String, (u64, u64, u64)> {
        self.robots
            .iter()
            .map(|(r, s)| {
                let i = &s.inbox;
                (r.clone(), (i.stored(), i.duplicates(), i.ahead()))
            })
            .collect()
    }

    /// Close every open part (a clean stop).
    pub fn close(self) -> Result<(), ShardError> {
        for (_, r) in self.robots {
            if let Some(p) = r.part {
                p.writer.finish()?;
            }
        }
        Ok(())
    }
}

/// A robot's next position from its part files: the end of the part that
/// reaches furthest (parts are only ever written contiguously).
fn recover(dir: &Path) -> Result<u64, ShardError> {
    let mut next = 0;
    for p in log_files(dir)? {
        let mut t = Tail::new(&p);
        let n = t.poll()?.len() as u64;
        if let Some(base) = file_base(&t.metadata) {
            next = next.max(base + n);
        }
    }
    Ok(next)
}
