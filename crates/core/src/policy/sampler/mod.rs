//! The real-time sampler: batch-1 flow evaluation with every buffer
//! preallocated at load, so a call makes no heap allocation, takes no lock
//! and does a fixed amount of work. No candle, no rayon: plain loops that the
//! compiler vectorises, laid out so each weight is streamed once per sample.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

mod grad;
mod weights;

use grad::{likelihood_grad, GradScratch};
use weights::Weights;

use crate::policy::action_space::ActionSpace;
use crate::policy::model::{Direction, ModelFile, ModelSpec, PolicyKind};
use crate::policy::plu::Plu;

/// log(2π)/2.
pub const HALF_LN_2PI: f32 = 0.918_938_5;
/// Clamp for the Gaussian baseline's log-std (same in the candle twin).
pub const LOG_STD_MIN: f32 = -5.0;
pub const LOG_STD_MAX: f32 = 2.0;

/// Why a sample was refused. `Copy` and allocation-free so it can be
/// returned from the control tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SampleError {
    #[error("observation has {found} values, the model expects {expected}")]
    ObsLen { found: usize, expected: usize },
    #[error("goal has {found} values, the model expects {expected}")]
    GoalLen { found: usize, expected: usize },
    #[error("noise vector has {found} values, the model expects {expected}")]
    NoiseLen { found: usize, expected: usize },
    #[error("action buffer has {found} values, the model expects {expected}")]
    ActionLen { found: usize, expected: usize },
    #[error("observation value {index} is NaN or infinite")]
    ObsNotFinite { index: usize },
    #[error("goal value {index} is NaN or infinite")]
    GoalNotFinite { index: usize },
    #[error("the flow produced a non-finite action (weights or inputs out of range)")]
    OutputNotFinite,
}

/// A valid model file this sampler cannot run. (None today: every format
/// version 1 feature is supported. Kept so callers handle future ones.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum UnsupportedModel {}

/// Dense layer, kernel stored (in, out) row-major: y = x · W + b.
struct Dense {
    w: Weights,
    b: Vec<f32>,
    inp: usize,
    out: usize,
    /// The vector widening path for 16-bit kernels (detected at load).
    simd: bool,
}

impl Dense {
    fn load(m: &ModelFile, p: &str) -> Self {
        let w = m.f32(&format!("{p}.w"));
        let b = m.f32(&format!("{p}.b")).to_vec();
        let out = b.len();
        Self {
            inp: w.len() / out,
            w: Weights::new(w, m.spec.weights),
            b,
            out,
            simd: weights::simd_available(),
        }
    }

    /// y = x · W + b (see [`Weights::gemv_acc`]).
    #[inline]
    fn forward(&self, x: &[f32], y: &mut [f32]) {
        let y = &mut y[..self.out];
        y.copy_from_slice(&self.b);
        self.w.gemv_acc(x, y, self.inp, self.out, self.simd);
    }

    /// W[i, :] · g (the backward pass's input gradient, one input).
    #[inline]
    fn row_dot(&self, i: usize, g: &[f32]) -> f32 {
        self.w.row_dot(i, self.out, g)
    }

    fn bytes(&self) -> usize {
        self.w.bytes() + 4 * self.b.len()
    }
}

/// Fused multiply-add where the target has it (one rounding, half the
/// instructions); plain multiply-add elsewhere (`mul_add` without hardware
/// FMA is a slow libm call).
#[inline(always)]
fn fma(a: f32, b: f32, c: f32) -> f32 {
    #[cfg(target_feature = "fma")]
    {
        a.mul_add(b, c)
    }
    #[cfg(not(target_feature = "fma"))]
    {
        a * b + c
    }
}

/// Row-major gemv without bias for the small d×d linear layers.
#[inline]
fn gemv_rows(x: &[f32], w: &[f32], y: &mut [f32], d: usize) {
    y[..d].fill(0.0);
    for (row, &xi) in w[..d * d].chunks_exact(d).zip(&x[..d]) {
        for (yj, wj) in y[..d].iter_mut().zip(row) {
            *yj = fma(xi, *wj, *yj);
        }
    }
}

