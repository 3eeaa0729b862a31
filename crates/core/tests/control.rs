//! The control tick without ROS: freshness, safe behaviours and recovery,
//! e-stop, the warm-up gate, rate limiting, equality with the offline
//! sampler, and zero allocation per tick.

use flowpilot_core::testkit as common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use flowpilot_core::alloc_count::{thread_allocations, CountingAlloc};
use flowpilot_core::policy::model::{Direction, PolicyKind};
use flowpilot_core::policy::sampler::Sampler;
use flowpilot_core::rt::board::Board;
use flowpilot_core::rt::clock::Periodic;
use flowpilot_core::rt::control::{ControlConfig, Controller, Decision, SafeBehaviour};
use flowpilot_core::rt::stop::{Interface, StateSource, StopKind, StopRule};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// obs 5 = source0 (3) + source1 (2); goal 2 = source2. The 3 action
/// values command velocities.
fn setup(
    safe: SafeBehaviour,
    warmup: u64,
    max_delta: Option<Vec<f64>>,
) -> (
    Controller,
    Arc<Board>,
    flowpilot_core::policy::model::ModelFile,
) {
    setup_with(
        safe,
        warmup,
        max_delta,
        StopRule::new(vec![Interface::Velocity; 3], None),
    )
}

/// Three position joints, measured as source 0's values 0, 1, 2.
fn arm() -> StopRule {
    StopRule::new(
        vec![Interface::Position; 3],
        Some(StateSource {
            source: 0,
            index: vec![Some(0), Some(1), Some(2)],
        }),
    )
}

fn setup_with(
    safe: SafeBehaviour,
    warmup: u64,
    max_delta: Option<Vec<f64>>,
    stop: StopRule,
) -> (
    Controller,
    Arc<Board>,
    flowpilot_core::policy::model::ModelFile,
) {
    let m = common::random_model(3, 2, false, Direction::Inverse, PolicyKind::Flow, 21);
    let board = Arc::new(Board::new(&[3, 2, 2]));
    let cfg = ControlConfig {
        rate_hz: 100.0,
        max_age_s: vec![0.05, 0.05, 10.0],
        max_future_stamp_s: 0.05,
        obs_sources: 2,
        safe,
        max_delta,
        warmup_ticks: warmup,
        startup_hold_ticks: 0,
        seed: 9,
        temperature: 1.0,
        chunk: Default::default(),
        stop,
    };
    let c = Controller::new(cfg, Sampler::new(&m).unwrap(), board.clone()).unwrap();
    (c, board, m)
}

fn feed(b: &Board) {
    b.write(0, &[0.1, 0.2, 0.3], None);
    b.write(1, &[-0.5, 0.5], None);
    b.write(2, &[1.0, -1.0], Some(flowpilot_core::rt::board::wall_ns()));
}

#[test]
fn fresh_inputs_give_the_offline_samplers_action() {
    let (mut c, b, m) = setup(SafeBehaviour::Zero, 0, None);
    feed(&b);
    let mut offline = Sampler::new(&m).unwrap();
    for _ in 0..5 {
        let out = c.tick();
        assert_eq!(out.decision, Decision::Policy);
        assert!(out.publish);
        let mut want = [0f32; 3];
        let lp = offline
            .sample_seeded(
                &[0.1, 0.2, 0.3, -0.5, 0.5],
                &[1.0, -1.0],
                9,
                out.tick,
                &mut want,
            )
            .unwrap();
        for j in 0..3 {
            assert_eq!(out.action[j], want[j] as f64);
        }
        assert_eq!(out.log_prob, lp);
        assert!(
            out.stamps[2] > 0 && out.stamps[0] == 0,
            "header stamps are carried for traceability"
        );
    }
}

