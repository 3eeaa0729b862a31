//! The hand-written SAC update: the flow actor's sampling pass and the twin
//! ReLU critics (plain, or with a LayerNorm without affine before each ReLU
//! as `--critic-layer-norm` makes them), forward and backward by hand over
//! flat row-major buffers, with the same losses and the same AdamW / Polyak arithmetic as the candle
//! autograd path in [`super::sac`] (which stays the reference: the parity
//! test below compares every parameter's gradient against it).
//!
//! What makes it faster than autograd: W and W⁻¹ of every block are built
//! once per update (exact inverse of an 8×8 in f64, not a Neumann series of
//! tiny matmuls) and shared by the target and actor passes; the target pass
//! keeps no graph; Dense-bias → LeakyReLU → LayerNorm is one fused pass per
//! row with a fused backward; the actor's backward through the critics skips
//! the critic weight gradients nobody applies; the buffers live across
//! updates; AdamW and Polyak are one pass per parameter set.
//!
//! It covers the configurations the learner runs by default and the
//! on-robot recipe: a flow policy without a conditioning encoder, plain or
//! LayerNorm critics, with or without the BC term λ·(−log π(a_data|s))
//! (its likelihood pass is the sampling pass run in the other direction).
//! [`Fast::supports`] says so; anything else takes the autograd path.
//!
//! Learner only (off the control thread): no real-time promise. The
//! activations and scratch live across updates; a few per-row vectors
//! (B or B×d values) are still allocated per update.

use std::ops::Range;

use candle_core::{Tensor, Var};
use gemm::Parallelism;
use rayon::prelude::*;

use super::error::{LearnerError, Result};
use super::kernels::{
    adamw_step, add_col_sums, leaky_ln_backward, leaky_ln_forward, ln_backward, ln_relu_forward,
    matmul, polyak, AdamCfg, LnCache, Mat, Real, CRITIC_LN_EPS,
};
use super::sac::SacConfig;
use crate::twin::Twin;
use flowpilot_core::policy::model::{Direction, ModelSpec, PolicyKind};
use flowpilot_core::policy::plu::matmul as mm64;
use flowpilot_core::policy::sampler::HALF_LN_2PI;

/// A parameter's place in a flat buffer.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    off: usize,
    len: usize,
}

impl Slot {
    fn of<'a, T>(&self, buf: &'a [T]) -> &'a [T] {
        &buf[self.off..self.off + self.len]
    }
    fn of_mut<'a, T>(&self, buf: &'a mut [T]) -> &'a mut [T] {
        &mut buf[self.off..self.off + self.len]
    }
}

/// Three disjoint slots of one buffer, mutably, in increasing offset order.
fn three_mut<T>(buf: &mut [T], a: Slot, b: Slot, c: Slot) -> (&mut [T], &mut [T], &mut [T]) {
    assert!(a.off + a.len <= b.off && b.off + b.len <= c.off);
    let (x, rest) = buf.split_at_mut(b.off);
    let (y, z) = rest.split_at_mut(c.off - b.off);
    (
        &mut x[a.off..a.off + a.len],
        &mut y[..b.len],
        &mut z[..c.len],
    )
}

/// A parameter set (the actor, or both critics): values, gradients, AdamW
/// moments, all flat; `vars` keeps the candle variable each slot mirrors.
struct Params<T> {
    data: Vec<T>,
    m: Vec<T>,
    v: Vec<T>,
    vars: Vec<(Var, Slot)>,
    adam: AdamCfg,
    steps: u64,
}

impl<T: Real> Params<T> {
    fn new(adam: AdamCfg) -> Self {
        Self {
            data: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
            vars: Vec::new(),
            adam,
            steps: 0,
        }
    }

    /// Append a variable's values; returns its slot.
    fn push(&mut self, var: &Var) -> Result<Slot> {
        let vals = var.as_tensor().flatten_all()?.to_vec1::<T>()?;
        let slot = Slot {
            off: self.data.len(),
            len: vals.len(),
        };
        self.data.extend_from_slice(&vals);
        self.vars.push((var.clone(), slot));
        Ok(slot)
    }

    fn finish(&mut self) {
        let n = self.data.len();
        self.m = vec![T::zero(); n];
        self.v = vec![T::zero(); n];
    }

    fn step(&mut self, grad: &[T]) {
        self.steps += 1;
        adamw_step(
            &self.adam,
            self.steps,
            &mut self.data,
            grad,
            &mut self.m,
            &mut self.v,
        );
    }
}

/// Write flat values back into the candle variables they mirror.
fn store_vars<T: Real>(data: &[T], vars: &[(Var, Slot)]) -> Result<()> {
    for (var, slot) in vars {
        let t = Tensor::from_slice(slot.of(data), var.shape(), var.device())?;
        var.set(&t)?;
    }
    Ok(())
}

/// Slots of one coupling MLP: l0, ln0, l1, ln1, l2.
#[derive(Debug, Clone, Copy, Default)]
struct NetSlots {
    w0: Slot,
    b0: Slot,
    g0: Slot,
    be0: Slot,
    w1: Slot,
    b1: Slot,
    g1: Slot,
    be1: Slot,
    w2: Slot,
    b2: Slot,
    inp: usize,
    h0: usize,
    h1: usize,
    out: usize,
}

/// Slots of one block: the PLU layer and the s and t nets.
#[derive(Debug, Clone, Copy, Default)]
struct BlockSlots {
    l: Slot,
    u: Slot,
    s: Slot,
    nets: [NetSlots; 2],
}

/// Slots of one ReLU critic.
#[derive(Debug, Clone, Copy, Default)]
struct CriticSlots {
    w: [Slot; 3],
    b: [Slot; 3],
    inp: usize,
    hid: usize,
    /// A LayerNorm (no affine) before each ReLU.
    ln: bool,
}

/// W, W⁻¹ and the factors of one block, rebuilt once per update.
#[derive(Default)]
struct Plu<T> {
    w: Vec<T>,
    w_inv: Vec<T>,
    log_abs_s: T,
    /// The f64 construction and its factors, for the gradient of the
    /// (d, d) matrices w.r.t. L, U, s.
    f64: Option<flowpilot_core::policy::plu::Plu>,
}

#[derive(Default)]
struct NetCache<T> {
    l0: LnCache<T>,
    h0: Vec<T>,
    l1: LnCache<T>,
    h1: Vec<T>,
    out: Vec<T>,
}