struct LayerNorm {
    g: Vec<f32>,
    b: Vec<f32>,
    eps: f32,
}

impl LayerNorm {
    fn load(m: &ModelFile, p: &str, eps: f32) -> Self {
        Self {
            g: m.f32(&format!("{p}.g")).to_vec(),
            b: m.f32(&format!("{p}.b")).to_vec(),
            eps,
        }
    }

    #[inline]
    fn apply(&self, x: &mut [f32]) {
        let n = x.len() as f32;
        let mean = lane_sum(x, |v| v) / n;
        let var = lane_sum(x, |v| (v - mean) * (v - mean)) / n;
        let r = 1.0 / (var + self.eps).sqrt();
        for ((v, g), b) in x.iter_mut().zip(&self.g).zip(&self.b) {
            *v = (*v - mean) * r * g + b;
        }
    }
}

/// Σ f(x) with 16 independent partial sums: a plain `sum()` is one serial
/// chain of dependent adds (floats do not reassociate), ~4× slower here.
#[inline]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for c in chunks {
        for (a, &v) in acc.iter_mut().zip(c) {
            *a += f(v);
        }
    }
    acc.iter().sum::<f32>() + rest
}

#[inline]
fn leaky_relu(x: &mut [f32]) {
    for v in x {
        *v = if *v >= 0.0 { *v } else { 0.01 * *v };
    }
}

/// Dense → LeakyReLU → LN → Dense → LeakyReLU → LN → Dense (paper's s/t nets).
struct Mlp {
    l0: Dense,
    ln0: LayerNorm,
    l1: Dense,
    ln1: LayerNorm,
    l2: Dense,
}

impl Mlp {
    fn load(m: &ModelFile, p: &str, eps: f32) -> Self {
        Self {
            l0: Dense::load(m, &format!("{p}.l0")),
            ln0: LayerNorm::load(m, &format!("{p}.ln0"), eps),
            l1: Dense::load(m, &format!("{p}.l1")),
            ln1: LayerNorm::load(m, &format!("{p}.ln1"), eps),
            l2: Dense::load(m, &format!("{p}.l2")),
        }
    }

    #[inline]
    fn forward(&self, x: &[f32], h1: &mut [f32], h2: &mut [f32], y: &mut [f32]) {
        let h1 = &mut h1[..self.l0.out];
        self.l0.forward(x, h1);
        leaky_relu(h1);
        self.ln0.apply(h1);
        let h2 = &mut h2[..self.l1.out];
        self.l1.forward(h1, h2);
        leaky_relu(h2);
        self.ln1.apply(h2);
        self.l2.forward(h2, y);
    }

    fn bytes(&self) -> usize {
        self.l0.bytes()
            + self.l1.bytes()
            + self.l2.bytes()
            + 8 * (self.ln0.g.len() + self.ln1.g.len())
    }
}

/// 4 × [Dense → LayerNorm → SiLU] → Dense (LayerNorm before the activation).
struct Encoder {
    layers: Vec<(Dense, LayerNorm)>,
    out: Dense,
}

impl Encoder {
    fn forward(&self, x: &[f32], a: &mut [f32], b: &mut [f32], y: &mut [f32]) {
        let mut cur: &mut [f32] = a;
        let mut nxt: &mut [f32] = b;
        let mut width = x.len();
        cur[..width].copy_from_slice(x);
        for (d, ln) in &self.layers {
            let h = &mut nxt[..d.out];
            d.forward(&cur[..width], h);
            ln.apply(h);
            for v in h.iter_mut() {
                *v /= 1.0 + (-*v).exp();
            }
            width = d.out;
            std::mem::swap(&mut cur, &mut nxt);
        }
        self.out.forward(&cur[..width], y);
    }

    fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(d, ln)| d.bytes() + 8 * ln.g.len())
            .sum::<usize>()
            + self.out.bytes()
    }
}

/// One coupling block with its invertible linear layer precomputed.
struct Block {
    /// W = P·L·U, (d, d) row-major, row-vector convention u = x·W.
    w: Vec<f32>,
    w_inv: Vec<f32>,
    sum_log_abs_s: f32,
    s: Mlp,
    t: Mlp,
}

enum Head {
    Flow(Vec<Block>),
    Gaussian(Mlp),
}

/// Preallocated working memory. Sized once at load; never resized.
struct Scratch {
    raw_cond: Vec<f32>,
    cond: Vec<f32>,
    enc_a: Vec<f32>,
    enc_b: Vec<f32>,
    /// [first half of the block input, conditioning]
    net_in: Vec<f32>,
    h1: Vec<f32>,
    h2: Vec<f32>,
    s: Vec<f32>,
    t: Vec<f32>,
    x: Vec<f32>,
    tmp: Vec<f32>,
    z: Vec<f32>,
    gauss_out: Vec<f32>,
}

/// Allocation-free batch-1 sampler for one model file.
pub struct Sampler {
    spec: ModelSpec,
    digest: String,
    encoder: Option<Encoder>,
    head: Head,
    obs_inv_std: Vec<f32>,
    goal_inv_std: Vec<f32>,
    actions: ActionSpace,
    weight_bytes: usize,
    sc: Scratch,
    /// Backward-pass buffers, present only for denoising models.
    grad: Option<Box<GradScratch>>,
}

impl Sampler {
    /// Build the sampler for a validated model: precompute W and W⁻¹ and
    /// allocate every buffer a call will need (including the backward-pass
    /// buffers when the model asks for one-step denoising).
    pub fn new(m: &ModelFile) -> Result<Self, UnsupportedModel> {
        let mut s = Self::build(m);
        if m.spec.denoise {
            s.grad = Some(Box::new(GradScratch::new(&s)));
        }
        Ok(s)
    }

