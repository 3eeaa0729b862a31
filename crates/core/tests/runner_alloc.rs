//! Proof of the runner's real-time claim: after warm-up, one control period
//! (wait, hot swap, tick, log record, output push) allocates nothing, even
//! with a full output queue, a full log queue and a policy swap.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use flowpilot_core::alloc_count::{thread_allocations, CountingAlloc};
use flowpilot_core::log::writer::{LogConfig, LogHandle};
use flowpilot_core::node::hotswap::SwapChannel;
use flowpilot_core::policy::model::{Direction, PolicyKind};
use flowpilot_core::policy::sampler::Sampler;
use flowpilot_core::rt::board::Board;
use flowpilot_core::rt::clock::Clock;
use flowpilot_core::rt::control::{ControlConfig, Controller, SafeBehaviour};
use flowpilot_core::rt::output::OutputQueue;
use flowpilot_core::rt::runner::{LogInputs, LogTap, Runner};
use flowpilot_core::testkit::random_model;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Never sleeps; every 7th wake-up reports a missed period.
struct FakeClock(u64);

impl Clock for FakeClock {
    fn period_ns(&self) -> i64 {
        1_000_000
    }
    fn wait(&mut self) -> (u64, u64) {
        self.0 += 1;
        if self.0.is_multiple_of(7) {
            (2_500_000, 2)
        } else {
            (1_000, 0)
        }
    }
}

#[test]
fn a_control_period_makes_no_heap_allocation() {
    check(false);
}

/// Step-synchronous logging (`log.step_source`): the robot's step report
/// arrives every 3rd tick and each one gives one record.
#[test]
fn a_step_logged_control_period_makes_no_heap_allocation() {
    check(true);
}

fn check(with_step: bool) {
    let before = thread_allocations();
    std::hint::black_box(vec![1u8; 16]);
    assert!(
        thread_allocations() > before,
        "counting allocator not installed"
    );

    let m = random_model(3, 2, false, Direction::Inverse, PolicyKind::Flow, 4);
    let other = random_model(3, 2, false, Direction::Inverse, PolicyKind::Flow, 5);
    let board = Arc::new(Board::new(&[5, 2]));
    board.write(0, &[0.1, 0.2, 0.3, 0.4, 0.5], None);
    board.write(1, &[1.0, -1.0], Some(flowpilot_core::rt::board::wall_ns()));
    let cfg = ControlConfig {
        rate_hz: 1000.0,
        max_age_s: vec![1e6, 1e6],
        max_future_stamp_s: 0.05,
        obs_sources: 1,
        safe: SafeBehaviour::Hold,
        max_delta: Some(vec![0.1; 3]),
        warmup_ticks: 3,
        startup_hold_ticks: 0,
        seed: 1,
        temperature: 1.0,
        chunk: Default::default(),
        // positions measured in source 0: stops read the board
        stop: flowpilot_core::rt::stop::StopRule::new(
            vec![flowpilot_core::rt::stop::Interface::Position; 3],
            Some(flowpilot_core::rt::stop::StateSource {
                source: 0,
                index: vec![Some(0), Some(2), Some(4)],
            }),
        ),
    };
    let controller = Controller::new(cfg, Sampler::new(&m).unwrap(), board.clone())
        .unwrap()
        .with_sent(Arc::new(Board::new(&[3])));
    let estop = controller.estop().clone();
    let dir = tempfile::tempdir().unwrap();
    let handle = LogHandle::start(LogConfig {
        dir: dir.path().into(),
        flush_period: std::time::Duration::from_millis(5),
        queue_capacity: 8, // fills: pushes then drop and count
        reward: None,
        metadata: Default::default(),
    })
    .unwrap();
    let log_stats = handle.stats().clone();
    let inputs = Arc::new(LogInputs::default());
    let step = with_step.then(|| Arc::new(Board::new(&[3])));
    let chan = SwapChannel::new();
    let live = flowpilot_core::node::live::LiveChannel::new();
    let out = OutputQueue::new(16); // fills: never drained here
    let mut r = Runner::new(controller, FakeClock(0), chan.clone(), out.clone())
        .with_live(live.clone())
        .with_log(LogTap {
            handle: Arc::new(handle),
            inputs: inputs.clone(),
            every: 2,
            step: step.clone(),
        })
        .with_waker(std::thread::current());
    // The robot's state of each step follows its report, so every report
    // is written on its own tick: the count does not depend on how fast
    // this test runs (a report left waiting past the last tick is not).
    let report = |i: u64| {
        if let Some(b) = &step {
            if i % 3 == 0 {
                b.write(0, &[0.1, -0.2, i as f64 * 1e-3], None);
                board.write(0, &[0.1, 0.2, 0.3, 0.4, i as f64 * 1e-3], None);
            }
        }
    };
    for i in 0..21 {
        report(i);
        r.step();
    }
    // prepared off the RT path, as the hot swap does
    let fresh = Sampler::new(&other).unwrap();
    assert!(chan.offer(fresh).is_none());

    let before = thread_allocations();
    for i in 0..1000 {
        report(i);
        inputs.add_reward(0.5);
        if i % 100 == 0 {
            inputs.boundary(i % 200 == 0);
        }
        // e-stops in the window: stop ticks read the measured position and
        // preempt the full output queue
        if i % 200 == 100 {
            estop.engage();
        }
        if i % 200 == 120 {
            estop.release();
        }
        if i % 250 == 10 {
            // a live parameter change, offered and applied in the window
            live.offer(flowpilot_core::node::live::LiveSettings {
                safe: SafeBehaviour::Zero,
                temperature: Some(0.5),
                rate_limit: i % 500 == 10,
                max_delta: [0.05; 32],
                n_act: 3,
                max_age_s: [1e6; 16],
                n_sources: 2,
                max_future_stamp_s: 0.1,
                log_every: 2, // as configured: the record count below holds
            });
        }
        std::hint::black_box(r.step());
    }
    assert_eq!(
        thread_allocations() - before,
        0,
        "allocations in 1000 periods"
    );

    assert!(
        chan.take_retired().is_some(),
        "the swap happened in the window"
    );
    assert!(live.take().is_none(), "the live changes were applied");
    assert_eq!(r.controller().sampler().spec().digest, other.spec.digest);
    // 100 stop ticks each emptied the queue, which then refilled in 16
    assert!(
        out.dropped() > 700,
        "the full output queue dropped and counted: {}",
        out.dropped()
    );
    assert!(
        out.preempted() >= 5 * 16,
        "stops preempted the queue: {}",
        out.preempted()
    );
    let stats = r.controller().stats().clone();
    assert_eq!(stats.ticks.load(Ordering::Relaxed), 1021);
    assert!(stats.overruns.load(Ordering::Relaxed) > 0);
    drop(r);
    let logged =
        log_stats.written.load(Ordering::Relaxed) + log_stats.dropped.load(Ordering::Relaxed);
    if with_step {
        assert_eq!(logged, 7 + 334, "one record per step report");
    } else {
        assert_eq!(logged, 511, "one record every 2 ticks");
    }
}
