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
use super::fast::Fast;
use super::replay::{Batch, ReplayBuffer};
use crate::twin::Twin;
use flowpilot_core::policy::model::{ModelFile, ModelSpec};

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
    /// The BC term on the prior data's rows only (the demonstrations), not
    /// on the robot's own logged actions (needs prior data).
    #[cfg_attr(
        feature = "clap",
        arg(long, help = "The BC term on the prior data's rows only", long_help = None::<&str>)
    )]
    pub bc_demos_only: bool,
    /// LayerNorm (no affine) after each hidden layer of the critics, as in
    /// RLPD: keeps Q bounded when the actor leaves the data.
    #[cfg_attr(
        feature = "clap",
        arg(long, help = "LayerNorm in the critics' hidden layers", long_help = None::<&str>)
    )]
    pub critic_layer_norm: bool,
    /// The critics see each sampled action as the robot executes it,
    /// clip(a, −1, 1), in the critic target and the actor loss (the
    /// paper's −Q(s, clip(a_π))): Q is never asked about actions outside
    /// the box, where it has no data; outside, the actor feels only the
    /// box penalty.
    #[cfg_attr(
        feature = "clap",
        arg(long, help = "Critics see sampled actions clipped to the box, as the robot executes them", long_help = None::<&str>)
    )]
    pub critic_clips_actions: bool,
    /// Leave the entropy term out of the critic target: y = r + γ(1 −
    /// done)·min Q̄(s', a'), as SERL/HIL-SERL do for sparse rewards (their
    /// `backup_entropy` off). The actor and the temperature keep it. With a
    /// 0/1 success reward the soft term −α log π summed over a horizon
    /// outweighs the reward and Q tracks entropy, not success
    /// (docs/manipulation.md, "Fine-tuning").
    #[cfg_attr(
        feature = "clap",
        arg(long, help = "No entropy term in the critic target (sparse rewards)", long_help = None::<&str>)
    )]
    pub no_entropy_backup: bool,
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
    /// Latent temperature τ ∈ (0, 1] of the policy being optimised: the
    /// actor loss, the critic target and the entropy sample z ~ N(0, τ²I)
    /// and take that policy's exact log π. 1 (the default) optimises the
    /// untempered flow, which did better on Reacher than optimising the
    /// τ = 0.3 policy the robot acts with (docs/finetuning.md).
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = 1.0, help = "Latent temperature of the optimised policy", long_help = None::<&str>)
    )]
    pub latent_temperature: f64,
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
            bc_demos_only: false,
            critic_layer_norm: false,
            critic_clips_actions: false,
            no_entropy_backup: false,
            critic_hidden: 256,
            critic_warmup: 500,
            seed: 0,
            latent_temperature: 1.0,
        }
    }
}

/// A ReLU MLP critic Q(s, a) with its own seeded init, optionally with
/// LayerNorm (no affine) before each ReLU.
struct Critic {
    vars: Vec<Var>,
    layer_norm: bool,
}