/// What one sampling step keeps for its backward.
#[derive(Default)]
struct StepCache<T> {
    /// Step input (B, d).
    x: Vec<T>,
    /// Forward direction: x·W (B, d).
    u: Vec<T>,
    /// Net input [first half, cond] (B, d1 + k).
    inp: Vec<T>,
    nets: [NetCache<T>; 2],
    /// exp(s) (inverse direction) or exp(−s) (forward direction), (B, d2).
    es: Vec<T>,
    /// Coupling output [first, v2] (B, d).
    y: Vec<T>,
}

#[derive(Default)]
struct CriticCache<T> {
    h0: Vec<T>,
    h1: Vec<T>,
    q: Vec<T>,
    /// LayerNorm critics only: the normalised rows before each ReLU and
    /// their 1 / sqrt(var + ε).
    n0: Vec<T>,
    n1: Vec<T>,
    r0: Vec<T>,
    r1: Vec<T>,
}

/// Scratch for the backward passes.
#[derive(Default)]
struct Work<T> {
    d0: Vec<T>,
    d1: Vec<T>,
    dout: Vec<T>,
    dprev: Vec<T>,
    ds: Vec<T>,
    dt: Vec<T>,
    dmat: Vec<T>,
}

/// Shapes and fixed inputs of the update (read-only in the passes).
struct Geo<T> {
    d: usize,
    d1: usize,
    d2: usize,
    k: usize,
    inverse: bool,
    eps: T,
    /// Latent temperature of the optimised policy: the sampling passes get
    /// z = τ·ε and their log π is that of z ~ N(0, τ²I).
    tau: T,
    /// The critics see sampled actions clipped to the box (the executed
    /// action), in the target and the actor loss.
    clip: bool,
    blocks: Vec<BlockSlots>,
    q: [CriticSlots; 2],
    in_mean: Vec<T>,
    in_inv_std: Vec<T>,
}

/// What a pass reads: shapes, parameter values, this update's W and W⁻¹.
#[derive(Clone, Copy)]
struct View<'a, T> {
    g: &'a Geo<T>,
    /// The direction [`Worker::sample`] runs: the policy's own for sampling
    /// (`g.inverse`), the other one for the likelihood of given actions.
    inverse: bool,
    actor: &'a [T],
    plu: &'a [Plu<T>],
    critic: &'a [T],
    targ: &'a [T],
}

/// One thread's share of the batch: its rows' activations and scratch,
/// and its own gradient sums (added up after the parallel part).
#[derive(Default)]
struct Worker<T> {
    steps: Vec<StepCache<T>>,
    qc: [CriticCache<T>; 2],
    work: Work<T>,
    cond: Vec<T>,
    x: Vec<T>,
    grad_actor: Vec<T>,
    grad_critic: Vec<T>,
}

/// The hand-written SAC engine; owns the parameters while it is in use
/// (the candle variables are refreshed by [`Fast::store`]).
///
/// With n threads the batch is cut into n row ranges, each run start to
/// end by one worker (no threading inside a product): per-row work is
/// independent, LayerNorm included, and only the gradient sums meet.
pub(crate) struct Fast<T: Real> {
    geo: Geo<T>,
    actor: Params<T>,
    perms: Vec<Vec<usize>>,
    plu: Vec<Plu<T>>,
    critic: Params<T>,
    targ: Vec<T>,
    targ_vars: Vec<(Var, Slot)>,
    workers: Vec<Worker<T>>,
}

/// Per-row results of a sampling pass.
pub(crate) struct Sampled<T> {
    pub(crate) a: Vec<T>,
    pub(crate) lp: Vec<T>,
    /// The pass's log|det| (lp = log N(input) − logdet).
    pub(crate) logdet: Vec<T>,
}

fn adam_cfg(lr: f64) -> AdamCfg {
    // The optimiser settings of `sac::adam`.
    AdamCfg {
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weight_decay: 0.0,
    }
}

fn resize<T: Real>(v: &mut Vec<T>, n: usize) {
    v.resize(n, T::zero());
}

impl<T: Real> Fast<T> {
    /// Whether this path computes the same update as the autograd path for
    /// `spec` under `cfg`.
    /// (Every [`SacConfig`] is: plain or LayerNorm critics, any BC weight.)
    pub(crate) fn supports(spec: &ModelSpec, _cfg: &SacConfig) -> bool {
        spec.kind == PolicyKind::Flow && spec.encoder.is_none()
    }

