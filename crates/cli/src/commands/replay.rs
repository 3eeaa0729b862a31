//! `flowpilot replay`: re-run a policy on a transition log's observations,
//! deterministically, and report where its samples differ from the logged
//! ones. For the policy and seeds that produced a log it reproduces every
//! sampled action and log-prob bit for bit (the sampler is a pure function
//! of model, observation, seed, tick and temperature). Offline; allocates
//! freely.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::cli::load;
use flowpilot_core::log::reader::{log_files, read_file};
use flowpilot_core::log::PolicyId;
use flowpilot_core::policy::sampler::Sampler;
use flowpilot_core::rt::decision::Decision;

#[derive(clap::Args)]
pub(crate) struct ReplayArgs {
    /// A log file or a log directory (docs/log-format.md).
    log: PathBuf,
    /// The policy to replay (the logged one, or another with the same dims).
    model: PathBuf,
    /// Print the report as one JSON object.
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(a: ReplayArgs) -> Result<()> {
    let m = load(&a.model)?;
    if m.spec.chunk_len > 1 || m.spec.obs_horizon > 1 {
        // A record holds one observation step and one action step; the
        // chunk and history a step came from are not in it.
        bail!("replaying chunked or history-conditioned policies is not supported");
    }
    let files = if a.log.is_dir() {
        log_files(&a.log).map_err(|e| anyhow::anyhow!(e.chain()))?
    } else {
        vec![a.log.clone()]
    };
    let mut s = Sampler::new(&m)?;
    let me = PolicyId::of(&m.spec);
    let sampled = [Decision::Policy.code(), Decision::WarmingUp.code()];
    let mut act = vec![0f32; m.spec.act_dim];
    let (mut records, mut compared, mut identical, mut same_policy) = (0u64, 0u64, 0u64, 0u64);
    let (mut max_da, mut max_dlp) = (0f64, 0f64);
    let mut first_diff: Option<u64> = None;
    for f in &files {
        let recs = read_file(f)
            .map_err(|e| anyhow::anyhow!(e.chain()))
            .with_context(|| format!("reading {}", f.display()))?;
        for r in recs {
            records += 1;
            // Only ticks that sampled carry a sample to compare.
            if !sampled.contains(&r.decision) || !r.temperature.is_finite() {
                continue;
            }
            if r.obs().len() != m.spec.obs_dim
                || r.goal().len() != m.spec.goal_dim
                || r.sampled().len() != m.spec.act_dim
            {
                bail!(
                    "record {} has obs {} goal {} act {}; the model has {} {} {}",
                    r.tick,
                    r.obs().len(),
                    r.goal().len(),
                    r.sampled().len(),
                    m.spec.obs_dim,
                    m.spec.goal_dim,
                    m.spec.act_dim
                );
            }
            compared += 1;
            same_policy += (r.policy.digest == me.digest) as u64;
            let lp = s
                .sample_tempered(r.obs(), r.goal(), r.seed, r.tick, r.temperature, &mut act)
                .with_context(|| format!("sampling for record {}", r.tick))?;
            let raw = s.last_raw_action();
            let exact = raw
                .iter()
                .zip(r.sampled())
                .all(|(x, y)| x.to_bits() == y.to_bits())
                && lp.to_bits() == r.log_prob.to_bits();
            if exact {
                identical += 1;
            } else {
                first_diff.get_or_insert(r.tick);
                for (x, y) in raw.iter().zip(r.sampled()) {
                    max_da = max_da.max((x - y).abs() as f64);
                }
                max_dlp = max_dlp.max((lp - r.log_prob).abs() as f64);
            }
        }
    }
    if a.json {
        println!(
            "{}",
            serde_json::json!({
                "records": records, "compared": compared, "identical": identical,
                "same_policy": same_policy, "max_action_diff": max_da,
                "max_log_prob_diff": max_dlp, "first_diff_tick": first_diff,
                "digest": m.spec.digest,
            })
        );
    } else {
        println!(
            "{records} records in {} file(s); {compared} sampled ticks replayed with {} ({same_policy} logged by it)",
            files.len(),
            m.spec.digest
        );
        println!(
            "bit-identical: {identical} of {compared}; max |Δ sampled action| {max_da:.3e}, max |Δ log-prob| {max_dlp:.3e}{}",
            first_diff.map_or(String::new(), |t| format!("; first difference at tick {t}"))
        );
    }
    Ok(())
}
