//! `flowpilot train`: behaviour cloning (NF-BC, or the Gaussian baseline)
//! with a loss-curve plot. Offline; uses the candle thread pool.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};

use flowpilot_core::policy::model::{Direction, EncoderSpec, PolicyKind};

#[derive(Subcommand)]
pub(crate) enum TrainCmd {
    /// Behaviour cloning by maximum likelihood (NF-BC).
    Bc(BcArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum DirArg {
    Inverse,
    Forward,
}

#[derive(Args)]
pub(crate) struct BcArgs {
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
    /// Predict chunks of this many action steps (windows cut per episode,
    /// the last action repeated past its end).
    #[arg(long, default_value_t = 1)]
    chunk: usize,
    /// Condition on this many past observations (the first repeated before
    /// an episode's start).
    #[arg(long, default_value_t = 1)]
    obs_horizon: usize,
    /// Least std of the observation normaliser, physical units (0: the
    /// data's own). For demos that never leave a narrow band.
    #[arg(long, default_value_t = 0.0)]
    obs_std_floor: f32,
    /// Loss-curve PNG (default: next to --out, with .loss.png).
    #[arg(long)]
    plot: Option<PathBuf>,
}

fn bc(a: BcArgs) -> Result<()> {
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
        chunk_len: a.chunk,
        obs_horizon: a.obs_horizon,
        obs_std_floor: a.obs_std_floor,
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

pub(crate) fn run(cmd: TrainCmd) -> Result<()> {
    match cmd {
        TrainCmd::Bc(a) => bc(a),
    }
}
