//! Action chunks and observation history on the control thread.
//!
//! A chunked policy samples `H` action steps at once; [`ChunkPlayer`] plays
//! them out one per control tick, re-plans every `k <= H` ticks, and joins
//! overlapping chunks by the rule the user chose ([`Boundary`]). A
//! history-conditioned policy sees the last `n` observations, kept by
//! [`ObsHistory`]. Both are preallocated at construction: every method
//! here is allocation-free, lock-free and O(H · step) at most, so both run
//! inside a control tick.
//!
//! ```
//! use flowpilot_core::rt::chunk::{Boundary, ChunkPlayer};
//! // chunks of 3 steps of 1 value, a new chunk every 2 ticks, replaced
//! let mut p = ChunkPlayer::new(3, 1, 2, Boundary::Replace);
//! let mut a = [0.0f32];
//! assert!(p.due());
//! p.push(&[1.0, 2.0, 3.0], &[1.0, 2.0, 3.0], -1.5);
//! assert_eq!(p.next(&mut a).map(|s| s.index), Some(0));
//! assert_eq!(a, [1.0]);
//! assert!(!p.due());
//! p.next(&mut a);
//! assert_eq!(a, [2.0]);
//! assert!(p.due()); // 2 ticks since the chunk began
//! ```

/// How a new chunk meets the one still playing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Boundary {
    /// The new chunk takes over at once.
    Replace,
    /// ACT's temporal ensembling: every chunk covering the tick votes,
    /// weighted `exp(-m · i)` with `i = 0` for the oldest (ACT: m = 0.01).
    Ensemble { m: f32 },
    /// The new chunk's first `steps` actions are blended linearly into the
    /// old chunk's remainder (weight of the new one `(j + 1) / (steps + 1)`
    /// at its step `j`), then it plays alone.
    Blend { steps: usize },
}

impl std::str::FromStr for Boundary {
    type Err = String;
    /// `replace`, `ensemble` (m = 0.01), `blend` (steps = 2); the numbers
    /// come from their own parameters.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "replace" => Ok(Self::Replace),
            "ensemble" => Ok(Self::Ensemble { m: 0.01 }),
            "blend" => Ok(Self::Blend { steps: 2 }),
            o => Err(format!(
                "unknown chunk boundary '{o}' (replace, ensemble or blend)"
            )),
        }
    }
}

/// Which chunk, and which of its steps, a tick's action came from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkStep {
    /// Chunks pushed before this one (0 for the first).
    pub chunk: u64,
    /// The step within it (0..H).
    pub index: usize,
    /// The exact log-prob of the whole chunk it belongs to.
    pub log_prob: f32,
    slot: usize,
}

/// Plays action chunks out one step per tick (see the module docs).
pub struct ChunkPlayer {
    h: usize,
    step: usize,
    k: usize,
    boundary: Boundary,
    /// `slots` chunks of `h * step` values: physical, and the sampler's raw
    /// (normalised, pre-clip) values for the log.
    phys: Vec<f32>,
    raw: Vec<f32>,
    /// Per slot: the player tick its step 0 plays at, its id, its log-prob;
    /// `live[s]` false for an empty slot.
    start: Vec<u64>,
    id: Vec<u64>,
    log_prob: Vec<f32>,
    live: Vec<bool>,
    newest: usize,
    pushed: u64,
    /// Ticks played since the last reset.
    t: u64,
}

impl ChunkPlayer {
    /// Chunks of `h` steps of `step` values, a new one due every
    /// `replan_every` ticks (clamped to 1..=h).
    pub fn new(h: usize, step: usize, replan_every: usize, boundary: Boundary) -> Self {
        let h = h.max(1);
        let k = replan_every.clamp(1, h);
        // Every chunk that can still cover a tick, plus the one arriving.
        let slots = h.div_ceil(k) + 1;
        Self {
            h,
            step,
            k,
            boundary,
            phys: vec![0.0; slots * h * step],
            raw: vec![0.0; slots * h * step],
            start: vec![0; slots],
            id: vec![0; slots],
            log_prob: vec![f32::NAN; slots],
            live: vec![false; slots],
            newest: 0,
            pushed: 0,
            t: 0,
        }
    }

    pub fn chunk_len(&self) -> usize {
        self.h
    }

    /// Drop every chunk: the next tick re-plans (after a safe-action tick,
    /// a hot swap, an e-stop: an open-loop remainder planned for an older
    /// state is not played).
    pub fn reset(&mut self) {
        self.live.fill(false);
        self.t = 0;
    }

    /// Whether this tick should sample a new chunk: none is playing, or
    /// `replan_every` ticks have passed since the newest began.
    pub fn due(&self) -> bool {
        !self.live[self.newest] || self.t >= self.start[self.newest] + self.k as u64
    }

