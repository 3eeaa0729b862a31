//! The SAC learner: a learning test on real log files, offline RL from a
//! dataset, versioned checkpoints with parent digests, resumption, and
//! following the node's rollbacks.

use flowpilot_core::checkpoint::{AcceptedRecord, CheckpointDir};
use std::sync::atomic::AtomicBool;

use flowpilot_cli::tasks::reach;
use flowpilot_core::policy::model::ModelFile;
use flowpilot_learn::learner::{self, DataSource, FinetuneOptions, SacConfig};

/// BC on detour demos, then 8 rounds of (10 logged episodes, 400 SAC
/// updates). Seed 0 goes −28.25 → −23.85, −24.93, −24.15 over the last
/// three rounds (the straight line is ≈ −19; more seeds: `flowpilot eval
/// reach-finetune --seeds 3`, docs/finetuning.md).
#[test]
fn finetuning_from_its_own_logs_straightens_the_detour() {
    flowpilot_learn::pin_threads(1);
    let init = reach::bc_policy(0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = reach::SessionConfig {
        rounds: 8,
        episodes_per_round: 10,
        updates_per_round: 400,
        eval_episodes: 20,
        sac: SacConfig {
            seed: 0,
            critic_warmup: 400,
            ..Default::default()
        },
    };
    let curve = reach::finetune_session(&init, &cfg, dir.path()).unwrap();
    for p in &curve {
        eprintln!("{p:?}");
    }
    let first = curve[0].mean_return;
    let last3: Vec<f64> = curve[curve.len() - 3..]
        .iter()
        .map(|p| p.mean_return)
        .collect();
    let mean3 = last3.iter().sum::<f64>() / 3.0;
    let min3 = last3.iter().cloned().fold(f64::INFINITY, f64::min);
    assert!(
        first < -26.0,
        "the BC policy reproduces the detour: {first:.2}"
    );
    assert!(
        mean3 > first + 3.0,
        "fine-tuning gains at least 3 on the last three points: {first:.2} -> {last3:?}"
    );
    assert!(
        min3 > first + 2.0,
        "and none of them falls back: {first:.2} -> {last3:?}"
    );
    // every round's checkpoint names its parent
    let mut prev = init.spec.digest.clone();
    for v in 2..=curve.last().unwrap().version {
        let m =
            ModelFile::load(CheckpointDir::new(dir.path().join("ckpt")).policy_path(v)).unwrap();
        assert_eq!(m.spec.parent_digest.as_deref(), Some(prev.as_str()));
        assert_eq!(m.spec.parent_version, Some(v - 1));
        prev = m.spec.digest.clone();
    }
}

fn opts(
    dir: &std::path::Path,
    data: DataSource,
    init: std::path::PathBuf,
    updates: u64,
) -> FinetuneOptions {
    FinetuneOptions {
        data,
        init,
        out: dir.join("ckpt"),
        sac: SacConfig {
            batch: 64,
            critic_hidden: 64,
            critic_warmup: 10,
            bc_lambda: 0.1,
            seed: 3,
            ..Default::default()
        },
        max_updates: updates,
        utd: 1.0,
        min_transitions: 64,
        checkpoint_every: 20,
        poll_period: std::time::Duration::from_millis(10),
        prior: None,
        prior_share: 0.5,
        critic_pretrain: 0,
        signer: None,
    }
}

/// 20 detour episodes with rewards and a BC policy (seed `bc_seed`) on
/// disk in `dir`; options for an offline session on them.
fn offline_setup(
    dir: &std::path::Path,
    bc_seed: u64,
    updates: u64,
) -> (FinetuneOptions, std::path::PathBuf) {
    flowpilot_learn::pin_threads(1);
    let demos_path = dir.join("demos.npz");
    reach::generate_demos(20, 1).save(&demos_path).unwrap();
    let init_path = dir.join("init.safetensors");
    reach::bc_policy(bc_seed).unwrap().save(&init_path).unwrap();
    let o = opts(
        dir,
        DataSource::Offline(demos_path.clone()),
        init_path,
        updates,
    );
    (o, demos_path)
}

#[test]
fn offline_finetuning_writes_versioned_checkpoints_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let (o, demos_path) = offline_setup(dir.path(), 1, 50);
    let stop = AtomicBool::new(false);
    assert_eq!(learner::run(&o, &stop).unwrap(), 50);
    let (p, m) = CheckpointDir::new(&o.out).latest().unwrap();
    // checkpoints at 20 and 40 updates, and the final one at 50
    assert_eq!(m.spec.version, 4, "{}", p.display());
    assert!(CheckpointDir::new(&o.out).learner_state_path().exists());
    // a restarted learner continues the lineage and the update count, and
    // removes the partial file a killed learner left (never loaded: the
    // hot swap and latest_checkpoint only read *.safetensors)
    let partial = o.out.join(".policy_v000005.safetensors.tmp4242");
    std::fs::write(&partial, &b"half a model"[..]).unwrap();
    assert_eq!(
        CheckpointDir::new(&o.out).latest().unwrap().1.spec.version,
        4
    );
    assert_eq!(learner::run(&o, &stop).unwrap(), 50);
    assert!(!partial.exists());
    let (_, m2) = CheckpointDir::new(&o.out).latest().unwrap();
    assert_eq!(m2.spec.version, 7);
    assert_eq!(
        m2.spec.parent_digest.as_deref(),
        Some(
            ModelFile::load(CheckpointDir::new(&o.out).policy_path(6))
                .unwrap()
                .spec
                .digest
                .as_str()
        )
    );
    assert!(
        m2.spec.created_by.contains("100 updates"),
        "{}",
        m2.spec.created_by
    );
    // a corrupt learner state is ignored (critics restart), not fatal
    std::fs::write(CheckpointDir::new(&o.out).learner_state_path(), b"garbage").unwrap();
    assert_eq!(learner::run(&o, &stop).unwrap(), 50);
    // a dataset without rewards is refused with a clear error
    let mut d = reach::generate_demos(5, 2);
    d.reward = None;
    d.save(&demos_path).unwrap();
    let e = learner::run(&o, &stop).unwrap_err();
    assert!(format!("{e:#}").contains("'reward'"), "{e:#}");
}

