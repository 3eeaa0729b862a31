//! The control loop's tick, independent of ROS: snapshot the board, check
//! freshness and validity, sample (a chunked policy: play its chunk, see
//! [`crate::rt::chunk`]), apply safety (e-stop, safe behaviour, warm-up gate,
//! clipping, rate limit) and hand back the action to publish. Every stop
//! it sends is [`crate::rt::stop`]'s, for the interface the output drives.
//! Everything here is preallocated; a tick allocates nothing and never
//! blocks.
//!
//! Who calls what on [`Controller`], as ros2_control's
//! `controller_interface_base` says of each method whether it runs in the
//! real-time loop:
//! - **set-up** (not real-time: before the control thread runs, may
//!   allocate): [`Controller::new`], [`Controller::with_estop`],
//!   [`Controller::inactive`], [`Controller::with_sent`],
//!   [`Controller::set_override`];
//! - **between ticks** (control thread, real-time: no allocation, no
//!   lock): [`Controller::note_deadline`], [`Controller::apply_live`],
//!   [`Controller::set_sampler`];
//! - **in the tick** (real-time): [`Controller::tick`], then
//!   [`Controller::fill_transition`] for the tick just run;
//! - **any thread** (shared flags and counters, relaxed atomics):
//!   [`Controller::estop`], [`Controller::active`], [`Controller::stats`].
//!
//! The timer is [`crate::rt::clock`]'s, the thread's scheduling
//! [`crate::sched`]'s.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::log::{PolicyId, Transition};
use crate::policy::sampler::Sampler;
use crate::rt::board::{mono_ns, wall_ns, Board, SourceState};
use crate::rt::flags::{ActuationGate, EStopFlag};
use crate::rt::stop::{StopKind, StopRule};

/// What to do when inputs are stale or invalid. `Hold` and `Zero` both
/// send the interface's stop ([`crate::rt::stop`]: a position holds where the
/// robot is, a velocity or effort goes to zero); each name is refused by
/// the config where it would lie (`zero` on a position, `hold` on an
/// effort). `Stop` sends nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SafeBehaviour {
    /// Hold still: the interface's stop.
    Hold,
    /// Zero velocity or effort: the interface's stop.
    Zero,
    /// Publish nothing (downstream controllers time out to their own safe state).
    Stop,
}

impl std::str::FromStr for SafeBehaviour {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "hold" => Ok(Self::Hold),
            "zero" => Ok(Self::Zero),
            "stop" => Ok(Self::Stop),
            o => Err(format!("unknown safe behaviour '{o}' (hold, zero or stop)")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ControlConfig {
    pub rate_hz: f64,
    /// Per source: maximum age in seconds, of the header stamp and of the
    /// receive time alike.
    pub max_age_s: Vec<f64>,
    /// A header stamp more than this ahead of the tick's wall clock makes
    /// its source invalid (seconds).
    pub max_future_stamp_s: f64,
    /// Number of leading board sources that form the observation; the rest
    /// form the goal.
    pub obs_sources: usize,
    pub safe: SafeBehaviour,
    /// Max change per tick in physical units, per action dim (None: off).
    pub max_delta: Option<Vec<f64>>,
    /// No actuation until this many consecutive ticks met their deadline.
    pub warmup_ticks: u64,
    /// No actuation during the first this-many ticks after start, so that
    /// latched state (an engaged e-stop) can arrive over discovery first.
    pub startup_hold_ticks: u64,
    pub seed: u64,
    /// Latent temperature τ ∈ [0, 1] of every policy sample (1: the policy
    /// as trained; 0: the deterministic z = 0 action).
    pub temperature: f32,
    /// How a chunked policy's chunks are played (ignored for chunk_len 1).
    pub chunk: ChunkConfig,
    /// What every stop sends, per action value.
    pub stop: StopRule,
}

/// Chunk playing for a chunked policy (`chunk.*` parameters).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkConfig {
    /// Sample a new chunk every this many ticks (1..=H; 0: every H).
    pub replan_every: usize,
    pub boundary: Boundary,
    /// Hand each new chunk out whole ([`TickOut::trajectory`]), for a
    /// multi-point JointTrajectory; needs `Boundary::Replace`.
    pub as_trajectory: bool,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        Self {
            replan_every: 0,
            boundary: Boundary::Replace,
            as_trajectory: false,
        }
    }
}

