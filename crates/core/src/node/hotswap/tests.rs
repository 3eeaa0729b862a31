//! Unit tests of `hotswap` (`super` is the module under test).

use super::*;
use crate::policy::model::{Direction, ModelSpec, PolicyKind};
use crate::testkit::random_model;

/// A policy version with its own weights (so its own digest).
fn version(v: u64, act: usize, seed: u64) -> ModelFile {
    let m = random_model(act, 0, false, Direction::Inverse, PolicyKind::Flow, seed);
    let mut spec = m.spec.clone();
    spec.version = v;
    ModelFile::new(spec, m.tensors().clone()).unwrap()
}

/// A version of `parent`'s line, as a learner writes it.
fn child(parent: &ModelFile, v: u64, seed: u64) -> ModelFile {
    with_spec(v, seed, |spec| {
        spec.parent_digest = Some(parent.spec.digest.clone());
        spec.parent_version = Some(parent.spec.version);
    })
}

/// A version with its spec edited.
fn with_spec(v: u64, seed: u64, edit: impl FnOnce(&mut ModelSpec)) -> ModelFile {
    let m = version(v, 2, seed);
    let mut spec = m.spec.clone();
    edit(&mut spec);
    ModelFile::new(spec, m.tensors().clone()).unwrap()
}

struct Setup {
    _tmp: tempfile::TempDir,
    dir: CheckpointDir,
    chan: Arc<SwapChannel>,
    hot: HotSwap,
}

fn setup(max_divergence: f64) -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CheckpointDir::new(tmp.path());
    let v1 = version(1, 2, 1);
    let p1 = dir.policy_path(1);
    v1.save(&p1).unwrap();
    let hot = HotSwap::new(tmp.path().into(), max_divergence, p1, v1);
    Setup {
        _tmp: tmp,
        dir,
        chan: SwapChannel::new(),
        hot,
    }
}

#[test]
fn accepts_a_newer_compatible_version_and_records_it() {
    let mut s = setup(0.0);
    let v2 = version(2, 2, 2);
    v2.save(s.dir.policy_path(2)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!(s.hot.swaps(), 1);
    assert_eq!(s.hot.current().spec.digest, v2.spec.digest);
    let offered = s.chan.take().expect("a sampler is offered");
    assert_eq!(offered.spec().digest, v2.spec.digest);
    // polled again, nothing new
    s.hot.poll(&s.chan, &[]);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 0));
    // resume after a restart picks the last accepted version
    let (p, m) = restarted(&s).resume().unwrap();
    assert_eq!((p, m.spec.digest), (s.dir.policy_path(2), v2.spec.digest));
}

#[test]
fn rejects_bad_files_other_dims_and_divergent_versions() {
    let mut s = setup(1e-6);
    std::fs::write(s.dir.policy_path(5), b"not a model").unwrap();
    version(6, 3, 3).save(s.dir.policy_path(6)).unwrap(); // act 3, running act 2
    s.hot.poll(&s.chan, &[]);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 2));
    assert!(
        s.hot.last_rejection().contains("dims/kind differ"),
        "{}",
        s.hot.last_rejection()
    );
    // different weights act differently: over the divergence cap
    version(7, 2, 4).save(s.dir.policy_path(7)).unwrap();
    let recent = vec![(vec![0.1; 5], vec![]), (vec![-0.3; 5], vec![])];
    s.hot.poll(&s.chan, &recent);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 3));
    assert!(
        s.hot.last_rejection().contains("divergence"),
        "{}",
        s.hot.last_rejection()
    );
    assert!(s.chan.take().is_none(), "nothing offered");
    assert_eq!(s.hot.current().spec.version, 1);
    // an older version appearing while the node runs is refused (a
    // replay, or out of order)
    version(0, 2, 5)
        .save(s.dir.path().join("old.safetensors"))
        .unwrap();
    s.hot.poll(&s.chan, &recent);
    assert_eq!(s.hot.rejected(), 4);
    assert!(
            s.hot
                .last_rejection()
                .ends_with("version 0 is not newer than the running version 1 (an old version replayed, or out of order)"),
            "{}",
            s.hot.last_rejection()
        );
}

