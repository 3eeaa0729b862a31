//! The robot's side of the flow control, as pure logic (times are passed
//! in). Nothing is sent until a learner has answered (its acknowledgement
//! says where to start); at most `window` records are in flight; when the
//! learner makes no progress for the resend time, the robot goes back to
//! the acknowledged position (go-back-N, from its log) and the resend time
//! doubles up to a ceiling, so a robot whose learner is gone does not flood
//! the link. A new run of the learner (restarted) resets the stream to its
//! acknowledgement at once.
//!
//! [`Follow`] decides which learner that is: one id, the configured one or
//! else the first heard; acknowledgements of any other learner on the
//! domain are ignored and counted, so a second learner cannot reset the
//! stream (before ids, two learners reset every robot ~10 times a second).

use std::collections::BTreeMap;

use super::wire::Ack;

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

    /// The stream changed under the outbox (a new log epoch): nothing is
    /// sent until a learner says where it holds the new stream.
    pub fn forget_learner(&mut self) {
        self.learner = None;
        self.acked = 0;
        self.next = 0;
        self.resend_ns = self.cfg.resend_ns;
    }
}

/// What to do with an acknowledgement ([`Follow::admit`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admit {
    /// From the learner followed: act on it.
    Followed,
    /// From another learner: ignore it. `first`: the first heard from that
    /// learner (report it once).
    Foreign { id: String, first: bool },
}

/// The one learner a robot follows, by its lasting id ([`Ack::id`]): the
/// configured `fleet.learner`, or else the first learner heard, for the
/// node's run (a restart of that learner keeps its id; a node restart
/// chooses again: configure `fleet.learner` where two learners share a
/// domain). Learners from before ids all read as one id, "".
#[derive(Debug, Default)]
pub struct Follow {
    pinned: Option<String>,
    followed: Option<String>,
    /// Acknowledgements ignored, per foreign id (at most [`FOREIGN`] ids).
    ignored: BTreeMap<String, u64>,
    ignored_total: u64,
}

/// Foreign learner ids remembered (more are counted, not named).
const FOREIGN: usize = 16;

impl Follow {
    pub fn new(pinned: Option<String>) -> Self {
        Self {
            followed: pinned.clone(),
            pinned,
            ..Default::default()
        }
    }

    /// Whether to act on `ack` (one that serves this robot).
    pub fn admit(&mut self, ack: &Ack) -> Admit {
        let id = ack.id.as_deref().unwrap_or("");
        match &self.followed {
            None => {
                self.followed = Some(id.to_string());
                Admit::Followed
            }
            Some(f) if f == id => Admit::Followed,
            Some(_) => {
                self.ignored_total += 1;
                let first = match self.ignored.get_mut(id) {
                    Some(n) => {
                        *n += 1;
                        false
                    }
                    None => {
                        if self.ignored.len() < FOREIGN {
                            self.ignored.insert(id.to_string(), 1);
                        }
                        true
                    }
                };
                Admit::Foreign {
                    id: id.to_string(),
                    first,
                }
            }
        }
    }

    /// The id followed (None: none heard yet and none configured).
    pub fn followed(&self) -> Option<&str> {
        self.followed.as_deref()
    }

    pub fn pinned(&self) -> bool {
        self.pinned.is_some()
    }

    /// Acknowledgements of other learners ignored so far.
    pub fn ignored(&self) -> u64 {
        self.ignored_total
    }

    /// The other learners heard (up to 16 ids).
    pub fn foreign(&self) -> impl Iterator<Item = &str> {
        self.ignored.keys().map(|s| s.as_str())
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

    fn ack(id: &str, run: &str) -> Ack {
        Ack {
            learner: run.into(),
            id: Some(id.into()),
            only: None,
            robots: Default::default(),
            streams: Default::default(),
        }
    }

    #[test]
    fn a_second_learner_cannot_reset_the_stream() {
        let mut f = Follow::new(None);
        let mut o = outbox();
        // the first learner heard is followed; its acknowledgements move
        // the stream
        let a = ack("aaaa", "run-1");
        assert_eq!(f.admit(&a), Admit::Followed);
        assert_eq!(o.on_ack(&a.learner, 0, 0), Some(0));
        o.sent(8, 0);
        o.on_ack(&a.learner, 5, S);
        // a second learner on the domain, 5 times a second for 10 s: every
        // one of its acknowledgements is ignored, reported once
        let b = ack("bbbb", "run-9");
        for i in 0..50 {
            let adm = f.admit(&b);
            assert_eq!(
                adm,
                Admit::Foreign {
                    id: "bbbb".into(),
                    first: i == 0
                }
            );
            // (the link acts only on Followed; interleaved, the first
            // learner's acknowledgements still move the stream)
            assert_eq!(f.admit(&a), Admit::Followed);
            assert_eq!(o.on_ack(&a.learner, 5, S + i), None, "no reset");
        }
        assert_eq!((o.acked(), o.next()), (5, 8));
        assert_eq!(f.ignored(), 50);
        assert_eq!(f.foreign().collect::<Vec<_>>(), ["bbbb"]);
        // the followed learner restarts (same id, new run): reset to it
        let a2 = ack("aaaa", "run-2");
        assert_eq!(f.admit(&a2), Admit::Followed);
        assert_eq!(o.on_ack(&a2.learner, 6, 2 * S), Some(6));
    }

    #[test]
    fn a_configured_learner_is_the_only_one_followed() {
        let mut f = Follow::new(Some("bbbb".into()));
        assert!(matches!(f.admit(&ack("aaaa", "x")), Admit::Foreign { .. }));
        assert_eq!(f.admit(&ack("bbbb", "y")), Admit::Followed);
        assert_eq!(f.followed(), Some("bbbb"));
        // learners from before ids are one id, ""
        let mut f = Follow::new(None);
        let mut old = ack("", "1-2");
        old.id = None;
        assert_eq!(f.admit(&old), Admit::Followed);
        old.learner = "3-4".into();
        assert_eq!(f.admit(&old), Admit::Followed, "a restart of it");
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
