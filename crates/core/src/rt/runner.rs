//! The control thread's body, without ROS: once per period it waits on the
//! clock, records wake-up lateness and overruns, swaps in a checked new
//! policy from the hot swap, ticks the [`Controller`], hands every
//! `every`-th tick to the transition log and pushes the tick's output
//! ([`Outgoing`]) to a bounded queue for the publisher thread.
//!
//! Who calls what on [`Runner`]: **set-up** (not real-time):
//! [`Runner::new`], [`Runner::with_log`], [`Runner::with_live`],
//! [`Runner::with_waker`]; **the control period** (real-time):
//! [`Runner::step`], which runs the between-ticks work (live settings,
//! policy swap, step report) and then the tick, in the loop
//! [`Runner::run`]; **after** the loop: [`Runner::into_controller`].
//!
//! Real-time: [`Runner::step`] runs on the control thread. After
//! construction it allocates nothing and never blocks: the queues are
//! bounded and lock-free (a full one drops and counts), the log inputs are
//! atomics. Only a retired policy that finds its return queue full is freed
//! here (a deallocation, and the spin thread drains that queue every few ms).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use crate::log::writer::LogHandle;
use crate::log::{Transition, MAX_ACT};
use crate::node::hotswap::SwapChannel;
use crate::rt::clock::Clock;
use crate::rt::control::Controller;
use crate::rt::handoff::Handoff;
use crate::rt::output::{Outgoing, OutputQueue};

/// Reward and episode state written by the subscribers and read by the
/// control thread. All atomics: neither side ever waits for the other.
#[derive(Debug)]
pub struct LogInputs {
    /// f64 bits of the reward sum since the last logged tick; NaN: none.
    reward: AtomicU64,
    episode: AtomicU64,
    last_terminal: AtomicBool,
    /// The boundary before the latest one was a terminal state.
    prev_terminal: AtomicBool,
    /// Step reports received when the latest boundary arrived
    /// (`u64::MAX`: none, or no step source).
    boundary_step: AtomicU64,
    /// f64 bits of the running episode's reward sum.
    episode_return: AtomicU64,
    /// Returns of finished episodes, for the return guard (a full queue
    /// refuses the newest).
    finished: Handoff<f64>,
}

impl Default for LogInputs {
    fn default() -> Self {
        Self {
            reward: AtomicU64::new(f64::NAN.to_bits()),
            episode: AtomicU64::new(0),
            last_terminal: AtomicBool::new(false),
            prev_terminal: AtomicBool::new(false),
            boundary_step: AtomicU64::new(u64::MAX),
            episode_return: AtomicU64::new(0f64.to_bits()),
            finished: Handoff::new(64),
        }
    }
}

impl LogInputs {
    /// Add a received reward (the caller drops non-finite ones).
    pub fn add_reward(&self, r: f64) {
        let _ = self
            .reward
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                let old = f64::from_bits(old);
                Some(if old.is_nan() { r } else { old + r }.to_bits())
            });
        let _ = self
            .episode_return
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |old| {
                Some((f64::from_bits(old) + r).to_bits())
            });
    }

    /// The next finished episode's return (reward sum), oldest first.
    pub fn pop_episode_return(&self) -> Option<f64> {
        self.finished.pop()
    }

    /// Sum of the rewards received since the previous call, NaN if none.
    pub fn take_reward(&self) -> f64 {
        f64::from_bits(self.reward.swap(f64::NAN.to_bits(), Ordering::AcqRel))
    }

    /// An episode just ended, in a terminal state or not (time limit).
    pub fn boundary(&self, terminal: bool) {
        self.boundary_after(terminal, None);
    }

    /// As [`Self::boundary`], when `step_reports` robot step reports had
    /// been received (log.step_source): the episode ended with the last of
    /// them, so that step's record belongs to the episode that ended even
    /// if the control thread writes it after this call.
    pub fn boundary_after(&self, terminal: bool, step_reports: Option<u64>) {
        let ret = f64::from_bits(self.episode_return.swap(0f64.to_bits(), Ordering::AcqRel));
        let _ = self.finished.push(ret);
        self.prev_terminal
            .store(self.last_terminal.load(Ordering::SeqCst), Ordering::SeqCst);
        self.last_terminal.store(terminal, Ordering::SeqCst);
        self.boundary_step
            .store(step_reports.unwrap_or(u64::MAX), Ordering::SeqCst);
        self.episode.fetch_add(1, Ordering::SeqCst);
    }

    /// The episode (and whether it began after a terminal state) of the
    /// record of step report number `report`: one before the current
    /// episode when the latest boundary came after that report. Lock-free;
    /// a boundary landing mid-read is read again (bounded).
    pub fn episode_of_step(&self, report: u64) -> (u64, bool) {
        let mut e = self.episode.load(Ordering::SeqCst);
        for _ in 0..4 {
            let at = self.boundary_step.load(Ordering::SeqCst);
            let (last, prev) = (
                self.last_terminal.load(Ordering::SeqCst),
                self.prev_terminal.load(Ordering::SeqCst),
            );
            let again = self.episode.load(Ordering::SeqCst);
            if again == e {
                return if e > 0 && at != u64::MAX && at >= report {
                    (e - 1, prev)
                } else {
                    (e, last)
                };
            }
            e = again;
        }
        (e, self.last_terminal.load(Ordering::SeqCst))
    }

    /// Episode boundaries seen so far.
    pub fn episode(&self) -> u64 {
        self.episode.load(Ordering::SeqCst)
    }

    /// Whether the latest boundary was a terminal state.
    pub fn last_terminal(&self) -> bool {
        self.last_terminal.load(Ordering::SeqCst)
    }
}

