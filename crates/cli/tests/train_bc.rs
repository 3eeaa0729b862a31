//! The NF-BC trainer: deterministic for a seed, learns (validation NLL
//! falls), writes files the sampler and twin agree on; and the bundled
//! point-mass policies behave as the docs say.

use candle_core::{Device, Tensor};
use flowpilot_cli::tasks::pointmass::{evaluate, generate_demos, EvalMode};
use flowpilot_core::policy::model::{ModelFile, PolicyKind};
use flowpilot_core::policy::sampler::Sampler;
use flowpilot_learn::train::{lr_at, train_bc, BcConfig};
use flowpilot_learn::twin::Twin;

fn small_cfg(kind: PolicyKind, steps: usize) -> BcConfig {
    BcConfig {
        kind,
        blocks: 2,
        hidden: 32,
        steps,
        batch: 64,
        warmup: 20,
        eval_every: 20,
        seed: 5,
        ..Default::default()
    }
}

#[test]
fn lr_schedule_warms_up_then_decays_to_zero() {
    let cfg = BcConfig {
        steps: 1000,
        warmup: 100,
        lr: 1e-3,
        ..Default::default()
    };
    assert!((lr_at(0, &cfg) - 1e-5).abs() < 1e-12);
    assert!((lr_at(99, &cfg) - 1e-3).abs() < 1e-12);
    assert!((lr_at(100, &cfg) - 1e-3).abs() < 1e-12);
    assert!((lr_at(550, &cfg) - 5e-4).abs() < 1e-9);
    assert!(lr_at(999, &cfg) < 1e-7);
}

#[test]
fn training_is_deterministic_and_learns() {
    flowpilot_learn::pin_threads(1);
    let demos = generate_demos(30, 1);
    let cfg = small_cfg(PolicyKind::Flow, 80);
    let (a, ra) = train_bc(&demos, &cfg, false).unwrap();
    let (b, _) = train_bc(&demos, &cfg, false).unwrap();
    assert_eq!(
        a.spec.digest, b.spec.digest,
        "same seed, same data: same model"
    );
    let (c, _) = train_bc(
        &demos,
        &BcConfig {
            seed: 6,
            ..cfg.clone()
        },
        false,
    )
    .unwrap();
    assert_ne!(a.spec.digest, c.spec.digest);
    let first = ra.val_nll.first().unwrap().1;
    let last = ra.val_nll.last().unwrap().1;
    assert!(
        last < first - 0.5,
        "validation NLL should fall: {first} -> {last}"
    );
    assert!(ra.val_rows > 0 && ra.train_rows > ra.val_rows);

    // the trained file reloads and both implementations agree on it
    let bytes = a.to_bytes();
    let m = ModelFile::from_bytes(&bytes).unwrap();
    let mut rt = Sampler::new(&m).unwrap();
    let twin = Twin::from_model(&m, &Device::Cpu).unwrap();
    let obs = [0.05f32, -1.0];
    let z = [0.7f32, -0.4];
    let mut act = [0.0f32; 2];
    let lp = rt.sample_with_noise(&obs, &[], &z, &mut act).unwrap();
    let c = twin
        .condition(
            &Tensor::from_slice(&obs, (1, 2), &Device::Cpu).unwrap(),
            None,
        )
        .unwrap();
    let (ta, tlp) = twin
        .sample(&c, &Tensor::from_slice(&z, (1, 2), &Device::Cpu).unwrap())
        .unwrap();
    let ta = ta.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    for j in 0..2 {
        assert!((ta[j] - rt.last_raw_action()[j]).abs() < 1e-5);
    }
    assert!((tlp.to_vec1::<f32>().unwrap()[0] - lp).abs() < 1e-5 * lp.abs().max(1.0));
}

#[test]
fn demos_round_trip_through_npz() {
    let d = generate_demos(3, 2);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.npz");
    d.save(&p).unwrap();
    assert_eq!(flowpilot_learn::demos::Demos::load(&p).unwrap(), d);
    std::fs::write(dir.path().join("bad.npz"), b"not a zip").unwrap();
    let e = flowpilot_learn::demos::Demos::load(dir.path().join("bad.npz")).unwrap_err();
    assert!(format!("{e:#}").contains("not a .npz"), "{e:#}");
}

fn bundled(name: &str) -> Sampler {
    let p = format!("{}/../../models/{name}", env!("CARGO_MANIFEST_DIR"));
    Sampler::new(&ModelFile::load(&p).unwrap_or_else(|e| panic!("{p}: {e}"))).unwrap()
}

/// The bundled flow, trained by `flowpilot train bc` on the project's own
/// point-mass demos, reaches the goal by both routes; the Gaussian trained
/// on the same demos averages the modes: its mean action always collides,
/// and sampled it collides far more often than the flow. Rates in docs/pointmass.md.
#[test]
fn bundled_flow_reaches_goal_both_ways_where_gaussian_fails() {
    let n = 200;
    let flow = evaluate(
        &mut bundled("pointmass_flow.safetensors"),
        n,
        1000,
        EvalMode::Sampled,
    );
    let gauss = evaluate(
        &mut bundled("pointmass_gaussian.safetensors"),
        n,
        1000,
        EvalMode::Sampled,
    );
    let gauss_mean = evaluate(
        &mut bundled("pointmass_gaussian.safetensors"),
        n,
        1000,
        EvalMode::ZeroNoise,
    );
    println!("flow: {flow}\ngaussian (sampled): {gauss}\ngaussian (mean): {gauss_mean}");
    assert!(flow.success_rate() >= 0.85, "flow: {flow}");
    assert!(
        flow.left >= n / 5 && flow.right >= n / 5,
        "flow must use both routes: {flow}"
    );
    assert!(
        gauss_mean.success_rate() <= 0.2,
        "gaussian mean: {gauss_mean}"
    );
    // Sampled every tick, the Gaussian's own noise sometimes breaks the
    // symmetry; it still collides at least twice as often as the flow.
    assert!(
        flow.success_rate() >= gauss.success_rate() + 0.03,
        "flow {flow} vs gaussian {gauss}"
    );
    assert!(
        gauss.collisions >= 2 * flow.collisions.max(1),
        "flow {flow} vs gaussian {gauss}"
    );
}
