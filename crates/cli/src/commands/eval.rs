//! `flowpilot eval`: a policy's return on a built-in task, and the
//! fine-tuning benchmark (BC, then SAC on the policy's own logs).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::{Subcommand, ValueEnum};

use crate::cli::load;
use flowpilot_core::policy::sampler::Sampler;

#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum ModeArg {
    /// A fresh sample each tick.
    Sampled,
    /// z = 0 each tick (a Gaussian policy's mean).
    Zero,
}

#[derive(Subcommand)]
pub(crate) enum EvalCmd {
    /// Mean return on the reach-with-detour task (optimal ≈ −19).
    Reach {
        model: PathBuf,
        #[arg(long, default_value_t = 50)]
        episodes: usize,
        #[arg(long, default_value_t = 1000)]
        seed: u64,
    },
    /// The fine-tuning benchmark: BC on detour demos, then SAC on the
    /// policy's own logged transitions; prints and plots the learning curve.
    ReachFinetune {
        #[arg(long, default_value = "1")]
        seeds: u64,
        #[arg(long, default_value_t = 8)]
        rounds: usize,
        #[arg(long, default_value_t = 400)]
        updates_per_round: usize,
        /// λ of the BC term on the logged actions.
        #[arg(long, default_value_t = 0.0)]
        bc_lambda: f64,
        /// Learning-curve PNG.
        #[arg(long)]
        curve: Option<PathBuf>,
    },
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

fn reach_finetune(
    seeds: u64,
    rounds: usize,
    updates: usize,
    bc_lambda: f64,
    curve: Option<PathBuf>,
) -> Result<()> {
    let mut all = Vec::new();
    for seed in 0..seeds {
        let t0 = std::time::Instant::now();
        let init = crate::tasks::reach::bc_policy(seed)?;
        let dir =
            std::env::temp_dir().join(format!("flowpilot_reach_{}_{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let cfg = crate::tasks::reach::SessionConfig {
            rounds,
            episodes_per_round: 10,
            updates_per_round: updates,
            eval_episodes: 20,
            sac: flowpilot_learn::learner::SacConfig {
                seed,
                critic_warmup: updates as u64,
                bc_lambda,
                ..Default::default()
            },
        };
        let c = crate::tasks::reach::finetune_session(&init, &cfg, &dir)?;
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "seed {seed}: {:.2} -> {:.2} ({:.0} s)",
            c[0].mean_return,
            c.last().expect("points").mean_return,
            t0.elapsed().as_secs_f64()
        );
        for p in &c {
            println!(
                "  updates {:5}  transitions {:5}  version {:3}  mean return {:7.2}",
                p.updates, p.transitions, p.version, p.mean_return
            );
        }
        all.push(c);
    }
    if let Some(path) = curve {
        let pts: Vec<Vec<(f64, f64)>> = all
            .iter()
            .map(|c| {
                c.iter()
                    .map(|p| (p.transitions as f64, p.mean_return))
                    .collect()
            })
            .collect();
        let names: Vec<String> = (0..all.len()).map(|s| format!("seed {s}")).collect();
        let ex = crate::tasks::reach::expert_return(100, 0);
        let expert = vec![(0.0, ex), (pts[0].last().map_or(1.0, |p| p.0), ex)];
        let mut series: Vec<crate::plot::Series<'_>> = names
            .iter()
            .zip(&pts)
            .map(|(n, p)| crate::plot::Series { name: n, points: p })
            .collect();
        series.push(crate::plot::Series {
            name: "detour expert (the demos)",
            points: &expert,
        });
        crate::plot::line_plot(
            &path,
            "SAC fine-tuning of a BC flow (reach with detour)",
            "logged transitions",
            "mean return (20 episodes)",
            &series,
        )?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

pub(crate) fn run(cmd: EvalCmd) -> Result<()> {
    match cmd {
        EvalCmd::Reach {
            model,
            episodes,
            seed,
        } => {
            let mut s = Sampler::new(&load(&model)?)?;
            let r = crate::tasks::reach::evaluate(&mut s, episodes, seed);
            println!("reach: mean return {r:.2} over {episodes} episodes (straight line ≈ −19)");
            Ok(())
        }
        EvalCmd::ReachFinetune {
            seeds,
            rounds,
            updates_per_round,
            bc_lambda,
            curve,
        } => reach_finetune(seeds, rounds, updates_per_round, bc_lambda, curve),
        EvalCmd::Pointmass {
            model,
            episodes,
            seed,
            mode,
        } => {
            let m = load(&model)?;
            if (m.spec.obs_dim, m.spec.goal_dim, m.spec.act_dim) != (2, 0, 2) {
                bail!("the point-mass task needs obs_dim 2, no goal, act_dim 2");
            }
            let mode = match mode {
                ModeArg::Sampled => crate::tasks::pointmass::EvalMode::Sampled,
                ModeArg::Zero => crate::tasks::pointmass::EvalMode::ZeroNoise,
            };
            let ev =
                crate::tasks::pointmass::evaluate(&mut Sampler::new(&m)?, episodes, seed, mode);
            println!("{ev}");
            Ok(())
        }
    }
}