#[test]
fn never_written_and_stale_sources_trigger_safe_behaviour_then_recover() {
    for safe in [
        SafeBehaviour::Hold,
        SafeBehaviour::Zero,
        SafeBehaviour::Stop,
    ] {
        let (mut c, b, _) = setup(safe, 0, None);
        let out = c.tick();
        assert_eq!(out.decision, Decision::Stale { source: 0 });
        // no last action yet: hold falls back to zero
        assert_eq!(out.publish, safe != SafeBehaviour::Stop);
        if out.publish {
            assert!(out.action.iter().all(|&a| a == 0.0));
        }
        feed(&b);
        let policy: Vec<f64> = c.tick().action.to_vec();
        assert!(policy.iter().any(|&a| a != 0.0));
        std::thread::sleep(std::time::Duration::from_millis(80)); // > 50 ms max age
        let out = c.tick();
        assert_eq!(out.decision, Decision::Stale { source: 0 });
        match safe {
            // On velocities, hold still is zero: never the last velocity.
            SafeBehaviour::Hold | SafeBehaviour::Zero => {
                assert!(out.publish && out.action.iter().all(|&a| a == 0.0));
                assert_eq!(out.stop, StopKind::Zero);
            }
            SafeBehaviour::Stop => assert!(!out.publish && out.stop == StopKind::Silent),
        }
        feed(&b);
        assert_eq!(
            c.tick().decision,
            Decision::Policy,
            "recovers when input returns"
        );
        assert_eq!(c.stats().stale_ticks.load(Ordering::Relaxed), 2);
    }
}

#[test]
fn header_stamp_age_is_used_when_present() {
    let (mut c, b, _) = setup(SafeBehaviour::Zero, 0, None);
    feed(&b);
    // goal source (max age 10 s) stamped 20 s in the past: stale even though just received
    b.write(
        2,
        &[1.0, -1.0],
        Some(flowpilot_core::rt::board::wall_ns() - 20_000_000_000),
    );
    assert_eq!(c.tick().decision, Decision::Stale { source: 2 });
}

#[test]
fn future_stamps_are_invalid_and_counted_apart() {
    let (mut c, b, _) = setup(SafeBehaviour::Zero, 0, None);
    feed(&b);
    assert_eq!(c.tick().decision, Decision::Policy);
    // Stamped 10 s ahead (a skewed clock, or a wall clock stepped back):
    // its age is negative, which must not read as fresh.
    let ahead = flowpilot_core::rt::board::wall_ns() + 10_000_000_000;
    b.write(2, &[1.0, -1.0], Some(ahead));
    let out = c.tick();
    assert_eq!(out.decision, Decision::Invalid);
    assert!(
        out.publish && out.action.iter().all(|&a| a == 0.0),
        "safe action"
    );
    assert_eq!(c.stats().future_stamp_ticks.load(Ordering::Relaxed), 1);
    assert_eq!(c.stats().invalid_ticks.load(Ordering::Relaxed), 1);
    // Within the tolerance (50 ms here) a stamp slightly ahead is accepted.
    let slightly = flowpilot_core::rt::board::wall_ns() + 20_000_000;
    b.write(2, &[1.0, -1.0], Some(slightly));
    assert_eq!(c.tick().decision, Decision::Policy);
    assert_eq!(c.stats().future_stamp_ticks.load(Ordering::Relaxed), 1);
}

#[test]
fn receive_time_bounds_the_age_of_stamped_data() {
    let (mut c, b, _) = setup(SafeBehaviour::Zero, 0, None);
    feed(&b);
    // Source 0 (max age 50 ms) stamped 40 ms ahead, then silent for 80 ms:
    // by its stamp it is 40 ms old, but it arrived 80 ms ago.
    b.write(
        0,
        &[0.1, 0.2, 0.3],
        Some(flowpilot_core::rt::board::wall_ns() + 40_000_000),
    );
    std::thread::sleep(std::time::Duration::from_millis(80));
    b.write(1, &[-0.5, 0.5], None);
    b.write(2, &[1.0, -1.0], Some(flowpilot_core::rt::board::wall_ns()));
    assert_eq!(c.tick().decision, Decision::Stale { source: 0 });
}

#[test]
fn estop_forces_zero_until_released() {
    let (mut c, b, _) = setup(SafeBehaviour::Hold, 0, Some(vec![0.01; 3]));
    feed(&b);
    c.tick();
    c.estop().engage();
    let out = c.tick();
    assert_eq!(out.decision, Decision::EStop);
    assert!(
        out.publish && out.action.iter().all(|&a| a == 0.0),
        "e-stop is zero and not rate-limited"
    );
    c.estop().release();
    assert_eq!(c.tick().decision, Decision::Policy);
}

