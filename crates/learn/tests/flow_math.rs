//! The flow's mathematics: the real-time sampler against the candle twin,
//! invertibility, log-det against a finite-difference Jacobian, and the
//! density integrating to one.

use flowpilot_core::testkit as common;

use candle_core::{Device, Tensor};
use common::{all_variants, random_model, vals};
use flowpilot_core::policy::model::{Direction, PolicyKind};
use flowpilot_core::policy::sampler::Sampler;
use flowpilot_learn::twin::Twin;

fn t2(v: &[f32], cols: usize) -> Tensor {
    Tensor::from_vec(v.to_vec(), (v.len() / cols, cols), &Device::Cpu).unwrap()
}

#[test]
fn sampler_and_twin_agree_on_actions_and_log_probs() {
    flowpilot_learn::pin_threads(1);
    for (name, m) in all_variants() {
        let spec = m.spec.clone();
        let (od, gd, d) = (spec.obs_dim, spec.goal_dim, spec.act_dim);
        let mut rt = Sampler::new(&m).unwrap();
        let twin = Twin::from_model(&m, &Device::Cpu).unwrap();
        let b = 16;
        let obs = vals(b * od, 1, 2.0);
        let goal = vals(b * gd, 2, 2.0);
        let z = vals(b * d, 3, 1.5);
        let cond = twin
            .condition(&t2(&obs, od), (gd > 0).then(|| t2(&goal, gd)).as_ref())
            .unwrap();
        let (a_twin, lp_twin) = twin.sample(&cond, &t2(&z, d)).unwrap();
        let a_twin = a_twin.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let lp_twin = lp_twin.to_vec1::<f32>().unwrap();
        let lp_like = twin
            .log_prob(&cond, &t2(&a_twin, d))
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let mut act = vec![0.0; d];
        let mut max_da = 0f32;
        let mut max_dl = 0f32;
        for r in 0..b {
            let lp = rt
                .sample_with_noise(
                    &obs[r * od..(r + 1) * od],
                    &goal[r * gd..(r + 1) * gd],
                    &z[r * d..(r + 1) * d],
                    &mut act,
                )
                .unwrap();
            for j in 0..d {
                max_da = max_da.max((rt.last_raw_action()[j] - a_twin[r * d + j]).abs());
            }
            max_dl = max_dl.max((lp - lp_twin[r]).abs() / lp.abs().max(1.0));
            // likelihood direction of the twin agrees with the sampling pass
            assert!(
                (lp_like[r] - lp_twin[r]).abs() < 2e-4 * lp.abs().max(1.0),
                "{name}: twin log_prob {} vs sample {}",
                lp_like[r],
                lp_twin[r]
            );
        }
        assert!(max_da < 1e-5, "{name}: action max diff {max_da}");
        assert!(max_dl < 1e-5, "{name}: log-prob max rel diff {max_dl}");
    }
}

#[test]
fn invertible_to_1e5() {
    for (name, m) in all_variants() {
        let spec = m.spec.clone();
        let (od, gd, d) = (spec.obs_dim, spec.goal_dim, spec.act_dim);
        let mut rt = Sampler::new(&m).unwrap();
        let mut act = vec![0.0; d];
        let mut z_back = vec![0.0; d];
        for r in 0..20 {
            let obs = vals(od, 10 + r, 2.0);
            let goal = vals(gd, 20 + r, 2.0);
            let z = vals(d, 30 + r, 2.0);
            let lp_s = rt.sample_with_noise(&obs, &goal, &z, &mut act).unwrap();
            let x = rt.last_raw_action().to_vec();
            let lp_l = rt.log_prob(&obs, &goal, &x, &mut z_back).unwrap();
            for j in 0..d {
                assert!(
                    (z[j] - z_back[j]).abs() < 1e-5,
                    "{name}: z {:?} -> x -> {:?}",
                    z,
                    z_back
                );
            }
            assert!(
                (lp_s - lp_l).abs() < 1e-4 * lp_s.abs().max(1.0),
                "{name}: {lp_s} vs {lp_l}"
            );
        }
    }
}

