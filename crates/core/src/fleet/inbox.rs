//! The learner's view of one robot's stream: which part of a batch is new
//! (so each record is stored exactly once and in order), and the gaps the
//! robot said it cannot fill. A batch that starts past the next expected
//! position is dropped: the robot resends from the acknowledgement.

/// What to do with a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Store the batch's records from this index on (earlier ones are
    /// held already); `gap` records before it will never come.
    Store { skip: usize, gap: u64 },
    /// Everything in it is held already.
    Duplicate,
    /// It starts past a record the robot still has and the learner lacks.
    Ahead,
}

#[derive(Debug, Default, Clone)]
pub struct Inbox {
    next: u64,
    stored: u64,
    gap_records: u64,
    duplicates: u64,
    ahead: u64,
}

impl Inbox {
    /// A stream whose records before `next` are held (recovered shards).
    pub fn resume(next: u64) -> Self {
        Self {
            next,
            ..Default::default()
        }
    }

    /// Judge a batch of `n` records at `seq`, the robot holding nothing in
    /// `[prev_end, seq)`.
    pub fn judge(&mut self, seq: u64, prev_end: u64, n: usize) -> Verdict {
        let end = seq + n as u64;
        if end <= self.next || n == 0 {
            self.duplicates += 1;
            return Verdict::Duplicate;
        }
        if seq <= self.next {
            return Verdict::Store {
                skip: (self.next - seq) as usize,
                gap: 0,
            };
        }
        if prev_end <= self.next {
            return Verdict::Store {
                skip: 0,
                gap: seq - self.next,
            };
        }
        self.ahead += 1;
        Verdict::Ahead
    }

    /// `stored` records were made durable after a `gap` (from [`Self::judge`]).
    pub fn advance(&mut self, gap: u64, stored: u64) {
        self.gap_records += gap;
        self.stored += stored;
        self.next += gap + stored;
    }

    /// Every record before this position is held (or in a gap).
    pub fn next(&self) -> u64 {
        self.next
    }
    pub fn gap_records(&self) -> u64 {
        self.gap_records
    }
    /// Records stored by this instance.
    pub fn stored(&self) -> u64 {
        self.stored
    }
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }
    pub fn ahead(&self) -> u64 {
        self.ahead
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_are_stored_once_in_order() {
        let mut i = Inbox::default();
        assert_eq!(i.judge(0, 0, 5), Verdict::Store { skip: 0, gap: 0 });
        i.advance(0, 5);
        assert_eq!(i.judge(0, 0, 5), Verdict::Duplicate);
        assert_eq!(
            i.judge(3, 3, 4),
            Verdict::Store { skip: 2, gap: 0 },
            "overlap"
        );
        i.advance(0, 2);
        assert_eq!(i.judge(9, 9, 2), Verdict::Ahead, "a lost batch before it");
        assert_eq!(
            (i.next(), i.stored(), i.duplicates(), i.ahead()),
            (7, 7, 1, 1)
        );
    }

    #[test]
    fn a_hole_the_robot_declares_is_a_gap_not_a_stall() {
        let mut i = Inbox::resume(10);
        assert_eq!(i.judge(15, 10, 3), Verdict::Store { skip: 0, gap: 5 });
        i.advance(5, 3);
        assert_eq!((i.next(), i.gap_records()), (18, 5));
        assert_eq!(i.judge(30, 25, 1), Verdict::Ahead, "18..25 still exist");
    }
}
