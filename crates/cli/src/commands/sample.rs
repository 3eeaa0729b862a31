//! `flowpilot sample`: one action from the real-time sampler (or the candle
//! twin, as a reference). A one-shot command; allocates freely.

use flowpilot_core::policy::action_space::ActionSpace;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::cli::load;
use flowpilot_core::policy::sampler::Sampler;

#[derive(clap::Args)]
pub(crate) struct SampleArgs {
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

pub(crate) fn run(a: SampleArgs) -> Result<()> {
    let m = load(&a.model)?;
    let mut s = Sampler::new(&m)?;
    let mut act = vec![0.0; m.spec.act_dim];
    let (lp, raw) = if a.twin {
        let z = a.z.clone().context("--twin needs an explicit --z")?;
        let (raw, lp) = flowpilot_learn::twin::sample_once(&m, &a.obs, &a.goal, &z)?;
        // clipped and scaled as the real-time sampler does
        ActionSpace::new(&m.spec).to_physical(&raw, &mut act);
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