/// log|det ∂z/∂x| from the flow equals log|det| of a central-difference
/// Jacobian. The Jacobian is taken on the twin in f64 (h = 1e-6, so no
/// LeakyReLU kink is crossed); the flow's own log-det is checked both there
/// and in the f32 real-time sampler.
#[test]
fn log_det_matches_finite_difference_jacobian() {
    use candle_core::DType;
    for dir in [Direction::Inverse, Direction::Forward] {
        let m = random_model(4, 2, true, dir, PolicyKind::Flow, 7);
        let spec = m.spec.clone();
        let d = spec.act_dim;
        let mut rt = Sampler::new(&m).unwrap();
        let twin = Twin::from_model_dtype(&m, &Device::Cpu, DType::F64).unwrap();
        let obs = vals(spec.obs_dim, 5, 1.0);
        let goal = vals(spec.goal_dim, 6, 1.0);
        let t64 = |v: &[f32], rows: usize| {
            let v: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            Tensor::from_vec(v.clone(), (rows, v.len() / rows), &Device::Cpu).unwrap()
        };
        for trial in 0..5 {
            let x = vals(d, 100 + trial, 0.8);
            let h = 1e-6f64;
            // rows: x, then x ± h e_c for each c
            let mut pts: Vec<f64> = x.iter().map(|&v| v as f64).collect();
            for c in 0..d {
                for sgn in [1.0, -1.0] {
                    let mut p: Vec<f64> = x.iter().map(|&v| v as f64).collect();
                    p[c] += sgn * h;
                    pts.extend(p);
                }
            }
            let n = 1 + 2 * d;
            let xs = Tensor::from_vec(pts, (n, d), &Device::Cpu).unwrap();
            let obs_b = t64(&obs.repeat(n), n);
            let goal_b = t64(&goal.repeat(n), n);
            let cond = twin.condition(&obs_b, Some(&goal_b)).unwrap();
            let pass = match dir {
                Direction::Inverse => twin.forward_pass(&xs, &cond).unwrap(),
                Direction::Forward => twin.inverse_pass(&xs, &cond).unwrap(),
            };
            let z = pass.out.to_vec2::<f64>().unwrap();
            let flow_logdet = pass.logdet.to_vec1::<f64>().unwrap()[0];
            let mut jac = vec![0.0f64; d * d];
            for c in 0..d {
                for r in 0..d {
                    jac[r * d + c] = (z[1 + 2 * c][r] - z[2 + 2 * c][r]) / (2.0 * h);
                }
            }
            let fd = log_abs_det(&mut jac, d);
            assert!(
                (fd - flow_logdet).abs() < 1e-6,
                "{dir:?}: flow logdet {flow_logdet}, finite difference {fd}"
            );
            // the f32 sampler's log-det: log p(x) - log N(z)
            let mut zs = vec![0.0; d];
            let lp = rt.log_prob(&obs, &goal, &x, &mut zs).unwrap() as f64;
            let base = -0.5 * zs.iter().map(|v| (v * v) as f64).sum::<f64>()
                - d as f64 * 0.918_938_533_204_672_7;
            assert!(
                (lp - base - fd).abs() < 1e-4,
                "{dir:?}: sampler logdet {}, finite difference {fd}",
                lp - base
            );
        }
    }
}

fn log_abs_det(a: &mut [f64], d: usize) -> f64 {
    let mut acc = 0.0;
    for k in 0..d {
        let p = (k..d)
            .max_by(|&x, &y| a[x * d + k].abs().total_cmp(&a[y * d + k].abs()))
            .unwrap();
        for c in 0..d {
            a.swap(k * d + c, p * d + c);
        }
        acc += a[k * d + k].abs().ln();
        for r in k + 1..d {
            let f = a[r * d + k] / a[k * d + k];
            for c in k..d {
                a[r * d + c] -= f * a[k * d + c];
            }
        }
    }
    acc
}

/// ∫ exp(log p(a|y)) da over a 2-D grid is 1: the log-prob is a normalised
/// density, not just a score.
#[test]
fn density_integrates_to_one() {
    for dir in [Direction::Inverse, Direction::Forward] {
        let m = random_model(2, 0, false, dir, PolicyKind::Flow, 11);
        let mut rt = Sampler::new(&m).unwrap();
        let obs = vals(m.spec.obs_dim, 4, 1.0);
        let (n, lim) = (600, 9.0f32);
        let h = 2.0 * lim / n as f32;
        let mut z = [0.0; 2];
        let mut total = 0.0f64;
        for i in 0..n {
            for j in 0..n {
                let a = [-lim + (i as f32 + 0.5) * h, -lim + (j as f32 + 0.5) * h];
                total += (rt.log_prob(&obs, &[], &a, &mut z).unwrap() as f64).exp();
            }
        }
        total *= (h * h) as f64;
        assert!((total - 1.0).abs() < 0.01, "{dir:?}: integral {total}");
    }
}

