//! `flowpilot`: inspect, sample, benchmark and train flow policies.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use flowpilot::model::{Direction, EncoderSpec, ModelFile, PolicyKind};
use flowpilot::sampler::Sampler;

// Counts heap allocations so `bench` can report allocations per sample.
#[global_allocator]
static ALLOC: flowpilot::alloc_count::CountingAlloc = flowpilot::alloc_count::CountingAlloc;

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
    kind: flowpilot::import::CheckpointKind,
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

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    flowpilot::pin_threads(cli.threads);
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn load(path: &PathBuf) -> Result<ModelFile> {
    ModelFile::load(path).with_context(|| format!("loading model {}", path.display()))
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Inspect { model } => inspect(&load(&model)?),
        Cmd::Sample(a) => sample(a),
        Cmd::LogProb(a) => log_prob(a),
        Cmd::Import(ImportCmd::Nf4rl(a)) => {
            let opts = flowpilot::import::ImportOptions {
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
            let m = flowpilot::import::import_nf4rl(&a.checkpoint, a.kind, &opts)
                .with_context(|| format!("importing {}", a.checkpoint.display()))?;
            m.save(&a.out)?;
            println!("wrote {}", a.out.display());
            inspect(&m)
        }
        Cmd::Bench(a) => bench(a),
        Cmd::New(a) => {
            let mut spec = flowpilot::init::default_spec(a.obs, a.goal, a.act, a.blocks, a.hidden);
            spec.created_by = format!("flowpilot new (random={}, seed={})", a.random, a.seed);
            spec.version = a.version;
            let init = if a.random {
                flowpilot::init::Init::Random { last_scale: 0.3 }
            } else {
                flowpilot::init::Init::Paper
            };
            let m = flowpilot::init::init_model(spec, init, a.seed)?;
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
            let d = flowpilot::pointmass::generate_demos(episodes, seed);
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
                ModeArg::Sampled => flowpilot::pointmass::EvalMode::Sampled,
                ModeArg::Zero => flowpilot::pointmass::EvalMode::ZeroNoise,
            };
            let ev = flowpilot::pointmass::evaluate(&mut Sampler::new(&m)?, episodes, seed, mode);
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
    let twin = flowpilot::twin::Twin::from_model(m, &dev)?;
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
    let r = flowpilot::bench::run(&m, a.n, a.twin)?;
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
    let demos = flowpilot::demos::Demos::load(&a.data)?;
    let cfg = flowpilot::train::BcConfig {
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
    let (model, report) = flowpilot::train::train_bc(&demos, &cfg, true)?;
    model.save(&a.out)?;
    let plot = a.plot.unwrap_or_else(|| a.out.with_extension("loss.png"));
    let tl: Vec<(f64, f64)> = report
        .train_loss
        .iter()
        .map(|&(s, l)| (s as f64, l))
        .collect();
    let vl: Vec<(f64, f64)> = report.val_nll.iter().map(|&(s, l)| (s as f64, l)).collect();
    flowpilot::plot::line_plot(
        &plot,
        "NF-BC training",
        "step",
        "NLL (nats / sample)",
        &[
            flowpilot::plot::Series {
                name: "train (noisy actions)",
                points: &tl,
            },
            flowpilot::plot::Series {
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