pub use crate::rt::chunk::Boundary;
use crate::rt::chunk::{ChunkPlayer, ChunkStep, ObsHistory};
pub use crate::rt::decision::Decision;

/// A controller that cannot be built from this configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    #[error("configured sources give obs {obs} + goal {goal} values; the model expects obs {model_obs} + goal {model_goal}")]
    SourceWidths {
        obs: usize,
        goal: usize,
        model_obs: usize,
        model_goal: usize,
    },
    #[error("one max age per source")]
    MaxAges,
    #[error("max_delta needs {0} values")]
    MaxDelta(usize),
    #[error("chunk.replan_every {every} exceeds the model's chunk_len {chunk_len}")]
    ReplanEvery { every: usize, chunk_len: usize },
    #[error("the override source must carry {0} values")]
    OverrideWidth(usize),
    #[error("the stop rule has {rule} values; the model outputs {act}")]
    StopWidth { rule: usize, act: usize },
}

/// A human override: a one-slot board holding the operator's action
/// (physical units), live while fresher than `max_age_s`.
pub struct OverrideInput {
    pub board: Arc<Board>,
    pub max_age_s: f64,
}

/// Counters shared with the diagnostics publisher (relaxed atomics).
#[derive(Default)]
pub struct Stats {
    pub ticks: AtomicU64,
    pub published: AtomicU64,
    pub overruns: AtomicU64,
    pub stale_ticks: AtomicU64,
    pub invalid_ticks: AtomicU64,
    /// Ticks refused because a source's header stamp lay in the future
    /// (counted apart from, and also in, `invalid_ticks`).
    pub future_stamp_ticks: AtomicU64,
    pub estop_ticks: AtomicU64,
    /// Ticks a chunked policy had no chunk left to play (its new chunk
    /// failed and the old one ran out): safe action.
    pub chunk_exhausted_ticks: AtomicU64,
    pub override_ticks: AtomicU64,
    pub last_inference_ns: AtomicU64,
    pub max_inference_ns: AtomicU64,
    /// Wake-up lateness since the last diagnostics message (drained).
    pub jitter: Histogram,
    /// Wake-up lateness over the whole run (for the shutdown summary).
    pub jitter_total: Histogram,
}

impl Stats {
    pub fn record_wakeup(&self, late_ns: u64) {
        self.jitter.record(late_ns);
        self.jitter_total.record(late_ns);
    }
}

pub use crate::rt::histogram::Histogram;

/// One tick's result, in buffers owned by the loop.
pub struct TickOut<'a> {
    pub tick: u64,
    pub decision: Decision,
    /// Publish `action` this tick?
    pub publish: bool,
    pub action: &'a [f64],
    /// Header stamps (wall ns, 0 if none) of each source used.
    pub stamps: &'a [i64],
    pub log_prob: f32,
    /// Which stop this tick applied ([`StopKind::None`] when it is not one).
    pub stop: StopKind,
    /// With `chunk.as_trajectory`, on a policy tick that began a new chunk:
    /// its steps, step-major, as the ticks would apply them (clipped, rate
    /// limited from the last action and then step to step); this tick's
    /// `action` is the first. Empty otherwise.
    pub trajectory: &'a [f64],
}

