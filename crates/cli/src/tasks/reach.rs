//! A 2-D reaching task whose demonstrations take a needless detour: the
//! unambiguous fine-tuning benchmark. A point starts near (−1, 0) and must
//! reach (1, 0); the reward is −‖p − goal‖ per step, so the straight line
//! is optimal. The expert first heads for (0, 0.8) while left of x = 0 and
//! only then for the goal; NF-BC reproduces the detour, and SAC fine-tuning
//! from the policy's own logged transitions should straighten it.
//!
//! [`finetune_session`] runs the full loop on real files: roll out the
//! policy, write every step through the transition log writer (MCAP), read
//! it back with [`LogFollower`], update with [`Sac`], export the next
//! version and reload it into a real-time [`Sampler`].

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use flowpilot_core::log::writer::{LogConfig, LogHandle};
use flowpilot_core::log::{PolicyId, Transition};
use flowpilot_core::policy::model::ModelFile;
use flowpilot_core::policy::sampler::Sampler;
use flowpilot_learn::demos::Demos;
use flowpilot_learn::learner::{LogFollower, ReplayBuffer, Sac, SacConfig};

pub const GOAL: [f32; 2] = [1.0, 0.0];
pub const WAYPOINT: [f32; 2] = [0.0, 0.8];
pub const STEPS: usize = 30;
pub const DT: f32 = 0.1;

fn start(rng: &mut impl Rng) -> [f32; 2] {
    [
        -1.0 + rng.random_range(-0.1..0.1),
        rng.random_range(-0.1..0.1),
    ]
}

/// The detour expert: a Markov policy of the position alone.
pub fn expert(p: [f32; 2]) -> [f32; 2] {
    let target = if p[0] < 0.0 { WAYPOINT } else { GOAL };
    let (dx, dy) = (target[0] - p[0], target[1] - p[1]);
    let n = (dx * dx + dy * dy).sqrt().max(1e-6);
    // Full speed, slowing within one step of the target.
    let speed = (n / DT).min(1.0);
    [dx / n * speed, dy / n * speed]
}

fn step(p: [f32; 2], a: [f32; 2]) -> ([f32; 2], f32) {
    let a = [a[0].clamp(-1.0, 1.0), a[1].clamp(-1.0, 1.0)];
    let q = [p[0] + DT * a[0], p[1] + DT * a[1]];
    let r = -((q[0] - GOAL[0]).powi(2) + (q[1] - GOAL[1]).powi(2)).sqrt();
    (q, r)
}

/// Demonstrations from the detour expert (with rewards, for offline RL).
pub fn generate_demos(episodes: usize, seed: u64) -> Demos {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut obs, mut act, mut episode, mut reward) = (vec![], vec![], vec![], vec![]);
    for e in 0..episodes {
        let mut p = start(&mut rng);
        for _ in 0..STEPS {
            let a = expert(p);
            obs.extend_from_slice(&p);
            act.extend_from_slice(&a);
            episode.push(e as i64);
            let (q, r) = step(p, a);
            reward.push(r);
            p = q;
        }
    }
    Demos {
        obs_dim: 2,
        goal_dim: 0,
        act_dim: 2,
        obs,
        goal: vec![],
        act,
        episode,
        act_low: Some(vec![-1.0, -1.0]),
        act_high: Some(vec![1.0, 1.0]),
        reward: Some(reward),
        terminal: None,
    }
}

/// Mean return of `episodes` sampled rollouts (seeded per episode).
pub fn evaluate(sampler: &mut Sampler, episodes: usize, seed: u64) -> f64 {
    let mut total = 0.0;
    for e in 0..episodes {
        let s = seed.wrapping_mul(1_000_003).wrapping_add(e as u64);
        let mut rng = ChaCha8Rng::seed_from_u64(s);
        let mut p = start(&mut rng);
        for t in 0..STEPS {
            let mut a = [0.0f32; 2];
            if sampler.sample_seeded(&p, &[], s, t as u64, &mut a).is_err() {
                a = [0.0, 0.0];
            }
            let (q, r) = step(p, a);
            total += r as f64;
            p = q;
        }
    }
    total / episodes as f64
}