#[test]
fn bc_on_the_demonstrations_only_is_refused_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut o, _) = offline_setup(dir.path(), 1, 5);
    o.sac.bc_demos_only = true;
    let e = learner::run(&o, &AtomicBool::new(false)).unwrap_err();
    assert!(format!("{e:#}").contains("--bc-demos-only"), "{e:#}");
    assert!(
        CheckpointDir::new(&o.out).latest().is_none(),
        "no version written"
    );
}

#[test]
fn a_stop_request_ends_the_session_with_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (mut o, _) = offline_setup(dir.path(), 2, 0);
    let stop = AtomicBool::new(false);
    o.checkpoint_every = 1_000_000;
    let n = std::thread::scope(|s| {
        let h = s.spawn(|| learner::run(&o, &stop).unwrap());
        std::thread::sleep(std::time::Duration::from_millis(1500));
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        h.join().unwrap()
    });
    assert!(n > 10, "{n} updates in 1.5 s");
    let (_, m) = CheckpointDir::new(&o.out).latest().unwrap();
    assert_eq!(m.spec.version, 2, "one checkpoint, written at the stop");
}

/// The node rolled back the version the learner trains on: the learner
/// restarts its actor from the accepted version, mid-run and on a restart,
/// and numbers new versions above the abandoned ones.
#[test]
fn a_rolled_back_line_is_abandoned_for_the_accepted_version() {
    let dir = tempfile::tempdir().unwrap();
    let (mut o, _) = offline_setup(dir.path(), 1, 20);
    let stop = AtomicBool::new(false);
    let store = CheckpointDir::new(&o.out);
    let init = ModelFile::load(&o.init).unwrap();
    // A first run writes version 2 at 20 updates; the run is reproducible,
    // so the next one from scratch writes the same version 2.
    assert_eq!(learner::run(&o, &stop).unwrap(), 20);
    let v2 = ModelFile::load(store.policy_path(2)).unwrap();
    std::fs::remove_dir_all(&o.out).unwrap();
    std::fs::create_dir_all(&o.out).unwrap();
    // The node accepted version 2 and rolled it back to `init`.
    store
        .record_accepted(&AcceptedRecord {
            accepted: vec![o.init.clone()],
            revoked: [v2.spec.digest.clone()].into(),
        })
        .unwrap();
    // Mid-run: version 2 again at 20 updates, the rollback noticed at the
    // checkpoint due at 40 (skipped: the actor restarts from `init`), the
    // next version at 60 has `init` as its parent.
    o.max_updates = 60;
    assert_eq!(learner::run(&o, &stop).unwrap(), 60);
    let again = ModelFile::load(store.policy_path(2)).unwrap();
    assert_eq!(again.spec.digest, v2.spec.digest, "the run is reproducible");
    let v3 = ModelFile::load(store.policy_path(3)).unwrap();
    assert_eq!(
        v3.spec.parent_digest.as_deref(),
        Some(init.spec.digest.as_str())
    );
    assert_eq!(v3.spec.parent_version, Some(1));
    assert!(
        v3.spec.created_by.contains("60 updates"),
        "{}",
        v3.spec.created_by
    );
    assert!(!store.policy_path(4).exists());
    // On a restart: versions 2 and 3 both rolled back, the learner resumes
    // from `init` (critics and update count kept) and numbers the new
    // version above them.
    store
        .record_accepted(&AcceptedRecord {
            accepted: vec![o.init.clone()],
            revoked: [v2.spec.digest.clone(), v3.spec.digest.clone()].into(),
        })
        .unwrap();
    o.max_updates = 20;
    assert_eq!(learner::run(&o, &stop).unwrap(), 20);
    let v4 = ModelFile::load(store.policy_path(4)).unwrap();
    assert_eq!(
        v4.spec.parent_digest.as_deref(),
        Some(init.spec.digest.as_str())
    );
    assert!(
        v4.spec.created_by.contains("80 updates"),
        "{}",
        v4.spec.created_by
    );
    assert_eq!(
        ModelFile::load(store.policy_path(3)).unwrap().spec.digest,
        v3.spec.digest
    );
}