/// Where the runner sends its transition records.
pub struct LogTap {
    pub handle: Arc<LogHandle>,
    pub inputs: Arc<LogInputs>,
    /// Log every k-th tick (>= 1); ignored with a step source.
    pub every: u64,
    /// The robot's step report (`log.step_source`): a one-slot board the
    /// robot's message writes with the action it executed in the step that
    /// produced its new state. With it, one record is written per robot
    /// step instead of every k ticks.
    pub step: Option<Arc<crate::rt::board::Board>>,
}

/// Ticks a step report waits for the observation sources to catch up with
/// it before its record is written anyway.
const STEP_WAIT_TICKS: u32 = 2;

/// Messages of one robot step arrive within this of each other (publish
/// order across topics is not arrival order).
const STEP_WINDOW_NS: i64 = 5_000_000;

/// Step-synchronous logging state: the report being held until the
/// observation it belongs to has been read.
#[derive(Default)]
struct StepLog {
    seen: u64,
    robot_step: u64,
    pending: bool,
    stamp_ns: i64,
    recv_ns: i64,
    waited: u32,
    executed: [f32; MAX_ACT],
}

/// The control thread's state: the controller and everything it talks to.
pub struct Runner<C: Clock> {
    controller: Controller,
    clock: C,
    period_ns: u64,
    chan: Arc<SwapChannel>,
    out: Arc<OutputQueue>,
    waker: Option<std::thread::Thread>,
    log: Option<LogTap>,
    /// Live parameter changes from the parameter service.
    live: Option<Arc<crate::node::live::LiveChannel>>,
    /// Preallocated log record (boxed: it is ~1.5 KB).
    rec: Box<Transition>,
    step_log: StepLog,
}

impl<C: Clock> Runner<C> {
    pub fn new(
        controller: Controller,
        clock: C,
        chan: Arc<SwapChannel>,
        out: Arc<OutputQueue>,
    ) -> Self {
        let period_ns = clock.period_ns().max(0) as u64;
        Self {
            controller,
            clock,
            period_ns,
            chan,
            out,
            waker: None,
            log: None,
            live: None,
            rec: Box::default(),
            step_log: StepLog::default(),
        }
    }

    /// Also write every `tap.every`-th tick to the transition log.
    pub fn with_log(mut self, mut tap: LogTap) -> Self {
        tap.every = tap.every.max(1);
        self.log = Some(tap);
        self
    }

    /// Take live parameter changes from `chan` between two ticks.
    pub fn with_live(mut self, chan: Arc<crate::node::live::LiveChannel>) -> Self {
        self.live = Some(chan);
        self
    }

    /// Unpark this thread (the publisher) after each pushed output.
    pub fn with_waker(mut self, t: std::thread::Thread) -> Self {
        self.waker = Some(t);
        self
    }

    pub fn controller(&self) -> &Controller {
        &self.controller
    }