    fn build(m: &ModelFile) -> Self {
        let spec = m.spec.clone();
        let eps = spec.layer_norm_eps;
        let encoder = spec.encoder.as_ref().map(|e| Encoder {
            layers: (0..e.layers)
                .map(|j| {
                    (
                        Dense::load(m, &format!("enc.l{j}")),
                        LayerNorm::load(m, &format!("enc.ln{j}"), eps),
                    )
                })
                .collect(),
            out: Dense::load(m, "enc.out"),
        });
        let head = match spec.kind {
            PolicyKind::Flow => Head::Flow(
                (0..spec.blocks)
                    .map(|i| {
                        let p = format!("blocks.{i}.lin");
                        let f64s = |k: &str| -> Vec<f64> {
                            m.f32(&format!("{p}.{k}"))
                                .iter()
                                .map(|&v| v.into())
                                .collect()
                        };
                        // A validated model's perm is a permutation of 0..d.
                        let perm: Vec<usize> = m
                            .i64(&format!("{p}.perm"))
                            .iter()
                            .map(|&i| i as usize)
                            .collect();
                        let plu = Plu::new(&perm, &f64s("L"), &f64s("U"), &f64s("s"));
                        Block {
                            w: plu.w().iter().map(|&v| v as f32).collect(),
                            w_inv: plu.w_inv().iter().map(|&v| v as f32).collect(),
                            sum_log_abs_s: plu.log_abs_det() as f32,
                            s: Mlp::load(m, &format!("blocks.{i}.s"), eps),
                            t: Mlp::load(m, &format!("blocks.{i}.t"), eps),
                        }
                    })
                    .collect(),
            ),
            PolicyKind::Gaussian => Head::Gaussian(Mlp::load(m, "gauss", eps)),
        };
        let d = spec.act_dim;
        let (d1, _) = spec.split();
        let k = spec.cond_dim();
        let enc_w = spec
            .encoder
            .as_ref()
            .map_or(0, |e| e.width.max(spec.raw_cond_dim()));
        let hmax = spec.hidden[0].max(spec.hidden[1]);
        let weight_bytes = encoder.as_ref().map_or(0, Encoder::bytes)
            + match &head {
                Head::Flow(bs) => bs
                    .iter()
                    .map(|b| 4 * b.w.len() + b.s.bytes() + b.t.bytes())
                    .sum(),
                Head::Gaussian(g) => g.bytes(),
            };
        let goal_inv_std = spec
            .goal_norm
            .as_ref()
            .map_or(Vec::new(), |g| g.std.iter().map(|s| 1.0 / s).collect());
        Self {
            obs_inv_std: spec.obs_norm.std.iter().map(|s| 1.0 / s).collect(),
            goal_inv_std,
            actions: ActionSpace::new(&spec),
            sc: Scratch {
                raw_cond: vec![0.0; spec.raw_cond_dim()],
                cond: vec![0.0; k],
                enc_a: vec![0.0; enc_w],
                enc_b: vec![0.0; enc_w],
                net_in: vec![0.0; d1 + k],
                h1: vec![0.0; hmax],
                h2: vec![0.0; hmax],
                s: vec![0.0; d],
                t: vec![0.0; d],
                x: vec![0.0; d],
                tmp: vec![0.0; d],
                z: vec![0.0; d],
                gauss_out: vec![0.0; 2 * d],
            },
            digest: m.spec.digest.clone(),
            spec,
            encoder,
            head,
            weight_bytes,
            grad: None,
        }
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// ∇ₐ log p(a | obs, goal) for a normalised action, by a hand-written
    /// backward pass (allocation-free). Available for every model; used
    /// by the one-step denoise.
    pub fn grad_log_prob(
        &mut self,
        obs: &[f32],
        goal: &[f32],
        a: &[f32],
        grad: &mut [f32],
    ) -> Result<(), SampleError> {
        let d = self.spec.act_dim;
        if a.len() != d || grad.len() != d {
            return Err(SampleError::ActionLen {
                found: a.len().min(grad.len()),
                expected: d,
            });
        }
        self.condition(obs, goal)?;
        if self.grad.is_none() {
            // First use on a non-denoising model: allocate once, outside any tick.
            self.grad = Some(Box::new(GradScratch::new(self)));
        }
        let g = self.grad.as_deref_mut().expect("just set");
        g.a.copy_from_slice(a);
        likelihood_grad(&self.head, &self.spec, &self.sc.cond, g);
        grad.copy_from_slice(&g.g[..d]);
        Ok(())
    }

    pub fn digest(&self) -> &str {
        &self.digest
    }

    /// Bytes of weights streamed per sample (for the bandwidth bound).
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    /// The last sampled action in the flow's normalised space, before
    /// clipping (what the learner and the log need).
    pub fn last_raw_action(&self) -> &[f32] {
        &self.sc.x
    }

    /// Sample with an RNG seeded from (seed, tick): the same pair always
    /// gives the same action. Returns the exact log-prob of the unclipped
    /// normalised action.
    pub fn sample_seeded(
        &mut self,
        obs: &[f32],
        goal: &[f32],
        seed: u64,
        tick: u64,
        action: &mut [f32],
    ) -> Result<f32, SampleError> {
        self.sample_tempered(obs, goal, seed, tick, 1.0, action)
    }

    /// [`Self::sample_seeded`] at latent temperature `tau` ∈ [0, 1]: the
    /// base noise is z = τ·ε with ε ~ N(0, I) drawn from (seed, tick), so
    /// τ = 0 is the deterministic z = 0 action. Returns the exact log-density
    /// of the unclipped normalised action under the tempered policy
    /// (z ~ N(0, τ²I)); at τ = 0, where that density is a point mass, the
    /// density of the same action under the untempered policy (τ = 1).
    pub fn sample_tempered(
        &mut self,
        obs: &[f32],
        goal: &[f32],
        seed: u64,
        tick: u64,
        tau: f32,
        action: &mut [f32],
    ) -> Result<f32, SampleError> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ tick.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let mut z = std::mem::take(&mut self.sc.z);
        for v in z.iter_mut() {
            *v = StandardNormal.sample(&mut rng);
        }
        let log_eps = log_normal(&z);
        for v in z.iter_mut() {
            *v *= tau;
        }
        let r = self.sample_with_noise(obs, goal, &z, action);
        // log N(z; 0, τ²I) = log N(ε; 0, I) − d·ln τ replaces log N(z; 0, I).
        let r = match r {
            Ok(lp) if tau > 0.0 && tau != 1.0 => {
                Ok(lp - log_normal(&z) + log_eps - z.len() as f32 * tau.ln())
            }
            other => other,
        };
        self.sc.z = z;
        r
    }

