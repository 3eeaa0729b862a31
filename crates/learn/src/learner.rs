//! MaxEnt fine-tuning (SAC) with the flow as the actor.
//!
//! The actor's action and its exact log π come from one reparameterised
//! pass through the flow ([`Twin::sample`]); twin Q critics with
//! Polyak-averaged targets; the temperature is tuned to a target entropy;
//! an optional BC term λ·(−log π(a_data|s)) keeps the policy near the data
//! (NF-RLBC, for offline-to-online). Everything random is drawn from one
//! seeded ChaCha stream, so a run is reproducible.
//!
//! Data comes from transition logs ([`LogFollower`]: replays a directory
//! and follows files still being written) or from a fixed dataset
//! ([`ReplayBuffer::from_demos`]). Checkpoints are versioned model files
//! written atomically, each naming its parent's digest, for the node's
//! hot swap to validate and pick up.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use candle_core::{DType, Device, Tensor, Var, D};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::demos::Demos;
use crate::twin::Twin;
use flowpilot_core::log::reader::{log_files, Tail};
use flowpilot_core::log::Transition;
use flowpilot_core::model::{ModelFile, ModelSpec};

#[derive(Debug, Clone)]
pub struct SacConfig {
    pub gamma: f64,
    /// Polyak factor for the target critics.
    pub tau: f64,
    pub batch: usize,
    pub lr_actor: f64,
    pub lr_critic: f64,
    pub lr_alpha: f64,
    pub init_alpha: f64,
    /// Target entropy (None: −act_dim).
    pub target_entropy: Option<f64>,
    /// λ of the BC term (0: plain SAC).
    pub bc_lambda: f64,
    pub critic_hidden: usize,
    /// Critic-only updates before the actor starts moving (a fresh critic
    /// would otherwise drag a good BC policy around).
    pub critic_warmup: u64,
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
            bc_lambda: 0.0,
            critic_hidden: 256,
            critic_warmup: 500,
            seed: 0,
        }
    }
}

/// Transitions (s, a, r, s', done) with s = obs ++ goal (raw units) and a
/// in the flow's normalised action space.
pub struct ReplayBuffer {
    pub in_dim: usize,
    pub act_dim: usize,
    cap: usize,
    head: usize,
    len: usize,
    s: Vec<f32>,
    a: Vec<f32>,
    r: Vec<f32>,
    s2: Vec<f32>,
    done: Vec<f32>,
}

pub struct Batch {
    pub s: Tensor,
    pub a: Tensor,
    pub r: Tensor,
    pub s2: Tensor,
    pub done: Tensor,
}

