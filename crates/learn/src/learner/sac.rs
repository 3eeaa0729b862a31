//! The SAC update: config, twin critics with Polyak targets, the
//! temperature, one update step, export of the actor as the next model
//! version, and the learner's own state file (critics, temperature, update
//! count). An update runs in one order ([`Sac::update_mixed`] →
//! `update_batch`) whichever path computes its steps: the hand-written one
//! (`super::fast`) when it covers the configuration, else candle autograd
//! ([`autograd`]: the critic net and the losses, the reference). Off the
//! control thread; allocates freely (candle tensors).

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor, Var};
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
    /// μ of a BC term on the policy's own samples, μ·mean ‖a_π(z; s) −
    /// a_data‖² over the imitated rows (the reparameterised sample the
    /// actor loss draws, normalised actions). The likelihood term alone
    /// can be met by a narrow density spike at the data's action while the
    /// samples go elsewhere (docs/manipulation.md, "Why a perfect BC flow
    /// collapsed"); this one holds where the samples go. 0: off.
    #[cfg_attr(
        feature = "clap",
        arg(long, default_value_t = 0.0, help = "μ of the BC term on the policy's samples, μ·mean‖a_π − a_data‖²", long_help = None::<&str>)
    )]
    pub bc_sample: f64,
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
    /// The discount per robot step. The replay applies it when it builds
    /// transitions (a chunk's rewards and bootstrap weight,
    /// `learner::windows`); the update reads each row's weight.
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
            bc_sample: 0.0,
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
    /// Mean −log π(a_data|s) over the imitated rows (0 without a BC term).
    pub bc_nll: f32,
    /// Mean ‖a_π − a_data‖² of the samples on the imitated rows (0 without
    /// the sample term).
    pub bc_dist: f32,
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

    /// How close the policy stays to the actions of up to `n` rows of `rb`:
    /// (mean −log π(a|s), mean ‖a_π − a‖² of one sample a_π per row at the
    /// optimised latent temperature), in normalised action space.
    pub fn imitation(&mut self, rb: &ReplayBuffer, n: usize) -> Result<(f64, f64)> {
        self.sync_vars()?;
        let batch = rb.sample(n, &mut self.rng, &self.dev)?;
        let z = self.noise(batch.len())?;
        let c = self.cond(&batch.s)?;
        let nll = -(self
            .twin
            .log_prob(&c, &batch.a)?
            .mean_all()?
            .to_scalar::<f32>()? as f64);
        let (a, _) = self.latent(&z).sample(&self.twin, &c)?;
        let sq = (a - &batch.a)?.sqr()?.sum(candle_core::D::Minus1)?;
        Ok((nll, sq.mean_all()?.to_scalar::<f32>()? as f64))
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
        let lambda = self.bc_lambda_now();
        let bc_w = bc_weights(&sources, lambda);
        let dist_w = bc_weights(&sources, self.cfg.bc_sample);
        self.update_batch(&batch, actor, lambda, &bc_w, &dist_w)
    }

    /// One update on a drawn batch, in the one order both paths share: the
    /// critics' target from fresh noise and the critic step; after the
    /// warm-up, the actor step from fresh noise and the temperature step;
    /// then Polyak. Each step runs on the hand-written path when it is in
    /// use ([`Fast`]), else on candle autograd, with the same draws, losses
    /// and optimiser arithmetic (`sac/same_update.rs`). `lambda` is the BC
    /// weight this update uses (`bc_w` carries it per row; `dist_w` the
    /// sample term's μ).
    fn update_batch(
        &mut self,
        batch: &Batch,
        actor: bool,
        lambda: f64,
        bc_w: &[f32],
        dist_w: &[f32],
    ) -> Result<UpdateStats> {
        let b = batch.len();
        let alpha = self.log_alpha.as_tensor().exp()?.detach();
        let alpha_v = alpha.to_vec1::<f32>()?[0];
        // The hand-written path reads the batch as flat rows, once.
        let flat = match self.fast {
            Some(_) => Some(FlatBatch::of(batch)?),
            None => None,
        };
        let z2 = self.noise_vec(b);
        let (critic_loss, q) = self.critic_update(batch, flat.as_ref(), &alpha, z2)?;
        let mut st = UpdateStats {
            critic_loss,
            alpha: alpha_v,
            q,
            ..Default::default()
        };
        self.updates += 1;
        if actor && self.updates > self.cfg.critic_warmup {
            let z = self.noise_vec(b);
            let bc = (lambda > 0.0).then_some(bc_w);
            let dist = (self.cfg.bc_sample > 0.0).then_some(dist_w);
            let (loss, lp_mean, bc_term, dist_term) =
                self.actor_update(batch, flat.as_ref(), &alpha, z, bc, dist)?;
            st.bc_lambda = lambda as f32;
            st.actor_loss = loss;
            st.entropy = -lp_mean as f32;
            // each term's weights are its λ or μ over the imitated rows
            // (`bc_weights`), so the term over it is the rows' mean (0
            // without imitated rows, where the term is 0)
            if bc.is_some() {
                st.bc_nll = (bc_term as f64 / lambda) as f32;
            }
            if dist.is_some() {
                st.bc_dist = (dist_term as f64 / self.cfg.bc_sample) as f32;
            }
            self.temperature_step(lp_mean)?;
        }
        match self.fast.as_mut() {
            Some(f) => f.polyak(self.cfg.tau),
            None => {
                self.q_targ[0].polyak(&self.q[0], self.cfg.tau)?;
                self.q_targ[1].polyak(&self.q[1], self.cfg.tau)?;
            }
        }
        Ok(st)
    }

    /// The critics' step: target y from the next states with latent noise
    /// `z2` (α in the backup unless `--no-entropy-backup`), then one
    /// optimiser step on the TD loss. Returns (critic loss, mean Q).
    fn critic_update(
        &mut self,
        batch: &Batch,
        flat: Option<&FlatBatch>,
        alpha: &Tensor,
        z2: Vec<f32>,
    ) -> Result<(f32, f32)> {
        let b = batch.len();
        let alpha_backup = if self.cfg.no_entropy_backup {
            alpha.zeros_like()?
        } else {
            alpha.clone()
        };
        if let (Some(f), Some(x)) = (self.fast.as_mut(), flat) {
            let alpha_backup = alpha_backup.to_vec1::<f32>()?[0];
            // W, W⁻¹ once for both passes: the actor moves only after both.
            f.prepare();
            let y = f.target(&x.s2, &x.r, &x.discount, &z2, alpha_backup, b);
            let (loss, q) = f.critic_grads(&x.s, &x.a, &y, b);
            f.critic_step();
            return Ok((loss, q));
        }
        let z2 = Tensor::from_vec(z2, (b, self.spec.act_dim), &self.dev)?;
        let norm = (&self.in_mean, &self.in_inv_std);
        let y = critic_target(
            &self.twin,
            &self.q_targ,
            norm,
            batch,
            self.latent(&z2),
            &alpha_backup,
            self.cfg.critic_clips_actions,
        )?;
        let x = q_in(norm, &batch.s, &batch.a)?;
        let (loss, q1) = critic_loss(&self.q, &x, &y)?;
        self.opt_q.backward_step(&loss)?;
        Ok((loss.to_scalar::<f32>()?, q1.mean_all()?.to_scalar::<f32>()?))
    }

    /// The actor's step with latent noise `z`, plus the BC term with the
    /// per-row weights `bc` when given, plus the sample-distance term
    /// with the per-row weights `dist` when given. Returns (actor loss,
    /// mean log π, the BC term Σ w·(−log π(a_data|s)), the sample term
    /// Σ w·‖a_π − a_data‖²).
    fn actor_update(
        &mut self,
        batch: &Batch,
        flat: Option<&FlatBatch>,
        alpha: &Tensor,
        z: Vec<f32>,
        bc: Option<&[f32]>,
        dist: Option<&[f32]>,
    ) -> Result<(f32, f64, f32, f32)> {
        let b = batch.len();
        if let (Some(f), Some(x)) = (self.fast.as_mut(), flat) {
            let alpha = alpha.to_vec1::<f32>()?[0];
            let data = |w| (&x.a[..], w);
            let (loss, lp_mean, bc_term, dist_term) =
                f.actor_grads(&x.s, &z, alpha, bc.map(data), dist.map(data), b);
            f.actor_step();
            return Ok((loss, lp_mean as f64, bc_term, dist_term));
        }
        let z = Tensor::from_vec(z, (b, self.spec.act_dim), &self.dev)?;
        let norm = (&self.in_mean, &self.in_inv_std);
        let (mut loss, lp, c, a) = actor_loss(
            &self.twin,
            &self.q,
            norm,
            &batch.s,
            self.latent(&z),
            alpha,
            self.cfg.critic_clips_actions,
        )?;
        let mut bc_term = 0.0;
        if let Some(w) = bc {
            let w = Tensor::from_slice(w, b, &self.dev)?;
            let bc = (self.twin.log_prob(&c, &batch.a)? * w)?.sum_all()?.neg()?;
            bc_term = bc.to_scalar::<f32>()?;
            loss = (loss + bc)?;
        }
        let mut dist_term = 0.0;
        if let Some(w) = dist {
            let w = Tensor::from_slice(w, b, &self.dev)?;
            let sq = (a - &batch.a)?.sqr()?.sum(candle_core::D::Minus1)?;
            let d = (sq * w)?.sum_all()?;
            dist_term = d.to_scalar::<f32>()?;
            loss = (loss + d)?;
        }
        self.opt_actor.backward_step(&loss)?;
        let lp_mean = lp.mean_all()?.to_scalar::<f32>()? as f64;
        Ok((loss.to_scalar::<f32>()?, lp_mean, bc_term, dist_term))
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

/// A batch as flat row-major f32 rows, for the hand-written path.
struct FlatBatch {
    s: Vec<f32>,
    a: Vec<f32>,
    r: Vec<f32>,
    s2: Vec<f32>,
    discount: Vec<f32>,
}

impl FlatBatch {
    fn of(batch: &Batch) -> Result<Self> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { Ok(t.flatten_all()?.to_vec1::<f32>()?) };
        Ok(Self {
            s: flat(&batch.s)?,
            a: flat(&batch.a)?,
            r: flat(&batch.r)?,
            s2: flat(&batch.s2)?,
            discount: flat(&batch.discount)?,
        })
    }
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

mod autograd;

use autograd::*;

#[cfg(test)]
mod bc_rows;
#[cfg(test)]
mod bc_sample;
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
