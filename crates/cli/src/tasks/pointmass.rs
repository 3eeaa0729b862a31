//! A bimodal 2-D point-mass task: reach a goal straight ahead with a round
//! obstacle in between, going left OR right around it. The expert picks a
//! side at random per episode, so at the start the demonstrated action is
//! bimodal; a unimodal policy that averages the two modes drives into the
//! obstacle. Observation: position (2). Action: velocity in [-1, 1]².

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use flowpilot_core::policy::sampler::Sampler;
use flowpilot_learn::demos::Demos;

pub const START: [f32; 2] = [0.0, -1.2];
pub const GOAL: [f32; 2] = [0.0, 1.2];
pub const OBSTACLE_RADIUS: f32 = 0.6;
pub const DT: f32 = 0.1;
pub const MAX_STEPS: usize = 60;
pub const GOAL_TOL: f32 = 0.15;
/// Start positions are jittered by ±this along y only: the start is on the
/// axis of symmetry, so nothing observable tells the expert's side.
pub const START_JITTER: f32 = 0.03;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Left,
    Right,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Reached the goal, passing the obstacle on this side.
    Success(Side),
    Collision,
    Timeout,
}

/// Expert velocity command: head beside the obstacle on `side`, then to the goal.
pub fn expert_action(pos: [f32; 2], side: Side) -> [f32; 2] {
    let s = if side == Side::Left { -1.0 } else { 1.0 };
    let target = if pos[1] < 0.0 { [s * 0.9, 0.05] } else { GOAL };
    let (dx, dy) = (target[0] - pos[0], target[1] - pos[1]);
    let n = (dx * dx + dy * dy).sqrt().max(1e-6);
    let speed = (n / DT).min(1.0);
    [speed * dx / n, speed * dy / n]
}

fn start(rng: &mut impl Rng) -> [f32; 2] {
    [
        START[0],
        START[1] + rng.random_range(-START_JITTER..START_JITTER),
    ]
}

/// Run one episode with `policy(obs, tick) -> action in [-1, 1]²`.
pub fn rollout(
    seed: u64,
    mut policy: impl FnMut(&[f32; 2], u64) -> [f32; 2],
) -> (Outcome, Vec<[f32; 2]>) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut pos = start(&mut rng);
    let mut side = None;
    let mut path = vec![pos];
    for t in 0..MAX_STEPS {
        let a = policy(&pos, t as u64);
        let prev = pos;
        pos[0] += DT * a[0].clamp(-1.0, 1.0);
        pos[1] += DT * a[1].clamp(-1.0, 1.0);
        path.push(pos);
        if prev[1] < 0.0 && pos[1] >= 0.0 {
            side = Some(if pos[0] < 0.0 {
                Side::Left
            } else {
                Side::Right
            });
        }
        if (pos[0] * pos[0] + pos[1] * pos[1]).sqrt() < OBSTACLE_RADIUS {
            return (Outcome::Collision, path);
        }
        if ((pos[0] - GOAL[0]).powi(2) + (pos[1] - GOAL[1]).powi(2)).sqrt() < GOAL_TOL {
            return (Outcome::Success(side.unwrap_or(Side::Right)), path);
        }
    }
    (Outcome::Timeout, path)
}

/// Expert demonstrations with small action noise; one episode index per row.
pub fn generate_demos(episodes: usize, seed: u64) -> Demos {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut obs, mut act, mut episode) = (Vec::new(), Vec::new(), Vec::new());
    for e in 0..episodes {
        let side = if rng.random_bool(0.5) {
            Side::Left
        } else {
            Side::Right
        };
        let ep_seed = rng.random();
        let mut noise = ChaCha8Rng::seed_from_u64(ep_seed ^ 0xABCD);
        let (outcome, _) = rollout(ep_seed, |p, _| {
            let a = expert_action(*p, side);
            let n: [f32; 2] = [noise.sample(StandardNormal), noise.sample(StandardNormal)];
            let a = [
                (a[0] + 0.03 * n[0]).clamp(-1.0, 1.0),
                (a[1] + 0.03 * n[1]).clamp(-1.0, 1.0),
            ];
            obs.extend_from_slice(p);
            act.extend_from_slice(&a);
            episode.push(e as i64);
            a
        });
        debug_assert!(
            matches!(outcome, Outcome::Success(_)),
            "expert failed: {outcome:?}"
        );
    }
    Demos {
        obs_dim: 2,
        goal_dim: 0,
        act_dim: 2,
        obs,
        goal: Vec::new(),
        act,
        episode,
        act_low: Some(vec![-1.0, -1.0]),
        act_high: Some(vec![1.0, 1.0]),
        reward: None,
        terminal: None,
    }
}

/// How a policy is queried during evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EvalMode {
    /// A fresh sample every tick, seeded by (episode seed, tick).
    Sampled,
    /// Base noise z = 0 every tick (the mean of a Gaussian policy).
    ZeroNoise,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Eval {
    pub episodes: usize,
    pub left: usize,
    pub right: usize,
    pub collisions: usize,
    pub timeouts: usize,
}

impl Eval {
    pub fn success_rate(&self) -> f64 {
        (self.left + self.right) as f64 / self.episodes.max(1) as f64
    }
}

impl std::fmt::Display for Eval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "success {:.1}% ({} left, {} right), collisions {}, timeouts {} over {} episodes",
            100.0 * self.success_rate(),
            self.left,
            self.right,
            self.collisions,
            self.timeouts,
            self.episodes
        )
    }
}

/// Roll a policy out for `episodes` episodes from seeds `seed..`.
pub fn evaluate(sampler: &mut Sampler, episodes: usize, seed: u64, mode: EvalMode) -> Eval {
    let mut ev = Eval {
        episodes,
        ..Default::default()
    };
    let zero = [0.0f32; 2];
    for e in 0..episodes {
        let ep_seed = seed.wrapping_add(e as u64);
        let (outcome, _) = rollout(ep_seed, |p, tick| {
            let mut a = [0.0f32; 2];
            let r = match mode {
                EvalMode::Sampled => sampler.sample_seeded(p, &[], ep_seed, tick, &mut a),
                EvalMode::ZeroNoise => sampler.sample_with_noise(p, &[], &zero, &mut a),
            };
            // A refused sample is a stop command, as the node would do.
            r.map(|_| a).unwrap_or([0.0, 0.0])
        });
        match outcome {
            Outcome::Success(Side::Left) => ev.left += 1,
            Outcome::Success(Side::Right) => ev.right += 1,
            Outcome::Collision => ev.collisions += 1,
            Outcome::Timeout => ev.timeouts += 1,
        }
    }
    ev
}
