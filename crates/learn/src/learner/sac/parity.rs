//! The hand-written update against candle autograd: every parameter's
//! gradient of the critic and actor losses, in f64, on random models of
//! both flow directions (with and without a goal), with plain and with
//! LayerNorm critics.

use super::*;
use candle_core::DType;
use flowpilot_core::policy::init::{default_spec, init_model, Init};
use flowpilot_core::policy::model::{Direction, Normalizer};

/// ‖fast − ref‖₂ ≤ TOL·‖ref‖₂ per parameter tensor.
const TOL: f64 = 1e-5;

fn f64_critic(c: &Critic) -> Critic {
    Critic {
        vars: c
            .vars
            .iter()
            .map(|v| Var::from_tensor(&v.as_tensor().to_dtype(DType::F64).unwrap()).unwrap())
            .collect(),
        layer_norm: c.layer_norm,
    }
}

fn rel_err(fast: &[f64], reference: &Tensor) -> (f64, f64) {
    let r = reference.flatten_all().unwrap().to_vec1::<f64>().unwrap();
    assert_eq!(fast.len(), r.len());
    let diff: f64 = fast
        .iter()
        .zip(&r)
        .map(|(a, b)| (a - b).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = r.iter().map(|b| b * b).sum::<f64>().sqrt();
    (diff / norm, norm)
}

#[allow(clippy::too_many_arguments)]
fn check(
    dir: Direction,
    act: usize,
    goal: usize,
    seed: u64,
    threads: usize,
    ln: bool,
    (bc, imitated): (f64, usize),
    tau: f64,
    clip: bool,
) -> f64 {
    let (obs, b, dev) = (5, 64, Device::Cpu);
    let mut spec = default_spec(obs, goal, act, 3, 24);
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
    let model = init_model(spec.clone(), Init::Random { last_scale: 0.5 }, seed).unwrap();
    let twin = Twin::from_model_dtype(&model, &dev, DType::F64).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let k = obs + goal;
    let mk = |rng: &mut ChaCha8Rng| f64_critic(&Critic::new(k + act, 16, ln, rng, &dev).unwrap());
    let q = [mk(&mut rng), mk(&mut rng)];
    let q_targ = [mk(&mut rng), mk(&mut rng)];
    let mut mean: Vec<f64> = spec.obs_norm.mean.iter().map(|&v| v as f64).collect();
    // The twin takes 1/std in f32 (then widens): the same values here.
    let mut inv: Vec<f64> = spec
        .obs_norm
        .std
        .iter()
        .map(|&v| (1.0 / v) as f64)
        .collect();
    if let Some(g) = &spec.goal_norm {
        mean.extend(g.mean.iter().map(|&v| v as f64));
        inv.extend(g.std.iter().map(|&v| (1.0 / v) as f64));
    }
    let in_mean = Tensor::from_vec(mean.clone(), (1, k), &dev).unwrap();
    let in_inv = Tensor::from_vec(inv.clone(), (1, k), &dev).unwrap();
    let mut uni = |n: usize, lo: f64, hi: f64| -> Vec<f64> {
        (0..n).map(|_| rng.random_range(lo..hi)).collect()
    };
    let s = uni(b * k, -2.0, 2.0);
    let a = uni(b * act, -1.5, 1.5);
    let r = uni(b, -1.0, 0.0);
    let s2 = uni(b * k, -2.0, 2.0);
    // Bootstrap weights: terminal rows, one-step rows, 4-step chunk rows.
    let discount: Vec<f64> = uni(b, 0.0, 1.0)
        .iter()
        .map(|&u| match u {
            u if u < 0.2 => 0.0,
            u if u < 0.6 => 0.99,
            _ => 0.99f64.powi(4),
        })
        .collect();
    let z2: Vec<f64> = uni(b * act, -2.0, 2.0);
    let z: Vec<f64> = uni(b * act, -2.0, 2.0);
    let t2 = |v: &[f64], c: usize| Tensor::from_vec(v.to_vec(), (b, c), &dev).unwrap();
    let t1 = |v: &[f64]| Tensor::from_vec(v.to_vec(), b, &dev).unwrap();
    let batch = Batch {
        s: t2(&s, k),
        a: t2(&a, act),
        r: t1(&r),
        s2: t2(&s2, k),
        discount: t1(&discount),
    };
    let alpha_v = 0.3f64;
    let alpha = Tensor::new(&[alpha_v], &dev).unwrap();
    let norm = (&in_mean, &in_inv);

    // Reference: the autograd path's own loss functions.
    let (z2t, zt) = (t2(&z2, act), t2(&z, act));
    let latent = |z| Latent { z, tau };
    let y = critic_target(&twin, &q_targ, norm, &batch, latent(&z2t), &alpha, clip).unwrap();
    let x = q_in(norm, &batch.s, &batch.a).unwrap();
    let (closs, _) = critic_loss(&q, &x, &y).unwrap();
    let cgrads = closs.backward().unwrap();
    let (mut aloss, _, c, _) =
        actor_loss(&twin, &q, norm, &batch.s, latent(&zt), &alpha, clip).unwrap();
    if bc > 0.0 {
        // As `update_mixed`: λ·mean(−log π(a_data|s)) over the last
        // `imitated` rows (where a batch puts the prior data).
        let nll = twin
            .log_prob(&c, &batch.a)
            .unwrap()
            .narrow(0, b - imitated, imitated)
            .unwrap()
            .mean_all()
            .unwrap()
            .neg()
            .unwrap();
        aloss = (aloss + (nll * bc).unwrap()).unwrap();
    }
    let agrads = aloss.backward().unwrap();

    let cfg = SacConfig {
        critic_layer_norm: ln,
        bc_lambda: bc,
        latent_temperature: tau,
        critic_clips_actions: clip,
        ..Default::default()
    };
    assert!(Fast::<f64>::supports(&spec, &cfg));
    let mut f = Fast::<f64>::new(
        &twin,
        [&q[0].vars, &q[1].vars],
        [&q_targ[0].vars, &q_targ[1].vars],
        &mean,
        &inv,
        &cfg,
        threads,
    )
    .unwrap();
    f.prepare();
    let yf = f.target(&s2, &r, &discount, &z2, alpha_v, b);
    let (e, _) = rel_err(&yf, &y);
    assert!(e < 1e-9, "{dir:?}: critic target differs (rel {e:e})");
    let (cl, _) = f.critic_grads(&s, &a, &yf, b);
    let cl_ref = closs.to_scalar::<f64>().unwrap();
    assert!(
        (cl - cl_ref).abs() <= 1e-9 * cl_ref.abs(),
        "critic loss {cl} vs {cl_ref}"
    );
    let w: Vec<f64> = (0..b)
        .map(|r| {
            if r >= b - imitated {
                bc / imitated as f64
            } else {
                0.0
            }
        })
        .collect();
    let (al, _, _, _) = f.actor_grads(
        &s,
        &z,
        alpha_v,
        (bc > 0.0).then_some((&a[..], &w[..])),
        None,
        b,
    );
    let al_ref = aloss.to_scalar::<f64>().unwrap();
    assert!(
        (al - al_ref).abs() <= 1e-9 * al_ref.abs(),
        "actor loss {al} vs {al_ref}"
    );

    let mut checked = 0;
    let mut worst = 0f64;
    for c in &q {
        for (i, v) in c.vars.iter().enumerate() {
            let (e, n) = rel_err(
                &f.critic_grad_of(v).unwrap(),
                cgrads.get(v.as_tensor()).unwrap(),
            );
            assert!(n > 0.0, "critic var {i}: zero reference gradient");
            assert!(
                    e <= TOL,
                    "{dir:?} act {act} goal {goal} ln {ln} bc {bc}/{imitated}: critic var {i}: rel err {e:e}"
                );
            worst = worst.max(e);
            checked += 1;
        }
    }
    let vars = twin.vars();
    assert_eq!(vars.len(), 3 * 23);
    for v in &vars {
        // A 1-D action's L and U have no free entries: autograd has no
        // gradient for them (they do not reach the loss), ours is 0.
        let zero = v.as_tensor().zeros_like().unwrap();
        let reference = match agrads.get(v.as_tensor()) {
            Some(g) => g,
            None if act == 1 => &zero,
            None => panic!("actor var {:?}: no autograd gradient", v.shape()),
        };
        let (e, n) = rel_err(&f.actor_grad_of(v).unwrap(), reference);
        let e = if n == 0.0 && act == 1 {
            f.actor_grad_of(v).unwrap().iter().map(|x| x.abs()).sum()
        } else {
            e
        };
        assert!(
            n > 0.0 || act == 1,
            "actor var {:?}: zero reference gradient",
            v.shape()
        );
        assert!(
                e <= TOL,
                "{dir:?} act {act} goal {goal} ln {ln} bc {bc}/{imitated}: actor var {:?}: rel err {e:e}",
                v.shape()
            );
        worst = worst.max(e);
        checked += 1;
    }
    assert_eq!(checked, 12 + 69);
    worst
}

#[test]
fn fast_sac_gradients_match_autograd() {
    // 3 workers: the batch split into row ranges whose sums meet.
    // ln: LayerNorm critics (`--critic-layer-norm`); bc: the BC weight
    // and the rows it covers (of 64; 24: `--bc-demos-only`); tau: the
    // latent temperature; clip: `--critic-clips-actions` (about a third
    // of these samples fall outside the box).
    for (ln, bc, tau, clip) in [
        (false, (0.0, 64), 1.0, false),
        (true, (0.0, 64), 0.3, false),
        (false, (0.7, 64), 0.3, false),
        (true, (0.7, 64), 1.0, false),
        (true, (0.7, 24), 0.3, false),
        (true, (0.0, 64), 1.0, true),
        (false, (0.7, 24), 1.0, true),
    ] {
        for threads in [1, 3] {
            for (i, dir) in [Direction::Inverse, Direction::Forward]
                .into_iter()
                .enumerate()
            {
                for (j, (act, goal)) in [(5, 0), (4, 3), (2, 0), (1, 2)].into_iter().enumerate() {
                    let seed = 10 + (4 * i + j) as u64;
                    let worst = check(dir, act, goal, seed, threads, ln, bc, tau, clip);
                    eprintln!(
                            "{threads} worker(s), {dir:?} act {act} goal {goal} ln {ln} bc {bc:?} tau {tau} clip {clip}: worst relative gradient error {worst:e}"
                        );
                }
            }
        }
    }
}