    /// Take the current values of the twin's and critics' variables.
    /// `critics` are [q0, q1], `targets` their Polyak copies, both as
    /// (w0, b0, w1, b1, w2, b2); `in_mean`, `in_inv_std` the normalisers of
    /// s = obs ++ goal.
    pub(crate) fn new(
        twin: &Twin,
        critics: [&[Var]; 2],
        targets: [&[Var]; 2],
        in_mean: &[T],
        in_inv_std: &[T],
        cfg: &SacConfig,
        threads: usize,
    ) -> Result<Self> {
        let spec = twin.spec();
        let (d1, d2) = spec.split();
        let d = spec.act_dim;
        let k = in_mean.len();
        let get = |name: &str| {
            twin.var(name)
                .ok_or_else(|| LearnerError::FastPath(format!("the twin lacks {name}")))
        };
        let mut actor = Params::new(adam_cfg(cfg.lr_actor));
        let mut blocks = Vec::new();
        for i in 0..spec.blocks {
            let p = format!("blocks.{i}");
            let l = actor.push(get(&format!("{p}.lin.L"))?)?;
            let u = actor.push(get(&format!("{p}.lin.U"))?)?;
            let s = actor.push(get(&format!("{p}.lin.s"))?)?;
            let mut nets = [NetSlots::default(); 2];
            for (j, n) in ["s", "t"].iter().enumerate() {
                let q = format!("{p}.{n}");
                let mut push = |name: &str| actor.push(get(&format!("{q}.{name}"))?);
                // Order matters: b, g, beta of a LayerNorm stay adjacent
                // (the fused backward takes them together).
                let w0 = push("l0.w")?;
                let b0 = push("l0.b")?;
                let g0 = push("ln0.g")?;
                let be0 = push("ln0.b")?;
                let w1 = push("l1.w")?;
                let b1 = push("l1.b")?;
                let g1 = push("ln1.g")?;
                let be1 = push("ln1.b")?;
                let w2 = push("l2.w")?;
                let b2 = push("l2.b")?;
                let (h0, h1, out) = (b0.len, b1.len, b2.len);
                let inp = w0.len / h0;
                if inp != d1 + k || w1.len != h0 * h1 || w2.len != h1 * out || out != d2 {
                    return Err(LearnerError::FastPath(format!("{q}: unexpected shapes")));
                }
                nets[j] = NetSlots {
                    w0,
                    b0,
                    g0,
                    be0,
                    w1,
                    b1,
                    g1,
                    be1,
                    w2,
                    b2,
                    inp,
                    h0,
                    h1,
                    out,
                };
            }
            blocks.push(BlockSlots { l, u, s, nets });
        }
        actor.finish();
        let mut critic = Params::new(adam_cfg(cfg.lr_critic));
        let mut q = [CriticSlots::default(); 2];
        for (c, vars) in critics.iter().enumerate() {
            let mut w = [Slot::default(); 3];
            let mut b = [Slot::default(); 3];
            for l in 0..3 {
                w[l] = critic.push(&vars[2 * l])?;
                b[l] = critic.push(&vars[2 * l + 1])?;
            }
            q[c] = CriticSlots {
                w,
                b,
                hid: b[0].len,
                inp: w[0].len / b[0].len,
                ln: cfg.critic_layer_norm,
            };
            if q[c].inp != k + d || b[2].len != 1 {
                return Err(LearnerError::FastPath("critic shapes".into()));
            }
        }
        critic.finish();
        // Targets share the critics' layout.
        let mut targ = Vec::with_capacity(critic.data.len());
        let mut targ_vars = Vec::new();
        for (vars, cs) in targets
            .iter()
            .zip(&critic.vars.chunks(6).collect::<Vec<_>>())
        {
            for (v, (_, slot)) in vars.iter().zip(cs.iter()) {
                let vals = v.as_tensor().flatten_all()?.to_vec1::<T>()?;
                if vals.len() != slot.len {
                    return Err(LearnerError::FastPath("target critic shapes".into()));
                }
                targ.extend_from_slice(&vals);
                targ_vars.push((v.clone(), *slot));
            }
        }
        let perms = twin
            .perms()
            .iter()
            .map(|p| p.iter().map(|&c| c as usize).collect())
            .collect();
        let workers = (0..threads.max(1))
            .map(|_| Worker {
                steps: blocks.iter().map(|_| StepCache::default()).collect(),
                grad_actor: vec![T::zero(); actor.data.len()],
                grad_critic: vec![T::zero(); critic.data.len()],
                ..Default::default()
            })
            .collect();
        Ok(Self {
            geo: Geo {
                d,
                d1,
                d2,
                k,
                inverse: spec.direction == Direction::Inverse,
                eps: T::of(spec.layer_norm_eps as f64),
                tau: T::of(cfg.latent_temperature),
                clip: cfg.critic_clips_actions,
                blocks: blocks.clone(),
                q,
                in_mean: in_mean.to_vec(),
                in_inv_std: in_inv_std.to_vec(),
            },
            plu: blocks.iter().map(|_| Plu::default()).collect(),
            actor,
            perms,
            critic,
            targ,
            targ_vars,
            workers,
        })
    }

    /// Write every value (actor, critics, targets) back into the candle
    /// variables, for export, the state file or the autograd path.
    pub(crate) fn store(&self) -> Result<()> {
        store_vars(&self.actor.data, &self.actor.vars)?;
        store_vars(&self.critic.data, &self.critic.vars)?;
        store_vars(&self.targ, &self.targ_vars)
    }

    /// Re-read the critics and targets from their variables (after a
    /// restored state file).
    pub(crate) fn load_critics(&mut self) -> Result<()> {
        for (data, vars) in [
            (&mut self.critic.data, &self.critic.vars),
            (&mut self.targ, &self.targ_vars),
        ] {
            for (var, slot) in vars {
                let vals = var.as_tensor().flatten_all()?.to_vec1::<T>()?;
                slot.of_mut(data).copy_from_slice(&vals);
            }
        }
        Ok(())
    }

    /// Build W, W⁻¹ and log|det| of every block from the current L, U, s.
    pub(crate) fn prepare(&mut self) {
        for ((bs, plu), perm) in self.geo.blocks.iter().zip(&mut self.plu).zip(&self.perms) {
            let f64s = |x: &[T]| -> Vec<f64> { x.iter().map(|v| v.to64()).collect() };
            let data = &self.actor.data;
            let m = flowpilot_core::policy::plu::Plu::new(
                perm,
                &f64s(bs.l.of(data)),
                &f64s(bs.u.of(data)),
                &f64s(bs.s.of(data)),
            );
            plu.w = m.w().iter().map(|&x| T::of(x)).collect();
            plu.w_inv = m.w_inv().iter().map(|&x| T::of(x)).collect();
            plu.log_abs_s = T::of(m.log_abs_det());
            plu.f64 = Some(m);
        }
    }

    /// Run `f` on each worker with its row range of a `b`-row batch, in
    /// parallel when there are several; results in row order.
    fn each<R: Send>(
        &mut self,
        b: usize,
        f: impl Fn(&mut Worker<T>, View<'_, T>, Range<usize>) -> R + Sync,
    ) -> Vec<R> {
        let v = View {
            g: &self.geo,
            inverse: self.geo.inverse,
            actor: &self.actor.data,
            plu: &self.plu,
            critic: &self.critic.data,
            targ: &self.targ,
        };
        let n = self.active(b);
        if n == 1 {
            return vec![f(&mut self.workers[0], v, 0..b)];
        }
        self.workers[..n]
            .par_iter_mut()
            .enumerate()
            .map(|(i, w)| f(w, v, i * b / n..(i + 1) * b / n))
            .collect()
    }

    /// Workers in use for a `b`-row batch.
    fn active(&self, b: usize) -> usize {
        self.workers.len().min(b).max(1)
    }

    /// The critic target y = r + γ(1 − done)(min Q̄(s', a') − α log π(a'|s'))
    /// (needs [`Self::prepare`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn target(
        &mut self,
        s2: &[T],
        r: &[T],
        done: &[T],
        z2: &[T],
        alpha: T,
        gamma: f64,
        b: usize,
    ) -> Vec<T> {
        let (k, d) = (self.geo.k, self.geo.d);
        self.each(b, |w, v, rg| {
            w.target_rows(
                v,
                &s2[rg.start * k..rg.end * k],
                &r[rg.clone()],
                &done[rg.clone()],
                &z2[rg.start * d..rg.end * d],
                alpha,
                gamma,
                rg.len(),
            )
        })
        .concat()
    }

