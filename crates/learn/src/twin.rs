//! The trainable twin: the same flow as [`flowpilot_core::policy::sampler`], over batches, on
//! candle-core autograd. Used by the trainers and as the reference the
//! real-time sampler is checked against.
//!
//! Why not candle-nn's layers: its fused LayerNorm has no backward pass
//! (gradients before it silently vanish), so every op here is a
//! differentiable composite. W⁻¹ is built from exact finite Neumann series
//! of the nilpotent triangular parts, so the inverse pass is differentiable
//! with matmuls only.
//!
//! Never on the control thread: every pass allocates (candle tensors).
//! [`sample_once`] and [`log_prob_once`] are the batch-1 references the CLI
//! checks the real-time sampler against.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};

use flowpilot_core::policy::model::{
    Direction, ModelFile, ModelSpec, PolicyKind, TensorData, WeightDtype,
};
use flowpilot_core::policy::sampler::{HALF_LN_2PI, LOG_STD_MAX, LOG_STD_MIN};

pub struct Twin {
    spec: ModelSpec,
    dev: Device,
    params: BTreeMap<String, Var>,
    /// Fixed permutations per block, kept as i64 for export.
    perms: Vec<Vec<i64>>,
    perm_mats: Vec<Tensor>,
    lower: Tensor,
    upper: Tensor,
    eye: Tensor,
    obs_mean: Tensor,
    obs_inv_std: Tensor,
    goal_mean: Option<Tensor>,
    goal_inv_std: Option<Tensor>,
}

/// A flow pass: the transformed batch and its per-row log|det J|.
pub struct Pass {
    pub out: Tensor,
    pub logdet: Tensor,
}

impl Twin {
    pub fn from_model(m: &ModelFile, dev: &Device) -> Result<Self> {
        Self::from_model_dtype(m, dev, DType::F32)
    }