#[test]
fn warmup_gate_and_rate_limit() {
    let (mut c, b, m) = setup(SafeBehaviour::Zero, 3, Some(vec![0.05; 3]));
    feed(&b);
    for _ in 0..2 {
        c.note_deadline(true);
        let out = c.tick();
        assert_eq!(out.decision, Decision::WarmingUp);
        assert!(!out.publish);
    }
    c.note_deadline(false); // a missed deadline restarts the count
    assert_eq!(c.tick().decision, Decision::WarmingUp);
    for _ in 0..2 {
        c.note_deadline(true);
        assert_eq!(c.tick().decision, Decision::WarmingUp);
    }
    c.note_deadline(true); // third consecutive on-time tick: actuate
    let first = c.tick().action.to_vec(); // first action: nothing to limit against
    c.note_deadline(false); // once open, a late tick does not close the gate
    assert_eq!(c.tick().decision, Decision::Policy);
    let mut offline = Sampler::new(&m).unwrap();
    let _ = first;
    let mut prev = c.tick().action.to_vec();
    for _ in 0..20 {
        c.note_deadline(true);
        let out = c.tick();
        let mut raw = [0f32; 3];
        offline
            .sample_seeded(
                &[0.1, 0.2, 0.3, -0.5, 0.5],
                &[1.0, -1.0],
                9,
                out.tick,
                &mut raw,
            )
            .unwrap();
        for j in 0..3 {
            assert!((out.action[j] - prev[j]).abs() <= 0.05 + 1e-12);
            let want = (raw[j] as f64).clamp(prev[j] - 0.05, prev[j] + 0.05);
            assert!((out.action[j] - want).abs() < 1e-12);
        }
        prev = out.action.to_vec();
    }
}

/// Lifecycle deactivate / activate: the safe action once, then silence
/// with the loop running; reactivated, the warm-up counts again before the
/// policy actuates. Toggling allocates nothing.
#[test]
fn deactivating_publishes_the_safe_action_once_then_nothing_until_reactivated() {
    // A rate limit does not slow the deactivation's safe action: the robot
    // holds it.
    let (mut c, b, _) = setup(SafeBehaviour::Zero, 2, Some(vec![1e-3; 3]));
    feed(&b);
    for _ in 0..3 {
        c.note_deadline(true);
        c.tick();
    }
    let out = c.tick();
    assert_eq!(out.decision, Decision::Policy);
    assert!(out.action.iter().any(|v| *v != 0.0));
    let before = thread_allocations();
    c.active().set(false);
    let out = c.tick();
    assert_eq!(out.decision, Decision::Inactive);
    assert!(
        out.publish,
        "the deactivating tick publishes the safe action"
    );
    assert_eq!(out.action, &[0.0; 3]);
    for _ in 0..50 {
        c.note_deadline(true);
        let out = c.tick();
        assert_eq!(out.decision, Decision::Inactive);
        assert!(!out.publish, "silence while inactive");
    }
    c.active().set(true);
    for _ in 0..2 {
        let out = c.tick();
        assert_eq!(
            out.decision,
            Decision::WarmingUp,
            "warm-up counts from activation"
        );
        assert!(!out.publish);
        c.note_deadline(true);
    }
    c.note_deadline(true);
    assert_eq!(c.tick().decision, Decision::Policy);
    assert_eq!(
        thread_allocations() - before,
        0,
        "lifecycle ticks allocated"
    );
    // Positions without a measurement hold the last command on
    // deactivation, under an e-stop too.
    let rule = StopRule::new(vec![Interface::Position; 3], None);
    let (mut c, b, _) = setup_with(SafeBehaviour::Hold, 0, None, rule);
    feed(&b);
    let last = c.tick().action.to_vec();
    c.active().set(false);
    let out = c.tick();
    assert_eq!((out.action, out.stop), (&last[..], StopKind::HoldCommand));
    c.active().set(true);
    let last = c.tick().action.to_vec();
    c.estop().engage();
    c.active().set(false);
    let out = c.tick();
    assert!(out.publish && out.action == &last[..]);
}