/// (x − mean) / sqrt(var + ε) over the last dim (ε: the critic's, one
/// constant for this path and the hand-written one).
fn layer_norm(h: &Tensor) -> Result<Tensor> {
    let mean = h.mean_keepdim(D::Minus1)?;
    let c = h.broadcast_sub(&mean)?;
    let var = c.sqr()?.mean_keepdim(D::Minus1)?;
    Ok(c.broadcast_div(&(var + super::kernels::CRITIC_LN_EPS)?.sqrt()?)?)
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

/// One part of an update's batch: `rows` rows drawn from `from`, and
/// whether the BC term imitates their actions.
#[derive(Clone, Copy)]
pub(crate) struct Draw<'a> {
    pub(crate) from: &'a ReplayBuffer,
    pub(crate) rows: usize,
    pub(crate) imitate: bool,
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
    /// The hand-written update ([`Fast::supports`] this configuration):
    /// while present it owns the actor's and critics' values and AdamW
    /// moments; the candle variables are refreshed from it before anything
    /// else reads them ([`Self::sync_vars`]).
    fast: Option<Fast<f32>>,
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
        let t = cfg.latent_temperature;
        if !(t > 0.0 && t <= 1.0) {
            return Err(LearnerError::LatentTemperature(t));
        }
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
        let fast = if Fast::<f32>::supports(&spec, &cfg) {
            let (m, s) = (in_mean.flatten_all()?, in_inv_std.flatten_all()?);
            Some(Fast::new(
                &twin,
                [&q[0].vars, &q[1].vars],
                [&q_targ[0].vars, &q_targ[1].vars],
                &m.to_vec1::<f32>()?,
                &s.to_vec1::<f32>()?,
                &cfg,
                // Once: candle's own lookup re-reads the environment (or
                // /proc/cpuinfo) on every call.
                candle_core::utils::get_num_threads(),
            )?)
        } else {
            None
        };
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
            fast,
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
        self.sync_vars()?;
        let batch = rb.sample(n, &mut self.rng, &self.dev)?;
        let z = self.noise(batch.len())?;
        let c = self.cond(&batch.s)?;
        let (_, lp) = self.latent(&z).sample(&self.twin, &c)?;
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

    /// Base noise z = τ·ε of the optimised policy, (b, act_dim).
    fn noise(&mut self, b: usize) -> Result<Tensor> {
        let v = self.noise_vec(b);
        Ok(Tensor::from_vec(v, (b, self.spec.act_dim), &self.dev)?)
    }

    fn latent<'a>(&self, z: &'a Tensor) -> Latent<'a> {
        Latent {
            z,
            tau: self.cfg.latent_temperature,
        }
    }

    /// b·act_dim draws τ·ε, ε standard normal, from the update's stream.
    fn noise_vec(&mut self, b: usize) -> Vec<f32> {
        let tau = self.cfg.latent_temperature as f32;
        (0..b * self.spec.act_dim)
            .map(|_| tau * self.rng.sample::<f32, _>(StandardNormal))
            .collect()
    }

    fn cond(&self, s: &Tensor) -> Result<Tensor> {
        cond_of(&self.twin, s)
    }

    /// Refresh the candle variables from the hand-written path's values.
    fn sync_vars(&self) -> Result<()> {
        match &self.fast {
            Some(f) => f.store(),
            None => Ok(()),
        }
    }

    /// One SAC update on a batch from `rb`.
    pub fn update(&mut self, rb: &ReplayBuffer) -> Result<UpdateStats> {
        let rows = self.cfg.batch;
        let all = Draw {
            from: rb,
            rows,
            imitate: true,
        };
        self.update_mixed(&[all], true)
    }

    /// One update on a batch of the [`Draw`]s (RLPD's symmetric sampling:
    /// online and prior data in fixed shares). With `actor` false only the
    /// critics move (offline critic pre-training).
    pub(crate) fn update_mixed(&mut self, sources: &[Draw], actor: bool) -> Result<UpdateStats> {
        let sources: Vec<&Draw> = sources.iter().filter(|d| d.rows > 0).collect();
        let parts = sources
            .iter()
            .map(|d| d.from.sample(d.rows, &mut self.rng, &self.dev))
            .collect::<Result<Vec<_>>>()?;
        let batch = super::replay::Batch::cat(&parts)?;
        let b = batch.len();
        let bc_w = bc_weights(&sources, self.bc_lambda_now());
        let alpha = self.log_alpha.as_tensor().exp()?.detach();
        let alpha_v = alpha.to_vec1::<f32>()?[0];
        if self.fast.is_some() {
            return self.update_fast(&batch, alpha_v, actor, &bc_w);
        }

        let z2 = self.noise(b)?;
        let norm = (&self.in_mean, &self.in_inv_std);
        // --no-entropy-backup: α = 0 in the target only
        let alpha_backup = if self.cfg.no_entropy_backup {
            alpha.zeros_like()?
        } else {
            alpha.clone()
        };
        let y = critic_target(
            &self.twin,
            &self.q_targ,
            norm,
            &batch,
            self.latent(&z2),
            &alpha_backup,
            self.cfg.gamma,
            self.cfg.critic_clips_actions,
        )?;
        let x = q_in(norm, &batch.s, &batch.a)?;
        let (critic_loss, q1) = critic_loss(&self.q, &x, &y)?;
        self.opt_q.backward_step(&critic_loss)?;

        let mut st = UpdateStats {
            critic_loss: critic_loss.to_scalar::<f32>()?,
            alpha: alpha_v,
            q: q1.mean_all()?.to_scalar::<f32>()?,
            ..Default::default()
        };
        self.updates += 1;
        if actor && self.updates > self.cfg.critic_warmup {
            let z = self.noise(b)?;
            let norm = (&self.in_mean, &self.in_inv_std);
            let (mut loss, lp, c) = actor_loss(
                &self.twin,
                &self.q,
                norm,
                &batch.s,
                self.latent(&z),
                &alpha,
                self.cfg.critic_clips_actions,
            )?;
            let lambda = self.bc_lambda_now();
            if lambda > 0.0 {
                let w = Tensor::from_slice(&bc_w, b, &self.dev)?;
                let bc = (self.twin.log_prob(&c, &batch.a)? * w)?.sum_all()?.neg()?;
                loss = (loss + bc)?;
            }
            st.bc_lambda = lambda as f32;
            self.opt_actor.backward_step(&loss)?;
            st.actor_loss = loss.to_scalar::<f32>()?;
            let lp_mean = lp.mean_all()?.to_scalar::<f32>()? as f64;
            st.entropy = -lp_mean as f32;
            self.temperature_step(lp_mean)?;
        }
        self.q_targ[0].polyak(&self.q[0], self.cfg.tau)?;
        self.q_targ[1].polyak(&self.q[1], self.cfg.tau)?;
        Ok(st)
    }

    /// Temperature: −log α · (log π + H̄).
    fn temperature_step(&mut self, lp_mean: f64) -> Result<()> {
        let target = self
            .cfg
            .target_entropy
            .unwrap_or(-(self.spec.act_dim as f64));
        let a_loss = (self.log_alpha.as_tensor() * -(lp_mean + target))?.mean_all()?;
        self.opt_alpha.backward_step(&a_loss)?;
        Ok(())
    }

    /// [`Self::update_mixed`] on the hand-written path: the same losses, the
    /// same random draws in the same order, the same optimiser arithmetic.
    fn update_fast(
        &mut self,
        batch: &Batch,
        alpha: f32,
        actor: bool,
        bc_w: &[f32],
    ) -> Result<UpdateStats> {
        let b = batch.len();
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        let (s, a, r, s2, done) = (
            flat(&batch.s)?,
            flat(&batch.a)?,
            flat(&batch.r)?,
            flat(&batch.s2)?,
            flat(&batch.done)?,
        );
        let z2 = self.noise_vec(b);
        let actor_now = actor && self.updates + 1 > self.cfg.critic_warmup;
        let lambda = self.bc_lambda_now();
        let Some(f) = self.fast.as_mut() else {
            return Err(LearnerError::FastPath("not in use".into()));
        };
        // W, W⁻¹ once for both passes: the actor moves only after both.
        f.prepare();
        let alpha_backup = if self.cfg.no_entropy_backup {
            0.0
        } else {
            alpha
        };
        let y = f.target(&s2, &r, &done, &z2, alpha_backup, self.cfg.gamma, b);
        let (critic_loss, q1) = f.critic_grads(&s, &a, &y, b);
        f.critic_step();
        let mut st = UpdateStats {
            critic_loss,
            alpha,
            q: q1,
            ..Default::default()
        };
        self.updates += 1;
        if actor_now {
            let z = self.noise_vec(b);
            let Some(f) = self.fast.as_mut() else {
                return Err(LearnerError::FastPath("not in use".into()));
            };
            let bc = (lambda > 0.0).then_some((&a[..], bc_w));
            let (loss, lp_mean) = f.actor_grads(&s, &z, alpha, bc, b);
            f.actor_step();
            st.bc_lambda = lambda as f32;
            st.actor_loss = loss;
            st.entropy = -lp_mean;
            self.temperature_step(lp_mean as f64)?;
        }
        if let Some(f) = self.fast.as_mut() {
            f.polyak(self.cfg.tau);
        }
        Ok(st)
    }

    /// The current actor as the next version of `parent`.
    pub fn export(&self, parent: &ModelSpec) -> Result<ModelFile> {
        self.sync_vars()?;
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
        self.sync_vars()?;
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
        if let Some(f) = self.fast.as_mut() {
            f.load_critics()?;
        }
        Ok(())
    }
}

