//! The report's "Loop health" section: how the control loop kept time
//! over the session, from the logged ticks' monotonic stamps and tick
//! numbers only: the tick-period jitter, the control periods the loop
//! missed (overruns) over time, and the decision mix over time (drawn only
//! when the log holds more than one kind). Offline; allocates freely.
//!
//! Overruns are not written in the log; they are recovered exactly from it.
//! The loop's clock (`flowpilot_core::rt::clock::Periodic`) wakes at
//! absolute deadlines `s + j·P` and skips every deadline already passed, so
//! a tick stamped at `t` after `n` ticks has `floor((t − s)/P) − n` missed
//! periods behind it, up to a constant. Only the schedule's phase `s mod P`
//! is unknown; it is the earliest wake-up phase in the log (wake-ups are
//! never early). A restart (the tick number going back) starts a new
//! schedule.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

use super::{decision_name, figure};
use crate::plot::Series;
use flowpilot_core::log::Transition;

/// Bins of the over-time plots.
const BINS: usize = 60;

/// Cumulative missed control periods at each record (non-decreasing, 0 at
/// the first), from `(mono_ns, tick)` stamps at a nominal period.
pub(super) fn missed_periods(stamps: &[(i64, u64)], period_ns: i64) -> Vec<u64> {
    let mut out = Vec::with_capacity(stamps.len());
    let mut total = 0u64;
    let mut start = 0;
    while start < stamps.len() {
        // One schedule: ticks increasing.
        let mut end = start + 1;
        while end < stamps.len() && stamps[end].1 > stamps[end - 1].1 {
            end += 1;
        }
        let seg = &stamps[start..end];
        let s = schedule_phase(seg, period_ns);
        let behind = |&(t, n): &(i64, u64)| (t - s).div_euclid(period_ns) - n as i64;
        let base = behind(&seg[0]);
        let mut high = 0i64;
        for st in seg {
            // A stamp taken just past a deadline reads one period high and
            // the next record corrects it; the count never goes back.
            high = high.max(behind(st) - base);
            out.push(total + high as u64);
        }
        total += high as u64;
        start = end;
    }
    out
}

/// The schedule's phase (a time ≡ `s` mod the period) of one run of
/// stamps: the earliest wake-up phase, measured around the most common one
/// so that the phase's wrap at the period does not split the cluster.
fn schedule_phase(seg: &[(i64, u64)], period_ns: i64) -> i64 {
    let ph = |t: i64| t.rem_euclid(period_ns);
    let step = (seg.len() / 4096).max(1);
    let sample: Vec<i64> = seg.iter().step_by(step).map(|s| ph(s.0)).collect();
    let near = |a: i64, b: i64| (a - b).rem_euclid(period_ns) < period_ns / 8;
    let centre = sample
        .iter()
        .take(256)
        .copied()
        .max_by_key(|&c| sample.iter().filter(|&&p| near(p, c)).count())
        .unwrap_or(0);
    // Offsets from the centre in [-P/2, P/2); the earliest near it, over
    // every stamp (one early stamp missed would read as a miss).
    let off = seg
        .iter()
        .map(|s| (ph(s.0) - centre + period_ns / 2).rem_euclid(period_ns) - period_ns / 2)
        .filter(|&d| d > -period_ns / 4)
        .min()
        .unwrap_or(0);
    centre + off
}

/// `n` equal time bins over `[0, span]` seconds (the over-time plots').
#[derive(Clone, Copy)]
struct TimeBins {
    n: usize,
    width: f64,
}

impl TimeBins {
    fn new(span: f64, n: usize) -> Self {
        Self {
            n,
            width: (span / n as f64).max(1e-9),
        }
    }
    /// The bin a time falls in (the last one holds `span` itself).
    fn of(self, t: f64) -> usize {
        ((t / self.width) as usize).min(self.n - 1)
    }
    fn centre(self, i: usize) -> f64 {
        (i as f64 + 0.5) * self.width
    }
}

/// Sum of `cum[i] − cum[i−1]` falling in each time bin: (bin centre,
/// amount).
fn per_bin(times: &[f64], cum: &[u64], bins: TimeBins) -> Vec<(f64, f64)> {
    let mut h = vec![0u64; bins.n];
    for i in 1..cum.len() {
        h[bins.of(times[i])] += cum[i] - cum[i - 1];
    }
    h.iter()
        .enumerate()
        .map(|(i, n)| (bins.centre(i), *n as f64))
        .collect()
}