/// The e-stop on a position interface: every stop tick commands the
/// position measured when the stop began, exactly (never 0, never rate
/// limited, never following a measurement that moves afterwards).
#[test]
fn a_position_estop_holds_where_the_arm_was_measured() {
    let (mut c, b, _) = setup_with(SafeBehaviour::Hold, 0, Some(vec![1e-3; 3]), arm());
    feed(&b);
    for _ in 0..3 {
        let out = c.tick();
        assert_eq!(out.decision, Decision::Policy);
        assert_eq!(out.stop, StopKind::None);
    }
    c.estop().engage();
    for i in 0..5 {
        let out = c.tick();
        assert_eq!(out.decision, Decision::EStop);
        assert_eq!(
            (out.action, out.stop),
            (&[0.1, 0.2, 0.3][..], StopKind::HoldMeasured)
        );
        // the arm sags under the stop: the target stays where it was
        b.write(0, &[0.1 - 0.01 * i as f64, 0.2, 0.3], None);
        b.write(1, &[-0.5, 0.5], None);
    }
    c.estop().release();
    feed(&b);
    assert_eq!(c.tick().decision, Decision::Policy);
    // a new stop takes the position measured then
    b.write(0, &[0.4, 0.5, 0.6], None);
    c.estop().engage();
    assert_eq!(c.tick().action, &[0.4, 0.5, 0.6]);
}

/// Stale input on a position interface: the measured position while its
/// source is fresh; when the state itself is stale, the last command sent.
/// Neither is rate limited, nor is a deactivation's stop.
#[test]
fn a_position_stop_on_stale_input_holds_measured_else_last_command() {
    let (mut c, b, _) = setup_with(SafeBehaviour::Hold, 0, Some(vec![1e-3; 3]), arm());
    feed(&b);
    c.tick();
    // source 1 goes stale, the joint states (source 0) stay fresh
    std::thread::sleep(std::time::Duration::from_millis(60));
    b.write(0, &[0.7, -0.7, 0.25], None);
    b.write(2, &[1.0, -1.0], Some(flowpilot_core::rt::board::wall_ns()));
    let out = c.tick();
    assert_eq!(out.decision, Decision::Stale { source: 1 });
    assert_eq!(
        (out.action, out.stop),
        (&[0.7, -0.7, 0.25][..], StopKind::HoldMeasured)
    );
    // recover, then everything stale: the last command sent is held
    feed(&b);
    let sent = c.tick().action.to_vec();
    std::thread::sleep(std::time::Duration::from_millis(60));
    let out = c.tick();
    assert_eq!(out.decision, Decision::Stale { source: 0 });
    assert_eq!((out.action, out.stop), (&sent[..], StopKind::HoldCommand));
    // a measurement stamped ahead of the clock (invalid input) is not
    // trusted: the last command sent is held
    feed(&b);
    let sent = c.tick().action.to_vec();
    b.write(
        0,
        &[0.9, 0.9, 0.9],
        Some(flowpilot_core::rt::board::wall_ns() + 1_000_000_000),
    );
    let out = c.tick();
    assert_eq!(out.decision, Decision::Invalid);
    assert_eq!((out.action, out.stop), (&sent[..], StopKind::HoldCommand));
    // zero is refused on positions by the config; stop sends nothing
    let (mut c, b, _) = setup_with(SafeBehaviour::Stop, 0, None, arm());
    feed(&b);
    c.tick();
    std::thread::sleep(std::time::Duration::from_millis(60));
    let out = c.tick();
    assert!(!out.publish && out.stop == StopKind::Silent);
    // the e-stop always sends the interface's stop, whatever safe_behaviour says
    feed(&b);
    c.estop().engage();
    let out = c.tick();
    assert!(out.publish && out.stop == StopKind::HoldMeasured);
}

/// Velocity stops on stale input ramp down within the rate limit (a
/// deceleration bound); the e-stop goes to zero at once.
#[test]
fn a_velocity_stop_ramps_on_stale_input_and_the_estop_does_not() {
    let (mut c, b, _) = setup(SafeBehaviour::Hold, 0, Some(vec![0.05; 3]));
    feed(&b);
    let mut prev = Vec::new();
    for _ in 0..3 {
        prev = c.tick().action.to_vec();
    }
    assert!(
        prev.iter().any(|a| a.abs() > 0.1),
        "a policy action to ramp from: {prev:?}"
    );
    std::thread::sleep(std::time::Duration::from_millis(60));
    for _ in 0..100 {
        let out = c.tick();
        assert_eq!(out.stop, StopKind::Zero);
        for (a, p) in out.action.iter().zip(&prev) {
            assert!(a.abs() <= p.abs() && (a - p).abs() <= 0.05 + 1e-12);
        }
        prev = out.action.to_vec();
    }
    assert_eq!(prev, [0.0; 3], "reaches zero within |v| / max_delta ticks");
    feed(&b);
    c.tick();
    c.estop().engage();
    assert_eq!(c.tick().action, &[0.0; 3]);
}