    /// A new chunk (`h * step` values, physical and raw) whose step 0 plays
    /// at this tick.
    pub fn push(&mut self, phys: &[f32], raw: &[f32], log_prob: f32) {
        let n = self.h * self.step;
        // The oldest slot: an empty one, else the one that began first.
        let mut slot = 0;
        for s in 0..self.live.len() {
            if !self.live[s] {
                slot = s;
                break;
            }
            if self.start[s] < self.start[slot] {
                slot = s;
            }
        }
        self.phys[slot * n..(slot + 1) * n].copy_from_slice(&phys[..n]);
        self.raw[slot * n..(slot + 1) * n].copy_from_slice(&raw[..n]);
        self.start[slot] = self.t;
        self.id[slot] = self.pushed;
        self.log_prob[slot] = log_prob;
        self.live[slot] = true;
        self.newest = slot;
        self.pushed += 1;
    }

    fn covers(&self, s: usize, t: u64) -> bool {
        self.live[s] && self.start[s] <= t && t < self.start[s] + self.h as u64
    }

    /// This tick's action into `out` (`step` values), and which chunk step
    /// it came from (the newest chunk covering the tick); None when no
    /// chunk covers it (the policy fell behind: the caller takes the safe
    /// action). Advances to the next tick either way.
    pub fn next(&mut self, out: &mut [f32]) -> Option<ChunkStep> {
        let t = self.t;
        self.t += 1;
        let step = self.play(t, out);
        // Retire what can no longer cover a tick (the newest stays, for
        // `due`).
        for s in 0..self.live.len() {
            if self.live[s] && t + 1 >= self.start[s] + self.h as u64 && s != self.newest {
                self.live[s] = false;
            }
        }
        step
    }

    fn play(&self, t: u64, out: &mut [f32]) -> Option<ChunkStep> {
        let n = self.h * self.step;
        let w = self.step;
        // The newest chunk covering t, and the one before it.
        let (mut new, mut old): (Option<usize>, Option<usize>) = (None, None);
        for s in 0..self.live.len() {
            if !self.covers(s, t) {
                continue;
            }
            match new {
                Some(b) if self.start[s] <= self.start[b] => {
                    if old.is_none_or(|o| self.start[s] > self.start[o]) {
                        old = Some(s);
                    }
                }
                _ => {
                    old = new;
                    new = Some(s);
                }
            }
        }
        let s = new?;
        let at = |s: usize| s * n + (t - self.start[s]) as usize * w;
        let index = (t - self.start[s]) as usize;
        out[..w].copy_from_slice(&self.phys[at(s)..at(s) + w]);
        match self.boundary {
            Boundary::Replace => {}
            Boundary::Blend { steps } => {
                if let (Some(o), true) = (old, index < steps) {
                    let a = (index + 1) as f32 / (steps + 1) as f32;
                    for (j, v) in out[..w].iter_mut().enumerate() {
                        *v = (1.0 - a) * self.phys[at(o) + j] + a * *v;
                    }
                }
            }
            Boundary::Ensemble { m } => {
                // Ranked by start, oldest first: weight exp(-m * rank).
                out[..w].fill(0.0);
                let mut total = 0.0f32;
                for c in 0..self.live.len() {
                    if !self.covers(c, t) {
                        continue;
                    }
                    let rank = (0..self.live.len())
                        .filter(|&d| self.covers(d, t) && self.start[d] < self.start[c])
                        .count();
                    let wt = (-m * rank as f32).exp();
                    total += wt;
                    for (j, v) in out[..w].iter_mut().enumerate() {
                        *v += wt * self.phys[at(c) + j];
                    }
                }
                for v in &mut out[..w] {
                    *v /= total;
                }
            }
        }
        Some(ChunkStep {
            chunk: self.id[s],
            index,
            log_prob: self.log_prob[s],
            slot: s,
        })
    }

    /// The sampler's raw (normalised, pre-clip) values of a step `next`
    /// returned.
    pub fn raw(&self, st: &ChunkStep) -> &[f32] {
        let n = self.h * self.step;
        let at = st.slot * n + st.index * self.step;
        &self.raw[at..at + self.step]
    }
}

/// The last `n` observations (`w` values each), oldest first, in one
/// preallocated buffer the sampler reads as its `n · w`-wide input. Until
/// `n` observations have arrived, the first one fills the missing past, as
/// Diffusion Policy's and the paper's evaluation loops pad at an episode's
/// start.
pub struct ObsHistory {
    w: usize,
    buf: Vec<f32>,
    filled: bool,
}

impl ObsHistory {
    pub fn new(n: usize, w: usize) -> Self {
        Self {
            w,
            buf: vec![0.0; n.max(1) * w],
            filled: false,
        }
    }

    /// Forget the past: the next observation fills the whole history.
    pub fn reset(&mut self) {
        self.filled = false;
    }

    /// Append the newest observation (`w` values), dropping the oldest.
    pub fn push(&mut self, obs: &[f32]) {
        let w = self.w;
        if self.filled {
            self.buf.copy_within(w.., 0);
            let end = self.buf.len();
            self.buf[end - w..].copy_from_slice(&obs[..w]);
        } else {
            for c in self.buf.chunks_exact_mut(w) {
                c.copy_from_slice(&obs[..w]);
            }
            self.filled = true;
        }
    }