    /// Sample from caller-supplied base noise `z` (length act_dim). Writes the
    /// clipped action in physical units into `action` and returns log p of
    /// the unclipped normalised action (see [`Self::last_raw_action`]).
    pub fn sample_with_noise(
        &mut self,
        obs: &[f32],
        goal: &[f32],
        z: &[f32],
        action: &mut [f32],
    ) -> Result<f32, SampleError> {
        let d = self.spec.act_dim;
        if z.len() != d {
            return Err(SampleError::NoiseLen {
                found: z.len(),
                expected: d,
            });
        }
        if action.len() != d {
            return Err(SampleError::ActionLen {
                found: action.len(),
                expected: d,
            });
        }
        self.condition(obs, goal)?;
        let log_base = log_normal(z);
        let sc = &mut self.sc;
        let log_prob = match &self.head {
            Head::Gaussian(mlp) => {
                mlp.forward(&sc.cond, &mut sc.h1, &mut sc.h2, &mut sc.gauss_out);
                let (mean, log_std) = sc.gauss_out.split_at(d);
                let mut lp = log_base;
                for i in 0..d {
                    let ls = log_std[i].clamp(LOG_STD_MIN, LOG_STD_MAX);
                    sc.x[i] = mean[i] + ls.exp() * z[i];
                    lp -= ls;
                }
                lp
            }
            Head::Flow(blocks) => {
                sc.x.copy_from_slice(z);
                match self.spec.direction {
                    Direction::Inverse => log_base - inverse_pass(blocks, &self.spec, sc),
                    Direction::Forward => log_base - forward_pass(blocks, &self.spec, sc),
                }
            }
        };
        if let Some(g) = self.grad.as_deref_mut() {
            // a ← a + σ²·∇ₐ log p(a|y); the returned log-prob stays that of
            // the sample itself (the denoised action has no cheap density).
            let sigma2 = self.spec.noise_sigma * self.spec.noise_sigma;
            g.a.copy_from_slice(&self.sc.x);
            likelihood_grad(&self.head, &self.spec, &self.sc.cond, g);
            for (x, gi) in self.sc.x.iter_mut().zip(&g.g) {
                *x += sigma2 * gi;
            }
        }
        if !log_prob.is_finite() || self.sc.x.iter().any(|v| !v.is_finite()) {
            return Err(SampleError::OutputNotFinite);
        }
        self.actions.to_physical(&self.sc.x[..d], &mut action[..d]);
        Ok(log_prob)
    }

