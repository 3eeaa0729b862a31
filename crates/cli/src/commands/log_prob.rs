//! `flowpilot log-prob`: exact log p(action | obs, goal) from the real-time
//! sampler or the candle twin. A one-shot command; allocates freely.

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::load;
use flowpilot_core::policy::sampler::Sampler;

#[derive(clap::Args)]
pub(crate) struct LogProbArgs {
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

pub(crate) fn run(a: LogProbArgs) -> Result<()> {
    let m = load(&a.model)?;
    let lp = if a.twin {
        flowpilot_learn::twin::log_prob_once(&m, &a.obs, &a.goal, &a.action)?
    } else {
        let mut z = vec![0.0; m.spec.act_dim];
        Sampler::new(&m)?.log_prob(&a.obs, &a.goal, &a.action, &mut z)?
    };
    println!("{}", serde_json::json!({ "log_prob": lp }));
    Ok(())
}