/// Every stop path on a measured position interface allocates nothing.
#[test]
fn position_stops_allocate_nothing() {
    let (mut c, b, _) = setup_with(SafeBehaviour::Hold, 0, Some(vec![0.1; 3]), arm());
    feed(&b);
    c.tick();
    let before = thread_allocations();
    for i in 0..2000 {
        if i % 50 == 25 {
            if i % 100 == 25 {
                c.estop().engage();
            } else {
                c.estop().release();
            }
        }
        if i % 300 == 150 {
            c.active().set(false);
        }
        if i % 300 == 160 {
            c.active().set(true);
        }
        if i % 3 == 0 {
            feed(&b);
        }
        std::hint::black_box(c.tick().action[0]);
    }
    c.estop().release();
    std::thread::sleep(std::time::Duration::from_millis(60));
    for _ in 0..100 {
        assert!(matches!(c.tick().decision, Decision::Stale { .. }));
    }
    assert_eq!(thread_allocations() - before, 0, "stop ticks allocated");
}

#[test]
fn a_tick_allocates_nothing() {
    let (mut c, b, _) = setup(SafeBehaviour::Hold, 2, Some(vec![0.1; 3]));
    feed(&b);
    c.tick();
    let before = thread_allocations();
    for i in 0..2000 {
        c.note_deadline(i % 7 != 0);
        if i % 100 == 50 {
            if i % 200 == 50 {
                c.estop().engage();
            } else {
                c.estop().release();
            }
        }
        if i % 3 == 0 {
            feed(&b);
        }
        std::hint::black_box(c.tick().action[0]);
    }
    c.estop().release();
    // stale path too
    std::thread::sleep(std::time::Duration::from_millis(60));
    let before2 = thread_allocations();
    for _ in 0..100 {
        assert!(matches!(c.tick().decision, Decision::Stale { .. }));
    }
    assert_eq!(thread_allocations() - before2, 0, "stale ticks allocated");
    assert_eq!(before2 - before, 0, "ticks allocated");
}

