//! The SAC update math: config, twin critics with Polyak targets, the
//! temperature, one update step, export of the actor as the next model
//! version, and the learner's own state file (critics, temperature, update
//! count). Off the control thread; allocates freely (candle tensors).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::error::{LearnerError, Result};
use super::replay::ReplayBuffer;
use crate::twin::Twin;
use flowpilot_core::model::{ModelFile, ModelSpec};

/// SAC hyper-parameters. With the `clap` feature this is also the
/// `flowpilot finetune` flag set (the one owner of names, help and
/// defaults); [`Default`] equals parsing no flags (tested below).
// Fields are in the CLI's help order. Where a field's doc says more than the
// CLI help did, `help`/`long_help` are given explicitly so `--help` stays.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "clap", derive(clap::Args))]
pub struct SacConfig {
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 256))]
    pub batch: usize,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 1e-4))]
    pub lr_actor: f64,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 3e-4))]
    pub lr_critic: f64,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 3e-4))]
    pub lr_alpha: f64,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.01))]
    pub init_alpha: f64,
    /// Target entropy (None: −act_dim).
    #[cfg_attr(
        feature = "clap",
        arg(
            long,
            allow_hyphen_values = true,
            help = "Target entropy (default −act_dim)",
            long_help = None::<&str>
        )
    )]
    pub target_entropy: Option<f64>,
    /// Set the target entropy to the starting policy's own entropy,
    /// measured on the data's states at start-up (overrides
    /// --target-entropy; logged).
    #[cfg_attr(
        feature = "clap",
        arg(long, help = "Target entropy = the starting policy's measured entropy", long_help = None::<&str>)
    )]
    pub target_entropy_from_policy: bool,
    /// λ of the BC term λ·(−log π(a_data|s)) (NF-RLBC; 0 = plain SAC).
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.0))]
    pub bc_lambda: f64,
    /// Actor updates over which λ falls linearly to 0 (0: constant λ).
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = 0, help = "Actor updates over which the BC term anneals to 0 (0: constant)", long_help = None::<&str>)
    )]
    pub bc_anneal: u64,
    /// LayerNorm (no affine) after each hidden layer of the critics, as in
    /// RLPD: keeps Q bounded when the actor leaves the data.
    #[cfg_attr(
        feature = "clap",
        arg(long, help = "LayerNorm in the critics' hidden layers", long_help = None::<&str>)
    )]
    pub critic_layer_norm: bool,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0.99))]
    pub gamma: f64,
    /// Polyak factor for the target critics.
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = 0.005, help = None::<&str>, long_help = None::<&str>)
    )]
    pub tau: f64,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 256))]
    pub critic_hidden: usize,
    /// Critic-only updates before the actor starts moving (a fresh critic
    /// would otherwise drag a good BC policy around).
    #[cfg_attr(
        feature = "clap",
        arg(
            long,
            default_value_t = 500,
            help = "Critic-only updates before the actor moves",
            long_help = None::<&str>
        )
    )]
    pub critic_warmup: u64,
    #[cfg_attr(feature = "clap", arg(long, default_value_t = 0))]
    pub seed: u64,
}

impl Default for SacConfig {
    fn default() -> Self {
        Self {
            gamma: 0.99,
            tau: 0.005,
            batch: 256,
            lr_actor: 1e-4,
            lr_critic: 3e-4,
            lr_alpha: 3e-4,
            init_alpha: 0.01,
            target_entropy: None,
            target_entropy_from_policy: false,
            bc_lambda: 0.0,
            bc_anneal: 0,
            critic_layer_norm: false,
            critic_hidden: 256,
            critic_warmup: 500,
            seed: 0,
        }
    }
}

/// A ReLU MLP critic Q(s, a) with its own seeded init, optionally with
/// LayerNorm (no affine) before each ReLU.
struct Critic {
    vars: Vec<Var>,
    layer_norm: bool,
}

/// (x − mean) / sqrt(var + ε) over the last dim.
fn layer_norm(h: &Tensor) -> Result<Tensor> {
    let mean = h.mean_keepdim(D::Minus1)?;
    let c = h.broadcast_sub(&mean)?;
    let var = c.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(c.broadcast_div(&(var + 1e-5)?.sqrt()?)?)
}