/// The section's HTML. `span`: the log's length in seconds; `rate_hz`: the
/// loop's nominal rate (the log's metadata); without it the median tick
/// period stands in.
pub(super) fn section(
    out: &Path,
    recs: &[Transition],
    secs: &dyn Fn(&Transition) -> f64,
    span: f64,
    rate_hz: Option<f64>,
) -> Result<String> {
    let mut h = String::from("<h2>Loop health</h2>");
    // Tick-interval jitter: consecutive records' spacing per tick against
    // its median.
    let mut gaps: Vec<f64> = recs
        .windows(2)
        .filter(|w| w[1].mono_ns > w[0].mono_ns && w[1].tick > w[0].tick)
        .map(|w| (w[1].mono_ns - w[0].mono_ns) as f64 / (w[1].tick - w[0].tick) as f64)
        .collect();
    let bins = TimeBins::new(span, BINS);
    if gaps.len() > 10 {
        gaps.sort_by(f64::total_cmp);
        let med = gaps[gaps.len() / 2];
        let period_ns = rate_hz
            .filter(|r| r.is_finite() && *r > 0.0)
            .map_or(med, |r| 1e9 / r)
            .round() as i64;
        let stamps: Vec<(i64, u64)> = recs.iter().map(|r| (r.mono_ns, r.tick)).collect();
        let cum = missed_periods(&stamps, period_ns.max(1));
        let times: Vec<f64> = recs.iter().map(secs).collect();
        let missed = cum.last().copied().unwrap_or(0);
        let ticks = ticks_spanned(recs) + missed;
        let _ = write!(
            h,
            "<table class=\"loop\"><tr><th>nominal period</th><td>{:.1} µs</td></tr>\
             <tr><th>median tick period</th><td>{:.1} µs</td></tr>\
             <tr><th>missed control periods (overruns)</th><td>{missed}</td></tr>\
             <tr><th>share of periods missed</th><td>{:.3} %</td></tr></table>",
            period_ns as f64 * 1e-3,
            med * 1e-3,
            100.0 * missed as f64 / ticks.max(1) as f64
        );
        let dev: Vec<f64> = gaps.iter().map(|g| (g - med) * 1e-3).collect();
        let (lo, hi) = (dev[0], dev[dev.len() - 1]);
        let w = ((hi - lo) / BINS as f64).max(1e-9);
        let mut counts = vec![0usize; BINS];
        for v in &dev {
            counts[(((v - lo) / w) as usize).min(BINS - 1)] += 1;
        }
        let hist: Vec<(f64, f64)> = counts
            .iter()
            .enumerate()
            .map(|(i, n)| (lo + (i as f64 + 0.5) * w, *n as f64))
            .collect();
        h += &figure(
            out,
            "jitter.png",
            "Tick period minus its median",
            "µs",
            "records",
            &[Series {
                name: "count",
                points: &hist,
            }],
        )?;
        let over = per_bin(&times, &cum, bins);
        h += &figure(
            out,
            "overruns.png",
            "Missed control periods (overruns) over time",
            "time (s)",
            &format!("periods missed per {:.1} s", bins.width),
            &[Series {
                name: "missed periods",
                points: &over,
            }],
        )?;
    }
    // Decisions: counts, and their mix over time when there is more than
    // one kind (one flat line would label its whole axis with one value).
    let mut counts: BTreeMap<u8, usize> = BTreeMap::new();
    for r in recs {
        *counts.entry(r.decision).or_default() += 1;
    }
    h += "<table><tr><th>decision</th><th>records</th></tr>";
    for (d, n) in &counts {
        let _ = write!(h, "<tr><td>{}</td><td>{n}</td></tr>", decision_name(*d));
    }
    h += "</table>";
    if counts.len() > 1 {
        let mut per: BTreeMap<u8, Vec<f64>> =
            counts.keys().map(|d| (*d, vec![0.0; BINS])).collect();
        let mut all = vec![0.0; BINS];
        for r in recs {
            let b = bins.of(secs(r));
            all[b] += 1.0;
            if let Some(v) = per.get_mut(&r.decision) {
                v[b] += 1.0;
            }
        }
        let names: Vec<String> = per.keys().map(|d| decision_name(*d)).collect();
        let pts: Vec<Vec<(f64, f64)>> = per
            .values()
            .map(|v| {
                v.iter()
                    .zip(&all)
                    .enumerate()
                    .filter(|(_, (_, n))| **n > 0.0)
                    .map(|(i, (k, n))| (bins.centre(i), 100.0 * k / n))
                    .collect()
            })
            .collect();
        let series: Vec<Series> = names
            .iter()
            .zip(&pts)
            .map(|(n, p)| Series { name: n, points: p })
            .collect();
        h += &figure(
            out,
            "decisions.png",
            "Decision mix over time",
            "time (s)",
            "% of logged ticks",
            &series,
        )?;
    }
    Ok(h)
}

