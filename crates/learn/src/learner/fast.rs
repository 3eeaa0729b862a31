//! The hand-written SAC update: the flow actor's sampling pass and the twin
//! ReLU critics (plain, or with a LayerNorm without affine before each ReLU
//! as `--critic-layer-norm` makes them), forward and backward by hand over
//! flat row-major buffers, with the same losses and the same AdamW / Polyak arithmetic as the candle
//! autograd path in [`super::sac`] (which stays the reference:
//! `sac/parity.rs` compares every parameter's gradient against it and
//! `sac/same_update.rs` whole updates). [`worker`] holds one worker's
//! passes over its rows, [`nets`] the per-row kernels.
//!
//! What makes it faster than autograd: W and W⁻¹ of every block are built
//! once per update (`flowpilot_core::policy::plu`: exact triangular solves
//! in f64, not a Neumann series of tiny matmuls) and shared by the target and actor passes; the target pass
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

    /// The critic target y = r + discount·(min Q̄(s', a') − α log π(a'|s')),
    /// discount = γ^n(1 − done) per row (needs [`Self::prepare`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn target(
        &mut self,
        s2: &[T],
        r: &[T],
        discount: &[T],
        z2: &[T],
        alpha: T,
        b: usize,
    ) -> Vec<T> {
        let (k, d) = (self.geo.k, self.geo.d);
        self.each(b, |w, v, rg| {
            w.target_rows(
                v,
                &s2[rg.start * k..rg.end * k],
                &r[rg.clone()],
                &discount[rg.clone()],
                &z2[rg.start * d..rg.end * d],
                alpha,
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
    /// log π of the samples, the BC term Σ_r w_r·(−log π(a_data_r|s_r)),
    /// the sample-distance term). `dist` = Some((a_data, w)) adds
    /// Σ_r w_r·‖a_r − a_data_r‖² on the reparameterised samples a_r.
    pub(crate) fn actor_grads(
        &mut self,
        s: &[T],
        z: &[T],
        alpha: T,
        bc: Option<(&[T], &[T])>,
        dist: Option<(&[T], &[T])>,
        b: usize,
    ) -> (T, T, T, T) {
        let (k, d) = (self.geo.k, self.geo.d);
        let inv_b = T::one() / T::of(b as f64);
        let parts = self.each(b, |w, v, rg| {
            w.actor_rows(
                v,
                &s[rg.start * k..rg.end * k],
                &z[rg.start * d..rg.end * d],
                alpha,
                bc.map(|(a, w)| (&a[rg.start * d..rg.end * d], &w[rg.clone()])),
                dist.map(|(a, w)| (&a[rg.start * d..rg.end * d], &w[rg.clone()])),
                inv_b,
            )
        });
        let n = self.active(b);
        sum_into_first(&mut self.workers[..n], |w| &mut w.grad_actor);
        let zero = T::zero();
        parts
            .iter()
            .fold((zero, zero, zero, zero), |(a, b, c, e), &(x, y, z, u)| {
                (a + x, b + y, c + z, e + u)
            })
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

#[cfg(test)]
fn grad_of<T: Real>(p: &Params<T>, grad: &[T], var: &Var) -> Option<Vec<T>> {
    p.vars
        .iter()
        .find(|(v, _)| v.as_tensor().id() == var.as_tensor().id())
        .map(|(_, s)| s.of(grad).to_vec())
}

mod nets;
mod worker;