/// A real tmpfs mounted for one test (needs root, as the node's ENOSPC
/// tests in tests/ros/test_faults.py do); unmounted on drop.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &std::path::Path, size: &str) -> Option<Self> {
        std::fs::create_dir_all(at).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .is_ok_and(|o| o.status.success());
        ok.then(|| Self(at.to_path_buf()))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// Every file under `dir`, recursively.
fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(files_under(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// ENOSPC on a real tmpfs: failed checkpoints cost themselves, not the
/// session (it trains to the end, and only the final checkpoint's failure
/// is its error); no partial file holds the space; once there is space
/// again, checkpoints are written.
#[test]
fn a_full_disk_costs_checkpoints_not_the_session_and_leaves_no_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let (mut o, _) = offline_setup(dir.path(), 1, 60);
    let Some(fs) = Tmpfs::mount(&dir.path().join("small"), "4m") else {
        eprintln!("SKIPPED: cannot mount a tmpfs here (not root?)");
        return;
    };
    o.out = fs.0.join("ckpt");
    std::fs::create_dir_all(&o.out).unwrap();
    // Fill the disk to the last block.
    let filler = fs.0.join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 4096];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
    }
    let stop = AtomicBool::new(false);
    let e = learner::run(&o, &stop).unwrap_err();
    let msg = format!("{:#}", anyhow::Error::from(e));
    // checkpoints at 20 and 40 failed too, and training went on to 60
    assert!(
        msg.contains("final checkpoint, after 60 updates") && msg.contains("No space left"),
        "{msg}"
    );
    assert_eq!(files_under(&o.out), Vec::<std::path::PathBuf>::new());
    std::fs::remove_file(&filler).unwrap();
    assert_eq!(learner::run(&o, &stop).unwrap(), 60);
    let (_, m) = CheckpointDir::new(&o.out).latest().unwrap();
    assert_eq!(m.spec.version, 4, "checkpoints at 20, 40 and 60 updates");
    assert!(CheckpointDir::new(&o.out).learner_state_path().exists());
}