/// The sampler's hand-written backward pass equals candle autograd, and the
/// one-step denoise a + σ²∇ₐ log p matches the twin's, for every variant.
#[test]
fn denoise_gradient_matches_autograd() {
    use flowpilot_core::policy::model::ModelFile;
    for (name, m) in all_variants() {
        let mut spec = m.spec.clone();
        spec.denoise = true;
        spec.noise_sigma = 0.3;
        let m = ModelFile::new(spec, m.tensors().clone()).unwrap();
        let (od, gd, d) = (m.spec.obs_dim, m.spec.goal_dim, m.spec.act_dim);
        let mut rt = Sampler::new(&m).unwrap();
        let twin = Twin::from_model(&m, &Device::Cpu).unwrap();
        for r in 0..4 {
            let obs = vals(od, 50 + r, 1.5);
            let goal = vals(gd, 60 + r, 1.5);
            let z = vals(d, 70 + r, 1.2);
            let cond = twin
                .condition(&t2(&obs, od), (gd > 0).then(|| t2(&goal, gd)).as_ref())
                .unwrap();
            let (a, _) = twin.sample(&cond, &t2(&z, d)).unwrap();
            let want = twin
                .denoise(&cond, &a)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let a = a.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let mut grad = vec![0.0; d];
            rt.grad_log_prob(&obs, &goal, &a, &mut grad).unwrap();
            let mut act = vec![0.0; d];
            rt.sample_with_noise(&obs, &goal, &z, &mut act).unwrap();
            let got = rt.last_raw_action();
            for j in 0..d {
                let g_twin = (want[j] - a[j]) / 0.09;
                assert!(
                    (grad[j] - g_twin).abs() < 1e-3 * g_twin.abs().max(1.0),
                    "{name}: grad {:?} vs autograd {}",
                    grad,
                    g_twin
                );
                assert!(
                    (got[j] - want[j]).abs() < 1e-4 * want[j].abs().max(1.0),
                    "{name}: denoised {got:?} vs twin {want:?}"
                );
            }
        }
    }
}

/// A 1-D flow is a conditional Gaussian (docs/model-format.md, "1-D
/// actions"): its blocks see only the observation, so each is an affine map
/// of the action and so is their stack. Its log-prob integrates to one and
/// is exactly quadratic in the action, with the mean and spread the
/// observation chooses.
#[test]
fn a_one_dimensional_flow_is_a_normalised_conditional_gaussian() {
    for dir in [Direction::Inverse, Direction::Forward] {
        let m = random_model(1, 0, false, dir, PolicyKind::Flow, 13);
        assert_eq!(m.spec.split(), (0, 1));
        let mut rt = Sampler::new(&m).unwrap();
        let mut z = [0.0];
        let mut means = Vec::new();
        for o in 0..2 {
            let obs = vals(m.spec.obs_dim, 20 + o, 1.0);
            let mut lp = |a: f32| rt.log_prob(&obs, &[], &[a], &mut z).unwrap() as f64;
            // Quadratic: the second difference is the same everywhere,
            // -h²/σ², and the log-prob peaks at the mean.
            let h = 0.25;
            let dd: Vec<f64> = (-8..8)
                .map(|i| {
                    let a = i as f32 * h as f32;
                    lp(a - h as f32) - 2.0 * lp(a) + lp(a + h as f32)
                })
                .collect();
            let var = -h * h / dd[0];
            assert!(var > 0.0, "{dir:?}: not concave");
            for d in &dd {
                assert!(
                    (d - dd[0]).abs() < 1e-4,
                    "{dir:?}: second differences {dd:?}"
                );
            }
            let (n, lim) = (20_000, 40.0f32);
            let w = 2.0 * lim / n as f32;
            let (mut total, mut mean) = (0.0f64, 0.0f64);
            for i in 0..n {
                let a = -lim + (i as f32 + 0.5) * w;
                let p = lp(a).exp() * w as f64;
                total += p;
                mean += p * a as f64;
            }
            assert!((total - 1.0).abs() < 1e-3, "{dir:?}: integral {total}");
            // The Gaussian's peak density is 1/sqrt(2πσ²) at its mean.
            let peak = lp(mean as f32);
            let want = -0.5 * (2.0 * std::f64::consts::PI * var).ln();
            assert!((peak - want).abs() < 1e-3, "{dir:?}: peak {peak} vs {want}");
            means.push(mean);
        }
        assert!(
            (means[0] - means[1]).abs() > 1e-3,
            "{dir:?}: the observation must move the mean: {means:?}"
        );
    }
}