    /// Exact log p(a | obs, goal) of a normalised action, writing its latent
    /// into `z_out`. The likelihood direction of the flow.
    pub fn log_prob(
        &mut self,
        obs: &[f32],
        goal: &[f32],
        a: &[f32],
        z_out: &mut [f32],
    ) -> Result<f32, SampleError> {
        let d = self.spec.act_dim;
        if a.len() != d || z_out.len() != d {
            return Err(SampleError::ActionLen {
                found: a.len().min(z_out.len()),
                expected: d,
            });
        }
        self.condition(obs, goal)?;
        let sc = &mut self.sc;
        sc.x.copy_from_slice(a);
        let lp = match &self.head {
            Head::Gaussian(mlp) => {
                mlp.forward(&sc.cond, &mut sc.h1, &mut sc.h2, &mut sc.gauss_out);
                let (mean, log_std) = sc.gauss_out.split_at(d);
                let mut ld = 0.0;
                for i in 0..d {
                    let ls = log_std[i].clamp(LOG_STD_MIN, LOG_STD_MAX);
                    sc.x[i] = (a[i] - mean[i]) * (-ls).exp();
                    ld -= ls;
                }
                ld
            }
            Head::Flow(blocks) => match self.spec.direction {
                Direction::Inverse => forward_pass(blocks, &self.spec, sc),
                Direction::Forward => inverse_pass(blocks, &self.spec, sc),
            },
        };
        z_out.copy_from_slice(&self.sc.x);
        Ok(lp + log_normal(z_out))
    }

    /// Validate and normalise obs/goal, then run the encoder into `sc.cond`.
    fn condition(&mut self, obs: &[f32], goal: &[f32]) -> Result<(), SampleError> {
        let (od, gd) = (self.spec.obs_dim, self.spec.goal_dim);
        if obs.len() != od {
            return Err(SampleError::ObsLen {
                found: obs.len(),
                expected: od,
            });
        }
        if goal.len() != gd {
            return Err(SampleError::GoalLen {
                found: goal.len(),
                expected: gd,
            });
        }
        if let Some(index) = obs.iter().position(|v| !v.is_finite()) {
            return Err(SampleError::ObsNotFinite { index });
        }
        if let Some(index) = goal.iter().position(|v| !v.is_finite()) {
            return Err(SampleError::GoalNotFinite { index });
        }
        let sc = &mut self.sc;
        for i in 0..od {
            sc.raw_cond[i] = (obs[i] - self.spec.obs_norm.mean[i]) * self.obs_inv_std[i];
        }
        if let Some(g) = &self.spec.goal_norm {
            for i in 0..gd {
                sc.raw_cond[od + i] = (goal[i] - g.mean[i]) * self.goal_inv_std[i];
            }
        }
        match &self.encoder {
            Some(e) => e.forward(&sc.raw_cond, &mut sc.enc_a, &mut sc.enc_b, &mut sc.cond),
            None => sc.cond.copy_from_slice(&sc.raw_cond),
        }
        Ok(())
    }
}

fn log_normal(z: &[f32]) -> f32 {
    -0.5 * z.iter().map(|v| v * v).sum::<f32>() - z.len() as f32 * HALF_LN_2PI
}

/// Compute S and T (into `sc.s`, `sc.t`) from the first `d1` entries of
/// `sc.tmp` (`from_tmp`) or `sc.x`.
#[inline]
fn coupling_nets(b: &Block, spec: &ModelSpec, from_tmp: bool, sc: &mut Scratch) {
    let (d1, d2) = spec.split();
    let v = if from_tmp { &sc.tmp } else { &sc.x };
    sc.net_in[..d1].copy_from_slice(&v[..d1]);
    sc.net_in[d1..].copy_from_slice(&sc.cond);
    b.s.forward(&sc.net_in, &mut sc.h1, &mut sc.h2, &mut sc.s[..d2]);
    b.t.forward(&sc.net_in, &mut sc.h1, &mut sc.h2, &mut sc.t[..d2]);
}

/// Blocks in order, each x -> x' (linear then coupling); `sc.x` in place.
/// Returns the summed log|det J|.
fn forward_pass(blocks: &[Block], spec: &ModelSpec, sc: &mut Scratch) -> f32 {
    let d = spec.act_dim;
    let (d1, d2) = spec.split();
    let mut logdet = 0.0;
    for b in blocks {
        // u = x · W
        gemv_rows(&sc.x, &b.w, &mut sc.tmp, d);
        coupling_nets(b, spec, true, sc);
        for j in 0..d1 {
            sc.x[j] = sc.tmp[j];
        }
        let mut sum_s = 0.0;
        for j in 0..d2 {
            let s = sc.s[j];
            sc.x[d1 + j] = (sc.tmp[d1 + j] - sc.t[j]) * (-s).exp();
            sum_s += s;
        }
        logdet += b.sum_log_abs_s - sum_s;
    }
    logdet
}

