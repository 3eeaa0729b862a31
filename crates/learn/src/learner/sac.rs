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

// Tests, one file per concern under sac/.
#[cfg(test)]
mod bc_rows;
#[cfg(test)]
mod entropy_backup;
#[cfg(all(test, feature = "clap"))]
mod flags;
#[cfg(test)]
mod latent_temperature;
#[cfg(test)]
mod parity;
#[cfg(test)]
mod same_update;