#[test]
fn older_files_found_at_the_first_scan_are_history_not_rejections() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = CheckpointDir::new(tmp.path());
    for v in 1..=3 {
        version(v, 2, v).save(dir.policy_path(v)).unwrap();
    }
    let v3 = ModelFile::load(dir.policy_path(3)).unwrap();
    let mut hot = HotSwap::new(tmp.path().into(), 0.0, dir.policy_path(3), v3);
    let chan = SwapChannel::new();
    hot.poll(&chan, &[]);
    assert_eq!((hot.swaps(), hot.rejected()), (0, 0));
    // two new versions in one scan, the newer one first by name: the
    // older is superseded within the scan, not refused
    version(5, 2, 5)
        .save(tmp.path().join("a_v5.safetensors"))
        .unwrap();
    version(4, 2, 4)
        .save(tmp.path().join("b_v4.safetensors"))
        .unwrap();
    hot.poll(&chan, &[]);
    assert_eq!(
        (hot.swaps(), hot.rejected()),
        (1, 0),
        "{}",
        hot.last_rejection()
    );
    assert_eq!(hot.current().spec.version, 5);
}

#[test]
fn an_implausible_version_number_is_refused_and_later_versions_still_run() {
    use crate::versions::MAX_VERSION_JUMP;
    let mut s = setup(0.0);
    version(u64::MAX, 2, 2)
        .save(s.dir.policy_path(u64::MAX))
        .unwrap();
    assert_only_rejection(
        &mut s,
        "version 18446744073709551615 is implausible after the running version 1: more than \
             1000000 above it, or the largest number (no version could follow it)",
    );
    let far = 2 + MAX_VERSION_JUMP;
    version(far, 2, 3).save(s.dir.policy_path(far)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 2));
    assert!(
        s.hot.last_rejection().contains("is implausible"),
        "{}",
        s.hot.last_rejection()
    );
    // nothing is stuck: the next genuine version runs
    version(2, 2, 4).save(s.dir.policy_path(2)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 2));
    assert_eq!(s.chan.take().unwrap().spec().version, 2);
}

/// `s` restarted trusting `keys`.
fn keyed(s: &mut Setup, keys: &[&crate::signing::PolicySigner]) {
    let (p1, m1) = (s.dir.policy_path(1), s.hot.current().clone());
    let keys = TrustedKeys::new(keys.iter().map(|k| k.public_key()).collect());
    s.hot = HotSwap::new(s.dir.path().into(), 0.0, p1, m1).with_trusted_keys(keys);
}

#[test]
fn with_trusted_keys_only_versions_signed_by_one_of_them_run() {
    use crate::signing::PolicySigner;
    let (ours, theirs) = (
        PolicySigner::generate().unwrap(),
        PolicySigner::generate().unwrap(),
    );
    let mut s = setup(0.0);
    keyed(&mut s, &[&ours]);
    let v1 = s.hot.current().clone();
    // unsigned
    child(&v1, 2, 2).save(s.dir.policy_path(2)).unwrap();
    assert_only_rejection(
            &mut s,
            "not authenticated: unsigned: this node accepts only versions signed by a key in hot_swap.trusted_keys",
        );
    // signed by a key the node does not trust
    theirs
        .sign(child(&v1, 3, 3))
        .save(s.dir.policy_path(3))
        .unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 2));
    let why = s.hot.last_rejection();
    assert!(
        why.ends_with(&format!(
            "not authenticated: signed by {}, which is not in hot_swap.trusted_keys",
            theirs.public_key()
        )),
        "{why}"
    );
    // a genuine version
    let v4 = ours.sign(child(&v1, 4, 4));
    v4.save(s.dir.policy_path(4)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!(
        (s.hot.swaps(), s.hot.rejected()),
        (1, 2),
        "{}",
        s.hot.last_rejection()
    );
    assert_eq!(s.chan.take().unwrap().spec().digest, v4.spec.digest);
    // the genuine version replayed as a newer one: renumbered, its
    // digest restamped, the signature kept
    let mut spec = v4.spec.clone();
    spec.version = 9;
    let replay = ModelFile::new(spec, v4.tensors().clone())
        .unwrap()
        .with_signature(v4.signature().unwrap().to_string());
    replay.save(s.dir.policy_path(9)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 3));
    let why = s.hot.last_rejection();
    assert!(
        why.contains("not authenticated: the signature by")
            && why.contains("renumbered or altered after it was signed"),
        "{why}"
    );
    // an old genuine version offered again (same number): not newer
    let old = ours.sign(child(&v1, 3, 30));
    old.save(s.dir.path().join("again.safetensors")).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 4));
    assert!(
        s.hot
            .last_rejection()
            .contains("is not newer than the running version 4"),
        "{}",
        s.hot.last_rejection()
    );
    assert_eq!(s.hot.current().spec.digest, v4.spec.digest);
    assert!(s.chan.take().is_none());
    // refused versions are not revoked (nothing recorded for them)
    assert!(s.dir.accepted().revoked.is_empty());
}