/// Roll out `episodes` episodes, logging every step as the node does:
/// record k carries the observation, the sampled and applied actions, and
/// the reward of the previous step; a final action-less record carries the
/// episode's last reward.
fn collect(
    sampler: &mut Sampler,
    log: &LogHandle,
    episodes: usize,
    seed: u64,
    tick: &mut u64,
    episode: &mut u64,
) {
    let id = PolicyId::of(sampler.spec());
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for _ in 0..episodes {
        let mut p = start(&mut rng);
        let mut prev_r = f64::NAN;
        for k in 0..=STEPS {
            let mut t = Transition {
                tick: *tick,
                episode: *episode,
                reward: prev_r,
                policy: id,
                seed,
                n_obs: 2,
                n_act: 2,
                ..Default::default()
            };
            t.inputs[..2].copy_from_slice(&p);
            if k < STEPS {
                let mut a = [0.0f32; 2];
                let lp = sampler
                    .sample_seeded(&p, &[], seed, *tick, &mut a)
                    .unwrap_or(f32::NAN);
                t.log_prob = lp;
                t.sampled[..2].copy_from_slice(sampler.last_raw_action());
                t.applied_valid = true;
                t.applied[0] = a[0] as f64;
                t.applied[1] = a[1] as f64;
                let (q, r) = step(p, a);
                p = q;
                prev_r = r as f64;
            } else {
                // no action: the episode's final state
                t.decision = flowpilot_core::rt::decision::Decision::WarmingUp.code();
            }
            // The writer's queue is large enough for a round; if it were
            // full the record would be dropped and counted, like the node's.
            log.push(&t);
            *tick += 1;
        }
        *episode += 1;
    }
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub rounds: usize,
    pub episodes_per_round: usize,
    pub updates_per_round: usize,
    pub eval_episodes: usize,
    pub sac: SacConfig,
}

/// One point of the learning curve.
#[derive(Debug, Clone, Copy)]
pub struct CurvePoint {
    pub updates: u64,
    pub transitions: usize,
    pub mean_return: f64,
    pub version: u64,
}

/// Fine-tune `init` on its own logged transitions (log files in
/// `dir/log`, checkpoints in `dir/ckpt`); returns the learning curve
/// (point 0 is the initial policy).
pub fn finetune_session(
    init: &ModelFile,
    cfg: &SessionConfig,
    dir: &Path,
) -> Result<Vec<CurvePoint>> {
    let log_dir = dir.join("log");
    let ckpt_dir = dir.join("ckpt");
    std::fs::create_dir_all(&ckpt_dir)?;
    let mut sampler = Sampler::new(init)?;
    let mut current = init.clone();
    let eval_seed = 7_777;
    let mut curve = vec![CurvePoint {
        updates: 0,
        transitions: 0,
        mean_return: evaluate(&mut sampler, cfg.eval_episodes, eval_seed),
        version: init.spec.version,
    }];
    let mut sac = Sac::new(init, cfg.sac.clone())?;
    let mut rb = ReplayBuffer::new(2, 2, 200_000);
    let mut follower = LogFollower::new(&log_dir, cfg.sac.gamma);
    let (mut tick, mut episode) = (0u64, 0u64);
    for round in 0..cfg.rounds {
        // Each round writes its own log file, closed before reading, as a
        // node run would; the follower also handles still-open files.
        let log = LogHandle::start_at(
            &log_dir_file(&log_dir, round)?,
            LogConfig {
                dir: log_dir.clone(),
                flush_period: Duration::from_millis(20),
                queue_capacity: cfg.episodes_per_round * (STEPS + 1) + 1,
                reward: None,
                metadata: Default::default(),
            },
        )?;
        collect(
            &mut sampler,
            &log,
            cfg.episodes_per_round,
            cfg.sac.seed * 10_007 + round as u64,
            &mut tick,
            &mut episode,
        );
        log.close();
        follower.poll(&mut rb, &current.spec)?;
        for _ in 0..cfg.updates_per_round {
            sac.update(&rb)?;
        }
        let next = sac.export(&current.spec)?;
        let path = flowpilot_core::checkpoint::CheckpointDir::new(&ckpt_dir)
            .policy_path(next.spec.version);
        next.save(&path)?;
        current = ModelFile::load(&path)?;
        sampler = Sampler::new(&current)?;
        curve.push(CurvePoint {
            updates: sac.updates(),
            transitions: rb.len(),
            mean_return: evaluate(&mut sampler, cfg.eval_episodes, eval_seed),
            version: current.spec.version,
        });
        tracing::info!(?curve, "round {round}");
    }
    Ok(curve)
}

fn log_dir_file(dir: &Path, round: usize) -> Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    Ok(dir.join(format!("round_{round:03}.mcap")))
}

/// The detour expert's mean return over `episodes` (the demos' level).
pub fn expert_return(episodes: usize, seed: u64) -> f64 {
    let d = generate_demos(episodes, seed);
    d.reward
        .as_ref()
        .map_or(0.0, |r| r.iter().map(|&v| v as f64).sum::<f64>())
        / episodes as f64
}

/// The benchmark's BC starting point: K = 2, C = 64 flow trained on 100
/// detour episodes.
pub fn bc_policy(seed: u64) -> Result<ModelFile> {
    let demos = generate_demos(100, seed);
    let cfg = flowpilot_learn::train::BcConfig {
        blocks: 2,
        hidden: 64,
        steps: 1500,
        warmup: 100,
        noise_sigma: 0.05,
        eval_every: 500,
        seed,
        ..Default::default()
    };
    Ok(flowpilot_learn::train::train_bc(&demos, &cfg, false)?.0)
}
