//! The robot's reader of its own log directory at any stream position: the
//! fleet link sends from here, and resends from here after a link outage
//! or a learner restart (the log, not memory, is the source of truth).
//! A file's records sit at `seq_base + index` (`log::reader::stream_base`);
//! positions with no record (older files deleted) are reported as holes
//! in the batch (`prev_end`), so the learner records a gap instead of
//! waiting for them. It sends the stream (epoch) of the directory's newest
//! file. A seek reads the file's index, not the file, and the cursor holds
//! at most one batch of records: memory stays bounded however long the
//! log. Off the control thread: file I/O, allocates.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use super::wire::Batch;
use crate::log::reader::{count, file_base, file_epoch, log_files, Tail};
use crate::log::{LogError, Transition};

#[derive(Debug, thiserror::Error)]
pub enum CursorError {
    #[error(transparent)]
    Log(#[from] LogError),
    #[error("log file {next} starts at stream position {base}, inside {prev} (which ends at {end}): two writers in one log directory?")]
    Overlap {
        prev: String,
        end: u64,
        next: String,
        base: u64,
    },
}

struct Known {
    base: u64,
    /// Complete records when last counted (final once a newer file exists).
    count: u64,
    /// The file's stream (None: no metadata yet, a file killed as it was
    /// created; it holds no record).
    epoch: Option<u64>,
}

struct Open {
    path: PathBuf,
    name: String,
    base: u64,
    epoch: u64,
    tail: Tail,
    /// Records read and not yet sent, with their index in the file (at
    /// most one batch's worth: what the cursor holds is bounded).
    buf: VecDeque<(u64, Transition)>,
}

pub struct LogCursor {
    robot: String,
    dir: PathBuf,
    files: BTreeMap<PathBuf, Known>,
    /// The stream sent: the newest file's epoch (None: no file yet).
    epoch: Option<u64>,
    open: Option<Open>,
    pos: u64,
    hole_from: u64,
    buf: Vec<u8>,
}

impl LogCursor {
    /// A cursor at position 0 of `dir`'s stream, naming batches `robot`.
    pub fn new(robot: &str, dir: &Path) -> Self {
        Self {
            robot: robot.into(),
            dir: dir.into(),
            files: BTreeMap::new(),
            epoch: None,
            open: None,
            pos: 0,
            hole_from: 0,
            buf: Vec::new(),
        }
    }

    /// Send from `pos` next.
    pub fn seek(&mut self, pos: u64) {
        self.open = None;
        self.pos = pos;
        self.hole_from = pos;
    }

    /// Stream position of the next record.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The stream (epoch) the cursor sends: its newest file's (None: no
    /// log file yet). Positions belong to it; when it changes (the log
    /// directory was emptied and a new stream began) the cursor starts
    /// over at position 0 of the new stream.
    pub fn epoch(&self) -> Option<u64> {
        self.epoch
    }

    /// Learn the bases of files not seen before (each counted once,
    /// through its index), forget deleted ones, and follow the newest
    /// file's stream.
    pub fn refresh(&mut self) -> Result<(), CursorError> {
        let listed = log_files(&self.dir)?;
        self.files.retain(|p, _| listed.binary_search(p).is_ok());
        let mut prev_end = 0u64;
        for p in listed {
            if let Some(k) = self.files.get(&p) {
                if k.epoch.is_some() {
                    prev_end = k.base + k.count;
                    continue;
                }
            }
            let (n, metadata) = count(&p)?;
            let base = file_base(&metadata).unwrap_or(prev_end);
            let epoch = (!metadata.is_empty()).then(|| file_epoch(&metadata).unwrap_or(0));
            self.files.insert(
                p,
                Known {
                    base,
                    count: n,
                    epoch,
                },
            );
            prev_end = base + n;
        }
        let newest = self.files.values().rev().find_map(|k| k.epoch);
        if newest.is_some() && newest != self.epoch {
            if self.epoch.is_some() {
                // Positions of the old stream mean nothing in the new one.
                tracing::info!(
                    from = ?self.epoch.map(crate::log::reader::epoch_hex),
                    to = ?newest.map(crate::log::reader::epoch_hex),
                    "fleet: the log began a new stream (epoch); sending it from its start"
                );
                self.seek(0);
            }
            self.epoch = newest;
        }
        Ok(())
    }