    /// Critic loss Σ_i mean((Q_i(s, a) − y)²) and its gradient (kept for
    /// [`Self::critic_step`]); returns (loss, mean Q_1).
    pub(crate) fn critic_grads(&mut self, s: &[T], a: &[T], y: &[T], b: usize) -> (T, T) {
        let (k, d) = (self.geo.k, self.geo.d);
        let inv_b = T::one() / T::of(b as f64);
        let parts = self.each(b, |w, v, rg| {
            w.critic_rows(
                v,
                &s[rg.start * k..rg.end * k],
                &a[rg.start * d..rg.end * d],
                &y[rg],
                inv_b,
            )
        });
        let n = self.active(b);
        sum_into_first(&mut self.workers[..n], |w| &mut w.grad_critic);
        sum_pairs(&parts)
    }

    pub(crate) fn critic_step(&mut self) {
        self.critic.step(&self.workers[0].grad_critic);
    }

    /// Actor loss mean(α log π(a|s) − min Q(s, a)) + 10·mean(Σ relu(|a|−1)²)
    /// with a reparameterised from z, plus Σ_r w_r·(−log π(a_data_r|s_r))
    /// when `bc` = Some((a_data, w)) (w: each row's BC weight, λ/rows for
    /// the rows imitated, 0 elsewhere), and its gradient (kept for
    /// [`Self::actor_step`]; needs [`Self::prepare`]); returns (loss, mean
    /// log π of the samples).
    pub(crate) fn actor_grads(
        &mut self,
        s: &[T],
        z: &[T],
        alpha: T,
        bc: Option<(&[T], &[T])>,
        b: usize,
    ) -> (T, T) {
        let (k, d) = (self.geo.k, self.geo.d);
        let inv_b = T::one() / T::of(b as f64);
        let parts = self.each(b, |w, v, rg| {
            w.actor_rows(
                v,
                &s[rg.start * k..rg.end * k],
                &z[rg.start * d..rg.end * d],
                alpha,
                bc.map(|(a, w)| (&a[rg.start * d..rg.end * d], &w[rg.clone()])),
                inv_b,
            )
        });
        let n = self.active(b);
        sum_into_first(&mut self.workers[..n], |w| &mut w.grad_actor);
        sum_pairs(&parts)
    }

    pub(crate) fn actor_step(&mut self) {
        self.actor.step(&self.workers[0].grad_actor);
    }

    pub(crate) fn polyak(&mut self, tau: f64) {
        polyak(&mut self.targ, &self.critic.data, tau);
    }

    /// The actor's gradient of the last [`Self::actor_grads`], per variable.
    #[cfg(test)]
    pub(crate) fn actor_grad_of(&self, var: &Var) -> Option<Vec<T>> {
        grad_of(&self.actor, &self.workers[0].grad_actor, var)
    }

    /// The critics' gradient of the last [`Self::critic_grads`], per variable.
    #[cfg(test)]
    pub(crate) fn critic_grad_of(&self, var: &Var) -> Option<Vec<T>> {
        grad_of(&self.critic, &self.workers[0].grad_critic, var)
    }
}

/// Add every worker's buffer into the first one's.
fn sum_into_first<T: Real>(workers: &mut [Worker<T>], buf: fn(&mut Worker<T>) -> &mut Vec<T>) {
    if let Some((first, rest)) = workers.split_first_mut() {
        let acc = buf(first);
        for w in rest {
            for (a, &x) in acc.iter_mut().zip(buf(w).iter()) {
                *a += x;
            }
        }
    }
}

fn sum_pairs<T: Real>(parts: &[(T, T)]) -> (T, T) {
    parts
        .iter()
        .fold((T::zero(), T::zero()), |(a, b), &(x, y)| (a + x, b + y))
}

impl<T: Real> Worker<T> {
    /// (s − mean) / std per row: the flow's conditioning and the critics'
    /// state input.
    fn normalise(&mut self, v: View<T>, s: &[T], b: usize) {
        let k = v.g.k;
        resize(&mut self.cond, b * k);
        for (c, r) in self.cond.chunks_exact_mut(k).zip(s.chunks_exact(k)) {
            for (((cv, &sv), &m), &is) in c.iter_mut().zip(r).zip(&v.g.in_mean).zip(&v.g.in_inv_std)
            {
                *cv = (sv - m) * is;
            }
        }
    }

    /// The critic input [normalised s, a] from `self.cond`; with `clip`,
    /// a as the robot executes it, clip(a, −1, 1).
    fn critic_input(&mut self, v: View<T>, a: &[T], b: usize, clip: bool) {
        let (k, d) = (v.g.k, v.g.d);
        resize(&mut self.x, b * (k + d));
        let (lo, hi) = (-T::one(), T::one());
        for ((x, c), ar) in self
            .x
            .chunks_exact_mut(k + d)
            .zip(self.cond.chunks_exact(k))
            .zip(a.chunks_exact(d))
        {
            x[..k].copy_from_slice(c);
            x[k..].copy_from_slice(ar);
            if clip {
                for xa in &mut x[k..] {
                    *xa = xa.max_of(lo).min_of(hi);
                }
            }
        }
    }