    /// **The control period (real-time).** Wait, account the wake-up,
    /// between ticks apply live settings and maybe swap the
    /// policy, tick, log, push the output. Returns a copy of the output.
    /// Allocation-free and non-blocking (apart from the clock's wait).
    pub fn step(&mut self) -> Outgoing {
        let (late, missed) = self.clock.wait();
        let stats = &self.controller.stats();
        stats.record_wakeup(late);
        if missed > 0 {
            stats.overruns.fetch_add(missed, Ordering::Relaxed);
        }
        self.controller
            .note_deadline(missed == 0 && late < self.period_ns);
        // Checked live parameter changes apply between two ticks: a copy.
        if let Some(l) = self.live.as_ref().and_then(|c| c.take()) {
            self.controller.apply_live(&l);
            if let Some(tap) = self.log.as_mut() {
                tap.every = l.log_every.max(1);
            }
        }
        // A checked new policy swaps in between two ticks: a move.
        if let Some(new) = self.chan.take() {
            let old = self.controller.set_sampler(new);
            // Freed by the spin thread; only if that queue is full is it
            // freed here.
            if let Err(old) = self.chan.retire(old) {
                drop(old);
            }
        }
        // A new step report is read before the tick reads the observation,
        // so the observation logged with it is at least as new.
        if let Some(board) = self.log.as_ref().and_then(|t| t.step.as_ref()) {
            let w = board.writes(0);
            let sl = &mut self.step_log;
            if w != sl.seen {
                let n = board.width(0).min(MAX_ACT);
                let st = board.read(0, &mut sl.executed[..n], 0, 0);
                // Mid-write (the read gave up): taken on the next tick.
                if !st.busy {
                    sl.robot_step += w - sl.seen;
                    sl.seen = w;
                    sl.pending = true;
                    sl.stamp_ns = st.stamp_ns;
                    sl.recv_ns = st.recv_ns;
                    sl.waited = 0;
                }
            }
        }
        let out = self.controller.tick();
        let o = Outgoing::of(&out);
        if let Some(tap) = &self.log {
            let write = match &tap.step {
                None => o.tick().is_multiple_of(tap.every),
                Some(_) => {
                    let sl = &mut self.step_log;
                    // Written once every observation source holds the
                    // robot's state of that step: a stamp at least the
                    // report's, and a message received within the step's
                    // arrival window (or later).
                    let caught_up = self.controller.observation_states().iter().all(|s| {
                        (s.stamp_ns == 0 || s.stamp_ns >= sl.stamp_ns)
                            && s.recv_ns >= sl.recv_ns - STEP_WINDOW_NS
                    });
                    let go = sl.pending && (caught_up || sl.waited >= STEP_WAIT_TICKS);
                    sl.waited += sl.pending as u32;
                    go
                }
            };
            if write {
                self.controller.fill_transition(&mut self.rec);
                self.rec.reward = tap.inputs.take_reward();
                (self.rec.episode, self.rec.began_after_terminal) = match tap.step {
                    // The report's own episode (a boundary may arrive
                    // between a step's report and its record).
                    Some(_) => tap.inputs.episode_of_step(self.step_log.seen),
                    None => (tap.inputs.episode(), tap.inputs.last_terminal()),
                };
                if tap.step.is_some() {
                    let sl = &mut self.step_log;
                    sl.pending = false;
                    let n = self.rec.n_act;
                    self.rec.executed_valid = true;
                    for (e, v) in self.rec.executed[..n].iter_mut().zip(&sl.executed) {
                        *e = *v as f64;
                    }
                    self.rec.robot_step = sl.robot_step;
                }
                tap.handle.push(&self.rec);
            }
        }
        self.out.push(o);
        if let Some(w) = &self.waker {
            w.unpark();
        }
        o
    }

    /// The thread body: step until `stop` is set, then hand the controller
    /// back (for the shutdown action). Dropping the runner releases its
    /// reference to the log.
    pub fn run(mut self, stop: &AtomicBool) -> Controller {
        while !stop.load(Ordering::Relaxed) {
            self.step();
        }
        self.controller
    }