impl ReplayBuffer {
    pub fn new(in_dim: usize, act_dim: usize, cap: usize) -> Self {
        Self {
            in_dim,
            act_dim,
            cap,
            head: 0,
            len: 0,
            s: vec![0.0; cap * in_dim],
            a: vec![0.0; cap * act_dim],
            r: vec![0.0; cap],
            s2: vec![0.0; cap * in_dim],
            done: vec![0.0; cap],
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Add one transition (the oldest is overwritten when full).
    pub fn push(&mut self, s: &[f32], a: &[f32], r: f32, s2: &[f32], done: bool) {
        let (i, n, d) = (self.head, self.in_dim, self.act_dim);
        self.s[i * n..(i + 1) * n].copy_from_slice(s);
        self.s2[i * n..(i + 1) * n].copy_from_slice(s2);
        self.a[i * d..(i + 1) * d].copy_from_slice(a);
        self.r[i] = r;
        self.done[i] = if done { 1.0 } else { 0.0 };
        self.head = (self.head + 1) % self.cap;
        self.len = (self.len + 1).min(self.cap);
    }

    pub fn sample(&self, b: usize, rng: &mut impl Rng, dev: &Device) -> Result<Batch> {
        ensure!(self.len > 0, "the replay buffer is empty");
        let (n, d) = (self.in_dim, self.act_dim);
        let idx: Vec<usize> = (0..b).map(|_| rng.random_range(0..self.len)).collect();
        let rows = |src: &[f32], w: usize| -> Result<Tensor> {
            let v: Vec<f32> = idx
                .iter()
                .flat_map(|&i| src[i * w..(i + 1) * w].iter().copied())
                .collect();
            Ok(Tensor::from_vec(v, (b, w), dev)?)
        };
        let col = |src: &[f32]| -> Result<Tensor> {
            Ok(Tensor::from_vec(
                idx.iter().map(|&i| src[i]).collect::<Vec<_>>(),
                b,
                dev,
            )?)
        };
        Ok(Batch {
            s: rows(&self.s, n)?,
            a: rows(&self.a, d)?,
            r: col(&self.r)?,
            s2: rows(&self.s2, n)?,
            done: col(&self.done)?,
        })
    }

    /// A fixed dataset for offline RL: consecutive rows of one episode form
    /// a transition; the demos need a `reward` array (and may carry
    /// `terminal`). Actions are normalised by the model's bounds.
    pub fn from_demos(demos: &Demos, spec: &ModelSpec) -> Result<Self> {
        let Some(rew) = &demos.reward else {
            bail!("offline RL needs a 'reward' array (N,) in the demos file");
        };
        ensure!(
            demos.obs_dim == spec.obs_dim
                && demos.goal_dim == spec.goal_dim
                && demos.act_dim == spec.act_dim,
            "demos dims (obs {} goal {} act {}) differ from the model's",
            demos.obs_dim,
            demos.goal_dim,
            demos.act_dim
        );
        let (od, gd, d) = (demos.obs_dim, demos.goal_dim, demos.act_dim);
        let n = demos.len();
        let mut rb = Self::new(od + gd, d, n.max(1));
        let row = |i: usize| -> Vec<f32> {
            let mut v = demos.obs[i * od..(i + 1) * od].to_vec();
            v.extend_from_slice(&demos.goal[i * gd..(i + 1) * gd]);
            v
        };
        for i in 0..n {
            let terminal = demos.terminal.as_ref().is_some_and(|t| t[i]);
            let next_same = i + 1 < n && demos.episode[i + 1] == demos.episode[i];
            if !terminal && !next_same {
                continue; // end of a truncated episode: no next state
            }
            let s = row(i);
            let s2 = if next_same { row(i + 1) } else { s.clone() };
            let a = normalise(&demos.act[i * d..(i + 1) * d], spec);
            rb.push(&s, &a, rew[i], &s2, terminal);
        }
        Ok(rb)
    }
}

/// Physical action -> the flow's normalised [-1, 1] space.
pub fn normalise(a: &[f32], spec: &ModelSpec) -> Vec<f32> {
    a.iter()
        .zip(spec.action_low.iter().zip(&spec.action_high))
        .map(|(v, (l, h))| 2.0 * (v - l) / (h - l) - 1.0)
        .collect()
}

/// Follows every `*.mcap` log in a directory (new files included) and turns
/// consecutive records into transitions: record i's state and applied
/// action, record i+1's reward (rewards received after the action) and
/// state. Records without an applied action, across an episode boundary
/// or a gap (dropped records) form no transition.
pub struct LogFollower {
    dir: PathBuf,
    tails: BTreeMap<PathBuf, (Tail, Option<Transition>)>,
    pub records: u64,
    pub skipped: u64,
}

impl LogFollower {
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            tails: BTreeMap::new(),
            records: 0,
            skipped: 0,
        }
    }

    /// Read what was appended since the last poll; returns new transitions.
    pub fn poll(&mut self, rb: &mut ReplayBuffer, spec: &ModelSpec) -> Result<usize> {
        let mut added = 0;
        for p in log_files(&self.dir)? {
            let (tail, prev) = self
                .tails
                .entry(p.clone())
                .or_insert_with(|| (Tail::new(&p), None));
            let recs = match tail.poll() {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!("{e:#}");
                    continue;
                }
            };
            let step: u64 = tail
                .metadata
                .get("every")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1);
            for r in recs {
                self.records += 1;
                if let Some(p) = prev.take() {
                    if usable(&p, &r, step, spec) {
                        let a = normalise(
                            &p.applied()
                                .expect("checked")
                                .iter()
                                .map(|&v| v as f32)
                                .collect::<Vec<_>>(),
                            spec,
                        );
                        let s = &p.inputs[..p.n_obs + p.n_goal];
                        let s2 = &r.inputs[..r.n_obs + r.n_goal];
                        rb.push(s, &a, r.reward as f32, s2, p.terminated);
                        added += 1;
                    } else {
                        self.skipped += 1;
                    }
                }
                *prev = Some(r);
            }
        }
        Ok(added)
    }
}

fn usable(p: &Transition, r: &Transition, step: u64, spec: &ModelSpec) -> bool {
    let acted = p.applied_valid && (p.decision == 0 || p.intervention);
    let dims = p.n_obs == spec.obs_dim && p.n_goal == spec.goal_dim && p.n_act == spec.act_dim;
    let same = r.tick == p.tick + step && (r.episode == p.episode || p.terminated);
    acted && dims && same && !p.truncated && r.reward.is_finite()
}

/// A ReLU MLP critic Q(s, a) with its own seeded init.
struct Critic {
    vars: Vec<Var>,
}

