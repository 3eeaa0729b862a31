//! `flowpilot`: inspect, sample, benchmark and train flow policies.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use flowpilot_core::model::{Direction, EncoderSpec, ModelFile, PolicyKind};
use flowpilot_core::sampler::Sampler;

// Counts heap allocations so `bench` can report allocations per sample.
#[global_allocator]
static ALLOC: flowpilot_core::alloc_count::CountingAlloc =
    flowpilot_core::alloc_count::CountingAlloc;

#[derive(Parser)]
#[command(
    name = "flowpilot",
    version,
    about = "Real-time normalizing-flow robot policies"
)]
struct Cli {
    /// Threads for candle/rayon (training and the twin). The real-time
    /// sampler is single-threaded regardless.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a model's architecture, dims, digest and parameter count.
    Inspect { model: PathBuf },
    /// Sample one action.
    Sample(SampleArgs),
    /// Exact log p(action | obs, goal) of a normalised action, and its latent.
    LogProb(LogProbArgs),
    /// Import a policy trained with other code.
    #[command(subcommand)]
    Import(ImportCmd),
    /// Batch-1 latency, allocations and the bandwidth bound.
    Bench(BenchArgs),
    /// Create a fresh (or fully random, for benchmarks) model file.
    New(NewArgs),
    /// Train a policy.
    #[command(subcommand)]
    Train(TrainCmd),
    /// Generate demonstrations from a built-in expert.
    #[command(subcommand)]
    Demos(DemosCmd),
    /// Evaluate a policy on a built-in task.
    #[command(subcommand)]
    Eval(EvalCmd),
    /// Fine-tune a flow policy with SAC (exact log π) from transition logs
    /// (replayed, and followed live with --follow) or a fixed dataset.
    Finetune(FinetuneArgs),
}

#[derive(Args)]
struct FinetuneArgs {
    /// Directory of transition logs (*.mcap) written by flowpilot_node.
    #[arg(long, conflicts_with = "offline", required_unless_present = "offline")]
    log_dir: Option<PathBuf>,
    /// Keep reading new records as the node writes them.
    #[arg(long)]
    follow: bool,
    /// Train on a fixed dataset alone (demos .npz with a 'reward' array).
    #[arg(long)]
    offline: Option<PathBuf>,
    /// The starting policy (a newer checkpoint in --out takes precedence).
    #[arg(long)]
    init: PathBuf,
    /// Checkpoint directory (the node's hot_swap.dir).
    #[arg(long)]
    out: PathBuf,
    /// Stop after this many updates (0: until SIGTERM / end of data).
    #[arg(long, default_value_t = 0)]
    updates: u64,
    /// Updates per new transition (following logs).
    #[arg(long, default_value_t = 1.0)]
    utd: f64,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[arg(long, default_value_t = 1e-4)]
    lr_actor: f64,
    #[arg(long, default_value_t = 3e-4)]
    lr_critic: f64,
    #[arg(long, default_value_t = 3e-4)]
    lr_alpha: f64,
    #[arg(long, default_value_t = 0.01)]
    init_alpha: f64,
    /// Target entropy (default −act_dim).
    #[arg(long, allow_hyphen_values = true)]
    target_entropy: Option<f64>,
    /// λ of the BC term λ·(−log π(a_data|s)) (NF-RLBC; 0 = plain SAC).
    #[arg(long, default_value_t = 0.0)]
    bc_lambda: f64,
    #[arg(long, default_value_t = 0.99)]
    gamma: f64,
    #[arg(long, default_value_t = 0.005)]
    tau: f64,
    #[arg(long, default_value_t = 256)]
    critic_hidden: usize,
    /// Critic-only updates before the actor moves.
    #[arg(long, default_value_t = 500)]
    critic_warmup: u64,
    #[arg(long, default_value_t = 256)]
    min_transitions: usize,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Seconds between reads of new log records.
    #[arg(long, default_value_t = 0.5)]
    poll_period: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// CPU niceness of the learner (19: lowest; the control loop wins).
    #[arg(long, default_value_t = 19)]
    nice: i32,
}

