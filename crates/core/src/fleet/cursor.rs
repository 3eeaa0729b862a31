//! The robot's reader of its own log directory at any stream position: the
//! fleet link sends from here, and resends from here after a link outage
//! or a learner restart (the log, not memory, is the source of truth).
//! A file's records sit at `seq_base + index` (`log::reader::stream_base`);
//! positions with no record (older files deleted) are reported as holes
//! in the batch (`prev_end`), so the learner records a gap instead of
//! waiting for them. Off the control thread: file I/O, allocates.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use super::wire::Batch;
use crate::log::reader::{file_base, log_files, Tail};
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
    /// Complete records when last read (final once a newer file exists).
    count: u64,
}

struct Open {
    path: PathBuf,
    name: String,
    base: u64,
    tail: Tail,
    /// Records read from the file so far.
    read: u64,
    /// Records not yet returned; the front sits at `read - buf.len()`.
    buf: VecDeque<Transition>,
}

pub struct LogCursor {
    robot: String,
    dir: PathBuf,
    files: BTreeMap<PathBuf, Known>,
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

    /// Learn the bases of files not seen before (each read once).
    fn refresh(&mut self) -> Result<(), CursorError> {
        let mut prev_end = 0u64;
        for p in log_files(&self.dir)? {
            if let Some(k) = self.files.get(&p) {
                prev_end = k.base + k.count;
                continue;
            }
            let mut t = Tail::new(&p);
            let count = t.poll()?.len() as u64;
            let base = file_base(&t.metadata).unwrap_or(prev_end);
            self.files.insert(p, Known { base, count });
            prev_end = base + count;
        }
        Ok(())
    }

    /// Open the file holding `pos` (or the first one after a hole).
    fn open_at_pos(&mut self) -> Result<bool, CursorError> {
        self.refresh()?;
        let Some((path, base)) = self
            .files
            .iter()
            .rev()
            .find(|(_, k)| k.base <= self.pos)
            .or_else(|| self.files.iter().next())
            .map(|(p, k)| (p.clone(), k.base))
        else {
            return Ok(false);
        };
        let mut tail = Tail::new(&path);
        let mut buf: VecDeque<Transition> = tail.poll()?.into();
        let read = buf.len() as u64;
        if self.pos < base {
            self.pos = base; // nothing before this file: a hole
        }
        let skip = ((self.pos - base) as usize).min(buf.len());
        buf.drain(..skip);
        if (self.pos - base) > read {
            // Past this file's end: nothing there until the next file.
            self.pos = base + read;
        }
        self.open = Some(Open {
            name: file_name(&path),
            path,
            base,
            tail,
            read,
            buf,
        });
        Ok(true)
    }

    /// Up to `max` records from the current position, all from one file,
    /// as a batch (None: nothing new yet). Moves the position past them.
    pub fn next_batch(&mut self, max: usize) -> Result<Option<Batch>, CursorError> {
        for _ in 0..4 {
            if self.open.is_none() && !self.open_at_pos()? {
                return Ok(None);
            }
            let o = self.open.as_mut().expect("open");
            if o.buf.is_empty() {
                let fresh = o.tail.poll()?;
                o.read += fresh.len() as u64;
                o.buf.extend(fresh);
            }
            if !o.buf.is_empty() {
                let n = o.buf.len().min(max.max(1));
                let mut b = Batch {
                    robot: self.robot.clone(),
                    file: o.name.clone(),
                    seq: self.pos,
                    prev_end: self.hole_from.min(self.pos),
                    metadata: o.tail.metadata.clone(),
                    records: Vec::with_capacity(n),
                };
                for t in o.buf.drain(..n) {
                    t.encode(&mut self.buf);
                    b.records.push(self.buf.clone());
                }
                self.pos += n as u64;
                self.hole_from = self.pos;
                return Ok(Some(b));
            }
            // The end of this file: go on to the next one, if there is one.
            let (path, end) = (o.path.clone(), o.base + o.read);
            self.refresh()?;
            let Some((next, next_base)) = self
                .files
                .range(path.clone()..)
                .nth(1)
                .map(|(p, k)| (p.clone(), k.base))
            else {
                return Ok(None); // the newest file: wait for it to grow
            };
            // The newer file exists, so this one's writer is gone; what it
            // wrote after the last poll is read before moving on.
            let o = self.open.as_mut().expect("open");
            let last = o.tail.poll()?;
            if !last.is_empty() {
                o.read += last.len() as u64;
                o.buf.extend(last);
                continue;
            }
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
