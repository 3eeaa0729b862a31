//! NF-BC: behaviour cloning by exact maximum likelihood (paper recipe:
//! Gaussian noise on the actions, AdamW, linear warm-up then cosine decay,
//! batch 256). The same loop fits the diagonal-Gaussian baseline.
//!
//! Offline only (candle thread pool, allocates); never on the control thread.

use anyhow::{bail, Result};
use candle_core::{Device, Tensor};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::demos::Demos;
use crate::twin::Twin;
use flowpilot_core::policy::init::{default_spec, init_model, Init};
use flowpilot_core::policy::model::{Direction, EncoderSpec, ModelFile, Normalizer, PolicyKind};

#[derive(Debug, Clone)]
pub struct BcConfig {
    pub kind: PolicyKind,
    pub direction: Direction,
    pub blocks: usize,
    /// C: coupling hidden width (first hidden layer is C + k, as in the paper).
    pub hidden: usize,
    pub encoder: Option<EncoderSpec>,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    pub weight_decay: f64,
    pub warmup: usize,
    pub noise_sigma: f32,
    /// Store one-step denoising in the model (applied at sampling).
    pub denoise: bool,
    /// Fraction of episodes held out for validation NLL.
    pub val_frac: f64,
    pub eval_every: usize,
    pub seed: u64,
    /// Action steps per sample and observation steps per sample (1, 1: a
    /// plain policy); the demos are cut into windows ([`Demos::windows`]).
    pub chunk_len: usize,
    pub obs_horizon: usize,
    /// The least std the observation (and goal) normaliser may have, in
    /// physical units (0: the data's own). Demos that never leave a
    /// narrow band (an expert holding a pendulum upright) otherwise give
    /// stds so small that any state the policy has not seen reaches its
    /// nets as hundreds of standard deviations.
    pub obs_std_floor: f32,
}

impl Default for BcConfig {
    fn default() -> Self {
        Self {
            kind: PolicyKind::Flow,
            direction: Direction::Inverse,
            blocks: 6,
            hidden: 256,
            encoder: None,
            steps: 5000,
            batch: 256,
            lr: 3e-4,
            weight_decay: 1e-6,
            warmup: 500,
            noise_sigma: 0.1,
            denoise: false,
            val_frac: 0.1,
            eval_every: 250,
            seed: 0,
            chunk_len: 1,
            obs_horizon: 1,
            obs_std_floor: 0.0,
        }
    }
}

#[derive(Debug, Clone, Default)]
pub struct BcReport {
    /// (step, mean training loss since the previous point)
    pub train_loss: Vec<(usize, f64)>,
    /// (step, validation NLL in nats per sample, clean actions)
    pub val_nll: Vec<(usize, f64)>,
    pub train_rows: usize,
    pub val_rows: usize,
}

/// Learning rate at `step`: linear warm-up to `lr`, then cosine decay to 0.
pub fn lr_at(step: usize, cfg: &BcConfig) -> f64 {
    if step < cfg.warmup {
        return cfg.lr * (step + 1) as f64 / cfg.warmup as f64;
    }
    let span = (cfg.steps.saturating_sub(cfg.warmup)).max(1) as f64;
    let p = ((step - cfg.warmup) as f64 / span).min(1.0);
    cfg.lr * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
}

fn normalizer(data: &[f32], dim: usize, floor: f32) -> Normalizer {
    let n = (data.len() / dim.max(1)) as f64;
    let mut mean = vec![0f64; dim];
    let mut var = vec![0f64; dim];
    for row in data.chunks_exact(dim) {
        for (m, v) in mean.iter_mut().zip(row) {
            *m += *v as f64 / n;
        }
    }
    for row in data.chunks_exact(dim) {
        for ((s, v), m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (*v as f64 - m).powi(2) / n;
        }
    }
    Normalizer {
        mean: mean.iter().map(|&m| m as f32).collect(),
        // A constant feature gets std 1 rather than a division by ~0.
        std: var
            .iter()
            .map(|&v| {
                if v.sqrt() > 1e-6 {
                    (v.sqrt() as f32).max(floor)
                } else {
                    1.0
                }
            })
            .collect(),
    }
}

