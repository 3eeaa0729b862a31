//! `--no-entropy-backup`: the critic's target leaves out −α·log π, on the
//! candle and the hand-written path alike.

use super::*;
use flowpilot_core::policy::init::{default_spec, init_model, Init};

/// Mean Q over a fixed batch after critic-only updates, on both paths.
fn q_after(no_entropy_backup: bool, init_alpha: f64, fast: bool) -> f32 {
    let model = init_model(
        default_spec(6, 0, 3, 2, 32),
        Init::Random { last_scale: 0.5 },
        3,
    )
    .unwrap();
    let cfg = SacConfig {
        batch: 32,
        critic_hidden: 32,
        lr_critic: 1e-2,
        init_alpha,
        no_entropy_backup,
        ..Default::default()
    };
    let mut sac = Sac::new(&model, cfg).unwrap();
    assert!(sac.fast.is_some());
    if !fast {
        sac.fast = None;
    }
    let mut rb = ReplayBuffer::new(6, 3, 200);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for i in 0..200 {
        let mut v =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (s, a, s2) = (v(6), v(3), v(6));
        // a sparse reward: 1 on the terminal (success) rows
        let done = i % 13 == 0;
        rb.push(
            &s,
            &a,
            if done { 1.0 } else { 0.0 },
            &s2,
            if done { 0.0 } else { 0.99 },
        );
    }
    let mut q = 0.0;
    for _ in 0..60 {
        let all = Draw {
            from: &rb,
            rows: 32,
            imitate: true,
        };
        q = sac.update_mixed(&[all], false).unwrap().q;
    }
    q
}

#[test]
fn without_the_entropy_backup_the_target_ignores_alpha() {
    for fast in [true, false] {
        // α enters a critic-only update through the target alone: with
        // the backup off, a large α leaves the critics where α ≈ 0 does.
        let off = q_after(true, 5.0, fast);
        let tiny = q_after(false, 1e-12, fast);
        let on = q_after(false, 5.0, fast);
        assert!(
            (off - tiny).abs() <= 1e-4 * (1.0 + tiny.abs()),
            "fast {fast}: no backup {off} vs α≈0 {tiny}"
        );
        // with it, the soft term moves Q far from the 0/1 reward's scale
        assert!(
            (on - off).abs() > 0.5,
            "fast {fast}: backup {on} vs none {off}"
        );
        assert!(
            off.abs() < 1.5,
            "fast {fast}: Q {off} outside the reward's scale"
        );
    }
}

#[cfg(feature = "clap")]
#[test]
fn the_flag_parses() {
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        sac: SacConfig,
    }
    use clap::Parser;
    assert!(
        Flags::try_parse_from(["finetune", "--no-entropy-backup"])
            .unwrap()
            .sac
            .no_entropy_backup
    );
}