/// Blocks in reverse, each inverted; `sc.x` in place. Returns the summed
/// log|det J| of the inverse map.
fn inverse_pass(blocks: &[Block], spec: &ModelSpec, sc: &mut Scratch) -> f32 {
    let d = spec.act_dim;
    let (d1, d2) = spec.split();
    let mut logdet = 0.0;
    for b in blocks.iter().rev() {
        coupling_nets(b, spec, false, sc);
        let mut sum_s = 0.0;
        for j in 0..d1 {
            sc.tmp[j] = sc.x[j];
        }
        for j in 0..d2 {
            let s = sc.s[j];
            sc.tmp[d1 + j] = sc.x[d1 + j] * s.exp() + sc.t[j];
            sum_s += s;
        }
        gemv_rows(&sc.tmp, &b.w_inv, &mut sc.x, d);
        logdet += sum_s - b.sum_log_abs_s;
    }
    logdet
}

#[cfg(test)]
mod tests {
    use super::Sampler;
    use crate::policy::model::{Direction, PolicyKind};
    use crate::testkit::random_model;

    /// The tempered log-density is that of the action actually returned:
    /// the likelihood pass recovers z = τ·ε and log N(z; 0, τ²I) − log|det|.
    #[test]
    fn tempered_samples_carry_their_exact_log_density() {
        for (kind, blocks) in [
            (PolicyKind::Flow, Direction::Inverse),
            (PolicyKind::Flow, Direction::Forward),
            (PolicyKind::Gaussian, Direction::Inverse),
        ] {
            let m = random_model(3, 2, false, blocks, kind, 11);
            let mut s = Sampler::new(&m).unwrap();
            let (obs, goal) = ([0.3, -0.1, 0.7, 0.2, -0.5], [0.2, 0.4]);
            let mut act = [0.0f32; 3];
            let mut z = [0.0f32; 3];
            for tau in [1.0f32, 0.5, 0.1] {
                for tick in 0..20 {
                    let lp = s
                        .sample_tempered(&obs, &goal, 9, tick, tau, &mut act)
                        .unwrap();
                    let raw = s.last_raw_action().to_vec();
                    let lp1 = s.log_prob(&obs, &goal, &raw, &mut z).unwrap();
                    let zz: f32 = z.iter().map(|v| v * v).sum();
                    // log N(z; 0, τ²I) − log N(z; 0, I)
                    let shift = -0.5 * zz * (1.0 / (tau * tau) - 1.0) - 3.0 * tau.ln();
                    let want = lp1 + shift;
                    assert!(
                        (lp - want).abs() < 2e-3 * (1.0 + want.abs()),
                        "{kind:?} τ {tau} tick {tick}: {lp} vs {want}"
                    );
                }
            }
            // τ = 0: the z = 0 action, with its untempered density.
            let lp0 = s.sample_tempered(&obs, &goal, 9, 3, 0.0, &mut act).unwrap();
            let mut act_z = [0.0f32; 3];
            let lpz = s
                .sample_with_noise(&obs, &goal, &[0.0; 3], &mut act_z)
                .unwrap();
            assert_eq!((lp0, act), (lpz, act_z));
            // τ = 1 is the plain seeded sample.
            let a = s.sample_tempered(&obs, &goal, 9, 4, 1.0, &mut act).unwrap();
            let b = s.sample_seeded(&obs, &goal, 9, 4, &mut act_z).unwrap();
            assert_eq!((a, act), (b, act_z));
        }
    }
}