#[test]
fn logging_a_tick_allocates_nothing_and_never_blocks() {
    use flowpilot_core::log::writer::{LogConfig, LogHandle};
    let (mut c, b, m) = setup(SafeBehaviour::Hold, 0, None);
    let human = Arc::new(Board::new(&[3]));
    c.set_override(flowpilot_core::rt::control::OverrideInput {
        board: human.clone(),
        max_age_s: 0.05,
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = LogHandle::start(LogConfig {
        dir: dir.path().into(),
        flush_period: std::time::Duration::from_millis(10),
        queue_capacity: 4096,
        reward: None,
        metadata: Default::default(),
    })
    .unwrap();
    feed(&b);
    let mut rec = flowpilot_core::log::Transition::default();
    c.tick();
    let before = thread_allocations();
    for i in 0..3000u64 {
        if i % 3 == 0 {
            feed(&b);
        }
        if i == 1000 {
            human.write(0, &[5.0, -5.0, 0.25], None); // beyond the bounds
        }
        c.tick();
        c.fill_transition(&mut rec);
        log.push(&rec);
    }
    assert_eq!(
        thread_allocations() - before,
        0,
        "ticks + log pushes allocated"
    );
    let stats = log.stats().clone();
    log.close();
    let written = stats.written.load(Ordering::Relaxed);
    let dropped = stats.dropped.load(Ordering::Relaxed);
    assert_eq!(
        written + dropped,
        3000,
        "every record is written or counted as dropped"
    );
    let recs = flowpilot_core::log::reader::read_file(
        &flowpilot_core::log::reader::log_files(dir.path()).unwrap()[0],
    )
    .unwrap();
    assert_eq!(recs.len() as u64, written);
    // the override was applied within bounds and logged as an intervention
    let lo = &m.spec.action_low;
    let hi = &m.spec.action_high;
    let ov: Vec<_> = recs.iter().filter(|r| r.intervention).collect();
    assert!(!ov.is_empty(), "override ticks logged");
    for r in &ov {
        assert_eq!(r.decision, 5);
        let a = r.applied().unwrap();
        assert_eq!(a[0], hi[0] as f64);
        assert_eq!(a[1], lo[1] as f64);
        assert!((a[2] - 0.25).abs() < 1e-12);
    }
    // policy records carry the sampled raw action and a finite log-prob
    let pol: Vec<_> = recs.iter().filter(|r| r.decision == 0).collect();
    assert!(pol.len() > 100);
    assert!(pol
        .iter()
        .all(|r| r.log_prob.is_finite() && r.sampled().iter().all(|v| v.is_finite())));
    assert_eq!(pol[0].policy.version, m.spec.version);
    assert_eq!(
        flowpilot_core::log::digest_hex(&pol[0].policy.digest),
        m.spec.digest
    );
}

#[test]
fn periodic_timer_uses_absolute_deadlines() {
    let mut p = Periodic::new(1000.0);
    let t0 = flowpilot_core::rt::board::mono_ns();
    let start = t0 + p.period_ns();
    let mut lateness = Vec::new();
    for _ in 0..200 {
        let (late, _) = p.wait();
        lateness.push(late);
    }
    let end = flowpilot_core::rt::board::mono_ns();
    // 200 deadlines after the first: never early, and no accumulated drift
    // (each wake-up is measured against start + k·period, not the last wake).
    assert!(end >= start + 199 * 1_000_000, "woke early");
    lateness.sort_unstable();
    assert!(
        lateness[100] < 2_000_000,
        "median wake-up lateness {} ns",
        lateness[100]
    );
}

/// A chunked (H = 4 steps of 2), history-conditioned (2 steps of 3) policy.
fn chunked_setup(
    chunk: flowpilot_core::rt::control::ChunkConfig,
) -> (
    Controller,
    Arc<Board>,
    flowpilot_core::policy::model::ModelFile,
) {
    let mut spec = flowpilot_core::policy::init::default_spec(6, 0, 8, 2, 16);
    spec.chunk_len = 4;
    spec.obs_horizon = 2;
    let m = flowpilot_core::policy::init::init_model(
        spec,
        flowpilot_core::policy::init::Init::Random { last_scale: 0.3 },
        5,
    )
    .unwrap();
    let board = Arc::new(Board::new(&[3]));
    let cfg = ControlConfig {
        rate_hz: 100.0,
        max_age_s: vec![10.0],
        max_future_stamp_s: 0.05,
        obs_sources: 1,
        safe: SafeBehaviour::Zero,
        max_delta: None,
        warmup_ticks: 0,
        startup_hold_ticks: 0,
        seed: 9,
        temperature: 1.0,
        chunk,
        stop: StopRule::new(vec![Interface::Velocity; 2], None),
    };
    let c = Controller::new(cfg, Sampler::new(&m).unwrap(), board.clone()).unwrap();
    (c, board, m)
}

#[test]
fn a_chunked_history_policy_plays_the_samplers_chunk_step_by_step() {
    use flowpilot_core::rt::control::ChunkConfig;
    let (mut c, b, m) = chunked_setup(ChunkConfig::default());
    let mut offline = Sampler::new(&m).unwrap();
    let obs64 = |t: usize| [0.1 * t as f64, -0.2, 0.3 + 0.05 * t as f64];
    let obs = |t: usize| obs64(t).map(|v| v as f32);
    let mut chunk = [0f32; 8];
    let mut history = Vec::new();
    for t in 0..12 {
        b.write(0, &obs64(t), None);
        // the history the policy sees: the first observation padded
        history = if t == 0 {
            [obs(0), obs(0)].concat()
        } else {
            [obs(t - 1), obs(t)].concat()
        };
        let out = c.tick();
        assert_eq!(out.decision, Decision::Policy);
        if t % 4 == 0 {
            // a new chunk every H = 4 ticks, sampled at this tick
            let lp = offline
                .sample_tempered(&history, &[], 9, t as u64, 1.0, &mut chunk)
                .unwrap();
            assert_eq!(out.log_prob, lp);
        }
        let j = t % 4;
        for (a, w) in out.action.iter().zip(&chunk[2 * j..2 * j + 2]) {
            assert_eq!(*a, *w as f64, "tick {t} step {j}");
        }
        assert_eq!(out.action.len(), 2);
    }
    assert!(!history.is_empty());
    // A stale tick drops the chunk and the history: the next fresh tick
    // re-plans from a padded history.
    let (mut c, b, _) = chunked_setup(ChunkConfig::default());
    b.write(0, &obs64(0), None);
    c.tick();
    c.tick();
    b.write(0, &[f64::NAN, 0.0, 0.0], None);
    assert_eq!(c.tick().decision, Decision::Invalid);
    b.write(0, &obs64(7), None);
    let out = c.tick();
    let lp = offline
        .sample_tempered(&[obs(7), obs(7)].concat(), &[], 9, 3, 1.0, &mut chunk)
        .unwrap();
    assert_eq!(out.log_prob, lp);
    assert_eq!(out.action[0], chunk[0] as f64);
}

#[test]
fn chunked_ticks_allocate_nothing_under_every_boundary_rule() {
    use flowpilot_core::rt::control::{Boundary, ChunkConfig};
    for (boundary, replan_every, as_trajectory) in [
        (Boundary::Replace, 0, false),
        (Boundary::Replace, 2, true),
        (Boundary::Ensemble { m: 0.01 }, 1, false),
        (Boundary::Blend { steps: 2 }, 2, false),
    ] {
        let (mut c, b, _) = chunked_setup(ChunkConfig {
            replan_every,
            boundary,
            as_trajectory,
        });
        b.write(0, &[0.1, 0.2, 0.3], None);
        c.tick();
        let before = thread_allocations();
        for i in 0..2000 {
            if i % 3 == 0 {
                b.write(0, &[0.1, 0.2 + 0.001 * (i % 100) as f64, 0.3], None);
            }
            if i % 500 == 250 {
                b.write(0, &[f64::NAN, 0.0, 0.0], None); // safe path, reset
            }
            let out = c.tick();
            std::hint::black_box(out.action[0]);
        }
        assert_eq!(thread_allocations() - before, 0, "{boundary:?} allocated");
    }
}

#[test]
fn a_chunk_goes_out_whole_as_the_ticks_would_apply_it() {
    use flowpilot_core::rt::control::ChunkConfig;
    let (mut c, b, m) = chunked_setup(ChunkConfig {
        as_trajectory: true,
        ..Default::default()
    });
    let mut offline = Sampler::new(&m).unwrap();
    b.write(0, &[0.1, 0.2, 0.3], None);
    let mut chunk = [0f32; 8];
    for t in 0..8u64 {
        let out = c.tick();
        if t % 4 == 0 {
            // a new chunk: its 4 steps of 2, the first being this tick's action
            offline
                .sample_tempered(&[0.1, 0.2, 0.3, 0.1, 0.2, 0.3], &[], 9, t, 1.0, &mut chunk)
                .unwrap();
            let want: Vec<f64> = chunk.iter().map(|&v| v as f64).collect();
            assert_eq!(out.trajectory, &want[..], "tick {t}");
            assert_eq!(out.action, &want[..2]);
        } else {
            assert!(
                out.trajectory.is_empty(),
                "tick {t}: mid-chunk, nothing whole"
            );
        }
    }
}

/// A node started without a rate limit can have one switched on live: the
/// loop always keeps a slot per action value (off is an infinite limit).
#[test]
fn a_rate_limit_switched_on_live_takes_effect_on_a_loop_started_without_one() {
    let (mut c, b, _) = setup(SafeBehaviour::Zero, 0, None);
    feed(&b);
    let mut prev = c.tick().action.to_vec();
    let mut live = flowpilot_core::node::live::LiveSettings {
        safe: SafeBehaviour::Zero,
        temperature: None,
        rate_limit: true,
        max_delta: [1e-3; 32],
        n_act: 3,
        max_age_s: [0.05; 16],
        n_sources: 3,
        max_future_stamp_s: 0.05,
        log_every: 1,
    };
    live.max_age_s[2] = 10.0;
    c.apply_live(&live);
    for _ in 0..10 {
        feed(&b);
        let out = c.tick();
        assert_eq!(out.decision, Decision::Policy);
        for (a, p) in out.action.iter().zip(&prev) {
            assert!((a - p).abs() <= 1e-3 + 1e-12, "{a} after {p}");
        }
        prev = out.action.to_vec();
    }
}
