//! The candle (autograd) side of the SAC update: the twin ReLU critics
//! (plain or LayerNorm) and the losses, the critics' target, the latent
//! temperature's log-prob correction. The reference the hand-written path
//! (`super::super::fast`) is checked against. Learner only; allocates.

use candle_core::{DType, Device, Tensor, Var, D};
use rand::Rng;

use super::super::error::Result;
use super::super::replay::Batch;
use crate::twin::Twin;

/// A ReLU MLP critic Q(s, a) with its own seeded init, optionally with
/// LayerNorm (no affine) before each ReLU.
pub(super) struct Critic {
    pub(super) vars: Vec<Var>,
    pub(super) layer_norm: bool,
}

/// (x − mean) / sqrt(var + ε) over the last dim (ε: the critic's, one
/// constant for this path and the hand-written one).
pub(super) fn layer_norm(h: &Tensor) -> Result<Tensor> {
    let mean = h.mean_keepdim(D::Minus1)?;
    let c = h.broadcast_sub(&mean)?;
    let var = c.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(c.broadcast_div(&(var + super::super::kernels::CRITIC_LN_EPS)?.sqrt()?)?)
}

impl Critic {
    pub(super) fn new(
        inp: usize,
        hidden: usize,
        layer_norm: bool,
        rng: &mut impl Rng,
        dev: &Device,
    ) -> Result<Self> {
        let mut vars = Vec::new();
        for (i, o) in [(inp, hidden), (hidden, hidden), (hidden, 1)] {
            let bound = (1.0 / i as f64).sqrt() as f32;
            let w: Vec<f32> = (0..i * o)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            vars.push(Var::from_tensor(&Tensor::from_vec(w, (i, o), dev)?)?);
            vars.push(Var::from_tensor(&Tensor::zeros(o, DType::F32, dev)?)?);
        }
        Ok(Self { vars, layer_norm })
    }

    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in 0..3 {
            h = h
                .matmul(self.vars[2 * l].as_tensor())?
                .broadcast_add(self.vars[2 * l + 1].as_tensor())?;
            if l < 2 {
                if self.layer_norm {
                    h = layer_norm(&h)?;
                }
                h = h.relu()?;
            }
        }
        Ok(h.squeeze(1)?)
    }

    pub(super) fn copy_from(&self, other: &Critic) -> Result<()> {
        for (t, s) in self.vars.iter().zip(&other.vars) {
            t.set(&s.as_tensor().detach())?;
        }
        Ok(())
    }

    pub(super) fn polyak(&self, other: &Critic, tau: f64) -> Result<()> {
        for (t, s) in self.vars.iter().zip(&other.vars) {
            t.set(&((t.as_tensor() * (1.0 - tau))? + (s.as_tensor() * tau)?)?.detach())?;
        }
        Ok(())
    }
}

/// log π_τ(a|s) from the twin's untempered `lp` of the action sampled from
/// base noise `z` (B, d): log N(z; 0, τ²I) replaces log N(z; 0, I), so each
/// row gains (1 − 1/τ²)·|z|²/2 − d·ln τ. Constant in the actor's
/// parameters, so gradients are untouched (the sampler's own rule,
/// `Sampler::sample_tempered`).
pub(super) fn tempered(lp: &Tensor, z: &Tensor, tau: f64) -> Result<Tensor> {
    if tau == 1.0 {
        return Ok(lp.clone());
    }
    let d = z.dim(D::Minus1)? as f64;
    let sq = z.sqr()?.sum(D::Minus1)?;
    Ok(((lp + (sq * (0.5 * (1.0 - 1.0 / (tau * tau))))?)? - d * tau.ln())?)
}

/// Flow conditioning of raw s = obs ++ goal.
pub(super) fn cond_of(twin: &Twin, s: &Tensor) -> Result<Tensor> {
    let spec = twin.spec();
    let od = spec.obs_dim;
    let obs = s.narrow(1, 0, od)?;
    let goal = if spec.goal_dim > 0 {
        Some(s.narrow(1, od, spec.goal_dim)?)
    } else {
        None
    };
    Ok(twin.condition(&obs, goal.as_ref())?)
}