/// log π_τ(a|s) from the twin's untempered `lp` of the action sampled from
/// base noise `z` (B, d): log N(z; 0, τ²I) replaces log N(z; 0, I), so each
/// row gains (1 − 1/τ²)·|z|²/2 − d·ln τ. Constant in the actor's
/// parameters, so gradients are untouched (the sampler's own rule,
/// `Sampler::sample_tempered`).
fn tempered(lp: &Tensor, z: &Tensor, tau: f64) -> Result<Tensor> {
    if tau == 1.0 {
        return Ok(lp.clone());
    }
    let d = z.dim(D::Minus1)? as f64;
    let sq = z.sqr()?.sum(D::Minus1)?;
    Ok(((lp + (sq * (0.5 * (1.0 - 1.0 / (tau * tau))))?)? - d * tau.ln())?)
}

/// Each row's BC weight, in batch order: λ/n on the n rows of the draws
/// that imitate (so the term is λ·mean(−log π(a_data|s)) over them), 0 on
/// the rest.
fn bc_weights(draws: &[&Draw], lambda: f64) -> Vec<f32> {
    let n: usize = draws.iter().filter(|d| d.imitate).map(|d| d.rows).sum();
    let w = if n > 0 {
        (lambda / n as f64) as f32
    } else {
        0.0
    };
    draws
        .iter()
        .flat_map(|d| std::iter::repeat_n(if d.imitate { w } else { 0.0 }, d.rows))
        .collect()
}

/// Flow conditioning of raw s = obs ++ goal.
fn cond_of(twin: &Twin, s: &Tensor) -> Result<Tensor> {
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
fn q_in(norm: (&Tensor, &Tensor), s: &Tensor, a: &Tensor) -> Result<Tensor> {
    let sn = s.broadcast_sub(norm.0)?.broadcast_mul(norm.1)?;
    Ok(Tensor::cat(&[&sn, a], 1)?)
}

/// With `clip`, the action the robot executes, clip(a, −1, 1), written
/// with relus so its gradient is 1 inside the box and 0 outside (the fast
/// path's rule); otherwise `a` itself.
fn executed(a: &Tensor, clip: bool) -> Result<Tensor> {
    if !clip {
        return Ok(a.clone());
    }
    let over = (a - 1.0)?.relu()?;
    let under = (a.neg()? - 1.0)?.relu()?;
    Ok(((a - over)? + under)?)
}

/// Base noise of the optimised policy, z = τ·ε, with its τ.
#[derive(Clone, Copy)]
struct Latent<'a> {
    z: &'a Tensor,
    tau: f64,
}