#[test]
fn two_trusted_keys_during_a_change_over() {
    use crate::signing::PolicySigner;
    let (old, new) = (
        PolicySigner::generate().unwrap(),
        PolicySigner::generate().unwrap(),
    );
    let mut s = setup(0.0);
    keyed(&mut s, &[&old, &new]);
    let v1 = s.hot.current().clone();
    let v2 = old.sign(child(&v1, 2, 2));
    v2.save(s.dir.policy_path(2)).unwrap();
    s.hot.poll(&s.chan, &[]);
    let v3 = new.sign(child(&v2, 3, 3));
    v3.save(s.dir.policy_path(3)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!(
        (s.hot.swaps(), s.hot.rejected()),
        (2, 0),
        "{}",
        s.hot.last_rejection()
    );
    assert_eq!(s.hot.current().spec.digest, v3.spec.digest);
}

#[test]
fn rollback_offers_the_previous_version_and_revokes_the_undone_one() {
    let mut s = setup(0.0);
    assert!(matches!(
        s.hot.rollback(&s.chan),
        Err(SwapError::NoPrevious)
    ));
    let v1 = s.hot.current().spec.digest.clone();
    let v2 = version(2, 2, 2);
    v2.save(s.dir.policy_path(2)).unwrap();
    s.hot.poll(&s.chan, &[]);
    s.chan.take().unwrap();
    let msg = s.hot.rollback(&s.chan).unwrap();
    assert!(msg.contains("rolled back"), "{msg}");
    assert_eq!(s.chan.take().unwrap().spec().digest, v1);
    assert_eq!(s.hot.current().spec.digest, v1);
    // the revoked version is remembered across a restart and refused
    let rec = s.dir.accepted();
    assert!(rec.revoked.contains(&v2.spec.digest));
    assert_eq!(rec.accepted, vec![s.dir.policy_path(1)]);
    let m1 = ModelFile::load(s.dir.policy_path(1)).unwrap();
    let mut again = HotSwap::new(s.dir.path().into(), 0.0, s.dir.policy_path(1), m1);
    std::fs::remove_file(s.dir.policy_path(2)).unwrap();
    v2.save(s.dir.policy_path(2)).unwrap();
    again.poll(&s.chan, &[]);
    assert_eq!((again.swaps(), again.rejected()), (0, 1));
    assert!(
        again.last_rejection().contains("rolled back"),
        "{}",
        again.last_rejection()
    );
}

/// A node restarted on `s`'s directory with `model` = version 1.
fn restarted(s: &Setup) -> HotSwap {
    let m1 = ModelFile::load(s.dir.policy_path(1)).unwrap();
    HotSwap::new(s.dir.path().into(), 0.0, s.dir.policy_path(1), m1)
}

/// `s` with version 2 accepted and then rolled back.
fn rolled_back_v2(s: &mut Setup) -> ModelFile {
    let v2 = child(s.hot.current(), 2, 2);
    v2.save(s.dir.policy_path(2)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!(s.hot.swaps(), 1);
    s.chan.take().unwrap();
    v2
}

#[test]
fn a_revocation_outlives_a_lost_accepted_record() {
    let mut s = setup(0.0);
    let v2 = rolled_back_v2(&mut s);
    s.hot.rollback(&s.chan).unwrap();
    s.chan.take().unwrap();
    let log = std::fs::read_to_string(s.dir.revocation_log_path()).unwrap();
    assert!(
        log.starts_with(&format!("revoked {} version=2 ", v2.spec.digest)),
        "{log}"
    );
    // what the old warning advised: delete the record
    std::fs::remove_file(s.dir.path().join(".flowpilot_accepted")).unwrap();
    let mut again = restarted(&s);
    assert!(again.resume().is_none());
    again.poll(&s.chan, &[]);
    assert_eq!((again.swaps(), again.rejected()), (0, 1));
    assert!(
        again.last_rejection().contains("was rolled back"),
        "{}",
        again.last_rejection()
    );
    // and its descendants, written after the rollback
    child(&v2, 3, 3).save(s.dir.policy_path(3)).unwrap();
    again.poll(&s.chan, &[]);
    assert_eq!((again.swaps(), again.rejected()), (0, 2));
    assert!(
        again.last_rejection().contains("descends from"),
        "{}",
        again.last_rejection()
    );
    assert!(s.chan.take().is_none());
}

#[test]
fn a_rollback_whose_revocation_cannot_be_written_is_not_acknowledged_and_fails_closed() {
    let mut s = setup(0.0);
    let v2 = rolled_back_v2(&mut s);
    // every write to the revocation log fails with ENOSPC
    std::os::unix::fs::symlink("/dev/full", s.dir.revocation_log_path()).unwrap();
    let e = s.hot.rollback(&s.chan).unwrap_err();
    assert!(matches!(e, SwapError::Unrecorded { .. }), "{e}");
    let why = e.to_string();
    assert!(
        why.contains("in memory only") && why.contains("No space left"),
        "{why}"
    );
    // the robot runs version 1 anyway
    assert_eq!(
        s.chan.take().unwrap().spec().digest,
        s.hot.current().spec.digest
    );
    assert_eq!(s.hot.current().spec.version, 1);
    assert!(!s.hot.record_error().is_empty());
    // the undone file is out of every scan, and a stale record that
    // still names it (its write failed too) resumes nothing
    assert!(!s.dir.policy_path(2).exists());
    assert!(crate::checkpoint::set_aside_path(&s.dir.policy_path(2)).exists());
    std::fs::remove_file(s.dir.revocation_log_path()).unwrap();
    s.dir
        .record_accepted(&AcceptedRecord {
            accepted: vec![s.dir.policy_path(1), s.dir.policy_path(2)],
            revoked: Default::default(),
        })
        .unwrap();
    let mut again = restarted(&s);
    assert!(again.resume().is_none());
    again.poll(&s.chan, &[]);
    assert_eq!(again.swaps(), 0);
    let _ = v2;
}

#[test]
fn an_unreadable_revocation_list_admits_nothing() {
    let mut s = setup(0.0);
    let v2 = rolled_back_v2(&mut s);
    s.dir
        .record_accepted(&AcceptedRecord {
            accepted: vec![s.dir.policy_path(1), s.dir.policy_path(2)],
            revoked: Default::default(),
        })
        .unwrap();
    std::fs::write(
        s.dir.revocation_log_path(),
        "revoked sha256:00 version=2
garbage
",
    )
    .unwrap();
    let mut again = restarted(&s);
    assert!(
        again.resume().is_none(),
        "not resumed while the list is unreadable"
    );
    child(&v2, 3, 3).save(s.dir.policy_path(3)).unwrap();
    again.poll(&s.chan, &[]);
    assert_eq!(again.swaps(), 0);
    assert!(
        again.last_rejection().contains("malformed at line 2"),
        "{}",
        again.last_rejection()
    );
    // a torn last line (a crash mid-append) is not malformed
    std::fs::write(
        s.dir.revocation_log_path(),
        "revoked sha256:00 version=2
revoked sha2",
    )
    .unwrap();
    assert!(restarted(&s).resume().is_some());
}

#[test]
fn resume_applies_every_check_a_hot_swap_applies() {
    let mut s = setup(0.0);
    let v1 = s.hot.current().clone();
    // a changed action bound, an unsigned version, then a good one
    let bounds = with_spec(2, 2, |spec| spec.action_high[1] = 4.0);
    bounds.save(s.dir.policy_path(2)).unwrap();
    let good = child(&v1, 3, 3);
    good.save(s.dir.policy_path(3)).unwrap();
    let record = |paths: &[u64]| AcceptedRecord {
        accepted: paths.iter().map(|v| s.dir.policy_path(*v)).collect(),
        revoked: Default::default(),
    };
    // a record naming the changed-bounds version last: refused, the
    // one before it (3) runs
    s.dir.record_accepted(&record(&[1, 3, 2])).unwrap();
    let (p, _) = restarted(&s).resume().expect("falls back to version 3");
    assert_eq!(p, s.dir.policy_path(3));
    // a revoked version named last (its record write lost)
    s.hot
        .revoked
        .revoke(&s.dir, &[(good.spec.digest.as_str(), 3)], "test")
        .unwrap();
    s.dir.record_accepted(&record(&[1, 3])).unwrap();
    assert!(restarted(&s).resume().is_none());
    // with trusted keys, an unsigned version is not resumed
    let key = crate::signing::PolicySigner::generate().unwrap();
    let signed = key.sign(child(&v1, 4, 4));
    signed.save(s.dir.policy_path(4)).unwrap();
    child(&v1, 5, 5).save(s.dir.policy_path(5)).unwrap();
    s.dir.record_accepted(&record(&[1, 4, 5])).unwrap();
    let mut keyed =
        restarted(&s).with_trusted_keys(crate::signing::TrustedKeys::new(vec![key.public_key()]));
    let (p, _) = keyed.resume().expect("the signed one");
    assert_eq!(p, s.dir.policy_path(4));
    // a version numbered u64::MAX is not resumed
    with_spec(u64::MAX, 6, |_| {})
        .save(s.dir.policy_path(6))
        .unwrap();
    s.dir.record_accepted(&record(&[1, 6])).unwrap();
    assert!(restarted(&s).resume().is_none());
}

/// `s` restarted with a return guard judging on 3 episodes.
fn guarded(s: &mut Setup, margin: f64) {
    guarded_holding(s, margin, false)
}

fn guarded_holding(s: &mut Setup, margin: f64, hold: bool) {
    s.hot = HotSwap::new(
        s.dir.path().into(),
        0.0,
        s.dir.policy_path(1),
        version(1, 2, 1),
    )
    .with_guard(crate::node::guard::GuardConfig {
        episodes: 3,
        margin,
        z: 2.0,
        hold,
    });
}

#[test]
fn the_guard_rolls_a_slow_slide_back_to_the_best_version() {
    let mut s = setup(0.0);
    guarded(&mut s, 0.5);
    // each version runs one swap episode (booked to nobody), then 3
    let run = |s: &mut Setup, ret: f64| {
        for _ in 0..4 {
            s.hot.episode_ended(ret, &s.chan);
        }
    };
    run(&mut s, -5.0);
    let mut parent = s.hot.current().clone();
    for (v, ret) in [(2, -4.0), (3, -4.4), (4, -4.8)] {
        let m = child(&parent, v, v);
        m.save(s.dir.policy_path(v)).unwrap();
        s.hot.poll(&s.chan, &[]);
        s.chan.take().unwrap();
        run(&mut s, ret);
        parent = m;
    }
    // v4 is 0.4 below its parent, 0.8 below the best (v2): undone, and
    // v3 with it
    assert_eq!(s.hot.auto_rollbacks(), 1, "{}", s.hot.last_verdict());
    assert!(
        s.hot.last_verdict().contains("rolled back to version 2"),
        "{}",
        s.hot.last_verdict()
    );
    assert_eq!(s.hot.current().spec.version, 2);
    assert_eq!(s.chan.take().unwrap().spec().version, 2);
    let revoked = s.dir.accepted().revoked;
    for v in [3, 4] {
        let d = ModelFile::load(s.dir.policy_path(v)).unwrap().spec.digest;
        assert!(revoked.contains(&d), "version {v} revoked");
    }
    // v2 is the best so far: keeping the best changes nothing
    let msg = s.hot.keep_best(&s.chan).unwrap();
    assert!(msg.contains("version 2 is already the best"), "{msg}");
    // and the learner's next version on v4's line is refused
    child(&parent, 5, 5).save(s.dir.policy_path(5)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!(s.hot.current().spec.version, 2);
    assert!(
        s.hot.last_rejection().contains("rolled back"),
        "{}",
        s.hot.last_rejection()
    );
}

#[test]
fn with_hold_a_new_version_waits_until_the_live_one_ran_its_episodes() {
    let mut s = setup(0.0);
    guarded_holding(&mut s, 0.5, true);
    let v2 = child(s.hot.current(), 2, 2);
    v2.save(s.dir.policy_path(2)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert!(s.chan.take().is_none(), "the start has run no episode");
    for _ in 0..3 {
        s.hot.episode_ended(-5.0, &s.chan); // the first is booked to nobody
    }
    s.hot.poll(&s.chan, &[]);
    assert!(s.chan.take().is_none(), "2 of 3 episodes");
    s.hot.episode_ended(-5.0, &s.chan);
    // v3 and v4 arrived meanwhile: the newest is offered, once
    for v in [3, 4] {
        child(&v2, v, v).save(s.dir.policy_path(v)).unwrap();
    }
    s.hot.poll(&s.chan, &[]);
    assert_eq!(s.chan.take().unwrap().spec().version, 4);
    assert_eq!(s.hot.current().spec.version, 4);
    // v4 in turn runs its episodes, is judged (kept), and lets v5 in
    let v4 = s.hot.current().clone();
    child(&v4, 5, 5).save(s.dir.policy_path(5)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert!(s.chan.take().is_none());
    for _ in 0..4 {
        s.hot.episode_ended(-5.0, &s.chan);
    }
    assert!(
        s.hot.last_verdict().contains("version 4 kept"),
        "{}",
        s.hot.last_verdict()
    );
    s.hot.poll(&s.chan, &[]);
    assert_eq!(s.chan.take().unwrap().spec().version, 5);
}

#[test]
fn keep_best_swaps_in_the_best_judged_version() {
    let mut s = setup(0.0);
    assert!(matches!(s.hot.keep_best(&s.chan), Err(SwapError::NoJudged)));
    guarded(&mut s, 5.0); // wide: the guard itself never acts here
    let mut parent = s.hot.current().clone();
    for (v, ret) in [(1, -5.0), (2, -3.0), (3, -4.0), (4, -3.5)] {
        if v > 1 {
            let m = child(&parent, v, v);
            m.save(s.dir.policy_path(v)).unwrap();
            s.hot.poll(&s.chan, &[]);
            s.chan.take().unwrap();
            parent = m;
        }
        for _ in 0..4 {
            s.hot.episode_ended(ret, &s.chan);
        }
    }
    // a fifth, newest version that ran too few episodes to count
    child(&parent, 5, 5).save(s.dir.policy_path(5)).unwrap();
    s.hot.poll(&s.chan, &[]);
    s.chan.take().unwrap();
    s.hot.episode_ended(-1.0, &s.chan);
    s.hot.episode_ended(-1.0, &s.chan);
    assert_eq!(s.hot.auto_rollbacks(), 0);
    let msg = s.hot.keep_best(&s.chan).unwrap();
    assert!(msg.contains("-3.00 over 3 episodes"), "{msg}");
    assert_eq!(s.hot.current().spec.version, 2);
    assert_eq!(s.chan.take().unwrap().spec().version, 2);
    assert_eq!(s.dir.accepted().revoked.len(), 3, "versions 3, 4 and 5");
}

#[test]
fn rejects_changed_action_bounds() {
    let mut s = setup(0.0);
    with_spec(2, 2, |spec| spec.action_high[1] = 4.0)
        .save(s.dir.policy_path(2))
        .unwrap();
    assert_only_rejection(&mut s, "action bounds changed: action_high[1] 3.0 -> 4.0");
}

/// One poll: nothing swapped, one rejection ending with `why`.
fn assert_only_rejection(s: &mut Setup, why: &str) {
    s.hot.poll(&s.chan, &[]);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 1));
    assert!(
        s.hot.last_rejection().ends_with(why),
        "{}",
        s.hot.last_rejection()
    );
    assert!(s.chan.take().is_none());
}

#[test]
fn rejects_changed_normalisers() {
    let mut s = setup(0.0);
    with_spec(2, 2, |spec| {
        spec.obs_norm.mean[0] = 0.5;
        spec.obs_norm.std[4] = 9.0;
    })
    .save(s.dir.policy_path(2))
    .unwrap();
    assert_only_rejection(
        &mut s,
        "normaliser changed: obs_norm.mean[0] 0.0 -> 0.5, obs_norm.std[4] 1.5 -> 9.0",
    );
}

#[test]
fn accepts_changed_bounds_and_normalisers_when_allowed() {
    let mut s = setup(0.0);
    let (p1, m1) = (s.dir.policy_path(1), s.hot.current().clone());
    s.hot = HotSwap::new(s.dir.path().into(), 0.0, p1, m1).allow_spec_changes(true);
    let v2 = with_spec(2, 2, |spec| {
        spec.action_low[0] = -3.0;
        spec.obs_norm.mean[0] = 0.5;
    });
    v2.save(s.dir.policy_path(2)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!(
        (s.hot.swaps(), s.hot.rejected()),
        (1, 0),
        "{}",
        s.hot.last_rejection()
    );
    assert_eq!(s.chan.take().unwrap().spec().digest, v2.spec.digest);
}

#[test]
fn rejects_a_version_whose_smoke_sample_is_not_finite() {
    // Finite weights (so the file is valid) that overflow when sampled:
    // S ≈ 100 in a coupling layer, exp(S) = inf in f32.
    let m = version(2, 2, 2);
    let mut tensors = m.tensors().clone();
    let b = tensors.get_mut("blocks.0.s.l2.b").unwrap();
    b.data = crate::policy::model::TensorData::F32(vec![100.0; b.shape[0]]);
    let bad = ModelFile::new(m.spec.clone(), tensors).expect("finite weights are valid");
    for recent in [
        vec![],
        vec![(vec![0.1; 5], vec![]), (vec![-0.3; 5], vec![])],
    ] {
        let mut s = setup(0.0);
        bad.save(s.dir.policy_path(2)).unwrap();
        s.hot.poll(&s.chan, &recent);
        assert_eq!((s.hot.swaps(), s.hot.rejected()), (0, 1));
        let why = s.hot.last_rejection();
        let n = recent.len().max(1);
        assert!(
            why.contains(&format!("smoke sample failed on observation 0 of {n}"))
                && why.contains("non-finite"),
            "{why}"
        );
        assert!(s.chan.take().is_none());
        assert_eq!(s.hot.current().spec.version, 1);
    }
}

#[test]
fn a_descendant_of_a_rolled_back_version_is_rejected() {
    let mut s = setup(0.0);
    let v1 = s.hot.current().clone();
    let v2 = child(&v1, 2, 2);
    v2.save(s.dir.policy_path(2)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!(s.hot.swaps(), 1);
    s.hot.rollback(&s.chan).unwrap();
    // the learner kept training the rolled-back line
    let v3 = child(&v2, 3, 3);
    v3.save(s.dir.policy_path(3)).unwrap();
    s.hot.poll(&s.chan, &[]);
    assert_eq!((s.hot.swaps(), s.hot.rejected()), (1, 1));
    let why = s.hot.last_rejection().to_string();
    assert!(
        why.contains(&format!(
            "descends from {}, which was rolled back",
            v2.spec.digest
        )),
        "{why}"
    );
    // ... and its descendants, across a restart, even with the files
    // that link them to the rolled-back version gone
    let mut again = HotSwap::new(s.dir.path().into(), 0.0, s.dir.policy_path(1), v1.clone());
    std::fs::remove_file(s.dir.policy_path(2)).unwrap();
    std::fs::remove_file(s.dir.policy_path(3)).unwrap();
    child(&v3, 4, 4).save(s.dir.policy_path(4)).unwrap();
    again.poll(&s.chan, &[]);
    assert_eq!((again.swaps(), again.rejected()), (0, 1));
    assert!(
        again.last_rejection().contains("rolled back"),
        "{}",
        again.last_rejection()
    );
    // a new line from the restored version is accepted
    let v5 = child(&v1, 5, 5);
    v5.save(s.dir.policy_path(5)).unwrap();
    again.poll(&s.chan, &[]);
    assert_eq!(
        (again.swaps(), again.rejected()),
        (1, 1),
        "{}",
        again.last_rejection()
    );
    assert_eq!(again.current().spec.digest, v5.spec.digest);
}