impl Critic {
    fn new(
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

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
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

    fn copy_from(&self, other: &Critic) -> Result<()> {
        for (t, s) in self.vars.iter().zip(&other.vars) {
            t.set(&s.as_tensor().detach())?;
        }
        Ok(())
    }

    fn polyak(&self, other: &Critic, tau: f64) -> Result<()> {
        for (t, s) in self.vars.iter().zip(&other.vars) {
            t.set(&((t.as_tensor() * (1.0 - tau))? + (s.as_tensor() * tau)?)?.detach())?;
        }
        Ok(())
    }
}

/// Losses and statistics of one update.
#[derive(Debug, Clone, Copy, Default)]
pub struct UpdateStats {
    pub critic_loss: f32,
    pub actor_loss: f32,
    pub alpha: f32,
    pub entropy: f32,
    pub q: f32,
    pub bc_lambda: f32,
}

pub struct Sac {
    cfg: SacConfig,
    twin: Twin,
    spec: ModelSpec,
    dev: Device,
    q: [Critic; 2],
    q_targ: [Critic; 2],
    log_alpha: Var,
    opt_actor: AdamW,
    opt_q: AdamW,
    opt_alpha: AdamW,
    rng: ChaCha8Rng,
    in_mean: Tensor,
    in_inv_std: Tensor,
    updates: u64,
}

fn adam(vars: Vec<Var>, lr: f64) -> Result<AdamW> {
    Ok(AdamW::new(
        vars,
        ParamsAdamW {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        },
    )?)
}

impl Sac {
    pub fn new(model: &ModelFile, cfg: SacConfig) -> Result<Self> {
        let dev = Device::Cpu;
        let spec = model.spec.clone();
        let twin = Twin::from_model(model, &dev)?;
        let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
        let inp = spec.obs_dim + spec.goal_dim + spec.act_dim;
        let mk = |rng: &mut ChaCha8Rng| {
            Critic::new(inp, cfg.critic_hidden, cfg.critic_layer_norm, rng, &dev)
        };
        let q = [mk(&mut rng)?, mk(&mut rng)?];
        let q_targ = [mk(&mut rng)?, mk(&mut rng)?];
        q_targ[0].copy_from(&q[0])?;
        q_targ[1].copy_from(&q[1])?;
        let log_alpha = Var::from_tensor(&Tensor::new(&[cfg.init_alpha.ln() as f32], &dev)?)?;
        // Critic inputs are normalised with the policy's own normalisers.
        let mut mean = spec.obs_norm.mean.clone();
        let mut std = spec.obs_norm.std.clone();
        if let Some(g) = &spec.goal_norm {
            mean.extend_from_slice(&g.mean);
            std.extend_from_slice(&g.std);
        }
        let n = mean.len();
        let in_mean = Tensor::from_vec(mean, (1, n), &dev)?;
        let in_inv_std = Tensor::from_vec(std.iter().map(|s| 1.0 / s).collect(), (1, n), &dev)?;
        let q_vars: Vec<Var> = q.iter().flat_map(|c| c.vars.clone()).collect();
        Ok(Self {
            opt_actor: adam(twin.vars(), cfg.lr_actor)?,
            opt_q: adam(q_vars, cfg.lr_critic)?,
            opt_alpha: adam(vec![log_alpha.clone()], cfg.lr_alpha)?,
            cfg,
            twin,
            spec,
            dev,
            q,
            q_targ,
            log_alpha,
            rng,
            in_mean,
            in_inv_std,
            updates: 0,
        })
    }

    pub(crate) fn cfg(&self) -> &SacConfig {
        &self.cfg
    }

    /// The BC weight at this update: λ, falling linearly to 0 over
    /// `bc_anneal` actor updates.
    fn bc_lambda_now(&self) -> f64 {
        let cfg = &self.cfg;
        if cfg.bc_anneal == 0 {
            return cfg.bc_lambda;
        }
        let actor_updates = self.updates.saturating_sub(cfg.critic_warmup) as f64;
        cfg.bc_lambda * (1.0 - actor_updates / cfg.bc_anneal as f64).max(0.0)
    }

    /// The actor's entropy estimate −E[log π(a|s)] on up to `n` states of
    /// `rb` (one exact log π per sampled action), in the flow's normalised
    /// action space.
    pub fn policy_entropy(&mut self, rb: &ReplayBuffer, n: usize) -> Result<f64> {
        let batch = rb.sample(n, &mut self.rng, &self.dev)?;
        let z = self.noise(batch.len())?;
        let c = self.cond(&batch.s)?;
        let (_, lp) = self.twin.sample(&c, &z)?;
        Ok(-(lp.mean_all()?.to_scalar::<f32>()? as f64))
    }

    /// Replace the target entropy (e.g. by the measured one).
    pub fn set_target_entropy(&mut self, h: f64) {
        self.cfg.target_entropy = Some(h);
    }

    /// Updates done so far (restored ones included).
    pub fn updates(&self) -> u64 {
        self.updates
    }