/// The critics' input [normalised s, a]; `norm` = (mean, 1/std) of s.
pub(super) fn q_in(norm: (&Tensor, &Tensor), s: &Tensor, a: &Tensor) -> Result<Tensor> {
    let sn = s.broadcast_sub(norm.0)?.broadcast_mul(norm.1)?;
    Ok(Tensor::cat(&[&sn, a], 1)?)
}

/// With `clip`, the action the robot executes, clip(a, −1, 1), written
/// with relus so its gradient is 1 inside the box and 0 outside (the fast
/// path's rule); otherwise `a` itself.
pub(super) fn executed(a: &Tensor, clip: bool) -> Result<Tensor> {
    if !clip {
        return Ok(a.clone());
    }
    let over = (a - 1.0)?.relu()?;
    let under = (a.neg()? - 1.0)?.relu()?;
    Ok(((a - over)? + under)?)
}

/// Base noise of the optimised policy, z = τ·ε, with its τ.
#[derive(Clone, Copy)]
pub(super) struct Latent<'a> {
    pub(super) z: &'a Tensor,
    pub(super) tau: f64,
}

impl Latent<'_> {
    /// The action from this noise and its exact log π_τ.
    pub(super) fn sample(&self, twin: &Twin, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let (a, lp) = twin.sample(c, self.z)?;
        Ok((a, tempered(&lp, self.z, self.tau)?))
    }
}

/// Critic target r + discount·(min Q̄(s', a') − α log π(a'|s')), a' from
/// base noise z2; detached. `discount` is each row's γ^n(1 − done)
/// ([`Batch::discount`]).
pub(super) fn critic_target(
    twin: &Twin,
    q_targ: &[Critic; 2],
    norm: (&Tensor, &Tensor),
    batch: &Batch,
    z2: Latent,
    alpha: &Tensor,
    clip: bool,
) -> Result<Tensor> {
    let c2 = cond_of(twin, &batch.s2)?;
    let (a2, lp2) = z2.sample(twin, &c2)?;
    let x2 = q_in(norm, &batch.s2, &executed(&a2, clip)?)?;
    let qn = q_targ[0].forward(&x2)?.minimum(&q_targ[1].forward(&x2)?)?;
    let soft = (qn - lp2.broadcast_mul(alpha)?)?;
    Ok((&batch.r + soft.mul(&batch.discount)?)?.detach())
}

/// Σ_i mean((Q_i(x) − y)²), and Q_1(x).
pub(super) fn critic_loss(q: &[Critic; 2], x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
    let q1 = q[0].forward(x)?;
    let q2 = q[1].forward(x)?;
    let loss = ((&q1 - y)?.sqr()?.mean_all()? + (&q2 - y)?.sqr()?.mean_all()?)?;
    Ok((loss, q1))
}

/// Actor loss without the BC term: mean(α log π(a|s) − min Q(s, a)) plus
/// the box penalty, a reparameterised from z (the exact log π comes from
/// the same flow pass). Returns (loss, log π, the conditioning).
pub(super) fn actor_loss(
    twin: &Twin,
    q: &[Critic; 2],
    norm: (&Tensor, &Tensor),
    s: &Tensor,
    z: Latent,
    alpha: &Tensor,
    clip: bool,
) -> Result<(Tensor, Tensor, Tensor, Tensor)> {
    let c = cond_of(twin, s)?;
    let (a, lp) = z.sample(twin, &c)?;
    let xa = q_in(norm, s, &executed(&a, clip)?)?;
    let qa = q[0].forward(&xa)?.minimum(&q[1].forward(&xa)?)?;
    // Keep samples inside the action box (the robot clips anyway).
    let outside = (a.abs()? - 1.0)?.relu()?.sqr()?.sum(D::Minus1)?;
    let loss = (lp.broadcast_mul(alpha)? - qa)?.mean_all()?;
    let loss = (loss + (outside.mean_all()? * 10.0)?)?;
    Ok((loss, lp, c, a))
}

// Tests, one file per concern under sac/.