/// With a signing key the learner signs every version it writes, continues
/// only from versions it signed (or its init), and never numbers a version
/// past u64::MAX (docs/security.md, "Signed policies and keys").
#[test]
fn a_signing_learner_signs_every_version_and_numbers_without_wrapping() {
    use flowpilot_core::signing::{signed_by, PolicySigner};
    let dir = tempfile::tempdir().unwrap();
    let (mut o, _) = offline_setup(dir.path(), 1, 40);
    let signer = std::sync::Arc::new(PolicySigner::generate().unwrap());
    let key = signer.public_key();
    o.signer = Some(signer);
    let stop = AtomicBool::new(false);
    assert_eq!(learner::run(&o, &stop).unwrap(), 40);
    let store = CheckpointDir::new(&o.out);
    let load = |v: u64| ModelFile::load(store.policy_path(v)).unwrap();
    for v in [2, 3] {
        assert!(signed_by(&load(v), &key), "version {v} signed");
    }
    // a foreign, unsigned version numbered above them: not continued from
    // (the learner resumes from its own version 3), but numbered above
    let v3 = load(3);
    let mut spec = v3.spec.clone();
    spec.version = 10;
    spec.parent_digest = Some(v3.spec.digest.clone());
    spec.parent_version = Some(3);
    ModelFile::new(spec, v3.tensors().clone())
        .unwrap()
        .save(store.policy_path(10))
        .unwrap();
    o.max_updates = 20;
    assert_eq!(learner::run(&o, &stop).unwrap(), 20);
    let v11 = load(11);
    assert!(signed_by(&v11, &key));
    assert_eq!(
        v11.spec.parent_digest.as_deref(),
        Some(v3.spec.digest.as_str())
    );
    // a file claiming the last number: an error naming it, no wrap to 0
    let mut spec = v3.spec.clone();
    spec.version = u64::MAX;
    ModelFile::new(spec, v3.tensors().clone())
        .unwrap()
        .save(dir.path().join("ckpt").join("policy_vmax.safetensors"))
        .unwrap();
    let e = learner::run(&o, &stop).unwrap_err();
    assert!(
        format!("{e:#}").contains("no version number is left above 18446744073709551615"),
        "{e:#}"
    );
    assert!(!store.policy_path(0).exists() && !store.policy_path(12).exists());
}

/// The learner's transitions for a chunked, history-conditioned policy,
/// from a real log file of step-logged records (one robot step each, as
/// the node writes them): one window per step, each holding the next H
/// executed steps, their discounted rewards and the bootstrap weight γ^H
/// (0 when a terminal step falls inside); a gap or a truncated end drops
/// the windows it left open.
#[test]
fn a_chunked_policys_log_becomes_chunk_windows() {
    use flowpilot_core::log::writer::{LogConfig, LogHandle};
    use flowpilot_core::log::Transition;
    use flowpilot_core::policy::model::{Direction, PolicyKind};
    use flowpilot_learn::learner::{LogFollower, ReplayBuffer};
    use rand::SeedableRng;
    let (h, n, gamma) = (4usize, 2usize, 0.9f64);
    let mut spec =
        flowpilot_core::testkit::random_model(1, 0, false, Direction::Inverse, PolicyKind::Flow, 1)
            .spec;
    (spec.obs_dim, spec.goal_dim, spec.act_dim) = (3 * n, 0, 2 * h);
    (spec.chunk_len, spec.obs_horizon) = (h, n);
    (spec.action_low, spec.action_high) = (vec![-1.0; 2 * h], vec![1.0; 2 * h]);
    let dir = tempfile::tempdir().unwrap();
    let log = LogHandle::start_at(
        &dir.path().join("run.mcap"),
        LogConfig {
            dir: dir.path().into(),
            flush_period: std::time::Duration::from_millis(20),
            queue_capacity: 1000,
            reward: None,
            metadata: Default::default(),
        },
    )
    .unwrap();
    // Episode 0: 13 records (12 steps), terminal on the last. Episode 1:
    // robot steps 1..=6 and 8..=15 (step 7's record lost), truncated.
    // Each step's reward is its executed action's first value.
    let mut tick = 0;
    let mut write = |episode: u64, robot_step: u64, last: bool, terminal: bool| {
        tick += 1;
        let a = (robot_step as f64 * 0.37 + episode as f64).sin() * 0.9;
        let mut t = Transition {
            tick,
            episode,
            robot_step,
            n_obs: 3,
            n_act: 2,
            reward: a,
            // As the control thread writes it: the boundary's kind on the
            // next episode's first record (the writer moves it back).
            began_after_terminal: robot_step == 101,
            truncated: last && !terminal,
            executed_valid: true,
            applied_valid: true,
            ..Default::default()
        };
        t.inputs[..3].copy_from_slice(&[robot_step as f32, episode as f32, 1.0]);
        t.executed[..2].copy_from_slice(&[a, -a]);
        log.push(&t);
    };
    for s in 1..=13 {
        write(0, s, s == 13, true);
    }
    for s in (1..=6).chain(8..=15) {
        write(1, 100 + s, s == 15, false);
    }
    log.close();
    let mut rb = ReplayBuffer::new(spec.obs_dim, spec.act_dim, 100);
    let added = LogFollower::new(dir.path(), gamma)
        .poll(&mut rb, &spec)
        .unwrap();
    // 12 windows (a terminal run closes all), then runs of 5 and 7 steps
    // (records 1..=6 and 8..=15): 5 − H + 1 = 2 and 7 − H + 1 = 4.
    assert_eq!(added, 12 + 2 + 4);
    // Every row, drawn many times: R is the discounted sum of the chunk's
    // own executed first values (the reward each step earned), and the
    // bootstrap weight is γ^H, or 0 for rows that reach the terminal.
    let batch = rb
        .sample(
            2000,
            &mut rand_chacha::ChaCha8Rng::seed_from_u64(1),
            &candle_core::Device::Cpu,
        )
        .unwrap();
    let a = batch.a.to_vec2::<f32>().unwrap();
    let r = batch.r.to_vec1::<f32>().unwrap();
    let d = batch.discount.to_vec1::<f32>().unwrap();
    let s = batch.s.to_vec2::<f32>().unwrap();
    let s2 = batch.s2.to_vec2::<f32>().unwrap();
    let (mut full, mut cut) = (0, 0);
    for i in 0..r.len() {
        let steps = (s2[i][3] - s[i][3]) as usize; // robot steps spanned
        let want: f64 = (0..steps)
            .map(|k| gamma.powi(k as i32) * a[i][2 * k] as f64)
            .sum();
        assert!(
            (r[i] as f64 - want).abs() < 1e-5,
            "row {i}: R {} vs {want}",
            r[i]
        );
        assert_eq!(a[i][1], -a[i][0], "the executed step, both values");
        if steps == h {
            assert!((d[i] as f64 - gamma.powi(h as i32)).abs() < 1e-6 || d[i] == 0.0);
            full += 1;
        } else {
            assert_eq!(d[i], 0.0, "a window cut short ends terminally");
            assert_eq!(
                a[i][2 * h - 2],
                a[i][2 * (steps - 1)],
                "padded with the last step"
            );
            cut += 1;
        }
        // The history: the previous observation step, or the run's first
        // (robot steps 1, 101 and 108 start the three runs).
        let first = match s[i][3] {
            t if t < 100.0 => 1.0,
            t if t < 108.0 => 101.0,
            _ => 108.0,
        };
        assert_eq!(s[i][0], (s[i][3] - 1.0).max(first), "row {i}: {:?}", s[i]);
    }
    assert!(full > 0 && cut > 0, "{full} full, {cut} cut");
}