    /// The reparameterised sampling pass from base noise z (B, d) on
    /// `self.cond`, keeping what the backward needs.
    fn sample(&mut self, v: View<T>, z: &[T], b: usize) -> Sampled<T> {
        let (d, d1, d2, k) = (v.g.d, v.g.d1, v.g.d2, v.g.k);
        let nb = v.g.blocks.len();
        let mut logdet = vec![T::zero(); b];
        let mut cur = z.to_vec();
        for j in 0..nb {
            let bi = if v.inverse { nb - 1 - j } else { j };
            let bs = v.g.blocks[bi];
            let plu = &v.plu[bi];
            let st = &mut self.steps[j];
            resize(&mut st.x, b * d);
            st.x.copy_from_slice(&cur);
            // The half the nets see: z1 (inverse) or u1 of u = x·W (forward).
            let first: &[T] = if v.inverse {
                &st.x
            } else {
                resize(&mut st.u, b * d);
                matmul(
                    b,
                    d,
                    d,
                    &mut st.u,
                    false,
                    Mat::rows(&st.x, d),
                    Mat::rows(&plu.w, d),
                    Parallelism::None,
                );
                &st.u
            };
            resize(&mut st.inp, b * (d1 + k));
            for ((i, f), c) in st
                .inp
                .chunks_exact_mut(d1 + k)
                .zip(first.chunks_exact(d))
                .zip(self.cond.chunks_exact(k))
            {
                i[..d1].copy_from_slice(&f[..d1]);
                i[d1..].copy_from_slice(c);
            }
            for (ns, nc) in bs.nets.iter().zip(st.nets.iter_mut()) {
                net_forward(v.actor, ns, &st.inp, b, nc, v.g.eps, Parallelism::None);
            }
            resize(&mut st.es, b * d2);
            resize(&mut st.y, b * d);
            let (s_out, t_out) = (&st.nets[0].out, &st.nets[1].out);
            for r in 0..b {
                let (fr, yr) = (&first[r * d..(r + 1) * d], &mut st.y[r * d..(r + 1) * d]);
                yr[..d1].copy_from_slice(&fr[..d1]);
                let mut sum_s = T::zero();
                for c in 0..d2 {
                    let (sv, tv) = (s_out[r * d2 + c], t_out[r * d2 + c]);
                    sum_s += sv;
                    if v.inverse {
                        let e = sv.exp();
                        st.es[r * d2 + c] = e;
                        yr[d1 + c] = fr[d1 + c] * e + tv;
                    } else {
                        let e = (-sv).exp();
                        st.es[r * d2 + c] = e;
                        yr[d1 + c] = (fr[d1 + c] - tv) * e;
                    }
                }
                // The twin's order: logdet ± Σs, then ∓ log|s|.
                logdet[r] = if v.inverse {
                    logdet[r] + sum_s - plu.log_abs_s
                } else {
                    logdet[r] - sum_s + plu.log_abs_s
                };
            }
            if v.inverse {
                matmul(
                    b,
                    d,
                    d,
                    &mut cur,
                    false,
                    Mat::rows(&st.y, d),
                    Mat::rows(&plu.w_inv, d),
                    Parallelism::None,
                );
            } else {
                cur.copy_from_slice(&st.y);
            }
        }
        // log N(z; 0, τ²I) = −|z|²/(2τ²) − d·ln τ − d·ln√(2π); the
        // likelihood pass (`inverse` flipped) reads `logdet`, not this.
        let tau = v.g.tau;
        let c = T::of(d as f64 * (HALF_LN_2PI as f64 + tau.to64().ln()));
        let half = T::of(-0.5) / (tau * tau);
        let lp = z
            .chunks_exact(d)
            .zip(&logdet)
            .map(|(zr, &ld)| {
                let sq = zr.iter().fold(T::zero(), |a, &v| a + v * v);
                (sq * half - c) - ld
            })
            .collect();
        Sampled { a: cur, lp, logdet }
    }

    /// Backward of [`Self::sample`]: `da` (B, d) and `dlp` (B) in; the actor
    /// gradients accumulate into `self.actor.grad`.
    fn sample_backward(&mut self, v: View<T>, da: &[T], dlp: &[T], b: usize) {
        let (d, d1, d2) = (v.g.d, v.g.d1, v.g.d2);
        let nb = v.g.blocks.len();
        let w = &mut self.work;
        let mut dcur = da.to_vec();
        // lp = base − logdet.
        let dlogdet: Vec<T> = dlp.iter().map(|&v| -v).collect();
        let sum_dlogdet = dlogdet.iter().fold(T::zero(), |a, &v| a + v);
        for j in (0..nb).rev() {
            let bi = if v.inverse { nb - 1 - j } else { j };
            let bs = v.g.blocks[bi];
            let plu = &v.plu[bi];
            let st = &mut self.steps[j];
            resize(&mut w.dmat, d * d);
            resize(&mut w.dout, b * d);
            // dy: the gradient w.r.t. the coupling output [first, v2].
            let dlas = if v.inverse {
                // out = y·W⁻¹.
                matmul(
                    d,
                    d,
                    b,
                    &mut w.dmat,
                    false,
                    Mat::t(&st.y, d),
                    Mat::rows(&dcur, d),
                    Parallelism::None,
                );
                matmul(
                    b,
                    d,
                    d,
                    &mut w.dout,
                    false,
                    Mat::rows(&dcur, d),
                    Mat::t(&plu.w_inv, d),
                    Parallelism::None,
                );
                -sum_dlogdet
            } else {
                w.dout.copy_from_slice(&dcur);
                sum_dlogdet
            };
            resize(&mut w.ds, b * d2);
            resize(&mut w.dt, b * d2);
            let first: &[T] = if v.inverse { &st.x } else { &st.u };
            for r in 0..b {
                for c in 0..d2 {
                    let i = r * d2 + c;
                    let dv2 = w.dout[r * d + d1 + c];
                    let e = st.es[i];
                    if v.inverse {
                        // v2 = z2·e^s + t; logdet += Σs.
                        w.ds[i] = dv2 * first[r * d + d1 + c] * e + dlogdet[r];
                        w.dt[i] = dv2;
                        w.dout[r * d + d1 + c] = dv2 * e;
                    } else {
                        // v2 = (u2 − t)·e^{−s}; logdet −= Σs.
                        w.ds[i] = -(dv2 * st.y[r * d + d1 + c]) - dlogdet[r];
                        w.dt[i] = -(dv2 * e);
                        w.dout[r * d + d1 + c] = dv2 * e;
                    }
                }
            }
            // The nets' input gradient flows into the first d1 columns.
            resize(&mut w.dprev, b * d1);
            for r in 0..b {
                w.dprev[r * d1..(r + 1) * d1].copy_from_slice(&w.dout[r * d..r * d + d1]);
            }
            for (n, ns) in bs.nets.iter().enumerate() {
                let dn = if n == 0 { &w.ds } else { &w.dt };
                net_backward(
                    v.actor,
                    &mut self.grad_actor,
                    ns,
                    &st.inp,
                    b,
                    &mut st.nets[n],
                    dn,
                    d1,
                    &mut w.dprev,
                    &mut w.d0,
                    &mut w.d1,
                    Parallelism::None,
                );
            }
            for r in 0..b {
                w.dout[r * d..r * d + d1].copy_from_slice(&w.dprev[r * d1..(r + 1) * d1]);
            }
            if !v.inverse {
                // u = x·W.
                matmul(
                    d,
                    d,
                    b,
                    &mut w.dmat,
                    false,
                    Mat::t(&st.x, d),
                    Mat::rows(&w.dout, d),
                    Parallelism::None,
                );
                if j > 0 {
                    matmul(
                        b,
                        d,
                        d,
                        &mut dcur,
                        false,
                        Mat::rows(&w.dout, d),
                        Mat::t(&plu.w, d),
                        Parallelism::None,
                    );
                }
            } else {
                dcur.copy_from_slice(&w.dout);
            }
            plu_backward(d, plu, v.inverse, &w.dmat, dlas, &mut self.grad_actor, &bs);
        }
    }

