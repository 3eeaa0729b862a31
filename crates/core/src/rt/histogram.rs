//! Lock-free latency histogram: the control thread records (two relaxed
//! atomic ops, no allocation, no lock), the diagnostics side drains.

use std::sync::atomic::{AtomicU64, Ordering};

/// Lock-free latency histogram: 1 µs buckets to 2 ms, then 100 µs buckets
/// to 100 ms; readers drain it.
pub struct Histogram {
    buckets: Box<[AtomicU64]>,
    max_ns: AtomicU64,
}

const FINE: usize = 2000;
const COARSE: usize = 980;

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: (0..FINE + COARSE + 1).map(|_| AtomicU64::new(0)).collect(),
            max_ns: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    pub fn record(&self, ns: u64) {
        let us = (ns / 1000) as usize;
        let b = if us < FINE {
            us
        } else {
            (FINE + (us - FINE) / 100).min(FINE + COARSE)
        };
        self.buckets[b].fetch_add(1, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    /// Take and reset: (count, p50 µs, p99 µs, max µs).
    pub fn drain(&self) -> (u64, f64, f64, f64) {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        let max = self.max_ns.swap(0, Ordering::Relaxed) as f64 / 1e3;
        let n: u64 = counts.iter().sum();
        let q = |p: f64| -> f64 {
            let target = ((n as f64) * p).ceil().max(1.0) as u64;
            let mut acc = 0;
            for (i, c) in counts.iter().enumerate() {
                acc += c;
                if acc >= target {
                    return if i < FINE {
                        i as f64
                    } else {
                        (FINE + (i - FINE) * 100) as f64
                    };
                }
            }
            max
        };
        if n == 0 {
            return (0, 0.0, 0.0, 0.0);
        }
        (n, q(0.5), q(0.99), max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_drains_to_zeros() {
        assert_eq!(Histogram::default().drain(), (0, 0.0, 0.0, 0.0));
    }

    #[test]
    fn fine_buckets_are_one_microsecond() {
        let h = Histogram::default();
        for us in 0..100u64 {
            h.record(us * 1000 + 999); // rounds down into bucket `us`
        }
        let (n, p50, p99, max) = h.drain();
        assert_eq!(n, 100);
        assert_eq!(p50, 49.0);
        assert_eq!(p99, 98.0);
        assert!((max - 99.999).abs() < 1e-9);
        // drained: the next drain starts from zero
        assert_eq!(h.drain().0, 0);
    }

    #[test]
    fn coarse_buckets_are_100_microseconds_and_clamp_at_100_ms() {
        let h = Histogram::default();
        h.record(1_999_999); // last fine bucket: 1999 µs
        assert_eq!(h.drain().1, 1999.0);
        h.record(2_000_000); // first coarse bucket: [2000, 2100) µs
        h.record(2_099_999);
        assert_eq!(h.drain().1, 2000.0);
        h.record(12_345_000); // 12.345 ms -> [12300, 12400)
        assert_eq!(h.drain().1, 12_300.0);
        h.record(5_000_000_000); // 5 s: clamped into the last bucket
        let (n, p50, _, max) = h.drain();
        assert_eq!((n, p50), (1, 100_000.0));
        assert_eq!(max, 5_000_000.0); // the max is exact
    }

    #[test]
    fn quantiles_pick_the_covering_bucket() {
        let h = Histogram::default();
        for _ in 0..98 {
            h.record(10_000);
        }
        h.record(500_000);
        h.record(3_000_000);
        let (n, p50, p99, _) = h.drain();
        assert_eq!((n, p50, p99), (100, 10.0, 500.0));
    }
}