    fn noise(&mut self, b: usize) -> Result<Tensor> {
        let d = self.spec.act_dim;
        let v: Vec<f32> = (0..b * d)
            .map(|_| self.rng.sample::<f32, _>(StandardNormal))
            .collect();
        Ok(Tensor::from_vec(v, (b, d), &self.dev)?)
    }

    /// Flow conditioning of raw s = obs ++ goal.
    fn cond(&self, s: &Tensor) -> Result<Tensor> {
        let od = self.spec.obs_dim;
        let obs = s.narrow(1, 0, od)?;
        let goal = if self.spec.goal_dim > 0 {
            Some(s.narrow(1, od, self.spec.goal_dim)?)
        } else {
            None
        };
        Ok(self.twin.condition(&obs, goal.as_ref())?)
    }

    fn q_in(&self, s: &Tensor, a: &Tensor) -> Result<Tensor> {
        let sn = s
            .broadcast_sub(&self.in_mean)?
            .broadcast_mul(&self.in_inv_std)?;
        Ok(Tensor::cat(&[&sn, a], 1)?)
    }

    /// One SAC update on a batch from `rb`.
    pub fn update(&mut self, rb: &ReplayBuffer) -> Result<UpdateStats> {
        let b = self.cfg.batch;
        self.update_mixed(&[(rb, b)], true)
    }

    /// One update on a batch drawn `n` rows from each `(buffer, n)` (RLPD's
    /// symmetric sampling: online and prior data in fixed shares). With
    /// `actor` false only the critics move (offline critic pre-training).
    pub fn update_mixed(
        &mut self,
        sources: &[(&ReplayBuffer, usize)],
        actor: bool,
    ) -> Result<UpdateStats> {
        let parts = sources
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(rb, n)| rb.sample(*n, &mut self.rng, &self.dev))
            .collect::<Result<Vec<_>>>()?;
        let batch = super::replay::Batch::cat(&parts)?;
        let b = batch.len();
        let alpha = self.log_alpha.as_tensor().exp()?.detach();
        let alpha_v = alpha.to_vec1::<f32>()?[0];

        // Critic target: r + γ(1 − done)(min Q̄(s', a') − α log π(a'|s')).
        let z2 = self.noise(b)?;
        let c2 = self.cond(&batch.s2)?;
        let (a2, lp2) = self.twin.sample(&c2, &z2)?;
        let x2 = self.q_in(&batch.s2, &a2)?;
        let qn = self.q_targ[0]
            .forward(&x2)?
            .minimum(&self.q_targ[1].forward(&x2)?)?;
        let soft = (qn - lp2.broadcast_mul(&alpha)?)?;
        let not_done = (batch.done.neg()? + 1.0)?;
        let y = (batch.r + (soft.mul(&not_done)? * self.cfg.gamma)?)?.detach();
        let x = self.q_in(&batch.s, &batch.a)?;
        let q1 = self.q[0].forward(&x)?;
        let q2 = self.q[1].forward(&x)?;
        let critic_loss = ((&q1 - &y)?.sqr()?.mean_all()? + (&q2 - &y)?.sqr()?.mean_all()?)?;
        self.opt_q.backward_step(&critic_loss)?;

        let mut st = UpdateStats {
            critic_loss: critic_loss.to_scalar::<f32>()?,
            alpha: alpha_v,
            q: q1.mean_all()?.to_scalar::<f32>()?,
            ..Default::default()
        };
        self.updates += 1;
        if actor && self.updates > self.cfg.critic_warmup {
            // Actor: α log π(a|s) − min Q(s, a), a reparameterised; the
            // exact log π comes from the same flow pass.
            let z = self.noise(b)?;
            let c = self.cond(&batch.s)?;
            let (a, lp) = self.twin.sample(&c, &z)?;
            let xa = self.q_in(&batch.s, &a)?;
            let qa = self.q[0].forward(&xa)?.minimum(&self.q[1].forward(&xa)?)?;
            // Keep samples inside the action box (the robot clips anyway).
            let outside = (a.abs()? - 1.0)?.relu()?.sqr()?.sum(D::Minus1)?;
            let mut loss = (lp.broadcast_mul(&alpha)? - qa)?.mean_all()?;
            loss = (loss + (outside.mean_all()? * 10.0)?)?;
            let lambda = self.bc_lambda_now();
            if lambda > 0.0 {
                let bc = self.twin.log_prob(&c, &batch.a)?.mean_all()?.neg()?;
                loss = (loss + (bc * lambda)?)?;
            }
            st.bc_lambda = lambda as f32;
            self.opt_actor.backward_step(&loss)?;
            st.actor_loss = loss.to_scalar::<f32>()?;
            let lp_mean = lp.mean_all()?.to_scalar::<f32>()? as f64;
            st.entropy = -lp_mean as f32;
            // Temperature: −log α · (log π + H̄).
            let target = self
                .cfg
                .target_entropy
                .unwrap_or(-(self.spec.act_dim as f64));
            let a_loss = (self.log_alpha.as_tensor() * -(lp_mean + target))?.mean_all()?;
            self.opt_alpha.backward_step(&a_loss)?;
        }
        self.q_targ[0].polyak(&self.q[0], self.cfg.tau)?;
        self.q_targ[1].polyak(&self.q[1], self.cfg.tau)?;
        Ok(st)
    }

