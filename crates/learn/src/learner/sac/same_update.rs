//! Whole updates, hand-written vs autograd, in f32: the same draws, losses,
//! AdamW and Polyak steps leave the same actor, critics and temperature,
//! with plain and with LayerNorm critics.

use super::*;
use flowpilot_core::policy::init::{default_spec, init_model, Init};
use flowpilot_core::policy::model::TensorData;

#[test]
fn fast_and_autograd_updates_agree() {
    // The last three: BC on the second draw's rows only (`--bc-demos-only`),
    // by likelihood, on the samples (`--bc-sample`), and both.
    for (critic_layer_norm, bc_lambda, tau, demos_only, bc_sample) in [
        (false, 0.0, 1.0, false, 0.0),
        (true, 0.0, 0.3, false, 0.0),
        (true, 0.5, 0.3, false, 0.0),
        (true, 0.5, 1.0, true, 0.0),
        (true, 0.0, 0.3, true, 0.7),
        (false, 0.5, 1.0, true, 0.7),
    ] {
        agree(critic_layer_norm, bc_lambda, tau, demos_only, bc_sample);
    }
}

fn agree(
    critic_layer_norm: bool,
    bc_lambda: f64,
    latent_temperature: f64,
    demos_only: bool,
    bc_sample: f64,
) {
    let model = init_model(
        default_spec(6, 0, 3, 2, 32),
        Init::Random { last_scale: 0.5 },
        3,
    )
    .unwrap();
    let cfg = SacConfig {
        batch: 32,
        critic_hidden: 32,
        critic_warmup: 1,
        // Large steps, so that a missing or wrong one shows.
        lr_actor: 1e-2,
        lr_critic: 1e-2,
        lr_alpha: 1e-2,
        critic_layer_norm,
        bc_lambda,
        bc_sample,
        latent_temperature,
        ..Default::default()
    };
    let mut fast = Sac::new(&model, cfg.clone()).unwrap();
    assert!(fast.fast.is_some());
    let mut slow = Sac::new(&model, cfg).unwrap();
    slow.fast = None;
    let mut rb = ReplayBuffer::new(6, 3, 500);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for i in 0..500 {
        let mut v =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.random_range(-1.0..1.0)).collect() };
        let (s, a, s2) = (v(6), v(3), v(6));
        rb.push(
            &s,
            &a,
            -(i as f32 % 7.0) / 7.0,
            &s2,
            if i % 13 == 0 { 0.0 } else { 0.99 },
        );
    }
    let draws = |imitate_first| {
        [
            Draw {
                from: &rb,
                rows: 20,
                imitate: imitate_first,
            },
            Draw {
                from: &rb,
                rows: 12,
                imitate: true,
            },
        ]
    };
    for _ in 0..4 {
        let (sf, ss) = if demos_only {
            (
                fast.update_mixed(&draws(false), true).unwrap(),
                slow.update_mixed(&draws(false), true).unwrap(),
            )
        } else {
            (fast.update(&rb).unwrap(), slow.update(&rb).unwrap())
        };
        for (x, y) in [
            (sf.critic_loss, ss.critic_loss),
            (sf.actor_loss, ss.actor_loss),
            (sf.entropy, ss.entropy),
            (sf.q, ss.q),
            (sf.alpha, ss.alpha),
            (sf.bc_nll, ss.bc_nll),
            (sf.bc_dist, ss.bc_dist),
        ] {
            assert!(
                (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                "ln {critic_layer_norm} bc {bc_lambda} sample {bc_sample}: stats {sf:?} vs {ss:?}"
            );
        }
    }
    let (mf, ms) = (
        fast.export(&model.spec).unwrap(),
        slow.export(&model.spec).unwrap(),
    );
    let mut n = 0;
    let dist = |a: &[f32], b: &[f32]| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).powi(2))
            .sum::<f32>()
            .sqrt()
    };
    for (((name, a), (_, b)), (_, o)) in mf.tensors().iter().zip(ms.tensors()).zip(model.tensors())
    {
        if let (TensorData::F32(a), TensorData::F32(b), TensorData::F32(o)) =
            (&a.data, &b.data, &o.data)
        {
            let (d, moved) = (dist(a, b), dist(b, o));
            assert!(
                d <= 1e-3 * moved,
                "ln {critic_layer_norm} bc {bc_lambda} sample {bc_sample}: {name}: paths differ by {d}, moved {moved}"
            );
            n += 1;
        }
    }
    assert!(n > 20);
    // The critics went through the state file's path too.
    fast.sync_vars().unwrap();
    for (cf, cs) in fast
        .q
        .iter()
        .chain(&fast.q_targ)
        .zip(slow.q.iter().chain(&slow.q_targ))
    {
        for (a, b) in cf.vars.iter().zip(&cs.vars) {
            let d = (a.as_tensor() - b.as_tensor())
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap();
            let nb = b.as_tensor().sqr().unwrap().sum_all().unwrap();
            let (d, nb) = (
                d.to_scalar::<f32>().unwrap().sqrt(),
                nb.to_scalar::<f32>().unwrap().sqrt(),
            );
            assert!(
                d <= 1e-4 * nb.max(1e-3),
                "ln {critic_layer_norm} bc {bc_lambda}: critic: {d} vs norm {nb}"
            );
        }
    }
}