/// A chunked, history-conditioned flow fine-tunes (offline here): the
/// versions it writes keep the chunk and the history, and a node running
/// the starting policy would take them (the hot swap's compatibility).
#[test]
fn a_chunked_history_policy_finetunes_into_versions_the_node_takes() {
    flowpilot_learn::pin_threads(1);
    let dir = tempfile::tempdir().unwrap();
    let demos_path = dir.path().join("demos.npz");
    let demos = reach::generate_demos(20, 1);
    demos.save(&demos_path).unwrap();
    let cfg = flowpilot_learn::train::BcConfig {
        blocks: 2,
        hidden: 32,
        steps: 100,
        warmup: 10,
        eval_every: 100,
        chunk_len: 3,
        obs_horizon: 2,
        ..Default::default()
    };
    let init = flowpilot_learn::train::train_bc(&demos, &cfg, false)
        .unwrap()
        .0;
    let init_path = dir.path().join("init.safetensors");
    init.save(&init_path).unwrap();
    let o = opts(dir.path(), DataSource::Offline(demos_path), init_path, 30);
    let stop = AtomicBool::new(false);
    assert_eq!(learner::run(&o, &stop).unwrap(), 30);
    let (_, m) = CheckpointDir::new(&o.out).latest().unwrap();
    assert!(m.spec.version > 1);
    assert_eq!((m.spec.chunk_len, m.spec.obs_horizon), (3, 2));
    assert_eq!(
        (m.spec.act_dim, m.spec.obs_dim),
        (3 * demos.act_dim, 2 * demos.obs_dim)
    );
    init.spec.check_compatible(&m.spec).unwrap();
}
