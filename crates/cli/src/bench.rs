//! Batch-1 latency of the real-time sampler (and, side by side, the candle
//! twin) against a bandwidth bound measured in the same run.
//!
//! Offline measurement: runs the sampler on the calling thread, as the
//! control loop would, and counts its heap allocations per sample.

use std::hint::black_box;
use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use flowpilot_core::alloc_count::thread_allocations;
use flowpilot_core::model::ModelFile;
use flowpilot_core::sampler::Sampler;

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub min_us: f64,
    pub median_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn from_ns(mut ns: Vec<u64>) -> Self {
        ns.sort_unstable();
        let q = |p: f64| ns[((ns.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
        Self {
            samples: ns.len(),
            min_us: q(0.0),
            median_us: q(0.5),
            p99_us: q(0.99),
            max_us: q(1.0),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub model_digest: String,
    pub sampler: Latency,
    pub allocations_per_sample: f64,
    pub weight_bytes: usize,
    /// Read bandwidth over a buffer of the weights' size, best of many passes.
    pub read_bandwidth_gb_s: f64,
    /// weight_bytes / read bandwidth
    pub bound_us: f64,
    /// sampler median / bound
    pub median_over_bound: f64,
    pub twin: Option<Latency>,
    /// twin median / sampler median
    pub twin_over_sampler: Option<f64>,
}

/// Best-of-`passes` read bandwidth over `bytes` bytes, in GB/s.
pub fn read_bandwidth(bytes: usize, passes: usize) -> f64 {
    let buf: Vec<f32> = (0..bytes.div_ceil(4)).map(|i| (i % 7) as f32).collect();
    let mut best = f64::MAX;
    for _ in 0..passes {
        let t = Instant::now();
        // 32 independent lanes: vectorises without float reassociation.
        let mut acc = [0f32; 32];
        for c in black_box(&buf).chunks_exact(32) {
            for (a, v) in acc.iter_mut().zip(c) {
                *a += v;
            }
        }
        black_box(acc);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buf.len() * 4) as f64 / best / 1e9
}

pub fn run(model: &ModelFile, n: usize, with_twin: bool) -> Result<BenchReport> {
    let mut s = Sampler::new(model)?;
    let spec = model.spec.clone();
    let obs: Vec<f32> = (0..spec.obs_dim)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.2)
        .collect();
    let goal: Vec<f32> = (0..spec.goal_dim).map(|i| (i as f32) * 0.1).collect();
    let mut act = vec![0.0; spec.act_dim];
    for t in 0..n.min(2000) {
        s.sample_seeded(&obs, &goal, 1, t as u64, &mut act)?;
    }
    let mut ns = Vec::with_capacity(n);
    let a0 = thread_allocations();
    for t in 0..n {
        let t0 = Instant::now();
        let r = s.sample_seeded(black_box(&obs), &goal, 1, t as u64, &mut act);
        let dt = t0.elapsed().as_nanos() as u64;
        r?;
        black_box(&act);
        ns.push(dt);
    }
    // `ns` was preallocated, so every allocation counted here is the sampler's.
    let allocs = thread_allocations() - a0;
    let sampler = Latency::from_ns(ns);
    let bw = read_bandwidth(s.weight_bytes(), 400);
    let bound_us = s.weight_bytes() as f64 / (bw * 1e9) * 1e6;
    let twin = if with_twin {
        Some(twin_latency(model, &obs, &goal, (n / 10).max(200))?)
    } else {
        None
    };
    Ok(BenchReport {
        model_digest: model.spec.digest.clone(),
        allocations_per_sample: allocs as f64 / n as f64,
        weight_bytes: s.weight_bytes(),
        read_bandwidth_gb_s: bw,
        bound_us,
        median_over_bound: sampler.median_us / bound_us,
        twin_over_sampler: twin.as_ref().map(|t| t.median_us / sampler.median_us),
        sampler,
        twin,
    })
}

/// The candle twin sampling at batch 1 (what a candle-based node would do).
pub fn twin_latency(model: &ModelFile, obs: &[f32], goal: &[f32], n: usize) -> Result<Latency> {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let twin = flowpilot_learn::twin::Twin::from_model(model, &dev)?;
    let d = model.spec.act_dim;
    let z: Vec<f32> = (0..d).map(|i| 0.1 * i as f32).collect();
    let one = || -> Result<()> {
        let o = Tensor::from_slice(obs, (1, obs.len()), &dev)?;
        let g = if goal.is_empty() {
            None
        } else {
            Some(Tensor::from_slice(goal, (1, goal.len()), &dev)?)
        };
        let c = twin.condition(&o, g.as_ref())?;
        let (a, lp) = twin.sample(&c, &Tensor::from_slice(&z, (1, d), &dev)?)?;
        black_box((a.to_vec2::<f32>()?, lp.to_vec1::<f32>()?));
        Ok(())
    };
    for _ in 0..n.min(200) {
        one()?;
    }
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t0 = Instant::now();
        one()?;
        ns.push(t0.elapsed().as_nanos() as u64);
    }
    Ok(Latency::from_ns(ns))
}

/// Time of one SAC update (critic, actor, temperature, Polyak) at `batch`
/// on random transitions, critics 2×`critic_hidden`. The first 5 updates
/// are warm-up and not timed.
pub fn sac_updates(
    model: &ModelFile,
    batch: usize,
    n: usize,
    critic_hidden: usize,
) -> Result<Latency> {
    use rand::{Rng, SeedableRng};
    let spec = &model.spec;
    let cfg = flowpilot_learn::learner::SacConfig {
        batch,
        critic_hidden,
        critic_warmup: 0,
        ..Default::default()
    };
    let mut sac = flowpilot_learn::learner::Sac::new(model, cfg)?;
    let (inp, d) = (spec.obs_dim + spec.goal_dim, spec.act_dim);
    let mut rb = flowpilot_learn::learner::ReplayBuffer::new(inp, d, 10_000);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    for _ in 0..10_000 {
        let s: Vec<f32> = (0..inp).map(|_| rng.random_range(-1.0..1.0)).collect();
        let s2: Vec<f32> = (0..inp).map(|_| rng.random_range(-1.0..1.0)).collect();
        let a: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0..1.0)).collect();
        rb.push(&s, &a, rng.random_range(-1.0..0.0), &s2, false);
    }
    for _ in 0..5 {
        sac.update(&rb)?;
    }
    let mut ns = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        black_box(sac.update(&rb)?);
        ns.push(t.elapsed().as_nanos() as u64);
    }
    Ok(Latency::from_ns(ns))
}