    /// Forward of critic `c` on `self.x`, with its parameters from `data`.
    fn critic_forward(&mut self, v: View<T>, c: usize, targets: bool, b: usize) {
        let data = if targets { v.targ } else { v.critic };
        critic_forward(
            data,
            &v.g.q[c],
            &self.x,
            b,
            &mut self.qc[c],
            Parallelism::None,
        );
    }

    /// The critic target y = r + γ(1 − done)(min Q̄(s', a') − α log π(a'|s')).
    #[allow(clippy::too_many_arguments)]
    fn target_rows(
        &mut self,
        v: View<T>,
        s2: &[T],
        r: &[T],
        done: &[T],
        z2: &[T],
        alpha: T,
        gamma: f64,
        b: usize,
    ) -> Vec<T> {
        self.normalise(v, s2, b);
        let smp = self.sample(v, z2, b);
        self.critic_input(v, &smp.a, b, v.g.clip);
        self.critic_forward(v, 0, true, b);
        self.critic_forward(v, 1, true, b);
        let g = T::of(gamma);
        (0..b)
            .map(|i| {
                let qn = self.qc[0].q[i].min_of(self.qc[1].q[i]);
                let soft = qn - smp.lp[i] * alpha;
                let not_done = -done[i] + T::one();
                r[i] + soft * not_done * g
            })
            .collect()
    }

    /// This worker's rows of the critic loss Σ_i mean((Q_i(s, a) − y)²)
    /// over the whole batch (`inv_b` = 1/B) and their gradient in
    /// `grad_critic`; returns (its share of the loss, of mean Q_1).
    fn critic_rows(&mut self, v: View<T>, s: &[T], a: &[T], y: &[T], inv_b: T) -> (T, T) {
        let b = y.len();
        self.normalise(v, s, b);
        self.critic_input(v, a, b, false);
        self.grad_critic.fill(T::zero());
        let two = T::of(2.0);
        let mut loss = T::zero();
        let mut q1 = T::zero();
        for c in 0..2 {
            self.critic_forward(v, c, false, b);
            let mut l = T::zero();
            let dq: Vec<T> = self.qc[c]
                .q
                .iter()
                .zip(y)
                .map(|(&q, &yv)| {
                    l += (q - yv) * (q - yv);
                    two * (q - yv) * inv_b
                })
                .collect();
            loss += l * inv_b;
            if c == 0 {
                q1 = self.qc[0].q.iter().fold(T::zero(), |a, &v| a + v) * inv_b;
            }
            critic_backward(
                v.critic,
                Some(&mut self.grad_critic),
                &v.g.q[c],
                &self.x,
                b,
                &self.qc[c],
                &dq,
                None,
                &mut self.work,
                Parallelism::None,
            );
        }
        (loss, q1)
    }

    /// Actor loss mean(α log π(a|s) − min Q(s, a)) + 10·mean(Σ relu(|a|−1)²)
    /// with a reparameterised from z, plus Σ w_r·(−log π(a_data_r|s_r))
    /// with `bc` = (a_data, w), on this worker's rows (`inv_b` = 1/B of the
    /// whole batch); the gradient in `grad_actor`; returns (its share of the
    /// loss, of mean log π).
    fn actor_rows(
        &mut self,
        v: View<T>,
        s: &[T],
        z: &[T],
        alpha: T,
        bc: Option<(&[T], &[T])>,
        inv_b: T,
    ) -> (T, T) {
        let (d, k) = (v.g.d, v.g.k);
        let b = z.len() / d;
        self.normalise(v, s, b);
        let smp = self.sample(v, z, b);
        self.critic_input(v, &smp.a, b, v.g.clip);
        self.critic_forward(v, 0, false, b);
        self.critic_forward(v, 1, false, b);
        let ten = T::of(10.0);
        let two = T::of(2.0);
        let half = T::of(0.5);
        let mut loss = T::zero();
        let mut outside = T::zero();
        let mut lp_sum = T::zero();
        let (mut dq0, mut dq1) = (vec![T::zero(); b], vec![T::zero(); b]);
        let rows = self.qc[0].q.iter().zip(&self.qc[1].q).zip(&smp.lp);
        for (((&q0, &q1), &lp), (g0, g1)) in rows.zip(dq0.iter_mut().zip(dq1.iter_mut())) {
            loss += lp * alpha - q0.min_of(q1);
            lp_sum += lp;
            // candle's minimum: the gradient goes to the smaller, halved on a tie.
            let g = -inv_b;
            if q0 < q1 {
                *g0 = g;
            } else if q1 < q0 {
                *g1 = g;
            } else {
                *g0 = g * half;
                *g1 = g * half;
            }
        }
        let mut da = vec![T::zero(); b * d];
        for (av, dav) in smp.a.iter().zip(da.iter_mut()) {
            let o = (av.abs() - T::one()).max_of(T::zero());
            outside += o * o;
            // d/da of 10·mean(Σ relu(|a|−1)²).
            let sign = if *av > T::zero() {
                T::one()
            } else if *av < T::zero() {
                -T::one()
            } else {
                T::zero()
            };
            *dav = ten * inv_b * two * o * sign;
        }
        loss = loss * inv_b + outside * inv_b * ten;
        let mut dx = vec![T::zero(); b * d];
        for (c, dq) in [dq0, dq1].iter().enumerate() {
            critic_backward(
                v.critic,
                None,
                &v.g.q[c],
                &self.x,
                b,
                &self.qc[c],
                dq,
                Some((&mut dx, k)),
                &mut self.work,
                Parallelism::None,
            );
        }
        for ((a, x), av) in da.iter_mut().zip(&dx).zip(&smp.a) {
            // clip's gradient: 1 inside the box, 0 outside (as candle's
            // relu form of it in sac.rs)
            if !v.g.clip || av.abs() < T::one() {
                *a += *x;
            }
        }
        let dlp = vec![alpha * inv_b; b];
        self.grad_actor.fill(T::zero());
        self.sample_backward(v, &da, &dlp, b);
        if let Some((a_data, w)) = bc {
            // log π(a|s) = log N(z(a)) + log|det ∂z/∂a|: the sampling pass in
            // the other direction (the twin's `log_prob`), from a to z.
            let vb = View {
                inverse: !v.inverse,
                ..v
            };
            let lik = self.sample(vb, a_data, b);
            let c = T::of(d as f64 * HALF_LN_2PI as f64);
            let half = T::of(-0.5);
            let mut nll = T::zero();
            for ((zr, &ld), &wr) in lik.a.chunks_exact(d).zip(&lik.logdet).zip(w) {
                let sq = zr.iter().fold(T::zero(), |a, &v| a + v * v);
                nll -= ((sq * half - c) + ld) * wr;
            }
            loss += nll;
            // ∂(−w·log N(z))/∂z = w·z; ∂/∂logdet = −w, which the backward
            // takes as dlp (its lp is base − logdet).
            let dz: Vec<T> = lik
                .a
                .chunks_exact(d)
                .zip(w)
                .flat_map(|(zr, &wr)| zr.iter().map(move |&zv| zv * wr))
                .collect();
            self.sample_backward(vb, &dz, w, b);
        }
        (loss, lp_sum * inv_b)
    }
}

