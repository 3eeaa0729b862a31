//! `flowpilot finetune`: the SAC learner process the node starts (or an
//! operator runs offline). Parses flags, lowers its own priority, and hands
//! over to [`flowpilot_learn::learner::run`]. Never on the control thread.

use std::path::PathBuf;

use anyhow::{bail, Result};

use flowpilot_learn::learner::{self, DataSource, FinetuneOptions, SacConfig};

#[derive(clap::Args)]
pub(crate) struct FinetuneArgs {
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
    // The SAC flags (--batch, --lr-actor, --bc-lambda, --critic-warmup, --seed, ...)
    // are owned by the learner's config.
    #[command(flatten)]
    sac: SacConfig,
    #[arg(long, default_value_t = 256)]
    min_transitions: usize,
    #[arg(long, default_value_t = 500)]
    checkpoint_every: u64,
    /// Seconds between reads of new log records.
    #[arg(long, default_value_t = 0.5)]
    poll_period: f64,
    /// Prior data mixed into every batch (demos .npz with 'reward'; with --follow).
    #[arg(long)]
    prior: Option<PathBuf>,
    /// Share of each batch from the prior data.
    #[arg(long, default_value_t = 0.5)]
    prior_share: f64,
    /// Critic-only updates on the prior data before the online ones.
    #[arg(long, default_value_t = 0)]
    critic_pretrain: u64,
    /// CPU niceness of the learner (19: lowest; the control loop wins).
    #[arg(long, default_value_t = 19)]
    nice: i32,
}

pub(crate) fn run(a: FinetuneArgs) -> Result<()> {
    let stop = flowpilot_core::shutdown::Shutdown::install();
    if let Err(e) = flowpilot_core::control::set_niceness(a.nice) {
        tracing::warn!("could not set niceness {}: {e}", a.nice);
    }
    let data = match (a.offline, a.log_dir) {
        (Some(p), _) => DataSource::Offline(p),
        (None, Some(dir)) => DataSource::Logs {
            dir,
            follow: a.follow,
        },
        (None, None) => bail!("give --log-dir or --offline"),
    };
    let opts = FinetuneOptions {
        data,
        init: a.init,
        out: a.out,
        sac: a.sac,
        max_updates: a.updates,
        utd: a.utd,
        min_transitions: a.min_transitions,
        checkpoint_every: a.checkpoint_every.max(1),
        poll_period: std::time::Duration::from_secs_f64(a.poll_period.max(0.01)),
        prior: a.prior,
        prior_share: a.prior_share.clamp(0.0, 1.0),
        critic_pretrain: a.critic_pretrain,
    };
    let n = learner::run(&opts, stop.flag())?;
    println!("finetune: {n} updates");
    Ok(())
}
