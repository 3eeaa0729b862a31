//! The BC term on the policy's samples (`--bc-sample`): a critic with
//! nothing to rank (coin-flip rewards) moves the samples off the imitated
//! rows' actions while the likelihood term still scores those actions
//! well (a density spike at them); the sample term holds the samples.

use super::*;
use flowpilot_core::policy::init::{default_spec, init_model, Init};

/// (before, after) of [`Sac::imitation`] on the imitated rows.
fn run(bc_sample: f64) -> ((f64, f64), (f64, f64)) {
    let model = init_model(default_spec(4, 0, 2, 2, 16), Init::Paper, 1).unwrap();
    let cfg = SacConfig {
        bc_lambda: LAMBDA,
        bc_sample,
        lr_actor: 1e-3,
        critic_warmup: 0,
        batch: 64,
        critic_hidden: 32,
        seed: 5,
        ..Default::default()
    };
    let mut sac = Sac::new(&model, cfg).unwrap();
    let mut rb = ReplayBuffer::new(4, 2, 256);
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut u = || rng.random_range(-1.0f32..1.0);
    for _ in 0..256 {
        let s = [u(), u(), u(), u()];
        let a = [0.5 * s[0], -0.5 * s[1]];
        // the critic learns to prefer a[0] near 0.8, away from the data's
        let r = 1.0 - (a[0] - 0.8) * (a[0] - 0.8);
        let s2 = [u(), u(), u(), u()];
        rb.push(&s, &a, r, &s2, 0.99);
    }
    let before = sac.imitation(&rb, 256).unwrap();
    for _ in 0..UPDATES {
        sac.update(&rb).unwrap();
    }
    (before, sac.imitation(&rb, 256).unwrap())
}

const UPDATES: usize = 1500;
const LAMBDA: f64 = 0.05;

#[test]
fn the_sample_term_holds_the_samples_where_the_likelihood_term_lets_them_go() {
    let (b0, nll_only) = run(0.0);
    let (b1, with_sample) = run(1.0);
    eprintln!(
        "likelihood only: {b0:?} -> {nll_only:?}; with the sample term: {b1:?} -> {with_sample:?}"
    );
    assert_eq!(b0, b1);
    // (measured: NLL 1.92 -> -0.34 while the distance stays 1.92; with the
    // sample term NLL -4.69 and distance 0.019)
    assert!(
        nll_only.0 < b0.0,
        "the likelihood term is met: {b0:?} -> {nll_only:?}"
    );
    assert!(
        nll_only.1 > 1.0,
        "and yet the samples are far: {nll_only:?}"
    );
    assert!(
        with_sample.1 < 0.1,
        "the sample term holds them: {with_sample:?}"
    );
}
