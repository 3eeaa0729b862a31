//! `flowpilot demos`: demonstrations from the built-in experts.

use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub(crate) enum DemosCmd {
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

pub(crate) fn run(cmd: DemosCmd) -> Result<()> {
    match cmd {
        DemosCmd::Reach {
            out,
            episodes,
            seed,
        } => {
            let d = crate::tasks::reach::generate_demos(episodes, seed);
            d.save(&out)?;
            println!(
                "reach (detour expert): {episodes} episodes, {} rows -> {}",
                d.len(),
                out.display()
            );
            Ok(())
        }
        DemosCmd::Pointmass {
            out,
            episodes,
            seed,
        } => {
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
    }
}