impl Critic {
    fn new(inp: usize, hidden: usize, rng: &mut impl Rng, dev: &Device) -> Result<Self> {
        let mut vars = Vec::new();
        for (i, o) in [(inp, hidden), (hidden, hidden), (hidden, 1)] {
            let bound = (1.0 / i as f64).sqrt() as f32;
            let w: Vec<f32> = (0..i * o)
                .map(|_| rng.random_range(-bound..bound))
                .collect();
            vars.push(Var::from_tensor(&Tensor::from_vec(w, (i, o), dev)?)?);
            vars.push(Var::from_tensor(&Tensor::zeros(o, DType::F32, dev)?)?);
        }
        Ok(Self { vars })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for l in 0..3 {
            h = h
                .matmul(self.vars[2 * l].as_tensor())?
                .broadcast_add(self.vars[2 * l + 1].as_tensor())?;
            if l < 2 {
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
}

pub struct Sac {
    pub cfg: SacConfig,
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
    pub updates: u64,
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
        let mk = |rng: &mut ChaCha8Rng| Critic::new(inp, cfg.critic_hidden, rng, &dev);
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

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
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
        self.twin.condition(&obs, goal.as_ref())
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
        let batch = rb.sample(b, &mut self.rng, &self.dev)?;
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
        if self.updates > self.cfg.critic_warmup {
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
            if self.cfg.bc_lambda > 0.0 {
                let bc = self.twin.log_prob(&c, &batch.a)?.mean_all()?.neg()?;
                loss = (loss + (bc * self.cfg.bc_lambda)?)?;
            }
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
        self.twin.to_model(spec)
    }

    /// Critics, targets, temperature and update count, atomically
    /// (tmp file, fsync, rename).
    pub fn save_state(&self, path: &Path) -> Result<()> {
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
        flowpilot_core::model::write_atomic(path, |tmp| {
            Ok(candle_core::safetensors::save(&m, tmp)?)
        })
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
    pub fn load_state(&mut self, path: &Path) -> Result<()> {
        let m = candle_core::safetensors::load(path, &self.dev)
            .with_context(|| format!("reading learner state {}", path.display()))?;
        let get = |k: &str| m.get(k).with_context(|| format!("learner state lacks {k}"));
        for (name, c) in self.critics() {
            for (i, v) in c.vars.iter().enumerate() {
                let t = get(&format!("{name}.{i}"))?;
                ensure!(
                    t.dims() == v.as_tensor().dims(),
                    "learner state: {name}.{i} has the wrong shape"
                );
                v.set(t)?;
            }
        }
        self.log_alpha.set(get("log_alpha")?)?;
        self.updates = get("updates")?.to_vec1::<f32>()?[0] as u64;
        Ok(())
    }
}

/// Checkpoint file name of a version.
pub fn checkpoint_name(version: u64) -> String {
    format!("policy_v{version:06}.safetensors")
}

/// The newest valid checkpoint in `dir` (highest version), if any. Files
/// that fail validation are skipped with a warning.
pub fn latest_checkpoint(dir: &Path) -> Option<(PathBuf, ModelFile)> {
    let mut best: Option<(PathBuf, ModelFile)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "safetensors") {
            continue;
        }
        match ModelFile::load(&p) {
            Ok(m) => {
                if best
                    .as_ref()
                    .is_none_or(|(_, b)| m.spec.version > b.spec.version)
                {
                    best = Some((p, m));
                }
            }
            Err(e) => tracing::warn!(path = %p.display(), "skipping checkpoint: {e}"),
        }
    }
    best
}

/// What `flowpilot finetune` runs on.
#[derive(Debug, Clone)]
pub enum DataSource {
    /// Transition logs in a directory; `follow` keeps reading new records.
    Logs { dir: PathBuf, follow: bool },
    /// A fixed dataset (demos .npz with rewards): offline RL.
    Offline(PathBuf),
}

#[derive(Debug, Clone)]
pub struct FinetuneOptions {
    pub data: DataSource,
    /// Starting policy (ignored when `out` already holds a newer checkpoint
    /// of the same lineage: a restarted learner resumes from it).
    pub init: PathBuf,
    pub out: PathBuf,
    pub sac: SacConfig,
    /// Stop after this many updates in total (0: until stopped).
    pub max_updates: u64,
    /// Updates per new transition when following logs.
    pub utd: f64,
    /// No updates before the replay holds this many transitions.
    pub min_transitions: usize,
    pub checkpoint_every: u64,
    pub poll_period: std::time::Duration,
}

/// Where the learner keeps its non-policy state.
pub fn state_path(out: &Path) -> PathBuf {
    out.join(".learner").join("state.safetensors")
}

/// Run a fine-tuning session until `max_updates`, the end of the data
/// (offline or not following), or `stop` is set (SIGTERM). Writes a
/// checkpoint every `checkpoint_every` updates and at the end.
pub fn run(opts: &FinetuneOptions, stop: &std::sync::atomic::AtomicBool) -> Result<u64> {
    use std::sync::atomic::Ordering;
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    // Temp files of a learner killed mid-write: never renamed, never read.
    let state_dir = state_path(&opts.out).with_file_name("");
    for dir in [&opts.out, &state_dir] {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".safetensors.tmp") {
                tracing::info!(file = %name, "removing a partial file left by a killed learner");
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let init =
        ModelFile::load(&opts.init).with_context(|| format!("loading {}", opts.init.display()))?;
    // Resume: the newest checkpoint in `out` whose dims match.
    let mut current = match latest_checkpoint(&opts.out) {
        Some((p, m))
            if m.spec.version > init.spec.version
                && (m.spec.obs_dim, m.spec.goal_dim, m.spec.act_dim)
                    == (init.spec.obs_dim, init.spec.goal_dim, init.spec.act_dim) =>
        {
            tracing::info!(path = %p.display(), version = m.spec.version, "resuming from checkpoint");
            m
        }
        _ => init,
    };
    let mut sac = Sac::new(&current, opts.sac.clone())?;
    let sp = state_path(&opts.out);
    if sp.exists() && current.spec.version > 1 {
        match sac.load_state(&sp) {
            Ok(()) => tracing::info!(updates = sac.updates, "resumed critics and temperature"),
            Err(e) => tracing::warn!("ignoring learner state: {e:#} (critics start fresh)"),
        }
    }
    let spec = current.spec.clone();
    let (mut rb, mut follower, follow) = match &opts.data {
        DataSource::Offline(p) => {
            let demos = Demos::load(p)?;
            (ReplayBuffer::from_demos(&demos, &spec)?, None, false)
        }
        DataSource::Logs { dir, follow } => {
            let mut f = LogFollower::new(dir);
            let mut rb = ReplayBuffer::new(spec.obs_dim + spec.goal_dim, spec.act_dim, 1_000_000);
            let n = f.poll(&mut rb, &spec)?;
            tracing::info!(
                transitions = n,
                records = f.records,
                "replayed the log directory"
            );
            (rb, Some(f), *follow)
        }
    };
    let min = opts.min_transitions.max(1);
    let start_updates = sac.updates;
    let mut budget: f64 = if follow {
        rb.len() as f64 * opts.utd
    } else {
        f64::INFINITY
    };
    let mut last_ckpt = sac.updates;
    let mut next_poll = std::time::Instant::now() + opts.poll_period;
    let checkpoint = |sac: &Sac, current: &mut ModelFile| -> Result<()> {
        let next = sac.export(&current.spec)?;
        let path = opts.out.join(checkpoint_name(next.spec.version));
        next.save(&path)?;
        sac.save_state(&state_path(&opts.out))?;
        tracing::info!(path = %path.display(), version = next.spec.version, updates = sac.updates, "checkpoint written");
        println!(
            "checkpoint {} (version {}, {} updates)",
            path.display(),
            next.spec.version,
            sac.updates
        );
        *current = next;
        Ok(())
    };
    while !stop.load(Ordering::SeqCst) {
        if opts.max_updates > 0 && sac.updates - start_updates >= opts.max_updates {
            break;
        }
        if follow && std::time::Instant::now() >= next_poll {
            next_poll = std::time::Instant::now() + opts.poll_period;
            if let Some(f) = follower.as_mut() {
                budget += f.poll(&mut rb, &spec)? as f64 * opts.utd;
            }
        }
        if rb.len() < min || budget < 1.0 {
            if !follow {
                if rb.len() < min {
                    bail!(
                        "only {} transitions, fewer than --min-transitions {min}",
                        rb.len()
                    );
                }
                break;
            }
            std::thread::sleep(opts.poll_period.min(std::time::Duration::from_millis(100)));
            continue;
        }
        let st = sac.update(&rb)?;
        budget -= 1.0;
        if sac.updates % 100 == 0 {
            tracing::info!(
                updates = sac.updates,
                transitions = rb.len(),
                critic = st.critic_loss,
                actor = st.actor_loss,
                alpha = st.alpha,
                entropy = st.entropy,
                q = st.q,
                "update"
            );
        }
        if sac.updates > sac.cfg.critic_warmup && sac.updates - last_ckpt >= opts.checkpoint_every {
            last_ckpt = sac.updates;
            checkpoint(&sac, &mut current)?;
        }
    }
    if sac.updates > last_ckpt && sac.updates > sac.cfg.critic_warmup {
        checkpoint(&sac, &mut current)?;
    }
    Ok(sac.updates - start_updates)
}
