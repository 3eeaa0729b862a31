//! The robot's side of the flow control, as pure logic (times are passed
//! in). Nothing is sent until a learner has answered (its acknowledgement
//! says where to start); at most `window` records are in flight; when the
//! learner makes no progress for the resend time, the robot goes back to
//! the acknowledged position (go-back-N, from its log) and the resend time
//! doubles up to a ceiling, so a robot whose learner is gone does not flood
//! the link. A new learner instance (restarted) resets the stream to its
//! acknowledgement at once.

/// When to resend.
#[derive(Debug, Clone, Copy)]
pub struct OutboxConfig {
    /// Most records sent and not acknowledged.
    pub window: u64,
    /// First resend after this long without progress.
    pub resend_ns: i64,
    /// Ceiling of the doubled resend time.
    pub max_resend_ns: i64,
}

impl Default for OutboxConfig {
    fn default() -> Self {
        Self {
            window: 2000,
            resend_ns: 2_000_000_000,
            max_resend_ns: 30_000_000_000,
        }
    }
}

#[derive(Debug)]
pub struct Outbox {
    cfg: OutboxConfig,
    learner: Option<String>,
    acked: u64,
    next: u64,
    since_ns: i64,
    resend_ns: i64,
    rewinds: u64,
}

impl Outbox {
    pub fn new(cfg: OutboxConfig) -> Self {
        Self {
            cfg,
            learner: None,
            acked: 0,
            next: 0,
            since_ns: 0,
            resend_ns: cfg.resend_ns,
            rewinds: 0,
        }
    }

    /// The learner's acknowledgement for this robot (`next`: it holds
    /// everything before). Returns the position to send from when the
    /// stream must jump there (the cursor seeks to it).
    pub fn on_ack(&mut self, learner: &str, next: u64, now_ns: i64) -> Option<u64> {
        if self.learner.as_deref() != Some(learner) {
            // A learner seen for the first time (or restarted): whatever was
            // in flight to an earlier instance is resent from its record.
            self.learner = Some(learner.to_string());
            return Some(self.restart(next, now_ns));
        }
        if next > self.acked {
            self.acked = next;
            self.since_ns = now_ns;
            self.resend_ns = self.cfg.resend_ns;
            if self.next < next {
                // It has more than was sent (another instance of this robot
                // sent it before a restart): skip ahead.
                self.next = next;
                return Some(next);
            }
        } else if next < self.acked {
            // The same learner lost what it had acknowledged.
            return Some(self.restart(next, now_ns));
        }
        None
    }

    fn restart(&mut self, next: u64, now_ns: i64) -> u64 {
        self.acked = next;
        self.next = next;
        self.since_ns = now_ns;
        self.resend_ns = self.cfg.resend_ns;
        next
    }

    /// How many records may be sent now.
    pub fn budget(&self) -> u64 {
        if self.learner.is_none() {
            return 0;
        }
        self.cfg.window.saturating_sub(self.next - self.acked)
    }

    /// Records up to stream position `end` were sent (positions may jump
    /// over a hole in the robot's log).
    pub fn sent(&mut self, end: u64, now_ns: i64) {
        if self.next == self.acked {
            self.since_ns = now_ns; // the wait for progress starts now
        }
        self.next = self.next.max(end);
    }

    /// Whether to go back to the acknowledged position now; returns it.
    pub fn poll(&mut self, now_ns: i64) -> Option<u64> {
        if self.learner.is_none() || self.next == self.acked {
            return None;
        }
        if now_ns - self.since_ns < self.resend_ns {
            return None;
        }
        self.next = self.acked;
        self.since_ns = now_ns;
        self.resend_ns = (self.resend_ns * 2).min(self.cfg.max_resend_ns);
        self.rewinds += 1;
        Some(self.acked)
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Stream position of the next record to send.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Go-back-N resends so far.
    pub fn rewinds(&self) -> u64 {
        self.rewinds
    }

    pub fn learner(&self) -> Option<&str> {
        self.learner.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    fn outbox() -> Outbox {
        Outbox::new(OutboxConfig {
            window: 10,
            resend_ns: 2 * S,
            max_resend_ns: 8 * S,
        })
    }

    #[test]
    fn nothing_goes_out_before_a_learner_answers() {
        let mut o = outbox();
        assert_eq!(o.budget(), 0);
        assert_eq!(o.poll(100 * S), None);
        assert_eq!(o.on_ack("a", 7, 0), Some(7), "start where the learner is");
        assert_eq!(o.budget(), 10);
    }

    #[test]
    fn the_window_bounds_what_is_in_flight() {
        let mut o = outbox();
        o.on_ack("a", 0, 0);
        o.sent(6, 0);
        assert_eq!(o.budget(), 4);
        o.sent(10, 0);
        assert_eq!(o.budget(), 0);
        assert_eq!(o.on_ack("a", 4, S), None);
        assert_eq!(o.budget(), 4);
    }

    #[test]
    fn no_progress_goes_back_with_doubling_waits() {
        let mut o = outbox();
        o.on_ack("a", 0, 0);
        o.sent(5, 10 * S);
        assert_eq!(o.poll(11 * S), None, "the wait starts at the send");
        assert_eq!(o.poll(12 * S), Some(0));
        assert_eq!(o.next(), 0);
        o.sent(5, 12 * S);
        assert_eq!(o.poll(15 * S), None, "4 s now");
        assert_eq!(o.poll(16 * S), Some(0));
        o.sent(5, 16 * S);
        assert_eq!(o.poll(24 * S), Some(0), "8 s: the ceiling");
        o.sent(5, 24 * S);
        assert_eq!(o.poll(31 * S), None);
        assert_eq!(o.poll(32 * S), Some(0));
        assert_eq!(o.rewinds(), 4);
        // progress resets the wait
        o.sent(5, 32 * S);
        o.on_ack("a", 3, 33 * S);
        assert_eq!(o.poll(34 * S), None);
        assert_eq!(o.poll(35 * S), Some(3));
    }

    #[test]
    fn a_restarted_learner_resets_the_stream_at_once() {
        let mut o = outbox();
        o.on_ack("a", 0, 0);
        o.sent(9, 0);
        o.on_ack("a", 4, S);
        assert_eq!(o.on_ack("b", 6, 2 * S), Some(6), "new instance");
        assert_eq!((o.acked(), o.next()), (6, 6));
        assert_eq!(o.on_ack("b", 2, 3 * S), Some(2), "lost what it had");
        assert_eq!(o.on_ack("b", 9, 4 * S), Some(9), "has more than sent");
    }
}
