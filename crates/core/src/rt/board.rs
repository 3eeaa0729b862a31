//! The latest-value board: one slot per observation source, written by
//! subscriber callbacks and snapshotted by the control thread once a tick.
//!
//! Each slot is a seqlock over atomics: the writer never waits, the reader
//! never blocks the writer and never allocates; a read that races a write
//! retries a bounded number of times and otherwise reports "busy" (the tick
//! then treats the source as not fresh rather than waiting).
//!
//! Real-time: [`Board::read`] runs in the tick and [`Board::write`] in the
//! subscribers: no allocation, no lock (built once by [`Board::new`]).

use std::sync::atomic::{fence, AtomicI64, AtomicU64, Ordering};

/// Monotonic clock in nanoseconds (CLOCK_MONOTONIC), comparable across threads.
pub fn mono_ns() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec * 1_000_000_000 + ts.tv_nsec
}

/// Wall clock (ROS time without simulated time) in nanoseconds.
pub fn wall_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

struct Slot {
    seq: AtomicU64,
    /// Header stamp (wall ns), or 0 when the message had none.
    stamp_ns: AtomicI64,
    /// Receive time, monotonic ns (0: never written).
    recv_ns: AtomicI64,
    vals: Box<[AtomicU64]>,
}

/// What a snapshot learned about one source.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SourceState {
    /// Age of the data in ns (header stamp if present, else receive time);
    /// negative for a stamp ahead of the clock.
    pub age_ns: i64,
    /// Time since the data arrived, ns (CLOCK_MONOTONIC: immune to wall
    /// clock steps).
    pub recv_age_ns: i64,
    /// Header stamp (wall ns) or 0.
    pub stamp_ns: i64,
    /// When the data arrived (CLOCK_MONOTONIC ns; 0: never).
    pub recv_ns: i64,
    pub ever_written: bool,
    /// The writer was mid-update on every retry.
    pub busy: bool,
}

impl SourceState {
    /// Written, readable, neither its stamp nor its arrival older than
    /// `max_age_ns`, and its stamp not more than `max_future_ns` ahead
    /// (the control tick's own staleness and validity tests).
    pub fn fresh(&self, max_age_ns: i64, max_future_ns: i64) -> bool {
        self.ever_written
            && !self.busy
            && self.age_ns <= max_age_ns
            && self.recv_age_ns <= max_age_ns
            && (self.stamp_ns == 0 || -self.age_ns <= max_future_ns)
    }
}

/// Fixed-layout board: source i occupies `widths[i]` consecutive values.
pub struct Board {
    slots: Vec<Slot>,
    offsets: Vec<usize>,
    total: usize,
}

impl Board {
    pub fn new(widths: &[usize]) -> Self {
        let mut offsets = Vec::with_capacity(widths.len());
        let mut total = 0;
        for w in widths {
            offsets.push(total);
            total += w;
        }
        Self {
            slots: widths
                .iter()
                .map(|&w| Slot {
                    seq: AtomicU64::new(0),
                    stamp_ns: AtomicI64::new(0),
                    recv_ns: AtomicI64::new(0),
                    vals: (0..w).map(|_| AtomicU64::new(0)).collect(),
                })
                .collect(),
            offsets,
            total,
        }
    }

    pub fn sources(&self) -> usize {
        self.slots.len()
    }

    pub fn width(&self, i: usize) -> usize {
        self.slots[i].vals.len()
    }

    /// Total observation width (sum of source widths).
    pub fn total(&self) -> usize {
        self.total
    }

    /// Publish new values for source `i` (one writer per source).
    /// `vals.len()` must equal the source width.
    pub fn write(&self, i: usize, vals: &[f64], header_stamp_ns: Option<i64>) {
        let s = &self.slots[i];
        assert_eq!(vals.len(), s.vals.len(), "board write width");
        let q = s.seq.load(Ordering::Relaxed);
        s.seq.store(q + 1, Ordering::Relaxed); // odd: writing
        fence(Ordering::Release);
        for (a, v) in s.vals.iter().zip(vals) {
            a.store(v.to_bits(), Ordering::Relaxed);
        }
        s.stamp_ns
            .store(header_stamp_ns.unwrap_or(0), Ordering::Relaxed);
        s.recv_ns.store(mono_ns(), Ordering::Relaxed);
        s.seq.store(q + 2, Ordering::Release); // even: stable
    }

    /// Completed writes to source `i` so far (a counter: a reader that saw
    /// n and now sees n + k knows k new samples arrived).
    pub fn writes(&self, i: usize) -> u64 {
        self.slots[i].seq.load(Ordering::Acquire) / 2
    }

    /// Copy source `i` into `out` (its width) and report its age.
    /// `now_mono`/`now_wall` are the tick's clocks.
    pub fn read(&self, i: usize, out: &mut [f32], now_mono: i64, now_wall: i64) -> SourceState {
        self.read_with(i, now_mono, now_wall, |j, v| {
            if let Some(o) = out.get_mut(j) {
                *o = v as f32;
            }
        })
    }

    /// [`Self::read`] at full precision (a position to hold is sent back as
    /// it was measured).
    pub fn read_f64(&self, i: usize, out: &mut [f64], now_mono: i64, now_wall: i64) -> SourceState {
        self.read_with(i, now_mono, now_wall, |j, v| {
            if let Some(o) = out.get_mut(j) {
                *o = v;
            }
        })
    }

    fn read_with(
        &self,
        i: usize,
        now_mono: i64,
        now_wall: i64,
        mut put: impl FnMut(usize, f64),
    ) -> SourceState {
        let s = &self.slots[i];
        for _ in 0..8 {
            let q1 = s.seq.load(Ordering::Acquire);
            if q1 & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            for (j, a) in s.vals.iter().enumerate() {
                put(j, f64::from_bits(a.load(Ordering::Relaxed)));
            }
            let stamp = s.stamp_ns.load(Ordering::Relaxed);
            let recv = s.recv_ns.load(Ordering::Relaxed);
            fence(Ordering::Acquire);
            if s.seq.load(Ordering::Relaxed) == q1 {
                let age_ns = if stamp != 0 {
                    now_wall - stamp
                } else {
                    now_mono - recv
                };
                return SourceState {
                    age_ns,
                    recv_age_ns: now_mono - recv,
                    stamp_ns: stamp,
                    recv_ns: recv,
                    ever_written: recv != 0,
                    busy: false,
                };
            }
        }
        SourceState {
            busy: true,
            ..Default::default()
        }
    }

    /// Offset of source `i` in the concatenated observation.
    pub fn offset(&self, i: usize) -> usize {
        self.offsets[i]
    }
}