#[cfg(test)]
fn grad_of<T: Real>(p: &Params<T>, grad: &[T], var: &Var) -> Option<Vec<T>> {
    p.vars
        .iter()
        .find(|(v, _)| v.as_tensor().id() == var.as_tensor().id())
        .map(|(_, s)| s.of(grad).to_vec())
}

fn transpose64(d: usize, a: &[f64]) -> Vec<f64> {
    let mut o = vec![0f64; d * d];
    for r in 0..d {
        for c in 0..d {
            o[c * d + r] = a[r * d + c];
        }
    }
    o
}

/// From the gradient w.r.t. W (forward) or W⁻¹ (inverse), and the one
/// w.r.t. Σ log|s|, to the gradients of L, U and s.
fn plu_backward<T: Real>(
    d: usize,
    plu: &Plu<T>,
    inverse: bool,
    dmat: &[T],
    dlas: T,
    grad: &mut [T],
    bs: &BlockSlots,
) {
    let plu = plu
        .f64
        .as_ref()
        .expect("prepare() builds every block before a backward pass");
    let g: Vec<f64> = dmat.iter().map(|v| v.to64()).collect();
    // d(W⁻¹) = −W⁻¹ dW W⁻¹  ⇒  ∂/∂W = −W⁻ᵀ G W⁻ᵀ.
    let dw = if inverse {
        let wt = transpose64(d, plu.w_inv());
        mm64(d, &mm64(d, &wt, &g), &wt)
            .into_iter()
            .map(|v| -v)
            .collect()
    } else {
        g
    };
    // W = (P·Lm)·Um: ∂Lm = Pᵀ·∂W·Umᵀ, ∂Um = (P·Lm)ᵀ·∂W.
    let dlm = mm64(
        d,
        &mm64(d, &transpose64(d, plu.p()), &dw),
        &transpose64(d, plu.um()),
    );
    let dum = mm64(d, &transpose64(d, plu.p_lm()), &dw);
    let dlas = dlas.to64();
    let gl = bs.l.of_mut(grad);
    for r in 0..d {
        for c in 0..r {
            gl[r * d + c] += T::of(dlm[r * d + c]);
        }
    }
    let gu = bs.u.of_mut(grad);
    for r in 0..d {
        for c in r + 1..d {
            gu[r * d + c] += T::of(dum[r * d + c]);
        }
    }
    let gs = bs.s.of_mut(grad);
    for i in 0..d {
        gs[i] += T::of(dum[i * d + i] + dlas / plu.s()[i]);
    }
}

/// One coupling MLP forward: Dense → LeakyReLU → LayerNorm, twice, Dense.
fn net_forward<T: Real>(
    data: &[T],
    ns: &NetSlots,
    inp: &[T],
    b: usize,
    c: &mut NetCache<T>,
    eps: T,
    par: Parallelism,
) {
    let layer = |x: &[T],
                 xw: usize,
                 w: Slot,
                 bias: Slot,
                 g: Slot,
                 be: Slot,
                 n: usize,
                 lc: &mut LnCache<T>,
                 h: &mut Vec<T>| {
        resize(&mut lc.pre, b * n);
        resize(&mut lc.norm, b * n);
        resize(&mut lc.rstd, b);
        resize(h, b * n);
        matmul(
            b,
            n,
            xw,
            &mut lc.pre,
            false,
            Mat::rows(x, xw),
            Mat::rows(w.of(data), n),
            par,
        );
        leaky_ln_forward(
            &mut lc.pre,
            bias.of(data),
            g.of(data),
            be.of(data),
            eps,
            &mut lc.norm,
            &mut lc.rstd,
            h,
        );
    };
    layer(
        inp, ns.inp, ns.w0, ns.b0, ns.g0, ns.be0, ns.h0, &mut c.l0, &mut c.h0,
    );
    layer(
        &c.h0, ns.h0, ns.w1, ns.b1, ns.g1, ns.be1, ns.h1, &mut c.l1, &mut c.h1,
    );
    resize(&mut c.out, b * ns.out);
    matmul(
        b,
        ns.out,
        ns.h1,
        &mut c.out,
        false,
        Mat::rows(&c.h1, ns.h1),
        Mat::rows(ns.w2.of(data), ns.out),
        par,
    );
    let bias = ns.b2.of(data);
    for row in c.out.chunks_exact_mut(ns.out) {
        for (o, &bv) in row.iter_mut().zip(bias) {
            *o += bv;
        }
    }
}

