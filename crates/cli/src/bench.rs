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
use flowpilot_core::policy::model::ModelFile;
use flowpilot_core::policy::sampler::Sampler;

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
    /// How the dense kernels are stored (and streamed): f32, f16, bf16.
    pub weights: String,
    pub sampler: Latency,
    pub allocations_per_sample: f64,
    /// Bytes of weights the sampler streams per sample, at their stored width.
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

/// A model against the same model with half-size kernels, timed in the
/// same run (interleaved), and how far the half-size samples move.
#[derive(Debug, Clone, Serialize)]
pub struct CompareReport {
    pub base: BenchReport,
    pub half: BenchReport,
    /// half median / base median (and the same for min, p99)
    pub median_ratio: f64,
    pub min_ratio: f64,
    pub p99_ratio: f64,
    pub accuracy: Accuracy,
}

/// Largest differences between two samplers over random inputs (the same
/// observation, goal and noise for both).
#[derive(Debug, Clone, Serialize)]
pub struct Accuracy {
    pub inputs: usize,
    /// Clipped action, physical units.
    pub max_action_err: f64,
    /// Unclipped action in the flow's normalised space.
    pub max_raw_action_err: f64,
    pub mean_raw_action_err: f64,
    pub max_log_prob_err: f64,
    pub mean_log_prob_err: f64,
    /// Largest |log-prob| seen (for the relative size of the error).
    pub max_abs_log_prob: f64,
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

/// The fixed observation and goal the latency runs sample at.
fn bench_inputs(model: &ModelFile) -> (Vec<f32>, Vec<f32>) {
    let spec = &model.spec;
    let obs = (0..spec.obs_dim)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) * 0.2)
        .collect();
    let goal = (0..spec.goal_dim).map(|i| (i as f32) * 0.1).collect();
    (obs, goal)
}

/// Time `ticks` seeded samples into `ns` (preallocated by the caller, so
/// any allocation counted around this call is the sampler's).
fn time_samples(
    s: &mut Sampler,
    obs: &[f32],
    goal: &[f32],
    ticks: std::ops::Range<u64>,
    act: &mut [f32],
    ns: &mut Vec<u64>,
) -> Result<()> {
    for t in ticks {
        let t0 = Instant::now();
        let r = s.sample_seeded(black_box(obs), goal, 1, t, act);
        let dt = t0.elapsed().as_nanos() as u64;
        r?;
        black_box(&act);
        ns.push(dt);
    }
    Ok(())
}

fn report(
    model: &ModelFile,
    s: &Sampler,
    ns: Vec<u64>,
    allocs: u64,
    twin: Option<Latency>,
) -> BenchReport {
    let n = ns.len();
    let sampler = Latency::from_ns(ns);
    // The bound for the bytes this sampler actually streams (half-size
    // kernels: half the kernel bytes), at the rate measured over a buffer
    // of that size.
    let bw = read_bandwidth(s.weight_bytes(), 400);
    let bound_us = s.weight_bytes() as f64 / (bw * 1e9) * 1e6;
    BenchReport {
        model_digest: model.spec.digest.clone(),
        weights: model.spec.weights.to_string(),
        allocations_per_sample: allocs as f64 / n as f64,
        weight_bytes: s.weight_bytes(),
        read_bandwidth_gb_s: bw,
        bound_us,
        median_over_bound: sampler.median_us / bound_us,
        twin_over_sampler: twin.as_ref().map(|t| t.median_us / sampler.median_us),
        sampler,
        twin,
    }
}

pub fn run(model: &ModelFile, n: usize, with_twin: bool) -> Result<BenchReport> {
    let mut s = Sampler::new(model)?;
    let (obs, goal) = bench_inputs(model);
    let mut act = vec![0.0; model.spec.act_dim];
    for t in 0..n.min(2000) {
        s.sample_seeded(&obs, &goal, 1, t as u64, &mut act)?;
    }
    let mut ns = Vec::with_capacity(n);
    let a0 = thread_allocations();
    time_samples(&mut s, &obs, &goal, 0..n as u64, &mut act, &mut ns)?;
    let allocs = thread_allocations() - a0;
    let twin = if with_twin {
        Some(twin_latency(model, &obs, &goal, (n / 10).max(200))?)
    } else {
        None
    };
    Ok(report(model, &s, ns, allocs, twin))
}

