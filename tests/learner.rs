//! The SAC learner: exact-log-prob actor, critics, checkpoints and a
//! learning test on real log files.

use flowpilot::learner::{ReplayBuffer, Sac, SacConfig};
use flowpilot::model::ModelFile;
use flowpilot::reach;
use flowpilot::train::{train_bc, BcConfig};

fn bc_reach(seed: u64) -> ModelFile {
    flowpilot::pin_threads(1);
    let demos = reach::generate_demos(100, seed);
    let cfg = BcConfig {
        blocks: 2,
        hidden: 64,
        steps: 1500,
        warmup: 100,
        noise_sigma: 0.05,
        eval_every: 500,
        seed,
        ..Default::default()
    };
    train_bc(&demos, &cfg, false).expect("bc").0
}

#[test]
fn finetuning_straightens_the_detour() {
    let t0 = std::time::Instant::now();
    let init = bc_reach(0);
    eprintln!("bc {:?}", t0.elapsed());
    let dir = tempfile::tempdir().unwrap();
    let cfg = reach::SessionConfig {
        rounds: 8,
        episodes_per_round: 10,
        updates_per_round: 400,
        eval_episodes: 20,
        sac: SacConfig { seed: 0, batch: 256, critic_warmup: 400, ..Default::default() },
    };
    let curve = reach::finetune_session(&init, &cfg, dir.path()).unwrap();
    for p in &curve { eprintln!("{p:?}"); }
    eprintln!("total {:?}", t0.elapsed());
}