/// Train a policy on demonstrations. `progress` draws a bar on stderr.
pub fn train_bc(demos: &Demos, cfg: &BcConfig, progress: bool) -> Result<(ModelFile, BcReport)> {
    if demos.len() < 2 {
        bail!("need at least 2 demonstration rows, got {}", demos.len());
    }
    if cfg.chunk_len == 0 || cfg.obs_horizon == 0 {
        bail!("chunk length and observation horizon must be >= 1");
    }
    if !(cfg.obs_std_floor >= 0.0 && cfg.obs_std_floor.is_finite()) {
        bail!(
            "--obs-std-floor must be finite and >= 0, got {}",
            cfg.obs_std_floor
        );
    }
    let windowed;
    let demos = if cfg.chunk_len > 1 || cfg.obs_horizon > 1 {
        windowed = demos.windows(cfg.chunk_len, cfg.obs_horizon);
        &windowed
    } else {
        demos
    };
    let dev = Device::Cpu;
    let (od, gd, d) = (demos.obs_dim, demos.goal_dim, demos.act_dim);
    // Split by episode, deterministically from the seed.
    let mut eps: Vec<i64> = demos.episode.clone();
    eps.sort_unstable();
    eps.dedup();
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    eps.shuffle(&mut rng);
    let n_val = if eps.len() >= 2 {
        ((eps.len() as f64 * cfg.val_frac).round() as usize).max(1)
    } else {
        0
    };
    let val_eps: std::collections::HashSet<i64> = eps[..n_val].iter().copied().collect();
    let (mut tr, mut va) = (Vec::new(), Vec::new());
    for (i, e) in demos.episode.iter().enumerate() {
        if val_eps.contains(e) {
            va.push(i)
        } else {
            tr.push(i)
        }
    }
    if tr.is_empty() {
        bail!("no training rows left after holding out validation episodes");
    }

    // Spec: normalisers from training rows, bounds from the file or the data.
    let mut spec = default_spec(
        od,
        gd,
        d,
        if cfg.kind == PolicyKind::Flow {
            cfg.blocks
        } else {
            0
        },
        cfg.hidden,
    );
    spec.kind = cfg.kind;
    spec.direction = cfg.direction;
    spec.chunk_len = cfg.chunk_len;
    spec.obs_horizon = cfg.obs_horizon;
    spec.noise_sigma = cfg.noise_sigma;
    spec.denoise = cfg.denoise;
    spec.encoder = cfg.encoder.clone();
    let k = spec.cond_dim();
    spec.hidden = [cfg.hidden + k, cfg.hidden];
    let gather = |src: &[f32], dim: usize, rows: &[usize]| -> Vec<f32> {
        rows.iter()
            .flat_map(|&r| src[r * dim..(r + 1) * dim].iter().copied())
            .collect()
    };
    spec.obs_norm = normalizer(&gather(&demos.obs, od, &tr), od, cfg.obs_std_floor);
    if gd > 0 {
        spec.goal_norm = Some(normalizer(
            &gather(&demos.goal, gd, &tr),
            gd,
            cfg.obs_std_floor,
        ));
    }
    let (low, high) = match (&demos.act_low, &demos.act_high) {
        (Some(l), Some(h)) => (l.clone(), h.clone()),
        _ => {
            let mut l = vec![f32::INFINITY; d];
            let mut h = vec![f32::NEG_INFINITY; d];
            for row in demos.act.chunks_exact(d) {
                for j in 0..d {
                    l[j] = l[j].min(row[j]);
                    h[j] = h[j].max(row[j]);
                }
            }
            for j in 0..d {
                if h[j] - l[j] < 1e-6 {
                    l[j] -= 1.0;
                    h[j] += 1.0;
                }
            }
            (l, h)
        }
    };
    spec.action_low = low.clone();
    spec.action_high = high.clone();
    spec.created_by = format!(
        "flowpilot train bc: {} rows, {} steps, batch {}, seed {}",
        tr.len(),
        cfg.steps,
        cfg.batch,
        cfg.seed
    );
    let init = init_model(spec.clone(), Init::Paper, cfg.seed ^ 0x5EED)?;
    let twin = Twin::from_model(&init, &dev)?;

    // Actions in the flow's [-1, 1] space, by the bounds just chosen.
    let actions = flowpilot_core::policy::action_space::ActionSpace::new(&spec);
    let act_n: Vec<f32> = demos
        .act
        .chunks_exact(d)
        .flat_map(|row| actions.to_flow_vec(row))
        .collect();
    let to_t = |v: Vec<f32>, cols: usize| Tensor::from_vec(v.clone(), (v.len() / cols, cols), &dev);

    let mut opt = AdamW::new(
        twin.vars(),
        ParamsAdamW {
            lr: cfg.lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: cfg.weight_decay,
        },
    )?;
    let val_nll = |twin: &Twin| -> Result<f64> {
        if va.is_empty() {
            return Ok(f64::NAN);
        }
        let mut tot = 0.0;
        for chunk in va.chunks(4096) {
            let o = to_t(gather(&demos.obs, od, chunk), od)?;
            let g = if gd > 0 {
                Some(to_t(gather(&demos.goal, gd, chunk), gd)?)
            } else {
                None
            };
            let a = to_t(gather(&act_n, d, chunk), d)?;
            let c = twin.condition(&o, g.as_ref())?;
            tot -= twin.log_prob(&c, &a)?.sum_all()?.to_scalar::<f32>()? as f64;
        }
        Ok(tot / va.len() as f64)
    };

    let bar = if progress {
        let b = indicatif::ProgressBar::new(cfg.steps as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .expect("valid template"),
        );
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut report = BcReport {
        train_rows: tr.len(),
        val_rows: va.len(),
        ..Default::default()
    };
    let (mut acc, mut acc_n) = (0.0f64, 0usize);
    let mut idx = vec![0usize; cfg.batch];
    for step in 0..cfg.steps {
        for v in idx.iter_mut() {
            *v = tr[rng.random_range(0..tr.len())];
        }
        let o = to_t(gather(&demos.obs, od, &idx), od)?;
        let g = if gd > 0 {
            Some(to_t(gather(&demos.goal, gd, &idx), gd)?)
        } else {
            None
        };
        // Noise augmentation on the modelled variable (without it, training
        // diverges on near-deterministic demos).
        let a: Vec<f32> = gather(&act_n, d, &idx)
            .into_iter()
            .map(|v| v + cfg.noise_sigma * rng.sample::<f32, _>(StandardNormal))
            .collect();
        let a = to_t(a, d)?;
        let c = twin.condition(&o, g.as_ref())?;
        let loss = twin.log_prob(&c, &a)?.mean_all()?.neg()?;
        opt.set_learning_rate(lr_at(step, cfg));
        opt.backward_step(&loss)?;
        let l = loss.to_scalar::<f32>()? as f64;
        if !l.is_finite() {
            bail!("training loss became {l} at step {step} (try a lower --lr or a larger --noise-sigma)");
        }
        acc += l;
        acc_n += 1;
        bar.inc(1);
        let last = step + 1 == cfg.steps;
        if (step + 1) % cfg.eval_every == 0 || last {
            let v = val_nll(&twin)?;
            report.train_loss.push((step + 1, acc / acc_n as f64));
            report.val_nll.push((step + 1, v));
            bar.set_message(format!("loss {:.3} val NLL {:.3}", acc / acc_n as f64, v));
            tracing::info!(
                step = step + 1,
                train_loss = acc / acc_n as f64,
                val_nll = v,
                "bc"
            );
            acc = 0.0;
            acc_n = 0;
        }
    }
    bar.finish();
    let model = twin.to_model(spec)?;
    Ok((model, report))
}

#[cfg(test)]
mod normalizer_tests {
    use super::normalizer;

    #[test]
    fn the_std_floor_lifts_narrow_features_only() {
        // Feature 0 varies by ±0.001, feature 1 by ±2, feature 2 is constant.
        let data = [0.001, 2.0, 5.0, -0.001, -2.0, 5.0];
        let n = normalizer(&data, 3, 0.0);
        assert!(
            (n.std[0] - 0.001).abs() < 1e-7 && (n.std[1] - 2.0).abs() < 1e-6 && n.std[2] == 1.0
        );
        let f = normalizer(&data, 3, 0.05);
        assert_eq!(f.std[0], 0.05);
        assert!((f.std[1] - 2.0).abs() < 1e-6 && f.std[2] == 1.0);
        assert_eq!(f.mean, n.mean);
    }
}