#[derive(Args)]
struct SampleArgs {
    model: PathBuf,
    /// Observation, comma-separated.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    obs: Vec<f32>,
    /// Goal, comma-separated (goal-conditioned models).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    goal: Vec<f32>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 0)]
    tick: u64,
    /// Base noise z instead of seed/tick (comma-separated, act_dim values).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    z: Option<Vec<f32>>,
    #[arg(long)]
    json: bool,
    /// Use the candle twin instead of the real-time sampler.
    #[arg(long)]
    twin: bool,
}

#[derive(Args)]
struct LogProbArgs {
    model: PathBuf,
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    obs: Vec<f32>,
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    goal: Vec<f32>,
    /// Normalised action (the flow's space, before clipping/scaling).
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    action: Vec<f32>,
    /// Use the candle twin instead of the real-time sampler.
    #[arg(long)]
    twin: bool,
}

#[derive(Subcommand)]
enum ImportCmd {
    /// A checkpoint of "Normalizing Flows are Capable Models for RL" (docs/import.md).
    Nf4rl(Nf4rlArgs),
}

#[derive(Args)]
struct Nf4rlArgs {
    checkpoint: PathBuf,
    #[arg(long, value_enum)]
    kind: KindArg,
    #[arg(long)]
    out: PathBuf,
    /// How many of the conditioning inputs are the goal (the rest are obs).
    #[arg(long, default_value_t = 0)]
    goal_dim: usize,
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    obs_mean: Option<Vec<f32>>,
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    obs_std: Option<Vec<f32>>,
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    goal_mean: Option<Vec<f32>>,
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    goal_std: Option<Vec<f32>>,
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    action_low: Option<Vec<f32>>,
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    action_high: Option<Vec<f32>>,
    /// Training noise sigma (the denoise step size).
    #[arg(long, default_value_t = 0.1)]
    noise_sigma: f32,
    /// Apply the paper's one-step denoising when sampling.
    #[arg(long)]
    denoise: bool,
    /// Python with numpy for the checkpoint reader (default: $FLOWPILOT_PYTHON or python3).
    #[arg(long)]
    python: Option<PathBuf>,
}

/// Which code produced the checkpoint (`flowpilot import nf4rl --kind`).
#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    /// il-and-cil flax GCBC: params pickle with 'model' and 'encoder'.
    FlaxGcbc,
    /// offline-rl flax agent pickle (NF-RLBC): modules_actor(+_encoder).
    FlaxRlbc,
    /// PyTorch state_dict (torch.save zip) of the NF-BC RealNVP.
    TorchBc,
}

impl From<KindArg> for flowpilot_learn::import::CheckpointKind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::FlaxGcbc => Self::FlaxGcbc,
            KindArg::FlaxRlbc => Self::FlaxRlbc,
            KindArg::TorchBc => Self::TorchBc,
        }
    }
}