    /// The current actor as the next version of `parent`.
    pub fn export(&self, parent: &ModelSpec) -> Result<ModelFile> {
        let mut spec = parent.clone();
        spec.version = parent.version + 1;
        spec.parent_digest = Some(parent.digest.clone());
        spec.parent_version = Some(parent.version);
        // SAC optimises the distribution of the sampled action itself; the
        // BC-time denoising step σ²∇log p would move it off what was
        // optimised, and grows as the policy sharpens.
        spec.denoise = false;
        spec.created_by = format!(
            "flowpilot finetune (SAC, {} updates, seed {})",
            self.updates, self.cfg.seed
        );
        Ok(self.twin.to_model(spec)?)
    }

    /// Critics, targets, temperature and update count, atomically
    /// (tmp file, fsync, rename).
    pub(crate) fn save_state(&self, path: &Path) -> Result<()> {
        let mut m: HashMap<String, Tensor> = HashMap::new();
        for (name, c) in self.critics() {
            for (i, v) in c.vars.iter().enumerate() {
                m.insert(format!("{name}.{i}"), v.as_tensor().clone());
            }
        }
        m.insert("log_alpha".into(), self.log_alpha.as_tensor().clone());
        m.insert(
            "updates".into(),
            Tensor::new(&[self.updates as f32], &self.dev)?,
        );
        flowpilot_core::checkpoint::write_atomic(path, |tmp| {
            candle_core::safetensors::save(&m, tmp)
        })?;
        Ok(())
    }

    /// The critics and their targets, by their names in the state file.
    fn critics(&self) -> [(&'static str, &Critic); 4] {
        [
            ("q0", &self.q[0]),
            ("q1", &self.q[1]),
            ("t0", &self.q_targ[0]),
            ("t1", &self.q_targ[1]),
        ]
    }

    /// Restore what [`Self::save_state`] wrote; shapes are checked.
    pub(crate) fn load_state(&mut self, path: &Path) -> Result<()> {
        let m = candle_core::safetensors::load(path, &self.dev).map_err(|source| {
            LearnerError::StateRead {
                path: path.to_path_buf(),
                source,
            }
        })?;
        let get = |k: &str| {
            m.get(k)
                .ok_or_else(|| LearnerError::StateMissing(k.to_string()))
        };
        for (name, c) in self.critics() {
            for (i, v) in c.vars.iter().enumerate() {
                let t = get(&format!("{name}.{i}"))?;
                if t.dims() != v.as_tensor().dims() {
                    return Err(LearnerError::StateShape(format!("{name}.{i}")));
                }
                v.set(t)?;
            }
        }
        self.log_alpha.set(get("log_alpha")?)?;
        self.updates = get("updates")?.to_vec1::<f32>()?[0] as u64;
        Ok(())
    }
}

#[cfg(all(test, feature = "clap"))]
mod tests {
    use super::SacConfig;
    use clap::Parser;

    #[derive(Parser)]
    struct Flags {
        #[command(flatten)]
        sac: SacConfig,
    }

    #[test]
    fn default_equals_the_parse_of_no_flags() {
        let parsed = Flags::try_parse_from(["finetune"]).unwrap().sac;
        assert_eq!(parsed, SacConfig::default());
    }

    #[test]
    fn flags_keep_their_names() {
        let f = Flags::try_parse_from([
            "finetune",
            "--critic-warmup",
            "20",
            "--bc-lambda",
            "0.5",
            "--target-entropy",
            "-3",
            "--lr-actor",
            "1e-3",
        ])
        .unwrap()
        .sac;
        assert_eq!(f.critic_warmup, 20);
        assert_eq!(f.bc_lambda, 0.5);
        assert_eq!(f.target_entropy, Some(-3.0));
        assert_eq!(f.lr_actor, 1e-3);
    }
}
