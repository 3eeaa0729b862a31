//! Shared helpers for the integration tests.
#![allow(dead_code)]

use crate::policy::init::{default_spec, init_model, Init};
use crate::policy::model::{Direction, EncoderSpec, ModelFile, Normalizer, PolicyKind};

/// A small random model exercising every feature the options select.
pub fn random_model(
    act: usize,
    goal: usize,
    encoder: bool,
    dir: Direction,
    kind: PolicyKind,
    seed: u64,
) -> ModelFile {
    let obs = 5;
    let mut spec = default_spec(
        obs,
        goal,
        act,
        if kind == PolicyKind::Flow { 3 } else { 0 },
        32,
    );
    spec.kind = kind;
    spec.direction = dir;
    spec.obs_norm = Normalizer {
        mean: (0..obs).map(|i| 0.1 * i as f32).collect(),
        std: (0..obs).map(|i| 0.5 + 0.25 * i as f32).collect(),
    };
    if goal > 0 {
        spec.goal_norm = Some(Normalizer {
            mean: vec![0.3; goal],
            std: vec![2.0; goal],
        });
    }
    if encoder {
        spec.encoder = Some(EncoderSpec {
            width: 24,
            layers: 2,
            rep_dim: 6,
        });
        let k = 6;
        spec.hidden = [32 + k, 32];
    }
    spec.action_low = (0..act).map(|i| -1.0 - i as f32).collect();
    spec.action_high = (0..act).map(|i| 2.0 + i as f32).collect();
    init_model(spec, Init::Random { last_scale: 0.5 }, seed).expect("valid random model")
}

pub fn all_variants() -> Vec<(String, ModelFile)> {
    let mut v = Vec::new();
    let mut seed = 1;
    for dir in [Direction::Inverse, Direction::Forward] {
        for (goal, enc) in [(0, false), (3, false), (3, true)] {
            for act in [1, 2, 5] {
                seed += 1;
                v.push((
                    format!("flow {dir:?} act={act} goal={goal} enc={enc}"),
                    random_model(act, goal, enc, dir, PolicyKind::Flow, seed),
                ));
            }
        }
    }
    v.push((
        "gaussian".into(),
        random_model(3, 2, false, Direction::Inverse, PolicyKind::Gaussian, 99),
    ));
    v
}

/// Deterministic pseudo-random values in [-s, s] (test inputs).
pub fn vals(n: usize, seed: u64, s: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x2545_F491_4F6C_DD1D) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            s * (2.0 * ((x >> 11) as f64 / (1u64 << 53) as f64) as f32 - 1.0)
        })
        .collect()
}
