//! The watchdog rule for the control and publisher threads: the loop is
//! stalled when its tick counter has not moved for `stall_periods` periods,
//! the publisher when outputs have waited that long for it (never less than
//! [`MIN_STALL_NS`], so that a VM's scheduling hiccup at 1 kHz is not
//! taken for a dead loop: a false trip stops the robot).
//!
//! Pure logic, polled from the spin thread with the counter the control
//! thread already keeps; it adds nothing to a tick. The node acts on a
//! verdict (safe action, ERROR diagnostic, non-zero exit).

/// The shortest stall that trips the watchdog, whatever the rate.
pub const MIN_STALL_NS: i64 = 250_000_000;

/// Why the control loop is no longer trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Fault {
    #[error("control thread died: {0}")]
    Dead(String),
    #[error("control thread stalled: no tick for {ms} ms (limit {limit_ms} ms)")]
    Stalled { ms: i64, limit_ms: i64 },
    #[error(
        "publisher thread stalled: outputs waited {ms} ms (limit {limit_ms} ms); {}",
        where_stuck(*.in_send_ms)
    )]
    PublisherStalled {
        ms: i64,
        limit_ms: i64,
        /// How long the publish call in progress had run (0: none was).
        in_send_ms: i64,
    },
}

/// Where a stalled publisher was: inside a publish call (the middleware
/// blocked it) or not (the thread was not scheduled).
fn where_stuck(in_send_ms: i64) -> String {
    if in_send_ms > 0 {
        format!("one publish call had not returned for {in_send_ms} ms (blocked in the middleware)")
    } else {
        "it was not inside a publish call (not scheduled, or not woken)".into()
    }
}

/// Tracks the tick counter's progress over time.
#[derive(Debug, Clone)]
pub struct Watchdog {
    limit_ns: i64,
    last_ticks: u64,
    last_change_ns: i64,
}

impl Watchdog {
    /// A watchdog for a loop at `rate_hz`, started at `now_ns` (monotonic).
    pub fn new(rate_hz: f64, stall_periods: u32, now_ns: i64) -> Self {
        let limit = (stall_periods as f64 * 1e9 / rate_hz) as i64;
        Self {
            limit_ns: limit.max(MIN_STALL_NS),
            last_ticks: 0,
            last_change_ns: now_ns,
        }
    }

    /// The stall limit in ns.
    pub fn limit_ns(&self) -> i64 {
        self.limit_ns
    }

    /// Feed the current tick count; `Err` once it has not moved for longer
    /// than the limit.
    pub fn check(&mut self, ticks: u64, now_ns: i64) -> Result<(), Fault> {
        if ticks != self.last_ticks {
            self.last_ticks = ticks;
            self.last_change_ns = now_ns;
            return Ok(());
        }
        let idle = now_ns - self.last_change_ns;
        if idle > self.limit_ns {
            return Err(Fault::Stalled {
                ms: idle / 1_000_000,
                limit_ms: self.limit_ns / 1_000_000,
            });
        }
        Ok(())
    }

    /// The publisher thread, from how long queued outputs have waited for
    /// it (`OutputQueue::waiting_ns`) and how long its publish call in
    /// progress has run (`OutputQueue::in_send_ns`, for the report).
    pub fn check_publisher(&self, waiting_ns: i64, in_send_ns: i64) -> Result<(), Fault> {
        if waiting_ns > self.limit_ns {
            return Err(Fault::PublisherStalled {
                ms: waiting_ns / 1_000_000,
                limit_ms: self.limit_ns / 1_000_000,
                in_send_ms: in_send_ns / 1_000_000,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: i64 = 1_000_000;

    #[test]
    fn a_moving_counter_never_trips() {
        let mut w = Watchdog::new(100.0, 50, 0);
        assert_eq!(w.limit_ns(), 500 * MS);
        for i in 1..1000u64 {
            assert!(w.check(i, i as i64 * 10 * MS).is_ok());
        }
    }

    #[test]
    fn a_frozen_counter_trips_after_the_limit() {
        let mut w = Watchdog::new(100.0, 50, 0);
        w.check(7, 0).unwrap();
        assert!(w.check(7, 499 * MS).is_ok());
        assert_eq!(
            w.check(7, 600 * MS),
            Err(Fault::Stalled {
                ms: 600,
                limit_ms: 500
            })
        );
        assert!(w.check(8, 610 * MS).is_ok(), "a tick clears it");
    }

    #[test]
    fn fast_loops_get_the_floor() {
        // 20 periods at 1 kHz would be 20 ms: within a VM's scheduling noise.
        let w = Watchdog::new(1000.0, 20, 0);
        assert_eq!(w.limit_ns(), MIN_STALL_NS);
    }

    #[test]
    fn a_publisher_whose_outputs_wait_past_the_limit_trips() {
        let w = Watchdog::new(100.0, 50, 0);
        assert_eq!(w.check_publisher(0, 0), Ok(()));
        assert_eq!(w.check_publisher(500 * MS, 0), Ok(()));
        let f = w.check_publisher(501 * MS, 480 * MS).unwrap_err();
        assert_eq!(
            f,
            Fault::PublisherStalled {
                ms: 501,
                limit_ms: 500,
                in_send_ms: 480
            }
        );
        assert!(f.to_string().contains("had not returned for 480 ms"), "{f}");
        let f = w.check_publisher(501 * MS, 0).unwrap_err();
        assert!(f.to_string().contains("not inside a publish call"), "{f}");
    }
}
