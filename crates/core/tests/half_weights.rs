//! Half-size (f16 / bf16) kernels in the real-time sampler: the same
//! values give the same samples as f32 storage (the gemv only widens), and
//! the rounding itself moves actions and log-probs by a bounded amount.

use flowpilot_core::policy::model::{ModelFile, WeightDtype};
use flowpilot_core::policy::sampler::Sampler;
use flowpilot_core::testkit as common;

/// Every variant (both directions, goals, encoder, 1-D, Gaussian), plain
/// and denoising (the backward pass reads the kernels too).
fn variants() -> Vec<(String, ModelFile)> {
    let plain = common::all_variants();
    let denoising: Vec<_> = plain
        .iter()
        .map(|(n, m)| {
            let mut spec = m.spec.clone();
            spec.denoise = true;
            (
                format!("{n} +denoise"),
                ModelFile::new(spec, m.tensors().clone()).unwrap(),
            )
        })
        .collect();
    plain.into_iter().chain(denoising).collect()
}

/// Largest |Δ action| (physical, relative to the action's range),
/// |Δ log-prob| of the sample and |Δ log p(a)| of the likelihood pass at a
/// fixed action (both relative to 1 + |log-prob|) between two samplers
/// over `n` inputs.
fn max_diffs(a: &ModelFile, b: &ModelFile, n: u64) -> (f32, f32, f32) {
    let s = &a.spec;
    let (mut sa, mut sb) = (Sampler::new(a).unwrap(), Sampler::new(b).unwrap());
    let (mut xa, mut xb) = (vec![0.0; s.act_dim], vec![0.0; s.act_dim]);
    let mut z = vec![0.0; s.act_dim];
    let (mut da, mut dl, mut dq) = (0f32, 0f32, 0f32);
    for tick in 0..n {
        let obs = common::vals(s.obs_dim, 100 + tick, 2.0);
        let goal = common::vals(s.goal_dim, 5000 + tick, 2.0);
        let la = sa.sample_seeded(&obs, &goal, 3, tick, &mut xa).unwrap();
        let lb = sb.sample_seeded(&obs, &goal, 3, tick, &mut xb).unwrap();
        for (i, (x, y)) in xa.iter().zip(&xb).enumerate() {
            da = da.max((x - y).abs() / (s.action_high[i] - s.action_low[i]));
        }
        dl = dl.max((la - lb).abs() / (1.0 + la.abs()));
        let act = common::vals(s.act_dim, 9000 + tick, 0.9);
        let qa = sa.log_prob(&obs, &goal, &act, &mut z).unwrap();
        let qb = sb.log_prob(&obs, &goal, &act, &mut z).unwrap();
        dq = dq.max((qa - qb).abs() / (1.0 + qa.abs()));
    }
    (da, dl, dq)
}

#[test]
fn half_size_storage_of_the_same_values_samples_what_f32_storage_does() {
    for (name, m) in variants() {
        for w in [WeightDtype::F16, WeightDtype::Bf16] {
            let half = m.with_weights(w).unwrap();
            // the same (rounded) values, stored f32
            let wide = half.with_weights(WeightDtype::F32).unwrap();
            let (da, dl, dq) = max_diffs(&wide, &half, 200);
            // The widening is exact and the accumulation order the same,
            // so only FMA-vs-separate rounding could differ.
            let tol = if cfg!(target_feature = "fma") {
                0.0
            } else {
                1e-5
            };
            assert!(
                da <= tol && dl <= tol && dq <= tol,
                "{name} {w}: action {da:e} log-prob {dl:e} likelihood {dq:e}"
            );
        }
    }
}

#[test]
fn half_size_models_match_the_f32_model_within_tolerance() {
    // Tolerances from the rounding: f16 keeps 11 significant bits
    // (relative step 2^-11), bf16 8 (2^-8), and the errors grow through
    // the blocks. Measured over these variants (300 inputs each): f16
    // action 4.0e-3 of its range, log-prob 1.7e-3, likelihood 4.5e-3
    // (relative to 1 + |log p|); bf16 3.0e-2, 1.3e-2, 3.1e-2. The bounds
    // leave ~2.5x room.
    for (w, act_tol, lp_tol) in [
        (WeightDtype::F16, 1e-2, 1e-2),
        (WeightDtype::Bf16, 8e-2, 8e-2),
    ] {
        let mut worst = (0f32, 0f32, 0f32);
        for (name, m) in variants() {
            let half = m.with_weights(w).unwrap();
            let (da, dl, dq) = max_diffs(&m, &half, 300);
            worst = (worst.0.max(da), worst.1.max(dl), worst.2.max(dq));
            assert!(
                da <= act_tol && dl <= lp_tol && dq <= lp_tol,
                "{name} {w}: action {da:e} (tol {act_tol:e}), log-prob {dl:e} / likelihood {dq:e} (tol {lp_tol:e})"
            );
        }
        eprintln!(
            "{w}: max |Δaction| {:.3e}, |Δlog-prob| {:.3e}, |Δlog p(a)| {:.3e}",
            worst.0, worst.1, worst.2
        );
    }
}

#[test]
fn a_half_size_model_streams_half_the_kernel_bytes() {
    let m = common::random_model(
        5,
        0,
        false,
        flowpilot_core::policy::model::Direction::Inverse,
        flowpilot_core::policy::model::PolicyKind::Flow,
        4,
    );
    let f = Sampler::new(&m).unwrap().weight_bytes();
    let kernel_bytes: usize = m
        .tensors()
        .iter()
        .filter(|(n, _)| flowpilot_core::policy::model::is_kernel(n))
        .map(|(_, t)| 4 * t.shape.iter().product::<usize>())
        .sum();
    for w in [WeightDtype::F16, WeightDtype::Bf16] {
        let h = Sampler::new(&m.with_weights(w).unwrap())
            .unwrap()
            .weight_bytes();
        assert_eq!(f - h, kernel_bytes / 2, "{w}");
    }
}
