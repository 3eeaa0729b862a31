//! `flowpilot import`: policies trained with other code, converted to a
//! flowpilot model file. Offline; allocates freely.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand, ValueEnum};

#[derive(Subcommand)]
pub(crate) enum ImportCmd {
    /// A checkpoint of "Normalizing Flows are Capable Models for RL" (docs/import.md).
    Nf4rl(Nf4rlArgs),
}

#[derive(Args)]
pub(crate) struct Nf4rlArgs {
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
    /// Action steps per sample: the checkpoint's outputs are a chunk of
    /// this many steps (e.g. the paper's PushT NF-BC: 16). The shapes alone
    /// cannot tell 16×2 from 8×4.
    #[arg(long, default_value_t = 1)]
    chunk: usize,
    /// Observation steps per sample: the conditioning input is this many
    /// stacked observations, oldest first (PushT: 2).
    #[arg(long, default_value_t = 1)]
    obs_horizon: usize,
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
pub(crate) enum KindArg {
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

pub(crate) fn run(cmd: ImportCmd) -> Result<()> {
    match cmd {
        ImportCmd::Nf4rl(a) => nf4rl(a),
    }
}

fn nf4rl(a: Nf4rlArgs) -> Result<()> {
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
        chunk_len: a.chunk,
        obs_horizon: a.obs_horizon,
        python: a.python,
        script: None,
    };
    let m = flowpilot_learn::import::import_nf4rl(&a.checkpoint, a.kind.into(), &opts)
        .with_context(|| format!("importing {}", a.checkpoint.display()))?;
    m.save(&a.out)?;
    println!("wrote {}", a.out.display());
    super::inspect::print(&m)
}