/// Ticks the log's records span, restarts apart.
fn ticks_spanned(recs: &[Transition]) -> u64 {
    recs.windows(2)
        .filter(|w| w[1].tick > w[0].tick)
        .map(|w| w[1].tick - w[0].tick)
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stamps as the loop's clock makes them: deadlines `s + j·P`, a
    /// wake-up `late` after its deadline plus a stamp delay, and `missed`
    /// deadlines skipped before some ticks; one record every `every` ticks.
    fn stamps(
        s: i64,
        p: i64,
        n: u64,
        every: u64,
        plan: &dyn Fn(u64) -> (i64, u64),
    ) -> (Vec<(i64, u64)>, Vec<u64>) {
        let (mut j, mut missed_total) = (1i64, 0u64);
        let (mut v, mut truth) = (Vec::new(), Vec::new());
        for tick in 0..n {
            let (late, missed) = plan(tick);
            j += missed as i64;
            missed_total += missed;
            // the wake-up: `late` past the deadline it was due at, after
            // the skipped ones
            let t = s + j * p + late;
            if tick % every == 0 {
                v.push((t + 30_000, tick));
                truth.push(missed_total);
            }
            j += 1;
        }
        (v, truth)
    }

    #[test]
    fn missed_periods_are_recovered_exactly_from_stamps_and_ticks() {
        let p = 5_000_000; // 200 Hz
                           // jittery wake-ups (up to 0.8 ms late), and misses of 1–3 periods
        let plan = |k: u64| {
            let late = ((k * 7919) % 800) as i64 * 1_000;
            let missed = match k {
                100 | 2_000 => 1,
                950 => 3,
                k if k % 1_111 == 0 && k > 0 => 2,
                _ => 0,
            };
            (late, missed)
        };
        // schedules whose phase puts the late wake-ups across a period
        // boundary of the stamps' clock, and some that do not
        for (s, every) in [
            (123_456_789, 1),
            (4_600_000, 1),
            (14_600_077, 3),
            (2_500_001, 10),
            (9_999_999, 1),
        ] {
            let (st, truth) = stamps(s, p, 5_000, every, &plan);
            let got = missed_periods(&st, p);
            assert_eq!(got, truth, "s {s} every {every}");
        }
    }

    #[test]
    fn a_restart_starts_a_new_schedule_and_keeps_the_count() {
        let p = 3_333_333;
        let (mut a, ta) = stamps(1_000, p, 500, 1, &|k| (0, u64::from(k == 250)));
        let (b, _) = stamps(a.last().unwrap().0 + 10 * p + 1_234_567, p, 500, 1, &|k| {
            (5_000, 2 * u64::from(k == 10))
        });
        a.extend(b);
        let got = missed_periods(&a, p);
        assert_eq!(got[499], 1);
        assert_eq!(*ta.last().unwrap(), 1);
        assert_eq!(got[500], 1, "the restart itself is no overrun");
        assert_eq!(*got.last().unwrap(), 3);
    }

    #[test]
    fn per_bin_puts_each_miss_in_its_time_bin() {
        let times = [0.0, 1.0, 2.0, 3.0, 9.9];
        let cum = [0, 0, 2, 2, 5];
        let b = per_bin(&times, &cum, TimeBins::new(10.0, 10));
        assert_eq!(
            b.iter().map(|x| x.1).collect::<Vec<_>>(),
            vec![0., 0., 2., 0., 0., 0., 0., 0., 0., 3.]
        );
        assert!((b[0].0 - 0.5).abs() < 1e-12);
    }
}