    /// The history, oldest first.
    pub fn as_slice(&self) -> &[f32] {
        &self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A chunk of `h` one-value steps: base, base + 1, ...
    fn chunk(h: usize, base: f32) -> Vec<f32> {
        (0..h).map(|i| base + i as f32).collect()
    }

    fn play(
        p: &mut ChunkPlayer,
        ticks: usize,
        mut plan: impl FnMut(u64) -> f32,
    ) -> Vec<(f32, u64, usize)> {
        let mut out = Vec::new();
        let mut a = [0.0f32];
        for t in 0..ticks {
            if p.due() {
                let c = chunk(p.chunk_len(), plan(t as u64));
                p.push(&c, &c, -(t as f32));
            }
            let s = p.next(&mut a).unwrap();
            out.push((a[0], s.chunk, s.index));
        }
        out
    }

    #[test]
    fn replace_plays_each_chunk_from_its_start_and_replans_every_k() {
        let mut p = ChunkPlayer::new(4, 1, 2, Boundary::Replace);
        // chunk c starts at tick 2c with values 100c, 100c + 1, ...
        let got = play(&mut p, 6, |t| 100.0 * (t / 2) as f32);
        let want = [
            (0., 0, 0),
            (1., 0, 1),
            (100., 1, 0),
            (101., 1, 1),
            (200., 2, 0),
            (201., 2, 1),
        ];
        assert_eq!(got, want.to_vec());
    }

    #[test]
    fn ensemble_weights_overlapping_chunks_oldest_first() {
        let m = 0.5f32;
        let mut p = ChunkPlayer::new(3, 1, 1, Boundary::Ensemble { m });
        let got = play(&mut p, 3, |t| 10.0 * t as f32);
        // tick 0: chunk 0 alone -> 0
        assert_eq!(got[0].0, 0.0);
        // tick 1: chunk 0 step 1 (1.0, weight 1) and chunk 1 step 0 (10, e^-m)
        let w1 = (-m).exp();
        assert!((got[1].0 - (1.0 + w1 * 10.0) / (1.0 + w1)).abs() < 1e-6);
        // tick 2: chunks 0, 1, 2 at steps 2, 1, 0: values 2, 11, 20
        let w2 = (-2.0 * m).exp();
        let want = (2.0 + w1 * 11.0 + w2 * 20.0) / (1.0 + w1 + w2);
        assert!((got[2].0 - want).abs() < 1e-5, "{} vs {want}", got[2].0);
        // the step is reported from the newest chunk
        assert_eq!((got[2].1, got[2].2), (2, 0));
    }

    #[test]
    fn blend_mixes_the_new_prefix_into_the_old_remainder() {
        let mut p = ChunkPlayer::new(4, 1, 2, Boundary::Blend { steps: 2 });
        let got = play(&mut p, 5, |t| 100.0 * (t / 2) as f32);
        // ticks 0, 1: chunk 0 alone
        assert_eq!((got[0].0, got[1].0), (0.0, 1.0));
        // tick 2: old step 2 (2.0) and new step 0 (100) at 1/3
        assert!((got[2].0 - (2.0 * 2.0 / 3.0 + 100.0 / 3.0)).abs() < 1e-4);
        // tick 3: old step 3 (3.0) and new step 1 (101) at 2/3
        assert!((got[3].0 - (3.0 / 3.0 + 101.0 * 2.0 / 3.0)).abs() < 1e-4);
        // tick 4: chunk 2 starts; chunk 1 step 2 (102) is the old one
        assert!((got[4].0 - (102.0 * 2.0 / 3.0 + 200.0 / 3.0)).abs() < 1e-3);
    }

    #[test]
    fn a_missed_replan_keeps_the_old_chunk_until_it_runs_out() {
        let mut p = ChunkPlayer::new(3, 2, 1, Boundary::Replace);
        let c: Vec<f32> = (0..6).map(|v| v as f32).collect();
        p.push(&c, &c, -2.0);
        let mut a = [0.0f32; 2];
        for i in 0..3 {
            assert!(i == 0 || p.due(), "a new chunk is due every tick");
            let s = p.next(&mut a).unwrap();
            assert_eq!((s.chunk, s.index, s.log_prob), (0, i, -2.0));
            assert_eq!(a, [2.0 * i as f32, 2.0 * i as f32 + 1.0]);
            assert_eq!(p.raw(&s), &a[..]);
        }
        assert!(p.next(&mut a).is_none(), "the chunk ran out");
        p.reset();
        assert!(p.due());
    }

    #[test]
    fn history_pads_with_the_first_observation_then_slides() {
        let mut h = ObsHistory::new(3, 2);
        h.push(&[1.0, 2.0]);
        assert_eq!(h.as_slice(), &[1.0, 2.0, 1.0, 2.0, 1.0, 2.0]);
        h.push(&[3.0, 4.0]);
        assert_eq!(h.as_slice(), &[1.0, 2.0, 1.0, 2.0, 3.0, 4.0]);
        h.push(&[5.0, 6.0]);
        h.push(&[7.0, 8.0]);
        assert_eq!(h.as_slice(), &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0]);
        h.reset();
        h.push(&[9.0, 9.5]);
        assert_eq!(h.as_slice(), &[9.0, 9.5, 9.0, 9.5, 9.0, 9.5]);
    }
}