impl Latent<'_> {
    /// The action from this noise and its exact log π_τ.
    fn sample(&self, twin: &Twin, c: &Tensor) -> Result<(Tensor, Tensor)> {
        let (a, lp) = twin.sample(c, self.z)?;
        Ok((a, tempered(&lp, self.z, self.tau)?))
    }
}

/// Critic target r + γ(1 − done)(min Q̄(s', a') − α log π(a'|s')), a' from
/// base noise z2; detached.
fn critic_target(
    twin: &Twin,
    q_targ: &[Critic; 2],
    norm: (&Tensor, &Tensor),
    batch: &Batch,
    z2: Latent,
    alpha: &Tensor,
    gamma: f64,
    clip: bool,
) -> Result<Tensor> {
    let c2 = cond_of(twin, &batch.s2)?;
    let (a2, lp2) = z2.sample(twin, &c2)?;
    let x2 = q_in(norm, &batch.s2, &executed(&a2, clip)?)?;
    let qn = q_targ[0].forward(&x2)?.minimum(&q_targ[1].forward(&x2)?)?;
    let soft = (qn - lp2.broadcast_mul(alpha)?)?;
    let not_done = (batch.done.neg()? + 1.0)?;
    Ok((&batch.r + (soft.mul(&not_done)? * gamma)?)?.detach())
}

/// Σ_i mean((Q_i(x) − y)²), and Q_1(x).
fn critic_loss(q: &[Critic; 2], x: &Tensor, y: &Tensor) -> Result<(Tensor, Tensor)> {
    let q1 = q[0].forward(x)?;
    let q2 = q[1].forward(x)?;
    let loss = ((&q1 - y)?.sqr()?.mean_all()? + (&q2 - y)?.sqr()?.mean_all()?)?;
    Ok((loss, q1))
}

/// Actor loss without the BC term: mean(α log π(a|s) − min Q(s, a)) plus
/// the box penalty, a reparameterised from z (the exact log π comes from
/// the same flow pass). Returns (loss, log π, the conditioning).
fn actor_loss(
    twin: &Twin,
    q: &[Critic; 2],
    norm: (&Tensor, &Tensor),
    s: &Tensor,
    z: Latent,
    alpha: &Tensor,
    clip: bool,
) -> Result<(Tensor, Tensor, Tensor)> {
    let c = cond_of(twin, s)?;
    let (a, lp) = z.sample(twin, &c)?;
    let xa = q_in(norm, s, &executed(&a, clip)?)?;
    let qa = q[0].forward(&xa)?.minimum(&q[1].forward(&xa)?)?;
    // Keep samples inside the action box (the robot clips anyway).
    let outside = (a.abs()? - 1.0)?.relu()?.sqr()?.sum(D::Minus1)?;
    let loss = (lp.broadcast_mul(alpha)? - qa)?.mean_all()?;
    let loss = (loss + (outside.mean_all()? * 10.0)?)?;
    Ok((loss, lp, c))
}

/// The optimised policy's latent temperature: its entropy is that of
/// z ~ N(0, τ²I) pushed through the flow, and τ outside (0, 1] is refused.
#[cfg(test)]
mod latent_temperature {
    use super::*;
    use flowpilot_core::policy::init::{default_spec, init_model, Init};

    fn entropy_at(tau: f64) -> Result<f64> {
        // Paper init: zero last layers make every coupling the identity and
        // the linear layers are orthogonal, so the flow keeps volume and the
        // entropy is exactly Gaussian's, d/2·ln(2πe) + d·ln τ.
        let model = init_model(default_spec(4, 0, 2, 2, 16), Init::Paper, 1).unwrap();
        let cfg = SacConfig {
            latent_temperature: tau,
            ..Default::default()
        };
        let mut sac = Sac::new(&model, cfg)?;
        let mut rb = ReplayBuffer::new(4, 2, 64);
        for i in 0..64 {
            let s = [i as f32 / 64.0, 0.5, -0.25, 1.0];
            rb.push(&s, &[0.0, 0.0], 0.0, &s, false);
        }
        sac.policy_entropy(&rb, 8192)
    }