/// The tick's state: policy, board, safety memory and scratch buffers.
pub struct Controller {
    cfg: ControlConfig,
    sampler: Sampler,
    board: Arc<Board>,
    estop: EStopFlag,
    /// Whether the node actuates (lifecycle active): any thread may clear
    /// or set it; the next tick obeys.
    active: ActuationGate,
    /// What the previous tick saw of `active`.
    was_active: bool,
    /// No policy action before this tick: the start-up hold, counted from
    /// the latest activation.
    hold_until: u64,
    stats: Arc<Stats>,
    /// `cfg.max_age_s` and `cfg.max_future_stamp_s` in ns, converted once.
    max_age_ns: Vec<i64>,
    max_future_ns: i64,
    /// This tick's board snapshot: one observation step ++ goal.
    obs: Vec<f32>,
    /// The policy's observation input (`obs_horizon` steps).
    history: ObsHistory,
    /// A sampled chunk (`act_dim` values), and the step played this tick.
    act32: Vec<f32>,
    step32: Vec<f32>,
    player: ChunkPlayer,
    played: Option<ChunkStep>,
    /// One action step, as published.
    action: Vec<f64>,
    /// A new chunk whole (`chunk.as_trajectory`), and how much of it is set.
    traj: Vec<f64>,
    traj_len: usize,
    last: Vec<f64>,
    have_last: bool,
    /// The stop being applied, taken once when it began (a held position
    /// stays where the robot was then), and the state source's values.
    hold: Vec<f64>,
    holding: Option<StopKind>,
    state_buf: Vec<f64>,
    /// Where each sent action is recorded for the spin thread's final stop.
    sent: Option<Arc<Board>>,
    stamps: Vec<i64>,
    states: Vec<SourceState>,
    tick: u64,
    on_time_streak: u64,
    human: Option<OverrideInput>,
    policy_id: PolicyId,
    last_out: LastTick,
}

/// The last tick's outcome, kept for [`Controller::fill_transition`].
#[derive(Clone, Copy)]
struct LastTick {
    tick: u64,
    mono_ns: i64,
    wall_ns: i64,
    decision: Decision,
    publish: bool,
    log_prob: f32,
    stop: StopKind,
}

impl Controller {
    /// **Any thread.** The e-stop flag: any thread may set it; the next
    /// tick obeys.
    pub fn estop(&self) -> &EStopFlag {
        &self.estop
    }

    /// **Set-up.** Obey `flag` as the e-stop instead of this controller's own (a node
    /// keeps one e-stop across lifecycle cleanups and re-configures).
    pub fn with_estop(mut self, flag: EStopFlag) -> Self {
        self.estop = flag;
        self
    }

    /// **Set-up.** Start with the actuation gate closed (a lifecycle node's configure):
    /// silent from the first tick, with no deactivation's safe action.
    pub fn inactive(mut self) -> Self {
        self.active.set(false);
        self.was_active = false;
        self
    }

    /// **Set-up.** Record every sent action in `sent` (one source, `act_dim` wide): the
    /// last command, for a stop the spin thread sends when this loop has
    /// ended or failed ([`StopRule::final_action`]).
    pub fn with_sent(mut self, sent: Arc<Board>) -> Self {
        assert_eq!(sent.width(0), self.action.len(), "sent board width");
        self.sent = Some(sent);
        self
    }

    /// **Any thread.** The actuation gate (lifecycle activate / deactivate). Set: the ticks
    /// actuate after the warm-up and start-up hold, counted anew from
    /// activation. Cleared: the next tick publishes the stop once,
    /// then every tick publishes nothing (the loop keeps running).
    pub fn active(&self) -> &ActuationGate {
        &self.active
    }