/// `base` against `half` (the same model with half-size kernels) in one
/// run: `n` samples each, timed in 20 interleaved rounds (alternating which
/// goes first) so that the shared machine's slow moments fall on both;
/// then the accuracy over `accuracy_n` random inputs.
pub fn compare(
    base: &ModelFile,
    half: &ModelFile,
    n: usize,
    accuracy_n: usize,
) -> Result<CompareReport> {
    let mut sb = Sampler::new(base)?;
    let mut sh = Sampler::new(half)?;
    let (obs, goal) = bench_inputs(base);
    let mut act = vec![0.0; base.spec.act_dim];
    for t in 0..n.min(2000) as u64 {
        sb.sample_seeded(&obs, &goal, 1, t, &mut act)?;
        sh.sample_seeded(&obs, &goal, 1, t, &mut act)?;
    }
    let rounds = 20u64;
    let per = (n as u64).div_ceil(rounds);
    let (mut nb, mut nh) = (
        Vec::with_capacity((per * rounds) as usize),
        Vec::with_capacity((per * rounds) as usize),
    );
    let (mut ab, mut ah) = (0, 0);
    for r in 0..rounds {
        let ticks = r * per..(r + 1) * per;
        for which in [r % 2, 1 - r % 2] {
            let a0 = thread_allocations();
            if which == 0 {
                time_samples(&mut sb, &obs, &goal, ticks.clone(), &mut act, &mut nb)?;
                ab += thread_allocations() - a0;
            } else {
                time_samples(&mut sh, &obs, &goal, ticks.clone(), &mut act, &mut nh)?;
                ah += thread_allocations() - a0;
            }
        }
    }
    let base_r = report(base, &sb, nb, ab, None);
    let half_r = report(half, &sh, nh, ah, None);
    let accuracy = accuracy(&mut sb, &mut sh, base, accuracy_n)?;
    Ok(CompareReport {
        median_ratio: half_r.sampler.median_us / base_r.sampler.median_us,
        min_ratio: half_r.sampler.min_us / base_r.sampler.min_us,
        p99_ratio: half_r.sampler.p99_us / base_r.sampler.p99_us,
        base: base_r,
        half: half_r,
        accuracy,
    })
}

/// Sample both samplers at the same `n` random inputs (observation and
/// goal at N(0, 1) after the model's normaliser, noise from the seeded
/// tick) and compare actions and log-probs.
pub fn accuracy(a: &mut Sampler, b: &mut Sampler, model: &ModelFile, n: usize) -> Result<Accuracy> {
    use rand::SeedableRng;
    use rand_distr::{Distribution, StandardNormal};
    let spec = &model.spec;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let d = spec.act_dim;
    let (mut act_a, mut act_b) = (vec![0.0f32; d], vec![0.0f32; d]);
    let mut acc = Accuracy {
        inputs: n,
        max_action_err: 0.0,
        max_raw_action_err: 0.0,
        mean_raw_action_err: 0.0,
        max_log_prob_err: 0.0,
        mean_log_prob_err: 0.0,
        max_abs_log_prob: 0.0,
    };
    let mut draw = |norm: &flowpilot_core::policy::model::Normalizer| -> Vec<f32> {
        norm.mean
            .iter()
            .zip(&norm.std)
            .map(|(m, s)| {
                let e: f32 = StandardNormal.sample(&mut rng);
                m + s * e
            })
            .collect()
    };
    for i in 0..n {
        let obs = draw(&spec.obs_norm);
        let goal = spec.goal_norm.as_ref().map_or(Vec::new(), &mut draw);
        let la = a.sample_seeded(&obs, &goal, 7, i as u64, &mut act_a)?;
        let lb = b.sample_seeded(&obs, &goal, 7, i as u64, &mut act_b)?;
        for (x, y) in act_a.iter().zip(&act_b) {
            acc.max_action_err = acc.max_action_err.max((x - y).abs() as f64);
        }
        let mut raw = 0.0f64;
        for (x, y) in a.last_raw_action().iter().zip(b.last_raw_action()) {
            raw = raw.max((x - y).abs() as f64);
        }
        acc.max_raw_action_err = acc.max_raw_action_err.max(raw);
        acc.mean_raw_action_err += raw / n as f64;
        let e = (la - lb).abs() as f64;
        acc.max_log_prob_err = acc.max_log_prob_err.max(e);
        acc.mean_log_prob_err += e / n as f64;
        acc.max_abs_log_prob = acc.max_abs_log_prob.max(la.abs() as f64);
    }
    Ok(acc)
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
/// on random transitions, critics 2×`critic_hidden` (a LayerNorm before
/// each ReLU with `critic_layer_norm`), BC weight `bc_lambda`. The first 5 updates
/// are warm-up and not timed.
pub fn sac_updates(
    model: &ModelFile,
    batch: usize,
    n: usize,
    critic_hidden: usize,
    critic_layer_norm: bool,
    bc_lambda: f64,
) -> Result<Latency> {
    use rand::{Rng, SeedableRng};
    let spec = &model.spec;
    let cfg = flowpilot_learn::learner::SacConfig {
        batch,
        critic_hidden,
        critic_layer_norm,
        bc_lambda,
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
        rb.push(&s, &a, rng.random_range(-1.0..0.0), &s2, 0.99);
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