/// Backward of [`net_forward`]: parameter gradients accumulate into
/// `grad`; the input gradient's first `d1` columns are added to `din`.
#[allow(clippy::too_many_arguments)]
fn net_backward<T: Real>(
    data: &[T],
    grad: &mut [T],
    ns: &NetSlots,
    inp: &[T],
    b: usize,
    c: &mut NetCache<T>,
    dout: &[T],
    d1: usize,
    din: &mut [T],
    dh0: &mut Vec<T>,
    dh1: &mut Vec<T>,
    par: Parallelism,
) {
    let (h0, h1, out) = (ns.h0, ns.h1, ns.out);
    matmul(
        h1,
        out,
        b,
        ns.w2.of_mut(grad),
        true,
        Mat::t(&c.h1, h1),
        Mat::rows(dout, out),
        par,
    );
    add_col_sums(dout, out, ns.b2.of_mut(grad));
    resize(dh1, b * h1);
    matmul(
        b,
        h1,
        out,
        dh1,
        false,
        Mat::rows(dout, out),
        Mat::t(ns.w2.of(data), out),
        par,
    );
    {
        let (db, dg, dbe) = three_mut(grad, ns.b1, ns.g1, ns.be1);
        leaky_ln_backward(dh1, &c.l1, ns.g1.of(data), dg, dbe, db);
    }
    matmul(
        h0,
        h1,
        b,
        ns.w1.of_mut(grad),
        true,
        Mat::t(&c.h0, h0),
        Mat::rows(dh1, h1),
        par,
    );
    resize(dh0, b * h0);
    matmul(
        b,
        h0,
        h1,
        dh0,
        false,
        Mat::rows(dh1, h1),
        Mat::t(ns.w1.of(data), h1),
        par,
    );
    {
        let (db, dg, dbe) = three_mut(grad, ns.b0, ns.g0, ns.be0);
        leaky_ln_backward(dh0, &c.l0, ns.g0.of(data), dg, dbe, db);
    }
    matmul(
        ns.inp,
        h0,
        b,
        ns.w0.of_mut(grad),
        true,
        Mat::t(inp, ns.inp),
        Mat::rows(dh0, h0),
        par,
    );
    // Only the first d1 input columns (the flow's own half) need a gradient:
    // the conditioning has none to take (no encoder on this path).
    let w0_first = &ns.w0.of(data)[..d1 * h0];
    matmul(
        b,
        d1,
        h0,
        din,
        true,
        Mat::rows(dh0, h0),
        Mat::t(w0_first, h0),
        par,
    );
}

/// ReLU critic forward: q = relu(relu(x·W0 + b0)·W1 + b1)·W2 + b2, or with
/// a LayerNorm (no affine) inside each relu when `cs.ln`.
fn critic_forward<T: Real>(
    data: &[T],
    cs: &CriticSlots,
    x: &[T],
    b: usize,
    c: &mut CriticCache<T>,
    par: Parallelism,
) {
    let h = cs.hid;
    let eps = T::of(CRITIC_LN_EPS);
    let dense_relu = |inp: &[T],
                      iw: usize,
                      w: Slot,
                      bias: Slot,
                      out: &mut Vec<T>,
                      norm: &mut Vec<T>,
                      rstd: &mut Vec<T>| {
        resize(out, b * h);
        matmul(
            b,
            h,
            iw,
            out,
            false,
            Mat::rows(inp, iw),
            Mat::rows(w.of(data), h),
            par,
        );
        let bias = bias.of(data);
        if cs.ln {
            resize(norm, b * h);
            resize(rstd, b);
            ln_relu_forward(out, bias, eps, norm, rstd);
            return;
        }
        for row in out.chunks_exact_mut(h) {
            for (o, &bv) in row.iter_mut().zip(bias) {
                *o = (*o + bv).max_of(T::zero());
            }
        }
    };
    dense_relu(x, cs.inp, cs.w[0], cs.b[0], &mut c.h0, &mut c.n0, &mut c.r0);
    dense_relu(&c.h0, h, cs.w[1], cs.b[1], &mut c.h1, &mut c.n1, &mut c.r1);
    resize(&mut c.q, b);
    matmul(
        b,
        1,
        h,
        &mut c.q,
        false,
        Mat::rows(&c.h1, h),
        Mat::rows(cs.w[2].of(data), 1),
        par,
    );
    let b2 = cs.b[2].of(data)[0];
    for q in c.q.iter_mut() {
        *q += b2;
    }
}

/// Backward of [`critic_forward`] from dq (B): weight gradients into `grad`
/// when given; the gradient w.r.t. x's columns from `dx.1` on added to
/// `dx.0` when given.
#[allow(clippy::too_many_arguments)]
fn critic_backward<T: Real>(
    data: &[T],
    mut grad: Option<&mut Vec<T>>,
    cs: &CriticSlots,
    x: &[T],
    b: usize,
    c: &CriticCache<T>,
    dq: &[T],
    dx: Option<(&mut Vec<T>, usize)>,
    w: &mut Work<T>,
    par: Parallelism,
) {
    let h = cs.hid;
    if let Some(g) = grad.as_mut() {
        matmul(
            h,
            1,
            b,
            cs.w[2].of_mut(g),
            true,
            Mat::t(&c.h1, h),
            Mat::rows(dq, 1),
            par,
        );
        cs.b[2].of_mut(g)[0] += dq.iter().fold(T::zero(), |a, &v| a + v);
    }
    // dh1 = dq·W2ᵀ, through the ReLU (its output is 0 where it was cut)
    // and the LayerNorm when there is one.
    resize(&mut w.d1, b * h);
    let w2 = cs.w[2].of(data);
    for ((row, &dqv), hr) in w.d1.chunks_exact_mut(h).zip(dq).zip(c.h1.chunks_exact(h)) {
        for ((o, &wv), &hv) in row.iter_mut().zip(w2).zip(hr) {
            *o = if hv > T::zero() { dqv * wv } else { T::zero() };
        }
    }
    if cs.ln {
        ln_backward(&mut w.d1, h, &c.n1, &c.r1);
    }
    if let Some(g) = grad.as_mut() {
        matmul(
            h,
            h,
            b,
            cs.w[1].of_mut(g),
            true,
            Mat::t(&c.h0, h),
            Mat::rows(&w.d1, h),
            par,
        );
        add_col_sums(&w.d1, h, cs.b[1].of_mut(g));
    }
    resize(&mut w.d0, b * h);
    matmul(
        b,
        h,
        h,
        &mut w.d0,
        false,
        Mat::rows(&w.d1, h),
        Mat::t(cs.w[1].of(data), h),
        par,
    );
    for (o, &hv) in w.d0.iter_mut().zip(&c.h0) {
        if hv <= T::zero() {
            *o = T::zero();
        }
    }
    if cs.ln {
        ln_backward(&mut w.d0, h, &c.n0, &c.r0);
    }
    if let Some(g) = grad.as_mut() {
        matmul(
            cs.inp,
            h,
            b,
            cs.w[0].of_mut(g),
            true,
            Mat::t(x, cs.inp),
            Mat::rows(&w.d0, h),
            par,
        );
        add_col_sums(&w.d0, h, cs.b[0].of_mut(g));
    }
    if let Some((dx, from)) = dx {
        let cols = cs.inp - from;
        let w0_tail = &cs.w[0].of(data)[from * h..];
        matmul(
            b,
            cols,
            h,
            dx,
            true,
            Mat::rows(&w.d0, h),
            Mat::t(w0_tail, h),
            par,
        );
    }
}