    /// **Any thread.** The counters the diagnostics read (relaxed atomics).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// **Set-up** (allocates every buffer the ticks use). Checks the
    /// sources' widths, the ages, `max_delta`, the chunk settings and the
    /// stop rule against the model.
    pub fn new(
        cfg: ControlConfig,
        sampler: Sampler,
        board: Arc<Board>,
    ) -> Result<Self, ControlError> {
        let spec = sampler.spec().clone();
        let obs_w: usize = (0..cfg.obs_sources).map(|i| board.width(i)).sum();
        let goal_w = board.total() - obs_w;
        if obs_w != spec.step_obs_dim() || goal_w != spec.goal_dim {
            return Err(ControlError::SourceWidths {
                obs: obs_w,
                goal: goal_w,
                model_obs: spec.step_obs_dim(),
                model_goal: spec.goal_dim,
            });
        }
        if cfg.max_age_s.len() != board.sources() {
            return Err(ControlError::MaxAges);
        }
        let d = spec.step_act_dim();
        if cfg.stop.interfaces().len() != d {
            return Err(ControlError::StopWidth {
                rule: cfg.stop.interfaces().len(),
                act: d,
            });
        }
        if let Some(m) = &cfg.max_delta {
            if m.len() != d {
                return Err(ControlError::MaxDelta(d));
            }
        }
        // Rate limiting off is an infinite limit, so that turning it on at
        // run time ([`Self::apply_live`]) needs no allocation.
        let mut cfg = cfg;
        cfg.max_delta.get_or_insert_with(|| vec![f64::INFINITY; d]);
        let h = spec.chunk_len;
        let k = match cfg.chunk.replan_every {
            0 => h,
            k if k <= h => k,
            every => {
                return Err(ControlError::ReplanEvery {
                    every,
                    chunk_len: h,
                })
            }
        };
        Ok(Self {
            obs: vec![0.0; board.total()],
            history: ObsHistory::new(spec.obs_horizon, spec.step_obs_dim()),
            act32: vec![0.0; spec.act_dim],
            step32: vec![0.0; d],
            player: ChunkPlayer::new(h, d, k, cfg.chunk.boundary),
            played: None,
            action: vec![0.0; d],
            traj: vec![
                0.0;
                if cfg.chunk.as_trajectory {
                    spec.act_dim
                } else {
                    0
                }
            ],
            traj_len: 0,
            last: vec![0.0; d],
            have_last: false,
            hold: vec![0.0; d],
            holding: None,
            state_buf: vec![0.0; cfg.stop.state_source().map_or(0, |i| board.width(i))],
            sent: None,
            stamps: vec![0; board.sources()],
            states: vec![SourceState::default(); board.sources()],
            tick: 0,
            on_time_streak: 0,
            human: None,
            policy_id: PolicyId::of(&spec),
            last_out: LastTick {
                tick: 0,
                mono_ns: 0,
                wall_ns: 0,
                decision: Decision::WarmingUp,
                publish: false,
                log_prob: f32::NAN,
                stop: StopKind::None,
            },
            estop: EStopFlag::new(),
            active: ActuationGate::new(true),
            was_active: true,
            hold_until: cfg.startup_hold_ticks,
            stats: Arc::new(Stats::default()),
            max_age_ns: cfg.max_age_s.iter().map(|s| (s * 1e9) as i64).collect(),
            max_future_ns: (cfg.max_future_stamp_s * 1e9) as i64,
            cfg,
            sampler,
            board,
        })
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// What the last tick read from each observation source (goals not
    /// included).
    pub fn observation_states(&self) -> &[SourceState] {
        &self.states[..self.cfg.obs_sources.min(self.states.len())]
    }

    /// **Between ticks.** Apply live parameter changes (control thread: a
    /// copy, no allocation). Widths were checked by the caller against this
    /// model and these sources.
    pub fn apply_live(&mut self, l: &crate::node::live::LiveSettings) {
        self.cfg.safe = l.safe;
        self.cfg.temperature = l.temperature.unwrap_or(self.sampler.spec().temperature);
        if let Some(md) = self.cfg.max_delta.as_mut() {
            for (i, m) in md.iter_mut().enumerate() {
                *m = if l.rate_limit && i < l.n_act {
                    l.max_delta[i]
                } else {
                    f64::INFINITY
                };
            }
        }
        for (ns, s) in self.max_age_ns.iter_mut().zip(&l.max_age_s[..l.n_sources]) {
            *ns = (s * 1e9) as i64;
        }
        self.max_future_ns = (l.max_future_stamp_s * 1e9) as i64;
    }

    /// **Between ticks.** Swap the policy (a move; same dims are checked by
    /// the caller). The old sampler is returned, to be freed off the
    /// control thread.
    pub fn set_sampler(&mut self, s: Sampler) -> Sampler {
        self.policy_id = PolicyId::of(s.spec());
        // The new policy plans its own chunk from the next tick.
        self.player.reset();
        std::mem::replace(&mut self.sampler, s)
    }

    /// **Set-up.** Accept a human override action (act_dim wide, physical units).
    pub fn set_override(&mut self, input: OverrideInput) -> Result<(), ControlError> {
        if input.board.sources() != 1 || input.board.width(0) != self.action.len() {
            return Err(ControlError::OverrideWidth(self.action.len()));
        }
        self.human = Some(input);
        Ok(())
    }

    /// **In the tick** (after [`Self::tick`]). Fill the controller's part
    /// of a log record for the tick just run:
    /// its stamps, inputs, the sampled (pre-clip, normalised) and applied
    /// actions, the log-prob, the decision and the policy identity. No
    /// allocation.
    pub fn fill_transition(&self, t: &mut Transition) {
        let out = &self.last_out;
        let spec = self.sampler.spec();
        let n = self.obs.len().min(crate::log::MAX_OBS);
        t.tick = out.tick;
        t.mono_ns = out.mono_ns;
        t.wall_ns = out.wall_ns;
        t.decision = out.decision.code();
        t.intervention = out.decision == Decision::Override;
        t.log_prob = out.log_prob;
        t.temperature = self.cfg.temperature;
        t.policy = self.policy_id;
        t.seed = self.cfg.seed;
        // One observation step (a history policy's input is its last steps).
        t.n_obs = spec.step_obs_dim().min(n);
        t.n_goal = n - t.n_obs;
        t.inputs[..n].copy_from_slice(&self.obs[..n]);
        let d = self.action.len().min(crate::log::MAX_ACT);
        t.n_act = d;
        (t.chunk, t.chunk_index) = (0, 0);
        if let (Decision::Policy | Decision::WarmingUp, Some(st)) = (out.decision, &self.played) {
            t.sampled[..d].copy_from_slice(&self.player.raw(st)[..d]);
            if self.player.chunk_len() > 1 {
                (t.chunk, t.chunk_index) = (st.chunk, st.index as u32);
            }
        } else {
            t.sampled[..d].fill(f32::NAN);
        }
        t.applied_valid = out.publish;
        t.stop = out.stop.code();
        t.applied[..d].copy_from_slice(&self.action[..d]);
    }

    /// **Between ticks.** Tell the loop whether the previous wake-up met
    /// its deadline (for the
    /// warm-up gate). Once the gate has opened it stays open: a late tick
    /// mid-run is counted as an overrun, not a reason to stop actuating.
    pub fn note_deadline(&mut self, met: bool) {
        if self.on_time_streak < self.cfg.warmup_ticks {
            self.on_time_streak = if met { self.on_time_streak + 1 } else { 0 };
        }
    }

    /// The policy's part of a tick with fresh, valid inputs: extend the
    /// history, sample a chunk when one is due, play this tick's step.
    fn play_policy(&mut self, tick: u64) -> (Decision, f32) {
        let (obs, goal) = self.obs.split_at(self.sampler.spec().step_obs_dim());
        self.history.push(obs);
        if self.player.due() {
            let t0 = mono_ns();
            let r = self.sampler.sample_tempered(
                self.history.as_slice(),
                goal,
                self.cfg.seed,
                tick,
                self.cfg.temperature,
                &mut self.act32,
            );
            let dt = (mono_ns() - t0) as u64;
            self.stats.last_inference_ns.store(dt, Ordering::Relaxed);
            self.stats.max_inference_ns.fetch_max(dt, Ordering::Relaxed);
            // A failed sample leaves the chunk playing to go on.
            if let Ok(lp) = r {
                self.player
                    .push(&self.act32, self.sampler.last_raw_action(), lp);
            }
        }
        self.played = self.player.next(&mut self.step32);
        match &self.played {
            Some(st) if self.on_time_streak < self.cfg.warmup_ticks || tick < self.hold_until => {
                (Decision::WarmingUp, st.log_prob)
            }
            Some(st) => (Decision::Policy, st.log_prob),
            None => {
                // Nothing left to play (with chunk_len 1: this tick's sample
                // failed).
                if self.player.chunk_len() > 1 {
                    self.stats
                        .chunk_exhausted_ticks
                        .fetch_add(1, Ordering::Relaxed);
                }
                (Decision::Invalid, f32::NAN)
            }
        }
    }

    /// With `chunk.as_trajectory`, on a policy tick that began a chunk: the
    /// chunk whole, as the ticks will apply it if nothing intervenes
    /// (this tick's `action` first, then rate-limited step to step).
    fn fill_trajectory(&mut self, decision: Decision) {
        let (true, Decision::Policy, Some(st)) =
            (self.cfg.chunk.as_trajectory, decision, &self.played)
        else {
            return;
        };
        if st.index != 0 {
            return;
        }
        let d = self.action.len();
        let n = self.traj.len();
        self.traj[..d].copy_from_slice(&self.action);
        for j in (d..n).step_by(d) {
            for i in 0..d {
                let mut v = self.act32[j + i] as f64;
                if let Some(md) = &self.cfg.max_delta {
                    let prev = self.traj[j - d + i];
                    v = v.clamp(prev - md[i], prev + md[i]);
                }
                self.traj[j + i] = v;
            }
        }
        self.traj_len = n;
    }

    /// Put this tick's stop in `action` ([`crate::rt::stop`]): the interface's
    /// stop when `forced` (e-stop, deactivation), else what the safe
    /// behaviour says. The stop is taken once when it begins and repeated
    /// while it lasts. Returns what was applied; it is sent when
    /// [`StopKind::sends`]. No allocation.
    fn set_safe_action(&mut self, forced: bool, now_mono: i64, now_wall: i64) -> StopKind {
        if !forced && self.cfg.safe == SafeBehaviour::Stop {
            return StopKind::Silent;
        }
        let kind = match self.holding {
            Some(k) => k,
            None => {
                let measured = match self.cfg.stop.state_source() {
                    Some(i) => {
                        let st = self
                            .board
                            .read_f64(i, &mut self.state_buf, now_mono, now_wall);
                        st.fresh(self.max_age_ns[i], self.max_future_ns)
                            .then_some(&self.state_buf[..])
                    }
                    None => None,
                };
                let last = self.have_last.then_some(&self.last[..]);
                let k = self.cfg.stop.fill(measured, last, &mut self.hold);
                // Nothing to hold yet: a later tick may have a measurement.
                self.holding = k.sends().then_some(k);
                k
            }
        };
        if kind.sends() {
            self.action.copy_from_slice(&self.hold);
        }
        kind
    }

    /// **In the tick (real-time).** Run one tick: snapshot the board,
    /// check freshness, sample or play the chunk, apply the safety rules.
    /// No allocation, no blocking.
    pub fn tick(&mut self) -> TickOut<'_> {
        let tick = self.tick;
        self.tick += 1;
        self.stats.ticks.fetch_add(1, Ordering::Relaxed);
        let (now_mono, now_wall) = (mono_ns(), wall_ns());
        let mut stale = None;
        let mut future = false;
        for i in 0..self.board.sources() {
            let off = self.board.offset(i);
            let w = self.board.width(i);
            let st = self
                .board
                .read(i, &mut self.obs[off..off + w], now_mono, now_wall);
            self.states[i] = st;
            self.stamps[i] = st.stamp_ns;
            let max_age = self.max_age_ns[i];
            // A stamp ahead of the clock would read as fresh for as long as
            // the skew lasts: refuse it. The receive time bounds the age as
            // well, whatever the stamp says.
            if st.ever_written && !st.busy && st.stamp_ns != 0 && -st.age_ns > self.max_future_ns {
                future = true;
            }
            if stale.is_none()
                && (st.busy || !st.ever_written || st.age_ns > max_age || st.recv_age_ns > max_age)
            {
                stale = Some(i);
            }
        }
        let mut log_prob = f32::NAN;
        let human_live = match &self.human {
            Some(h) => {
                let st = h.board.read(0, &mut self.step32, now_mono, now_wall);
                st.ever_written && !st.busy && st.age_ns <= (h.max_age_s * 1e9) as i64
            }
            None => false,
        };
        let active = self.active.is_open();
        let deactivating = !active && self.was_active;
        if active && !self.was_active {
            // (Re)activated: warm up and hold as at start-up.
            self.on_time_streak = 0;
            self.hold_until = tick + self.cfg.startup_hold_ticks;
        }
        self.was_active = active;
        let decision = if !active {
            Decision::Inactive
        } else if self.estop.engaged() {
            Decision::EStop
        } else if human_live {
            Decision::Override
        } else if let Some(source) = stale {
            Decision::Stale { source }
        } else if future {
            self.stats
                .future_stamp_ticks
                .fetch_add(1, Ordering::Relaxed);
            Decision::Invalid
        } else if !self.obs.iter().all(|v| v.is_finite()) {
            // Checked here, not only by the sampler: a chunk being played
            // does not sample on every tick.
            Decision::Invalid
        } else {
            let (d, lp) = self.play_policy(tick);
            log_prob = lp;
            d
        };
        if !matches!(decision, Decision::Policy | Decision::WarmingUp) {
            // The open-loop remainder of a chunk and the observation history
            // were made for a state the safe action has since left.
            self.player.reset();
            self.history.reset();
            self.played = None;
        }
        let mut stop = StopKind::None;
        let publish = match decision {
            Decision::Override => {
                // The operator's action, kept within the model's bounds.
                let spec = self.sampler.spec();
                for (i, (a, v)) in self.action.iter_mut().zip(&self.step32).enumerate() {
                    *a = (*v as f64).clamp(spec.action_low[i] as f64, spec.action_high[i] as f64);
                }
                self.stats.override_ticks.fetch_add(1, Ordering::Relaxed);
                true
            }
            Decision::Policy => {
                for (a, v) in self.action.iter_mut().zip(&self.step32) {
                    *a = *v as f64;
                }
                true
            }
            Decision::WarmingUp => false,
            // Deactivated: the stop once, then silence for whatever
            // controls the robot next.
            Decision::Inactive if !deactivating => false,
            Decision::Inactive | Decision::EStop | Decision::Stale { .. } | Decision::Invalid => {
                match decision {
                    Decision::EStop => self.stats.estop_ticks.fetch_add(1, Ordering::Relaxed),
                    Decision::Stale { .. } => {
                        self.stats.stale_ticks.fetch_add(1, Ordering::Relaxed)
                    }
                    Decision::Invalid => self.stats.invalid_ticks.fetch_add(1, Ordering::Relaxed),
                    _ => 0,
                };
                // The e-stop and a deactivation always stop; other faults
                // follow the safe behaviour.
                let forced = matches!(decision, Decision::EStop | Decision::Inactive);
                stop = self.set_safe_action(forced, now_mono, now_wall);
                stop.sends()
            }
        };
        if stop == StopKind::None {
            // The policy (or the operator) acts again: a later stop holds
            // where the robot will be then.
            self.holding = None;
        }
        self.traj_len = 0;
        if publish {
            // Rate limit: policy and override actions, and the velocity and
            // effort parts of a stop on stale or invalid input (a ramp down).
            // Never the e-stop or a deactivation (stopping must not be
            // slowed), nor a held position (no motion to limit). Policy
            // actions are already clipped to the model's bounds by the
            // sampler, and a rate-limited action lies between two bounded ones.
            if let (Some(md), true, false) = (
                &self.cfg.max_delta,
                self.have_last,
                matches!(decision, Decision::EStop | Decision::Inactive),
            ) {
                let stopping = stop != StopKind::None;
                for (i, ((a, l), m)) in self.action.iter_mut().zip(&self.last).zip(md).enumerate() {
                    if !stopping || self.cfg.stop.ramps(i) {
                        *a = a.clamp(l - m, l + m);
                    }
                }
            }
            self.fill_trajectory(decision);
            self.last.copy_from_slice(&self.action);
            self.have_last = true;
            if let Some(b) = &self.sent {
                b.write(0, &self.action, None);
            }
            self.stats.published.fetch_add(1, Ordering::Relaxed);
        }
        self.last_out = LastTick {
            tick,
            mono_ns: now_mono,
            wall_ns: now_wall,
            decision,
            publish,
            log_prob,
            stop,
        };
        TickOut {
            tick,
            decision,
            publish,
            action: &self.action,
            stamps: &self.stamps,
            log_prob,
            stop,
            trajectory: &self.traj[..self.traj_len],
        }
    }
}