    /// Files of the stream sent, oldest first.
    fn stream(&self) -> impl DoubleEndedIterator<Item = (&PathBuf, &Known)> {
        let e = self.epoch;
        self.files
            .iter()
            .filter(move |(_, k)| k.epoch.is_some() && k.epoch == e)
    }

    /// Open the file holding `pos` (or the first one after a hole): its
    /// index takes the reader there without reading what is before.
    fn open_at_pos(&mut self) -> Result<bool, CursorError> {
        self.refresh()?;
        let pos = self.pos;
        let Some((path, base, epoch)) = self
            .stream()
            .rev()
            .find(|(_, k)| k.base <= pos)
            .or_else(|| self.stream().next())
            .map(|(p, k)| (p.clone(), k.base, k.epoch.unwrap_or(0)))
        else {
            return Ok(false);
        };
        if self.pos < base {
            self.pos = base; // nothing before this file: a hole
        }
        let tail = Tail::open_at(&path, self.pos - base)?;
        // Past this file's end: nothing there until the next file.
        self.pos = base + tail.position();
        self.open = Some(Open {
            name: file_name(&path),
            path,
            base,
            epoch,
            tail,
            buf: VecDeque::new(),
        });
        Ok(true)
    }

    /// Up to `max` records from the current position, all from one file,
    /// as a batch (None: nothing new yet). Moves the position past them.
    pub fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, CursorError> {
        let max = max.max(1);
        for _ in 0..4 {
            if self.open.is_none() && !self.open_at_pos()? {
                return Ok(None);
            }
            let o = self.open.as_mut().expect("open");
            if o.buf.is_empty() {
                o.buf.extend(o.tail.poll_indexed(max)?);
            }
            if let Some(&(first, _)) = o.buf.front() {
                let seq = o.base + first;
                let mut b = Batch {
                    robot: self.robot.clone(),
                    epoch: o.epoch,
                    file: o.name.clone(),
                    seq,
                    // A record the file lost (corrupt) is a hole too.
                    prev_end: self.hole_from.min(self.pos).min(seq),
                    metadata: o.tail.metadata.clone(),
                    records: Vec::new(),
                    auth: Vec::new(),
                };
                let mut next = first;
                while b.records.len() < max && o.buf.front().is_some_and(|(i, _)| *i == next) {
                    let (_, t) = o.buf.pop_front().expect("front");
                    t.encode(&mut self.buf);
                    b.records.push(self.buf.clone());
                    next += 1;
                }
                self.pos = o.base + next;
                self.hole_from = self.pos;
                return Ok(Some(b));
            }
            // The end of this file: go on to the next one, if there is one.
            let (path, end) = (o.path.clone(), o.base + o.tail.position());
            self.refresh()?;
            if self.open.is_none() {
                continue; // a new stream began: start over in it
            }
            let Some((next, next_base)) = self
                .stream()
                .find(|(p, _)| **p > path)
                .map(|(p, k)| (p.clone(), k.base))
            else {
                return Ok(None); // the newest file: wait for it to grow
            };
            let o = self.open.as_mut().expect("open");
            // The newer file exists, so this one's writer is gone; what it
            // wrote after the last poll is read before moving on.
            let last = o.tail.poll_indexed(max)?;
            if !last.is_empty() {
                o.buf.extend(last);
                continue;
            }
            let end = end.max(o.base + o.tail.position());
            if next_base < end {
                return Err(CursorError::Overlap {
                    prev: file_name(&path),
                    end,
                    next: file_name(&next),
                    base: next_base,
                });
            }
            if let Some(known) = self.files.get_mut(&path) {
                known.count = end - known.base;
            }
            self.pos = self.pos.max(next_base);
            self.open = None;
        }
        Ok(None)
    }
}

fn file_name(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}
