//! `flowpilot finetune`: the SAC learner process the node starts (or an
//! operator runs offline). Parses flags, lowers its own priority, and hands
//! over to [`flowpilot_learn::learner::run`]. Never on the control thread.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use flowpilot_learn::learner::{self, DataSource, FinetuneOptions, SacConfig};

// The flags the node passes when it starts a learner are the contract's.
use flowpilot_core::contract::flags;

#[derive(clap::Args)]
pub(crate) struct FinetuneArgs {
    /// Directory of transition logs (*.mcap) written by flowpilot_node.
    #[arg(
        long = flags::LOG_DIR,
        conflicts_with_all = ["offline", "from_graph"],
        required_unless_present_any = ["offline", "from_graph"]
    )]
    log_dir: Option<PathBuf>,
    /// Learn from robots over ROS 2 (docs/fleet.md): starts `flowpilot_fleet`
    /// beside this learner, which keeps per-robot shards in this directory
    /// and publishes the versions written to --out.
    #[arg(long, conflicts_with = "offline")]
    from_graph: Option<PathBuf>,
    /// With --from-graph: serve this robot alone, on its own policy topic
    /// (the robot's `fleet.policy: own`); default: one shared policy.
    #[arg(long, requires = "from_graph")]
    for_robot: Option<String>,
    /// With --from-graph: store records only from the robots listed in this
    /// file, each batch signed by its robot's key (`<robot id> <public key
    /// or key file>` per line; docs/security.md).
    #[arg(long, requires = "from_graph")]
    robot_keys: Option<PathBuf>,
    /// The `flowpilot_fleet` executable (default: beside this one).
    #[arg(long, requires = "from_graph")]
    fleet_exe: Option<PathBuf>,
    /// Keep reading new records as the node writes them.
    #[arg(long = flags::FOLLOW)]
    follow: bool,
    /// Train on a fixed dataset alone (demos .npz with a 'reward' array).
    #[arg(long)]
    offline: Option<PathBuf>,
    /// The starting policy (a newer checkpoint in --out takes precedence).
    #[arg(long = flags::INIT)]
    init: PathBuf,
    /// Checkpoint directory (the node's hot_swap.dir).
    #[arg(long = flags::OUT)]
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
    /// Sign every version written with this private key (`flowpilot
    /// keygen`; refused if group or others may read it). A robot with
    /// hot_swap.trusted_keys takes only signed versions (docs/security.md).
    #[arg(long, value_name = "KEY")]
    signing_key: Option<PathBuf>,
}

pub(crate) fn run(a: FinetuneArgs) -> Result<()> {
    let stop = flowpilot_core::shutdown::Shutdown::install();
    // Before anything starts: a bad key is the session's error.
    let signer = a
        .signing_key
        .as_deref()
        .map(|p| {
            flowpilot_core::signing::PolicySigner::load(p)
                .map(std::sync::Arc::new)
                .context("--signing-key")
        })
        .transpose()?;
    if let Err(e) = flowpilot_core::sched::set_niceness(a.nice) {
        tracing::warn!("could not set niceness {}: {e}", a.nice);
    }
    // The graph link lives as long as this process (and dies with it).
    let mut _link = None;
    let data = match (a.offline, a.log_dir, a.from_graph) {
        (Some(p), _, _) => DataSource::Offline(p),
        (None, Some(dir), _) => DataSource::Logs {
            dir,
            follow: a.follow,
        },
        (None, None, Some(dir)) => {
            _link = Some(GraphLink::start(
                a.fleet_exe,
                &dir,
                &a.out,
                a.for_robot.as_deref(),
                a.robot_keys.as_deref(),
            )?);
            DataSource::Fleet { dir }
        }
        (None, None, None) => bail!("give --log-dir, --from-graph or --offline"),
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
        signer,
    };
    let n = learner::run(&opts, stop.flag())?;
    println!("finetune: {n} updates");
    Ok(())
}

/// The `flowpilot_fleet` child of a `--from-graph` learner: killed when
/// this process ends (Drop), and by the kernel if it is killed (the child
/// sets its parent-death signal).
struct GraphLink(std::process::Child);

impl GraphLink {
    fn start(
        exe: Option<PathBuf>,
        shards: &std::path::Path,
        out: &std::path::Path,
        robot: Option<&str>,
        robot_keys: Option<&std::path::Path>,
    ) -> Result<Self> {
        let exe = match exe {
            Some(e) => e,
            None => std::env::current_exe()
                .context("locating flowpilot")?
                .with_file_name("flowpilot_fleet"),
        };
        let mut cmd = std::process::Command::new(&exe);
        use flowpilot_core::contract::flags;
        let flag = |f: &str| format!("--{f}");
        cmd.arg(flag(flags::SHARDS))
            .arg(shards)
            .arg(flag(flags::OUT))
            .arg(out);
        if let Some(r) = robot {
            cmd.arg(flag(flags::ROBOT)).arg(r);
        }
        if let Some(k) = robot_keys {
            cmd.arg(flag(flags::ROBOT_KEYS)).arg(k);
        }
        let child = cmd.spawn().with_context(|| {
            format!(
                "starting {} (built with the ROS feature: scripts/run.sh builds it)",
                exe.display()
            )
        })?;
        tracing::info!(pid = child.id(), "fleet link started");
        Ok(Self(child))
    }
}

impl Drop for GraphLink {
    fn drop(&mut self) {
        // SIGTERM first: it closes its shard files cleanly.
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGTERM);
        }
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