#[derive(Args)]
struct BenchArgs {
    model: PathBuf,
    /// Timed samples.
    #[arg(long, default_value_t = 20000)]
    n: usize,
    /// Also time the candle twin at batch 1, in the same run.
    #[arg(long)]
    twin: bool,
    #[arg(long)]
    json: bool,
    /// Instead: time SAC updates (this flow as the actor, 2×256 critics).
    #[arg(long)]
    sac: bool,
    /// SAC batch size.
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

#[derive(Args)]
struct NewArgs {
    out: PathBuf,
    #[arg(long)]
    obs: usize,
    #[arg(long, default_value_t = 0)]
    goal: usize,
    #[arg(long)]
    act: usize,
    #[arg(long, default_value_t = 4)]
    blocks: usize,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Random weights everywhere (benchmarks, tests) instead of the paper's
    /// identity-at-start initialisation.
    #[arg(long)]
    random: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Version number within a lineage (a learner's checkpoints count up).
    #[arg(long, default_value_t = 1)]
    version: u64,
}

#[derive(Subcommand)]
enum TrainCmd {
    /// Behaviour cloning by maximum likelihood (NF-BC).
    Bc(BcArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum DirArg {
    Inverse,
    Forward,
}

#[derive(Args)]
struct BcArgs {
    /// Demonstrations (.npz with obs, act[, goal, episode, act_low, act_high]).
    #[arg(long)]
    data: PathBuf,
    #[arg(long)]
    out: PathBuf,
    /// Fit a diagonal-Gaussian MLP policy instead of a flow (baseline).
    #[arg(long)]
    gaussian: bool,
    #[arg(long, default_value_t = 6)]
    blocks: usize,
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Conditioning encoder width (4 layers, as in the paper); off by default.
    #[arg(long)]
    encoder_width: Option<usize>,
    #[arg(long, default_value_t = 64)]
    encoder_rep: usize,
    #[arg(long, value_enum, default_value_t = DirArg::Inverse)]
    direction: DirArg,
    #[arg(long, default_value_t = 5000)]
    steps: usize,
    #[arg(long, default_value_t = 256)]
    batch: usize,
    #[arg(long, default_value_t = 3e-4)]
    lr: f64,
    #[arg(long, default_value_t = 1e-6)]
    weight_decay: f64,
    #[arg(long, default_value_t = 500)]
    warmup: usize,
    #[arg(long, default_value_t = 0.1)]
    noise_sigma: f32,
    /// Store one-step denoising (a <- a + sigma^2 grad log p) in the model, as the paper evaluates.
    #[arg(long)]
    denoise: bool,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Loss-curve PNG (default: next to --out, with .loss.png).
    #[arg(long)]
    plot: Option<PathBuf>,
}

#[derive(Subcommand)]
enum DemosCmd {
    /// Reach with a needless detour (the fine-tuning benchmark).
    Reach {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 100)]
        episodes: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Bimodal point mass: left or right around an obstacle.
    Pointmass {
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 200)]
        episodes: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// A fresh sample each tick.
    Sampled,
    /// z = 0 each tick (a Gaussian policy's mean).
    Zero,
}

#[derive(Subcommand)]
enum EvalCmd {
    /// Mean return on the reach-with-detour task (optimal ≈ −19).
    Reach {
        model: PathBuf,
        #[arg(long, default_value_t = 50)]
        episodes: usize,
        #[arg(long, default_value_t = 1000)]
        seed: u64,
    },
    /// The fine-tuning benchmark: BC on detour demos, then SAC on the
    /// policy's own logged transitions; prints and plots the learning curve.
    ReachFinetune {
        #[arg(long, default_value = "1")]
        seeds: u64,
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        #[arg(long, default_value_t = 400)]
        updates_per_round: usize,
        /// λ of the BC term on the logged actions.
        #[arg(long, default_value_t = 0.0)]
        bc_lambda: f64,
        /// Learning-curve PNG.
        #[arg(long)]
        curve: Option<PathBuf>,
    },
    Pointmass {
        model: PathBuf,
        #[arg(long, default_value_t = 100)]
        episodes: usize,
        #[arg(long, default_value_t = 1000)]
        seed: u64,
        #[arg(long, value_enum, default_value_t = ModeArg::Sampled)]
        mode: ModeArg,
    },
}

pub fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    flowpilot_learn::pin_threads(cli.threads);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn load(path: &PathBuf) -> Result<ModelFile> {
    ModelFile::load(path).with_context(|| format!("loading model {}", path.display()))
}

fn finetune(a: FinetuneArgs) -> Result<()> {
    let stop = flowpilot_core::shutdown::Shutdown::install();
    if let Err(e) = flowpilot_core::control::set_niceness(a.nice) {
        tracing::warn!("could not set niceness {}: {e}", a.nice);
    }
    let data = match (a.offline, a.log_dir) {
        (Some(p), _) => flowpilot_learn::learner::DataSource::Offline(p),
        (None, Some(dir)) => flowpilot_learn::learner::DataSource::Logs {
            dir,
            follow: a.follow,
        },
        (None, None) => bail!("give --log-dir or --offline"),
    };
    let opts = flowpilot_learn::learner::FinetuneOptions {
        data,
        init: a.init,
        out: a.out,
        sac: flowpilot_learn::learner::SacConfig {
            gamma: a.gamma,
            tau: a.tau,
            batch: a.batch,
            lr_actor: a.lr_actor,
            lr_critic: a.lr_critic,
            lr_alpha: a.lr_alpha,
            init_alpha: a.init_alpha,
            target_entropy: a.target_entropy,
            bc_lambda: a.bc_lambda,
            critic_hidden: a.critic_hidden,
            critic_warmup: a.critic_warmup,
            seed: a.seed,
        },
        max_updates: a.updates,
        utd: a.utd,
        min_transitions: a.min_transitions,
        checkpoint_every: a.checkpoint_every.max(1),
        poll_period: std::time::Duration::from_secs_f64(a.poll_period.max(0.01)),
    };
    let n = flowpilot_learn::learner::run(&opts, stop.flag())?;
    println!("finetune: {n} updates");
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Finetune(a) => finetune(a),
        Cmd::Demos(DemosCmd::Reach {
            out,
            episodes,
            seed,
        }) => {
            let d = crate::tasks::reach::generate_demos(episodes, seed);
            d.save(&out)?;
            println!(
                "reach (detour expert): {episodes} episodes, {} rows -> {}",
                d.len(),
                out.display()
            );
            Ok(())
        }
        Cmd::Eval(EvalCmd::Reach {
            model,
            episodes,
            seed,
        }) => {
            let mut s = Sampler::new(&load(&model)?)?;
            let r = crate::tasks::reach::evaluate(&mut s, episodes, seed);
            println!("reach: mean return {r:.2} over {episodes} episodes (straight line ≈ −19)");
            Ok(())
        }
        Cmd::Eval(EvalCmd::ReachFinetune {
            seeds,
            rounds,
            updates_per_round,
            bc_lambda,
            curve,
        }) => reach_finetune(seeds, rounds, updates_per_round, bc_lambda, curve),
        Cmd::Inspect { model } => inspect(&load(&model)?),
        Cmd::Sample(a) => sample(a),
        Cmd::LogProb(a) => log_prob(a),
        Cmd::Import(ImportCmd::Nf4rl(a)) => {
            let opts = flowpilot_learn::import::ImportOptions {
                goal_dim: a.goal_dim,
                obs_mean: a.obs_mean,
                obs_std: a.obs_std,
                goal_mean: a.goal_mean,
                goal_std: a.goal_std,
                action_low: a.action_low,
                action_high: a.action_high,
                noise_sigma: a.noise_sigma,
                denoise: a.denoise,
                python: a.python,
                script: None,
            };
            let m = flowpilot_learn::import::import_nf4rl(&a.checkpoint, a.kind.into(), &opts)
                .with_context(|| format!("importing {}", a.checkpoint.display()))?;
            m.save(&a.out)?;
            println!("wrote {}", a.out.display());
            inspect(&m)
        }
        Cmd::Bench(a) if a.sac => {
            let m = load(&a.model)?;
            let n = a.n.min(200);
            let l = crate::bench::sac_updates(&m, a.batch, n, 256)?;
            if a.json {
                println!("{}", serde_json::to_string(&l)?);
            } else {
                println!(
                    "SAC update (batch {}, K={} C={}, critics 2x256, {} threads): min {:.2} ms, median {:.2} ms, p99 {:.2} ms over {n} updates; {:.1} updates/s at the median",
                    a.batch, m.spec.blocks, m.spec.hidden[1], std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
                    l.min_us / 1e3, l.median_us / 1e3, l.p99_us / 1e3, 1e6 / l.median_us
                );
            }
            Ok(())
        }
        Cmd::Bench(a) => bench(a),
        Cmd::New(a) => {
            let mut spec =
                flowpilot_core::init::default_spec(a.obs, a.goal, a.act, a.blocks, a.hidden);
            spec.created_by = format!("flowpilot new (random={}, seed={})", a.random, a.seed);
            spec.version = a.version;
            let init = if a.random {
                flowpilot_core::init::Init::Random { last_scale: 0.3 }
            } else {
                flowpilot_core::init::Init::Paper
            };
            let m = flowpilot_core::init::init_model(spec, init, a.seed)?;
            m.save(&a.out)?;
            println!(
                "wrote {} ({} parameters, {})",
                a.out.display(),
                m.parameter_count(),
                m.spec.digest
            );
            Ok(())
        }
        Cmd::Train(TrainCmd::Bc(a)) => train_bc(a),
        Cmd::Demos(DemosCmd::Pointmass {
            out,
            episodes,
            seed,
        }) => {
            let d = crate::tasks::pointmass::generate_demos(episodes, seed);
            d.save(&out)?;
            println!(
                "wrote {} ({} episodes, {} rows)",
                out.display(),
                episodes,
                d.len()
            );
            Ok(())
        }
        Cmd::Eval(EvalCmd::Pointmass {
            model,
            episodes,
            seed,
            mode,
        }) => {
            let m = load(&model)?;
            if (m.spec.obs_dim, m.spec.goal_dim, m.spec.act_dim) != (2, 0, 2) {
                bail!("the point-mass task needs obs_dim 2, no goal, act_dim 2");
            }
            let mode = match mode {
                ModeArg::Sampled => crate::tasks::pointmass::EvalMode::Sampled,
                ModeArg::Zero => crate::tasks::pointmass::EvalMode::ZeroNoise,
            };
            let ev =
                crate::tasks::pointmass::evaluate(&mut Sampler::new(&m)?, episodes, seed, mode);
            println!("{ev}");
            Ok(())
        }
    }
}

fn inspect(m: &ModelFile) -> Result<()> {
    let s = &m.spec;
    println!("format version : {}", s.format_version);
    println!("kind           : {:?}", s.kind);
    println!(
        "dims           : obs {}, goal {}, act {}",
        s.obs_dim, s.goal_dim, s.act_dim
    );
    if s.kind == PolicyKind::Flow {
        let (d1, d2) = s.split();
        println!(
            "architecture   : {} coupling blocks (PLU linear + affine coupling, split {d1}/{d2})",
            s.blocks
        );
    }
    println!(
        "mlp hidden     : {:?} (LeakyReLU 0.01, LayerNorm eps {:e})",
        s.hidden, s.layer_norm_eps
    );
    match &s.encoder {
        Some(e) => println!(
            "encoder        : {} x Dense({}) -> rep {}",
            e.layers, e.width, e.rep_dim
        ),
        None => println!(
            "encoder        : none (conditioning on normalised obs/goal, k = {})",
            s.cond_dim()
        ),
    }
    let dir = match s.direction {
        Direction::Inverse => "inverse (blocks map action -> latent; sampling inverts them)",
        Direction::Forward => "forward (blocks map latent -> action)",
    };
    println!("sampling       : {dir}");
    println!(
        "noise sigma    : {} (denoise at sampling: {})",
        s.noise_sigma, s.denoise
    );
    println!(
        "action bounds  : low {:?} high {:?}",
        s.action_low, s.action_high
    );
    println!("parameters     : {}", m.parameter_count());
    println!("digest         : {}", s.digest);
    println!(
        "version        : {} (parent {} {})",
        s.version,
        s.parent_version.map_or("-".into(), |v| v.to_string()),
        s.parent_digest.as_deref().unwrap_or("-")
    );
    if !s.created_by.is_empty() {
        println!("created by     : {}", s.created_by);
    }
    Ok(())
}

/// One batch-1 pass of the candle twin: (raw action, log-prob) from z, or
/// (latent, log-prob) of a raw action.
fn twin_once(
    m: &ModelFile,
    obs: &[f32],
    goal: &[f32],
    v: &[f32],
    sample: bool,
) -> Result<(Vec<f32>, f32)> {
    use candle_core::{Device, Tensor};
    let dev = Device::Cpu;
    let twin = flowpilot_learn::twin::Twin::from_model(m, &dev)?;
    let t = |x: &[f32]| Tensor::from_slice(x, (1, x.len()), &dev);
    let g = if goal.is_empty() {
        None
    } else {
        Some(t(goal)?)
    };
    let c = twin.condition(&t(obs)?, g.as_ref())?;
    if sample {
        let (a, lp) = twin.sample(&c, &t(v)?)?;
        let a = if m.spec.denoise {
            twin.denoise(&c, &a)?
        } else {
            a
        };
        Ok((a.flatten_all()?.to_vec1()?, lp.to_vec1::<f32>()?[0]))
    } else {
        let lp = twin.log_prob(&c, &t(v)?)?.to_vec1::<f32>()?[0];
        Ok((Vec::new(), lp))
    }
}

fn log_prob(a: LogProbArgs) -> Result<()> {
    let m = load(&a.model)?;
    let lp = if a.twin {
        twin_once(&m, &a.obs, &a.goal, &a.action, false)?.1
    } else {
        let mut z = vec![0.0; m.spec.act_dim];
        Sampler::new(&m)?.log_prob(&a.obs, &a.goal, &a.action, &mut z)?
    };
    println!("{}", serde_json::json!({ "log_prob": lp }));
    Ok(())
}

fn sample(a: SampleArgs) -> Result<()> {
    let m = load(&a.model)?;
    let mut s = Sampler::new(&m)?;
    let mut act = vec![0.0; m.spec.act_dim];
    let (lp, raw) = if a.twin {
        let z = a.z.clone().context("--twin needs an explicit --z")?;
        let (raw, lp) = twin_once(&m, &a.obs, &a.goal, &z, true)?;
        for (i, r) in raw.iter().enumerate() {
            let (l, h) = (m.spec.action_low[i], m.spec.action_high[i]);
            act[i] = 0.5 * (l + h) + 0.5 * (h - l) * r.clamp(-1.0, 1.0);
        }
        (lp, raw)
    } else {
        let lp = match &a.z {
            Some(z) => s.sample_with_noise(&a.obs, &a.goal, z, &mut act)?,
            None => s.sample_seeded(&a.obs, &a.goal, a.seed, a.tick, &mut act)?,
        };
        (lp, s.last_raw_action().to_vec())
    };
    if a.json {
        let v = serde_json::json!({
            "action": act, "raw_action": raw, "log_prob": lp, "digest": m.spec.digest
        });
        println!("{v}");
    } else {
        println!("action   : {act:?}");
        println!(
            "raw      : {:?} (normalised, before clipping)",
            s.last_raw_action()
        );
        println!("log_prob : {lp}");
    }
    Ok(())
}

fn bench(a: BenchArgs) -> Result<()> {
    let m = load(&a.model)?;
    let r = crate::bench::run(&m, a.n, a.twin)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let l = &r.sampler;
    println!("model        : {} ({})", a.model.display(), &r.model_digest);
    println!(
        "sampler      : min {:.2} / median {:.2} / p99 {:.2} / max {:.2} us over {} samples",
        l.min_us, l.median_us, l.p99_us, l.max_us, l.samples
    );
    println!("allocations  : {} per sample", r.allocations_per_sample);
    println!(
        "bound        : {:.2} us = {} weight bytes / {:.1} GB/s read bandwidth (same run)",
        r.bound_us, r.weight_bytes, r.read_bandwidth_gb_s
    );
    println!("median/bound : {:.2}x", r.median_over_bound);
    if let (Some(t), Some(ratio)) = (&r.twin, r.twin_over_sampler) {
        println!(
            "candle twin  : min {:.2} / median {:.2} / p99 {:.2} / max {:.2} us over {} samples",
            t.min_us, t.median_us, t.p99_us, t.max_us, t.samples
        );
        println!("twin/sampler : {ratio:.2}x (median)");
    }
    Ok(())
}

fn train_bc(a: BcArgs) -> Result<()> {
    let demos = flowpilot_learn::demos::Demos::load(&a.data)?;
    let cfg = flowpilot_learn::train::BcConfig {
        kind: if a.gaussian {
            PolicyKind::Gaussian
        } else {
            PolicyKind::Flow
        },
        direction: match a.direction {
            DirArg::Inverse => Direction::Inverse,
            DirArg::Forward => Direction::Forward,
        },
        blocks: a.blocks,
        hidden: a.hidden,
        encoder: a.encoder_width.map(|w| EncoderSpec {
            width: w,
            layers: 4,
            rep_dim: a.encoder_rep,
        }),
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        weight_decay: a.weight_decay,
        warmup: a.warmup.min(a.steps / 2),
        noise_sigma: a.noise_sigma,
        denoise: a.denoise,
        seed: a.seed,
        ..Default::default()
    };
    let (model, report) = flowpilot_learn::train::train_bc(&demos, &cfg, true)?;
    model.save(&a.out)?;
    let plot = a.plot.unwrap_or_else(|| a.out.with_extension("loss.png"));
    let tl: Vec<(f64, f64)> = report
        .train_loss
        .iter()
        .map(|&(s, l)| (s as f64, l))
        .collect();
    let vl: Vec<(f64, f64)> = report.val_nll.iter().map(|&(s, l)| (s as f64, l)).collect();
    crate::plot::line_plot(
        &plot,
        "NF-BC training",
        "step",
        "NLL (nats / sample)",
        &[
            crate::plot::Series {
                name: "train (noisy actions)",
                points: &tl,
            },
            crate::plot::Series {
                name: "validation (clean actions)",
                points: &vl,
            },
        ],
    )?;
    let last = report.val_nll.last().map_or(f64::NAN, |v| v.1);
    println!(
        "wrote {} ({} params, {}); train rows {}, val rows {}; final val NLL {:.4}; loss curve {}",
        a.out.display(),
        model.parameter_count(),
        model.spec.digest,
        report.train_rows,
        report.val_rows,
        last,
        plot.display()
    );
    Ok(())
}

fn reach_finetune(
    seeds: u64,
    rounds: usize,
    updates: usize,
    bc_lambda: f64,
    curve: Option<PathBuf>,
) -> Result<()> {
    let mut all = Vec::new();
    for seed in 0..seeds {
        let t0 = std::time::Instant::now();
        let init = crate::tasks::reach::bc_policy(seed)?;
        let dir =
            std::env::temp_dir().join(format!("flowpilot_reach_{}_{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = crate::tasks::reach::SessionConfig {
            rounds,
            episodes_per_round: 10,
            updates_per_round: updates,
            eval_episodes: 20,
            sac: flowpilot_learn::learner::SacConfig {
                seed,
                critic_warmup: updates as u64,
                bc_lambda,
                ..Default::default()
            },
        };
        let c = crate::tasks::reach::finetune_session(&init, &cfg, &dir)?;
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "seed {seed}: {:.2} -> {:.2} ({:.0} s)",
            c[0].mean_return,
            c.last().expect("points").mean_return,
            t0.elapsed().as_secs_f64()
        );
        for p in &c {
            println!(
                "  updates {:5}  transitions {:5}  version {:3}  mean return {:7.2}",
                p.updates, p.transitions, p.version, p.mean_return
            );
        }
        all.push(c);
    }
    if let Some(path) = curve {
        let pts: Vec<Vec<(f64, f64)>> = all
            .iter()
            .map(|c| {
                c.iter()
                    .map(|p| (p.transitions as f64, p.mean_return))
                    .collect()
            })
            .collect();
        let names: Vec<String> = (0..all.len()).map(|s| format!("seed {s}")).collect();
        let ex = crate::tasks::reach::expert_return(100, 0);
        let expert = vec![(0.0, ex), (pts[0].last().map_or(1.0, |p| p.0), ex)];
        let mut series: Vec<crate::plot::Series<'_>> = names
            .iter()
            .zip(&pts)
            .map(|(n, p)| crate::plot::Series { name: n, points: p })
            .collect();
        series.push(crate::plot::Series {
            name: "detour expert (the demos)",
            points: &expert,
        });
        crate::plot::line_plot(
            &path,
            "SAC fine-tuning of a BC flow (reach with detour)",
            "logged transitions",
            "mean return (20 episodes)",
            &series,
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}