    /// As [`Self::from_model`], computing in `dtype` (F64 for gradient and
    /// Jacobian checks).
    pub fn from_model_dtype(m: &ModelFile, dev: &Device, dtype: DType) -> Result<Self> {
        let spec = m.spec.clone();
        let mut params = BTreeMap::new();
        let mut perms = Vec::new();
        for (name, t) in m.tensors() {
            match &t.data {
                TensorData::F32(v) => {
                    let tt = Tensor::from_vec(v.clone(), t.shape.clone(), dev)?.to_dtype(dtype)?;
                    params.insert(name.clone(), Var::from_tensor(&tt)?);
                }
                TensorData::I64(v) => perms.push((name.clone(), v.clone())),
            }
        }
        // BTreeMap order is lexicographic ("blocks.10" < "blocks.2"): sort by index.
        let mut perms: Vec<(usize, Vec<i64>)> = perms
            .into_iter()
            .map(|(n, v)| {
                (
                    n.split('.')
                        .nth(1)
                        .and_then(|i| i.parse().ok())
                        .unwrap_or(0),
                    v,
                )
            })
            .collect();
        perms.sort_by_key(|(i, _)| *i);
        let perms: Vec<Vec<i64>> = perms.into_iter().map(|(_, v)| v).collect();
        let d = spec.act_dim;
        let perm_mats = perms
            .iter()
            .map(|p| {
                let mut m = vec![0f32; d * d];
                for (i, &c) in p.iter().enumerate() {
                    m[i * d + c as usize] = 1.0;
                }
                Tensor::from_vec(m, (d, d), dev)?.to_dtype(dtype)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        let mask = |f: &dyn Fn(usize, usize) -> bool| {
            let v: Vec<f32> = (0..d * d)
                .map(|i| if f(i / d, i % d) { 1.0 } else { 0.0 })
                .collect();
            Tensor::from_vec(v, (d, d), dev)?.to_dtype(dtype)
        };
        let vec_t = |v: &[f32]| Tensor::from_vec(v.to_vec(), (1, v.len()), dev)?.to_dtype(dtype);
        let inv = |v: &[f32]| v.iter().map(|s| 1.0 / s).collect::<Vec<_>>();
        Ok(Self {
            lower: mask(&|r, c| r > c)?,
            upper: mask(&|r, c| r < c)?,
            eye: mask(&|r, c| r == c)?,
            obs_mean: vec_t(&spec.obs_norm.mean)?,
            obs_inv_std: vec_t(&inv(&spec.obs_norm.std))?,
            goal_mean: spec
                .goal_norm
                .as_ref()
                .map(|g| vec_t(&g.mean))
                .transpose()?,
            goal_inv_std: spec
                .goal_norm
                .as_ref()
                .map(|g| vec_t(&inv(&g.std)))
                .transpose()?,
            spec,
            dev: dev.clone(),
            params,
            perms,
            perm_mats,
        })
    }

    pub(crate) fn device(&self) -> &Device {
        &self.dev
    }

    pub(crate) fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// One trainable variable by its model-file name.
    pub(crate) fn var(&self, name: &str) -> Option<&Var> {
        self.params.get(name)
    }

    /// The fixed permutation of each block (row i of P has its 1 in
    /// column `perm[i]`).
    pub(crate) fn perms(&self) -> &[Vec<i64>] {
        &self.perms
    }

    /// Trainable variables (for an optimiser).
    pub(crate) fn vars(&self) -> Vec<Var> {
        self.params.values().cloned().collect()
    }

    /// Export the current weights as a model file with the given spec.
    /// Always f32 kernels: the twin trains in f32, and a half-size parent
    /// (read up-converted: its values are exact in f32) yields f32
    /// checkpoints; `flowpilot convert` narrows one again if wanted.
    pub(crate) fn to_model(&self, mut spec: ModelSpec) -> Result<ModelFile> {
        spec.weights = WeightDtype::F32;
        let mut tensors = BTreeMap::new();
        for (name, v) in &self.params {
            let t = v.as_tensor();
            tensors.insert(
                name.clone(),
                flowpilot_core::policy::model::Tensor::f32(
                    t.dims().to_vec(),
                    t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                ),
            );
        }
        for (i, p) in self.perms.iter().enumerate() {
            tensors.insert(
                format!("blocks.{i}.lin.perm"),
                flowpilot_core::policy::model::Tensor {
                    shape: vec![p.len()],
                    data: TensorData::I64(p.clone()),
                },
            );
        }
        Ok(ModelFile::new(spec, tensors)?)
    }

    fn p(&self, name: &str) -> &Tensor {
        self.params
            .get(name)
            .unwrap_or_else(|| panic!("validated model lacks {name}"))
            .as_tensor()
    }

    fn dense(&self, x: &Tensor, p: &str) -> Result<Tensor> {
        Ok(x.matmul(self.p(&format!("{p}.w")))?
            .broadcast_add(self.p(&format!("{p}.b")))?)
    }

    /// Composite (differentiable) LayerNorm over the last dim.
    fn layer_norm(&self, x: &Tensor, p: &str) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        let xn = xc.broadcast_div(&(var + self.spec.layer_norm_eps as f64)?.sqrt()?)?;
        Ok(xn
            .broadcast_mul(self.p(&format!("{p}.g")))?
            .broadcast_add(self.p(&format!("{p}.b")))?)
    }

    fn mlp(&self, x: &Tensor, p: &str) -> Result<Tensor> {
        // LeakyReLU(0.01) as max(h, 0.01·h): two passes instead of four.
        let leaky = |h: Tensor| -> Result<Tensor> { Ok(h.maximum(&(&h * 0.01)?)?) };
        let h = self.layer_norm(
            &leaky(self.dense(x, &format!("{p}.l0"))?)?,
            &format!("{p}.ln0"),
        )?;
        let h = self.layer_norm(
            &leaky(self.dense(&h, &format!("{p}.l1"))?)?,
            &format!("{p}.ln1"),
        )?;
        self.dense(&h, &format!("{p}.l2"))
    }

    /// Normalise obs (+ goal) and run the encoder: (B, k).
    pub fn condition(&self, obs: &Tensor, goal: Option<&Tensor>) -> Result<Tensor> {
        let o = obs
            .broadcast_sub(&self.obs_mean)?
            .broadcast_mul(&self.obs_inv_std)?;
        let raw = match (goal, &self.goal_mean, &self.goal_inv_std) {
            (Some(g), Some(m), Some(s)) => {
                Tensor::cat(&[o, g.broadcast_sub(m)?.broadcast_mul(s)?], 1)?
            }
            (None, None, None) => o,
            _ => anyhow::bail!("goal given to a model without goal_dim, or missing for one with"),
        };
        let Some(e) = &self.spec.encoder else {
            return Ok(raw);
        };
        let mut h = raw;
        for j in 0..e.layers {
            let a = self.layer_norm(
                &self.dense(&h, &format!("enc.l{j}"))?,
                &format!("enc.ln{j}"),
            )?;
            // SiLU as x·σ(x), composite for a guaranteed backward.
            let sig = (a.neg()?.exp()? + 1.0)?.recip()?;
            h = (a * sig)?;
        }
        self.dense(&h, "enc.out")
    }

    /// W and W⁻¹ of block i (both (d, d), differentiable in L, U, s).
    fn plu(&self, i: usize) -> Result<(Tensor, Tensor, Tensor)> {
        let p = format!("blocks.{i}.lin");
        let d = self.spec.act_dim;
        let s = self.p(&format!("{p}.s"));
        let n_l = self.p(&format!("{p}.L")).mul(&self.lower)?; // strictly lower
        let m_u = self.p(&format!("{p}.U")).mul(&self.upper)?; // strictly upper
        let lm = (&n_l + &self.eye)?;
        let diag = self.eye.broadcast_mul(&s.reshape((1, d))?)?;
        let um = (&m_u + &diag)?;
        let w = self.perm_mats[i].matmul(&lm)?.matmul(&um)?;
        // L⁻¹ = Σ_{k<d} (−N)^k ; U⁻¹ = Σ_{k<d} (−D⁻¹M)^k · D⁻¹ (both exact).
        let neumann = |n: &Tensor| -> Result<Tensor> {
            let neg = n.neg()?;
            let mut term = self.eye.clone();
            let mut acc = self.eye.clone();
            for _ in 1..d {
                term = term.matmul(&neg)?;
                acc = (acc + &term)?;
            }
            Ok(acc)
        };
        let s_inv_col = s.recip()?.reshape((d, 1))?;
        let l_inv = neumann(&n_l)?;
        let u_inv = neumann(&m_u.broadcast_mul(&s_inv_col)?)?
            .broadcast_mul(&s.recip()?.reshape((1, d))?)?;
        let w_inv = u_inv.matmul(&l_inv)?.matmul(&self.perm_mats[i].t()?)?;
        let log_abs_s = s.abs()?.log()?.sum_all()?;
        Ok((w, w_inv, log_abs_s))
    }

    fn nets(&self, i: usize, first: &Tensor, cond: &Tensor) -> Result<(Tensor, Tensor)> {
        // A 1-D action's blocks condition on the observation alone.
        let inp = if first.dim(1)? == 0 {
            cond.clone()
        } else {
            Tensor::cat(&[first, cond], 1)?
        };
        Ok((
            self.mlp(&inp, &format!("blocks.{i}.s"))?,
            self.mlp(&inp, &format!("blocks.{i}.t"))?,
        ))
    }

    /// Blocks in order (x -> z for Direction::Inverse models).
    pub fn forward_pass(&self, x: &Tensor, cond: &Tensor) -> Result<Pass> {
        let (d1, d2) = self.spec.split();
        let b = x.dim(0)?;
        let mut x = x.clone();
        let mut logdet = Tensor::zeros(b, x.dtype(), &self.dev)?;
        for i in 0..self.spec.blocks {
            let (w, _, las) = self.plu(i)?;
            let u = x.matmul(&w)?;
            let u1 = u.narrow(1, 0, d1)?;
            let u2 = u.narrow(1, d1, d2)?;
            let (s, t) = self.nets(i, &u1, cond)?;
            let v2 = (u2 - t)?.mul(&s.neg()?.exp()?)?;
            x = Tensor::cat(&[u1, v2], 1)?;
            logdet = (logdet - s.sum(1)?)?.broadcast_add(&las)?;
        }
        Ok(Pass { out: x, logdet })
    }

    /// Blocks in reverse, each inverted (z -> x for Direction::Inverse).
    pub fn inverse_pass(&self, z: &Tensor, cond: &Tensor) -> Result<Pass> {
        let (d1, d2) = self.spec.split();
        let b = z.dim(0)?;
        let mut z = z.clone();
        let mut logdet = Tensor::zeros(b, z.dtype(), &self.dev)?;
        for i in (0..self.spec.blocks).rev() {
            let (_, w_inv, las) = self.plu(i)?;
            let z1 = z.narrow(1, 0, d1)?;
            let z2 = z.narrow(1, d1, d2)?;
            let (s, t) = self.nets(i, &z1, cond)?;
            let v2 = (z2.mul(&s.exp()?)? + t)?;
            z = Tensor::cat(&[z1, v2], 1)?.matmul(&w_inv)?;
            logdet = (logdet + s.sum(1)?)?.broadcast_sub(&las)?;
        }
        Ok(Pass { out: z, logdet })
    }

    fn gauss_params(&self, cond: &Tensor) -> Result<(Tensor, Tensor)> {
        let d = self.spec.act_dim;
        let out = self.mlp(cond, "gauss")?;
        let log_std = out.narrow(1, d, d)?.clamp(LOG_STD_MIN, LOG_STD_MAX)?;
        Ok((out.narrow(1, 0, d)?, log_std))
    }

    /// Exact log p(a | cond) of normalised actions a (B, d): (B,).
    pub fn log_prob(&self, cond: &Tensor, a: &Tensor) -> Result<Tensor> {
        let (z, logdet) = match self.spec.kind {
            PolicyKind::Gaussian => {
                let (mean, log_std) = self.gauss_params(cond)?;
                let z = (a - mean)?.mul(&log_std.neg()?.exp()?)?;
                (z, log_std.sum(1)?.neg()?)
            }
            PolicyKind::Flow => {
                let p = match self.spec.direction {
                    Direction::Inverse => self.forward_pass(a, cond)?,
                    Direction::Forward => self.inverse_pass(a, cond)?,
                };
                (p.out, p.logdet)
            }
        };
        Ok((log_normal(&z)? + logdet)?)
    }

    /// Reparameterised sample from base noise z (B, d): the unclipped
    /// normalised action and its exact log-prob, from the same pass.
    pub fn sample(&self, cond: &Tensor, z: &Tensor) -> Result<(Tensor, Tensor)> {
        let base = log_normal(z)?;
        match self.spec.kind {
            PolicyKind::Gaussian => {
                let (mean, log_std) = self.gauss_params(cond)?;
                let a = (mean + z.mul(&log_std.exp()?)?)?;
                Ok((a, (base - log_std.sum(1)?)?))
            }
            PolicyKind::Flow => match self.spec.direction {
                Direction::Inverse => {
                    let p = self.inverse_pass(z, cond)?;
                    Ok((p.out, (base - p.logdet)?))
                }
                Direction::Forward => {
                    let p = self.forward_pass(z, cond)?;
                    Ok((p.out, (base - p.logdet)?))
                }
            },
        }
    }

    /// One-step denoising a + σ²·∇ₐ log p(a|y) (paper, optional at sampling).
    pub fn denoise(&self, cond: &Tensor, a: &Tensor) -> Result<Tensor> {
        let av = Var::from_tensor(&a.detach())?;
        let lp = self.log_prob(&cond.detach(), av.as_tensor())?.sum_all()?;
        let grads = lp.backward()?;
        let g = grads
            .get(av.as_tensor())
            .context("no gradient for the action")?;
        let s2 = (self.spec.noise_sigma * self.spec.noise_sigma) as f64;
        Ok((a.detach() + (g * s2)?)?)
    }
}

/// log N(z; 0, I) per row.
fn log_normal(z: &Tensor) -> Result<Tensor> {
    let d = z.dim(1)? as f64;
    Ok(((z.sqr()?.sum(1)? * -0.5)? - d * HALF_LN_2PI as f64)?)
}

/// A batch-1 twin and the conditioning of one (obs, goal): the shared start
/// of [`sample_once`] and [`log_prob_once`].
fn one_row(m: &ModelFile, obs: &[f32], goal: &[f32]) -> Result<(Twin, Tensor)> {
    let dev = Device::Cpu;
    let twin = Twin::from_model(m, &dev)?;
    let obs = Tensor::from_slice(obs, (1, obs.len()), &dev)?;
    let goal = if goal.is_empty() {
        None
    } else {
        Some(Tensor::from_slice(goal, (1, goal.len()), &dev)?)
    };
    let c = twin.condition(&obs, goal.as_ref())?;
    Ok((twin, c))
}

/// One batch-1 sample of the twin from base noise `z`: the raw (normalised,
/// unclipped, denoised if the model says so) action and its log-prob. The
/// reference `flowpilot sample --twin` checks the real-time sampler against.
pub fn sample_once(m: &ModelFile, obs: &[f32], goal: &[f32], z: &[f32]) -> Result<(Vec<f32>, f32)> {
    let (twin, c) = one_row(m, obs, goal)?;
    let z = Tensor::from_slice(z, (1, z.len()), twin.device())?;
    let (a, lp) = twin.sample(&c, &z)?;
    let a = if m.spec.denoise {
        twin.denoise(&c, &a)?
    } else {
        a
    };
    Ok((a.flatten_all()?.to_vec1()?, lp.to_vec1::<f32>()?[0]))
}

/// Exact log p(a | obs, goal) of one normalised action, on the twin.
pub fn log_prob_once(m: &ModelFile, obs: &[f32], goal: &[f32], a: &[f32]) -> Result<f32> {
    let (twin, c) = one_row(m, obs, goal)?;
    let a = Tensor::from_slice(a, (1, a.len()), twin.device())?;
    Ok(twin.log_prob(&c, &a)?.to_vec1::<f32>()?[0])
}