    /// End without running (tests, aborted start-up).
    pub fn into_controller(self) -> Controller {
        self.controller
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::model::{Direction, PolicyKind};
    use crate::policy::sampler::Sampler;
    use crate::rt::board::Board;
    use crate::rt::control::{ControlConfig, SafeBehaviour};
    use crate::testkit::random_model;

    /// A clock that never sleeps; the next wake-up's (late, missed) is
    /// set by the test.
    struct FakeClock {
        period_ns: i64,
        next: (u64, u64),
        waits: u64,
    }

    impl Clock for FakeClock {
        fn period_ns(&self) -> i64 {
            self.period_ns
        }
        fn wait(&mut self) -> (u64, u64) {
            self.waits += 1;
            std::mem::take(&mut self.next)
        }
    }

    fn clock() -> FakeClock {
        FakeClock {
            period_ns: 10_000_000,
            next: (0, 0),
            waits: 0,
        }
    }

    fn controller(warmup: u64, model_seed: u64) -> (Controller, Arc<Board>) {
        let m = random_model(
            3,
            0,
            false,
            Direction::Inverse,
            PolicyKind::Flow,
            model_seed,
        );
        let board = Arc::new(Board::new(&[5]));
        board.write(0, &[0.1, 0.2, 0.3, 0.4, 0.5], None);
        let cfg = ControlConfig {
            rate_hz: 100.0,
            max_age_s: vec![1e6],
            max_future_stamp_s: 0.05,
            obs_sources: 1,
            safe: SafeBehaviour::Zero,
            max_delta: None,
            warmup_ticks: warmup,
            startup_hold_ticks: 0,
            seed: 3,
            temperature: 1.0,
            chunk: Default::default(),
            stop: crate::rt::stop::StopRule::new(
                vec![crate::rt::stop::Interface::Velocity; 3],
                None,
            ),
        };
        let c = Controller::new(cfg, Sampler::new(&m).unwrap(), board.clone()).unwrap();
        (c, board)
    }

    fn runner(
        warmup: u64,
        queue: usize,
    ) -> (Runner<FakeClock>, Arc<SwapChannel>, Arc<OutputQueue>) {
        let (c, _) = controller(warmup, 5);
        let chan = SwapChannel::new();
        let out = OutputQueue::new(queue);
        (
            Runner::new(c, clock(), chan.clone(), out.clone()),
            chan,
            out,
        )
    }

    #[test]
    fn ticks_advance_and_decisions_come_out() {
        let (mut r, _, out) = runner(0, 16);
        for t in 0..5 {
            let o = r.step();
            assert_eq!(o.tick(), t);
            assert_eq!(o.decision(), 0, "fresh input: policy");
            assert!(o.publish());
            assert_eq!(o.action().len(), 3);
            assert_eq!(o.stamps().len(), 1);
            assert!(o.log_prob().is_finite());
        }
        assert_eq!(r.clock.waits, 5);
        let queued: Vec<u64> = std::iter::from_fn(|| out.pop()).map(|o| o.tick()).collect();
        assert_eq!(queued, vec![0, 1, 2, 3, 4]);
        assert_eq!(r.controller().stats().ticks.load(Ordering::Relaxed), 5);
    }

    #[test]
    fn warm_up_gate_opens_after_on_time_wakeups() {
        let (mut r, _, _) = runner(2, 16);
        let codes: Vec<u8> = (0..4).map(|_| r.step().decision()).collect();
        // the second on-time wake-up opens the gate for its own tick
        assert_eq!(codes, vec![1, 0, 0, 0]);
    }

    #[test]
    fn a_swap_takes_effect_between_two_ticks_and_retires_the_old_sampler() {
        let (mut r, chan, _) = runner(0, 16);
        r.step();
        let other = random_model(3, 0, false, Direction::Inverse, PolicyKind::Flow, 77);
        let old_digest = r.controller().sampler().spec().digest.clone();
        assert!(chan.offer(Sampler::new(&other).unwrap()).is_none());
        assert!(chan.take_retired().is_none());
        r.step();
        assert_eq!(r.controller().sampler().spec().digest, other.spec.digest);
        let retired = chan.take_retired().expect("old sampler retired");
        assert_eq!(retired.spec().digest, old_digest);
        assert!(chan.take().is_none());
    }

    #[test]
    fn a_full_output_queue_counts_drops_instead_of_blocking() {
        let (mut r, _, out) = runner(0, 2);
        for _ in 0..5 {
            r.step();
        }
        assert_eq!(out.dropped(), 3);
        assert_eq!(out.pop().unwrap().tick(), 0, "the oldest outputs stay");
        assert_eq!(out.pop().unwrap().tick(), 1);
        assert!(out.pop().is_none() && out.is_empty());
    }

    #[test]
    fn missed_periods_count_as_overruns_and_reset_the_warm_up() {
        let (mut r, _, _) = runner(2, 16);
        r.step();
        r.clock.next = (25_000_000, 2); // woke 2.5 periods late
        assert_eq!(r.step().decision(), 1);
        let stats = r.controller().stats().clone();
        assert_eq!(stats.overruns.load(Ordering::Relaxed), 2);
        assert_eq!(stats.jitter.drain().0, 2, "both wake-ups recorded");
        // the streak restarted: two more on-time wake-ups open the gate
        assert_eq!(r.step().decision(), 1);
        assert_eq!(r.step().decision(), 0);
        // late within the period is no overrun
        r.clock.next = (1_000, 0);
        r.step();
        assert_eq!(stats.overruns.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn run_stops_on_the_flag() {
        let (r, _, out) = runner(0, 16);
        let stop = AtomicBool::new(true);
        let c = r.run(&stop);
        assert_eq!(c.stats().ticks.load(Ordering::Relaxed), 0);
        assert!(out.is_empty());
    }

    /// A log writer into `dir` for the runner's log tests.
    fn test_log(dir: &std::path::Path) -> LogHandle {
        LogHandle::start(crate::log::writer::LogConfig {
            dir: dir.into(),
            flush_period: std::time::Duration::from_millis(10),
            queue_capacity: 64,
            reward: None,
            metadata: Default::default(),
        })
        .unwrap()
    }

    #[test]
    fn the_log_gets_a_record_every_k_ticks_with_the_log_inputs() {
        let dir = tempfile::tempdir().unwrap();
        let handle = test_log(dir.path());
        let stats = handle.stats().clone();
        let inputs = Arc::new(LogInputs::default());
        let (r, _, _) = runner(0, 64);
        let mut r = r.with_log(LogTap {
            handle: Arc::new(handle),
            inputs: inputs.clone(),
            every: 3,
            step: None,
        });
        r.step(); // tick 0: logged, no reward yet
        inputs.add_reward(0.25);
        inputs.add_reward(0.5);
        r.step();
        r.step();
        r.step(); // tick 3: logged with both rewards
        inputs.boundary(false);
        for _ in 0..3 {
            r.step(); // tick 6 logged in episode 1
        }
        drop(r.into_controller()); // last reference: flush and close
        assert_eq!(stats.written.load(Ordering::Relaxed), 3);
        let files = crate::log::reader::log_files(dir.path()).unwrap();
        let recs = crate::log::reader::read_file(&files[0]).unwrap();
        let ticks: Vec<u64> = recs.iter().map(|t| t.tick).collect();
        assert_eq!(ticks, vec![0, 3, 6]);
        assert!(recs[0].reward.is_nan());
        assert_eq!(recs[1].reward, 0.75);
        assert!(recs[2].reward.is_nan(), "taken at tick 3");
        let eps: Vec<u64> = recs.iter().map(|t| t.episode).collect();
        assert_eq!(eps, vec![0, 0, 1]);
    }

    #[test]
    fn a_step_source_gives_one_record_per_robot_step_once_the_state_caught_up() {
        let dir = tempfile::tempdir().unwrap();
        let handle = test_log(dir.path());
        let inputs = Arc::new(LogInputs::default());
        let (c, board) = controller(0, 5);
        let step = Arc::new(Board::new(&[3]));
        let mut r =
            Runner::new(c, clock(), SwapChannel::new(), OutputQueue::new(64)).with_log(LogTap {
                handle: Arc::new(handle),
                inputs: inputs.clone(),
                every: 1,
                step: Some(step.clone()),
            });
        let obs = |v: f64, stamp: i64| board.write(0, &[v, 0.2, 0.3, 0.4, 0.5], Some(stamp));
        obs(0.0, 1_000);
        r.step(); // no report yet: no record
                  // step 1: the report and its state arrive together
        inputs.add_reward(-1.0);
        step.write(0, &[0.1, 0.2, 0.3], Some(2_000));
        obs(1.0, 2_000);
        r.step();
        r.step(); // nothing new: no record
                  // step 2: the report comes first, its state one tick later
        inputs.add_reward(-2.0);
        step.write(0, &[0.4, 0.5, 0.6], Some(3_000));
        r.step(); // held: the observation is still step 1's
        obs(2.0, 3_000);
        r.step();
        // steps 3 and 4 within one tick: a gap in robot_step
        step.write(0, &[0.7, 0.8, 0.9], Some(4_000));
        step.write(0, &[1.0, 1.1, 1.2], Some(5_000));
        obs(4.0, 5_000);
        r.step();
        // step 5: its state never shows a newer stamp; written after the wait
        step.write(0, &[1.3, 1.4, 1.5], Some(9_000));
        for _ in 0..=STEP_WAIT_TICKS {
            r.step();
        }
        // step 6, unstamped: a state received well before the report is
        // the previous step's, however its stamp compares
        std::thread::sleep(std::time::Duration::from_nanos(2 * STEP_WINDOW_NS as u64));
        step.write(0, &[1.6, 1.7, 1.8], None);
        r.step(); // held
        board.write(0, &[6.0, 0.2, 0.3, 0.4, 0.5], None);
        r.step();
        drop(r.into_controller());
        let files = crate::log::reader::log_files(dir.path()).unwrap();
        let recs = crate::log::reader::read_file(&files[0]).unwrap();
        // The board holds f32 values: the report comes back at f32 precision.
        let got: Vec<(u64, f32, f32)> = recs
            .iter()
            .map(|t| (t.robot_step, t.obs()[0], t.executed().unwrap()[0] as f32))
            .collect();
        assert_eq!(
            got,
            vec![
                (1, 1.0, 0.1),
                (2, 2.0, 0.4),
                (4, 4.0, 1.0),
                (5, 4.0, 1.3),
                (6, 6.0, 1.6)
            ]
        );
        assert_eq!(recs[4].tick, 10);
        assert_eq!(recs[0].reward, -1.0);
        assert_eq!(recs[1].reward, -2.0);
        assert_eq!(recs[1].tick, 4, "held one tick for its state");
        assert_eq!(recs[3].tick, 6 + STEP_WAIT_TICKS as u64);
        assert!(recs.iter().all(|t| t.temperature == 1.0));
    }

    #[test]
    fn a_step_ended_by_a_boundary_before_its_record_stays_in_its_episode() {
        let dir = tempfile::tempdir().unwrap();
        let handle = test_log(dir.path());
        let inputs = Arc::new(LogInputs::default());
        let (c, board) = controller(0, 5);
        let step = Arc::new(Board::new(&[3]));
        let mut r =
            Runner::new(c, clock(), SwapChannel::new(), OutputQueue::new(64)).with_log(LogTap {
                handle: Arc::new(handle),
                inputs: inputs.clone(),
                every: 1,
                step: Some(step.clone()),
            });
        let state = |v: f64, stamp: i64| {
            step.write(0, &[v as f32 as f64, 0.0, 0.0], Some(stamp));
            board.write(0, &[v, 0.2, 0.3, 0.4, 0.5], Some(stamp));
        };
        state(1.0, 1_000);
        r.step(); // step 1 of episode 0
        state(2.0, 2_000); // the last step: the pole fell...
        inputs.boundary_after(true, Some(step.writes(0))); // ...and /terminal came before the tick
        r.step();
        state(0.0, 3_000); // the next episode's first state
        r.step();
        state(3.0, 4_000);
        inputs.boundary_after(false, Some(step.writes(0))); // a time limit
        r.step();
        state(0.5, 5_000);
        r.step();
        drop(r.into_controller());
        let files = crate::log::reader::log_files(dir.path()).unwrap();
        let recs = crate::log::reader::read_file(&files[0]).unwrap();
        let got: Vec<(f32, u64, bool, bool)> = recs
            .iter()
            .map(|t| (t.obs()[0], t.episode, t.terminated, t.truncated))
            .collect();
        assert_eq!(
            got,
            vec![
                (1.0, 0, false, false),
                (2.0, 0, true, false), // the fallen state ends episode 0
                (0.0, 1, false, false),
                (3.0, 1, false, true),
                (0.5, 2, false, false),
            ]
        );
    }

    #[test]
    fn log_inputs_sum_rewards_between_takes() {
        let i = LogInputs::default();
        assert!(i.take_reward().is_nan(), "none yet");
        i.add_reward(1.5);
        i.add_reward(-0.5);
        assert_eq!(i.take_reward(), 1.0);
        assert!(i.take_reward().is_nan(), "taken");
        assert_eq!((i.episode(), i.last_terminal()), (0, false));
        i.boundary(true);
        assert_eq!((i.episode(), i.last_terminal()), (1, true));
        i.boundary(false);
        assert_eq!((i.episode(), i.last_terminal()), (2, false));
        // episode returns: 1.0 in the first, nothing in the second
        assert_eq!(i.pop_episode_return(), Some(1.0));
        assert_eq!(i.pop_episode_return(), Some(0.0));
        assert_eq!(i.pop_episode_return(), None);
    }
}
