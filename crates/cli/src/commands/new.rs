//! `flowpilot new`: a fresh (or fully random, for benchmarks) model file.

use std::path::PathBuf;

use anyhow::Result;
use flowpilot_core::policy::model::WeightDtype;

#[derive(clap::Args)]
pub(crate) struct NewArgs {
    out: PathBuf,
    /// Values of one observation step.
    #[arg(long)]
    obs: usize,
    #[arg(long, default_value_t = 0)]
    goal: usize,
    /// Values of one action step (the whole flow output is chunk × act).
    #[arg(long)]
    act: usize,
    /// Action steps per sample (an action chunk).
    #[arg(long, default_value_t = 1)]
    chunk: usize,
    /// Observation steps per sample (history; the flow sees obs-horizon × obs).
    #[arg(long, default_value_t = 1)]
    obs_horizon: usize,
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
    /// How the dense kernels are stored: f32, f16 or bf16 (half the bytes;
    /// drawn in f32, then rounded: the same seed's f32 model differs only
    /// by rounding).
    #[arg(long, default_value = "f32")]
    weights: WeightDtype,
}

pub(crate) fn run(a: NewArgs) -> Result<()> {
    let mut spec = flowpilot_core::policy::init::default_spec(
        a.obs * a.obs_horizon,
        a.goal,
        a.act * a.chunk,
        a.blocks,
        a.hidden,
    );
    spec.chunk_len = a.chunk;
    spec.obs_horizon = a.obs_horizon;
    spec.created_by = format!("flowpilot new (random={}, seed={})", a.random, a.seed);
    spec.version = a.version;
    spec.weights = a.weights;
    let init = if a.random {
        flowpilot_core::policy::init::Init::Random { last_scale: 0.3 }
    } else {
        flowpilot_core::policy::init::Init::Paper
    };
    let m = flowpilot_core::policy::init::init_model(spec, init, a.seed)?;
    m.save(&a.out)?;
    println!(
        "wrote {} ({} parameters, {} kernels, {})",
        a.out.display(),
        m.parameter_count(),
        m.spec.weights,
        m.spec.digest
    );
    Ok(())
}