    #[test]
    fn the_entropy_is_that_of_the_tempered_policy() {
        let gauss = (2.0 * std::f64::consts::PI * std::f64::consts::E).ln();
        // 8192 draws: the estimate's SE is √(d/2 / 8192) ≈ 0.011.
        for tau in [1.0, 0.3] {
            let h = entropy_at(tau).unwrap();
            let want = gauss + 2.0 * tau.ln();
            assert!(
                (h - want).abs() < 0.06,
                "tau {tau}: entropy {h}, want {want}"
            );
        }
    }

    #[test]
    fn a_temperature_outside_0_1_is_refused() {
        for tau in [0.0, -0.5, 1.5, f64::NAN] {
            assert!(matches!(
                entropy_at(tau),
                Err(LearnerError::LatentTemperature(_))
            ));
        }
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

/// The hand-written update against candle autograd: every parameter's
/// gradient of the critic and actor losses, in f64, on random models of
/// both flow directions (with and without a goal), with plain and with
/// LayerNorm critics.
#[cfg(test)]
mod parity {
    use super::*;
    use flowpilot_core::policy::init::{default_spec, init_model, Init};
    use flowpilot_core::policy::model::{Direction, Normalizer};

    /// ‖fast − ref‖₂ ≤ TOL·‖ref‖₂ per parameter tensor.
    const TOL: f64 = 1e-5;

    fn f64_critic(c: &Critic) -> Critic {
        Critic {
            vars: c
                .vars
                .iter()
                .map(|v| Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap())
                .collect(),
            layer_norm: c.layer_norm,
        }
    }

    fn rel_err(fast: &[f64], reference: &Tensor) -> (f64, f64) {
        let r = reference.flatten_all().unwrap().to_vec1::<f64>().unwrap();
        assert_eq!(fast.len(), r.len());
        let diff: f64 = fast
            .iter()
            .zip(&r)
            .map(|(a, b)| (a - b).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = r.iter().map(|b| b * b).sum::<f64>().sqrt();
        (diff / norm, norm)
    }

    #[allow(clippy::too_many_arguments)]
    fn check(
        dir: Direction,
        act: usize,
        goal: usize,
        seed: u64,
        threads: usize,
        ln: bool,
        (bc, imitated): (f64, usize),
        tau: f64,
        clip: bool,
    ) -> f64 {
        let (obs, b, dev) = (5, 64, Device::Cpu);
        let mut spec = default_spec(obs, goal, act, 3, 24);
        spec.direction = dir;
        spec.obs_norm = Normalizer {
            mean: (0..obs).map(|i| 0.1 * i as f32).collect(),
            std: (0..obs).map(|i| 0.5 + 0.25 * i as f32).collect(),
        };
        if goal > 0 {
            spec.goal_norm = Some(Normalizer {
                mean: vec![0.3; goal],
                std: vec![2.0; goal],
            });
        }
        let model = init_model(spec.clone(), Init::Random { last_scale: 0.5 }, seed).unwrap();
        let twin = Twin::from_model_dtype(&model, &dev, DType::F64).unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let k = obs + goal;
        let mk =
            |rng: &mut ChaCha8Rng| f64_critic(&Critic::new(k + act, 16, ln, rng, &dev).unwrap());
        let q = [mk(&mut rng), mk(&mut rng)];
        let q_targ = [mk(&mut rng), mk(&mut rng)];
        let mut mean: Vec<f64> = spec.obs_norm.mean.iter().map(|&v| v as f64).collect();
        // The twin takes 1/std in f32 (then widens): the same values here.
        let mut inv: Vec<f64> = spec
            .obs_norm
            .std
            .iter()
            .map(|&v| (1.0 / v) as f64)
            .collect();
        if let Some(g) = &spec.goal_norm {
            mean.extend(g.mean.iter().map(|&v| v as f64));
            inv.extend(g.std.iter().map(|&v| (1.0 / v) as f64));
        }
        let in_mean = Tensor::from_vec(mean.clone(), (1, k), &dev).unwrap();
        let in_inv = Tensor::from_vec(inv.clone(), (1, k), &dev).unwrap();
        let mut uni = |n: usize, lo: f64, hi: f64| -> Vec<f64> {
            (0..n).map(|_| rng.random_range(lo..hi)).collect()
        };
        let s = uni(b * k, -2.0, 2.0);
        let a = uni(b * act, -1.5, 1.5);
        let r = uni(b, -1.0, 0.0);
        let s2 = uni(b * k, -2.0, 2.0);
        let done: Vec<f64> = uni(b, 0.0, 1.0)
            .iter()
            .map(|&u| if u < 0.2 { 1.0 } else { 0.0 })
            .collect();
        let z2: Vec<f64> = uni(b * act, -2.0, 2.0);
        let z: Vec<f64> = uni(b * act, -2.0, 2.0);
        let t2 = |v: &[f64], c: usize| Tensor::from_vec(v.to_vec(), (b, c), &dev).unwrap();
        let t1 = |v: &[f64]| Tensor::from_vec(v.to_vec(), b, &dev).unwrap();
        let batch = Batch {
            s: t2(&s, k),
            a: t2(&a, act),
            r: t1(&r),
            s2: t2(&s2, k),
            done: t1(&done),
        };
        let alpha_v = 0.3f64;
        let alpha = Tensor::new(&[alpha_v], &dev).unwrap();
        let norm = (&in_mean, &in_inv);

        // Reference: the autograd path's own loss functions.
        let (z2t, zt) = (t2(&z2, act), t2(&z, act));
        let latent = |z| Latent { z, tau };
        let y = critic_target(
            &twin,
            &q_targ,
            norm,
            &batch,
            latent(&z2t),
            &alpha,
            0.99,
            clip,
        )
        .unwrap();
        let x = q_in(norm, &batch.s, &batch.a).unwrap();
        let (closs, _) = critic_loss(&q, &x, &y).unwrap();
        let cgrads = closs.backward().unwrap();
        let (mut aloss, _, c) =
            actor_loss(&twin, &q, norm, &batch.s, latent(&zt), &alpha, clip).unwrap();
        if bc > 0.0 {
            // As `update_mixed`: λ·mean(−log π(a_data|s)) over the last
            // `imitated` rows (where a batch puts the prior data).
            let nll = twin
                .log_prob(&c, &batch.a)
                .unwrap()
                .narrow(0, b - imitated, imitated)
                .unwrap()
                .mean_all()
                .unwrap()
                .neg()
                .unwrap();
            aloss = (aloss + (nll * bc).unwrap()).unwrap();
        }
        let agrads = aloss.backward().unwrap();

        let cfg = SacConfig {
            critic_layer_norm: ln,
            bc_lambda: bc,
            latent_temperature: tau,
            critic_clips_actions: clip,
            ..Default::default()
        };
        assert!(Fast::<f64>::supports(&spec, &cfg));
        let mut f = Fast::<f64>::new(
            &twin,
            [&q[0].vars, &q[1].vars],
            [&q_targ[0].vars, &q_targ[1].vars],
            &mean,
            &inv,
            &cfg,
            threads,
        )
        .unwrap();
        f.prepare();
        let yf = f.target(&s2, &r, &done, &z2, alpha_v, 0.99, b);
        let (e, _) = rel_err(&yf, &y);
        assert!(e < 1e-9, "{dir:?}: critic target differs (rel {e:e})");
        let (cl, _) = f.critic_grads(&s, &a, &yf, b);
        let cl_ref = closs.to_scalar::<f64>().unwrap();
        assert!(
            (cl - cl_ref).abs() <= 1e-9 * cl_ref.abs(),
            "critic loss {cl} vs {cl_ref}"
        );
        let w: Vec<f64> = (0..b)
            .map(|r| {
                if r >= b - imitated {
                    bc / imitated as f64
                } else {
                    0.0
                }
            })
            .collect();
        let (al, _) = f.actor_grads(&s, &z, alpha_v, (bc > 0.0).then_some((&a[..], &w[..])), b);
        let al_ref = aloss.to_scalar::<f64>().unwrap();
        assert!(
            (al - al_ref).abs() <= 1e-9 * al_ref.abs(),
            "actor loss {al} vs {al_ref}"
        );

        let mut checked = 0;
        let mut worst = 0f64;
        for c in &q {
            for (i, v) in c.vars.iter().enumerate() {
                let (e, n) = rel_err(
                    &f.critic_grad_of(v).unwrap(),
                    cgrads.get(v.as_tensor()).unwrap(),
                );
                assert!(n > 0.0, "critic var {i}: zero reference gradient");
                assert!(
                    e <= TOL,
                    "{dir:?} act {act} goal {goal} ln {ln} bc {bc}/{imitated}: critic var {i}: rel err {e:e}"
                );
                worst = worst.max(e);
                checked += 1;
            }
        }
        let vars = twin.vars();
        assert_eq!(vars.len(), 3 * 23);
        for v in &vars {
            // A 1-D action's L and U have no free entries: autograd has no
            // gradient for them (they do not reach the loss), ours is 0.
            let zero = v.as_tensor().zeros_like().unwrap();
            let reference = match agrads.get(v.as_tensor()) {
                Some(g) => g,
                None if act == 1 => &zero,
                None => panic!("actor var {:?}: no autograd gradient", v.shape()),
            };
            let (e, n) = rel_err(&f.actor_grad_of(v).unwrap(), reference);
            let e = if n == 0.0 && act == 1 {
                f.actor_grad_of(v).unwrap().iter().map(|x| x.abs()).sum()
            } else {
                e
            };
            assert!(
                n > 0.0 || act == 1,
                "actor var {:?}: zero reference gradient",
                v.shape()
            );
            assert!(
                e <= TOL,
                "{dir:?} act {act} goal {goal} ln {ln} bc {bc}/{imitated}: actor var {:?}: rel err {e:e}",
                v.shape()
            );
            worst = worst.max(e);
            checked += 1;
        }
        assert_eq!(checked, 12 + 69);
        worst
    }

    #[test]
    fn fast_sac_gradients_match_autograd() {
        // 3 workers: the batch split into row ranges whose sums meet.
        // ln: LayerNorm critics (`--critic-layer-norm`); bc: the BC weight
        // and the rows it covers (of 64; 24: `--bc-demos-only`); tau: the
        // latent temperature; clip: `--critic-clips-actions` (about a third
        // of these samples fall outside the box).
        for (ln, bc, tau, clip) in [
            (false, (0.0, 64), 1.0, false),
            (true, (0.0, 64), 0.3, false),
            (false, (0.7, 64), 0.3, false),
            (true, (0.7, 64), 1.0, false),
            (true, (0.7, 24), 0.3, false),
            (true, (0.0, 64), 1.0, true),
            (false, (0.7, 24), 1.0, true),
        ] {
            for threads in [1, 3] {
                for (i, dir) in [Direction::Inverse, Direction::Forward]
                    .into_iter()
                    .enumerate()
                {
                    for (j, (act, goal)) in [(5, 0), (4, 3), (2, 0), (1, 2)].into_iter().enumerate()
                    {
                        let seed = 10 + (4 * i + j) as u64;
                        let worst = check(dir, act, goal, seed, threads, ln, bc, tau, clip);
                        eprintln!(
                            "{threads} worker(s), {dir:?} act {act} goal {goal} ln {ln} bc {bc:?} tau {tau} clip {clip}: worst relative gradient error {worst:e}"
                        );
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod entropy_backup {
    use super::*;
    use flowpilot_core::policy::init::{default_spec, init_model, Init};

    /// Mean Q over a fixed batch after critic-only updates, on both paths.
    fn q_after(no_entropy_backup: bool, init_alpha: f64, fast: bool) -> f32 {
        let model = init_model(
            default_spec(6, 0, 3, 2, 32),
            Init::Random { last_scale: 0.5 },
            3,
        )
        .unwrap();
        let cfg = SacConfig {
            batch: 32,
            critic_hidden: 32,
            lr_critic: 1e-2,
            init_alpha,
            no_entropy_backup,
            ..Default::default()
        };
        let mut sac = Sac::new(&model, cfg).unwrap();
        assert!(sac.fast.is_some());
        if !fast {
            sac.fast = None;
        }
        let mut rb = ReplayBuffer::new(6, 3, 200);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for i in 0..200 {
            let mut v =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
            let (s, a, s2) = (v(6), v(3), v(6));
            // a sparse reward: 1 on the terminal (success) rows
            let done = i % 13 == 0;
            rb.push(&s, &a, if done { 1.0 } else { 0.0 }, &s2, done);
        }
        let mut q = 0.0;
        for _ in 0..60 {
            let all = Draw {
                from: &rb,
                rows: 32,
                imitate: true,
            };
            q = sac.update_mixed(&[all], false).unwrap().q;
        }
        q
    }

    #[test]
    fn without_the_entropy_backup_the_target_ignores_alpha() {
        for fast in [true, false] {
            // α enters a critic-only update through the target alone: with
            // the backup off, a large α leaves the critics where α ≈ 0 does.
            let off = q_after(true, 5.0, fast);
            let tiny = q_after(false, 1e-12, fast);
            let on = q_after(false, 5.0, fast);
            assert!(
                (off - tiny).abs() <= 1e-4 * (1.0 + tiny.abs()),
                "fast {fast}: no backup {off} vs α≈0 {tiny}"
            );
            // with it, the soft term moves Q far from the 0/1 reward's scale
            assert!(
                (on - off).abs() > 0.5,
                "fast {fast}: backup {on} vs none {off}"
            );
            assert!(
                off.abs() < 1.5,
                "fast {fast}: Q {off} outside the reward's scale"
            );
        }
    }

    #[cfg(feature = "clap")]
    #[test]
    fn the_flag_parses() {
        #[derive(clap::Parser)]
        struct Flags {
            #[command(flatten)]
            sac: SacConfig,
        }
        use clap::Parser;
        assert!(
            Flags::try_parse_from(["finetune", "--no-entropy-backup"])
                .unwrap()
                .sac
                .no_entropy_backup
        );
    }
}

#[cfg(test)]
mod bc_rows {
    use super::*;

    #[test]
    fn the_bc_weight_is_a_mean_over_the_imitated_rows_only() {
        let rb = ReplayBuffer::new(2, 1, 4);
        let d = |rows, imitate| Draw {
            from: &rb,
            rows,
            imitate,
        };
        let (online, demos) = (d(3, false), d(2, true));
        assert_eq!(
            bc_weights(&[&online, &demos], 0.5),
            [0.0, 0.0, 0.0, 0.25, 0.25]
        );
        let both = d(3, true);
        assert_eq!(bc_weights(&[&both, &demos], 1.0), [0.2; 5]);
        assert_eq!(bc_weights(&[&online], 1.0), [0.0; 3]);
    }
}

/// Whole updates, hand-written vs autograd, in f32: the same draws, losses,
/// AdamW and Polyak steps leave the same actor, critics and temperature,
/// with plain and with LayerNorm critics.
#[cfg(test)]
mod same_update {
    use super::*;
    use flowpilot_core::policy::init::{default_spec, init_model, Init};
    use flowpilot_core::policy::model::TensorData;

    #[test]
    fn fast_and_autograd_updates_agree() {
        // The last: BC on the second draw's rows only (`--bc-demos-only`).
        for (critic_layer_norm, bc_lambda, tau, demos_only) in [
            (false, 0.0, 1.0, false),
            (true, 0.0, 0.3, false),
            (true, 0.5, 0.3, false),
            (true, 0.5, 1.0, true),
        ] {
            agree(critic_layer_norm, bc_lambda, tau, demos_only);
        }
    }

    fn agree(critic_layer_norm: bool, bc_lambda: f64, latent_temperature: f64, demos_only: bool) {
        let model = init_model(
            default_spec(6, 0, 3, 2, 32),
            Init::Random { last_scale: 0.5 },
            3,
        )
        .unwrap();
        let cfg = SacConfig {
            batch: 32,
            critic_hidden: 32,
            critic_warmup: 1,
            // Large steps, so that a missing or wrong one shows.
            lr_actor: 1e-2,
            lr_critic: 1e-2,
            lr_alpha: 1e-2,
            critic_layer_norm,
            bc_lambda,
            latent_temperature,
            ..Default::default()
        };
        let mut fast = Sac::new(&model, cfg.clone()).unwrap();
        assert!(fast.fast.is_some());
        let mut slow = Sac::new(&model, cfg).unwrap();
        slow.fast = None;
        let mut rb = ReplayBuffer::new(6, 3, 500);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        for i in 0..500 {
            let mut v =
                |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
            let (s, a, s2) = (v(6), v(3), v(6));
            rb.push(&s, &a, -(i as f32 % 7.0) / 7.0, &s2, i % 13 == 0);
        }
        let draws = |imitate_first| {
            [
                Draw {
                    from: &rb,
                    rows: 20,
                    imitate: imitate_first,
                },
                Draw {
                    from: &rb,
                    rows: 12,
                    imitate: true,
                },
            ]
        };
        for _ in 0..4 {
            let (sf, ss) = if demos_only {
                (
                    fast.update_mixed(&draws(false), true).unwrap(),
                    slow.update_mixed(&draws(false), true).unwrap(),
                )
            } else {
                (fast.update(&rb).unwrap(), slow.update(&rb).unwrap())
            };
            for (x, y) in [
                (sf.critic_loss, ss.critic_loss),
                (sf.actor_loss, ss.actor_loss),
                (sf.entropy, ss.entropy),
                (sf.q, ss.q),
                (sf.alpha, ss.alpha),
            ] {
                assert!(
                    (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                    "ln {critic_layer_norm} bc {bc_lambda}: stats {sf:?} vs {ss:?}"
                );
            }
        }
        let (mf, ms) = (
            fast.export(&model.spec).unwrap(),
            slow.export(&model.spec).unwrap(),
        );
        let mut n = 0;
        let dist = |a: &[f32], b: &[f32]| {
            a.iter()
                .zip(b)
                .map(|(x, y)| (x - y).powi(2))
                .sum::<f32>()
                .sqrt()
        };
        for (((name, a), (_, b)), (_, o)) in
            mf.tensors().iter().zip(ms.tensors()).zip(model.tensors())
        {
            if let (TensorData::F32(a), TensorData::F32(b), TensorData::F32(o)) =
                (&a.data, &b.data, &o.data)
            {
                let (d, moved) = (dist(a, b), dist(b, o));
                assert!(
                    d <= 1e-3 * moved,
                    "ln {critic_layer_norm} bc {bc_lambda}: {name}: paths differ by {d}, moved {moved}"
                );
                n += 1;
            }
        }
        assert!(n > 20);
        // The critics went through the state file's path too.
        fast.sync_vars().unwrap();
        for (cf, cs) in fast
            .q
            .iter()
            .chain(&fast.q_targ)
            .zip(slow.q.iter().chain(&slow.q_targ))
        {
            for (a, b) in cf.vars.iter().zip(&cs.vars) {
                let d = (a.as_tensor() - b.as_tensor())
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .sum_all()
                    .unwrap();
                let nb = b.as_tensor().sqr().unwrap().sum_all().unwrap();
                let (d, nb) = (
                    d.to_scalar::<f32>().unwrap().sqrt(),
                    nb.to_scalar::<f32>().unwrap().sqrt(),
                );
                assert!(
                    d <= 1e-4 * nb.max(1e-3),
                    "ln {critic_layer_norm} bc {bc_lambda}: critic: {d} vs norm {nb}"
                );
            }
        }
    }
}
