//! Write a synthetic transition log with the node's own log writer
//! (`LogHandle`: the same thread, MCAP framing, flushes and index as
//! `flowpilot_node`), for benchmarks such as bench/fleet_rss.py.
//!
//! ```sh
//! cargo run --release -p flowpilot-core --example synth_log -- DIR RECORDS [RATE_HZ] [OBS] [ACT]
//! ```
//!
//! RECORDS ticks at RATE_HZ (default 100; stamps only, written as fast as
//! the writer goes), OBS observation and ACT action values per record
//! (default 8 and 2, a Reacher record: ~340 bytes of CDR).

use std::time::Duration;

use flowpilot_core::log::writer::{LogConfig, LogHandle};
use flowpilot_core::log::Transition;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 2 {
        eprintln!("usage: synth_log DIR RECORDS [RATE_HZ] [OBS] [ACT]");
        std::process::exit(2);
    }
    let dir = std::path::PathBuf::from(&args[0]);
    let n: u64 = args[1].parse().expect("RECORDS");
    let arg = |i: usize, d: f64| args.get(i).map_or(d, |s| s.parse().expect("a number"));
    let rate = arg(2, 100.0);
    let (obs, act) = (arg(3, 8.0) as usize, arg(4, 2.0) as usize);
    let log = LogHandle::start(LogConfig {
        dir: dir.clone(),
        flush_period: Duration::from_millis(50),
        queue_capacity: 65_536,
        reward: None,
        metadata: [
            ("every".to_string(), "1".to_string()),
            ("rate_hz".to_string(), rate.to_string()),
            ("obs_dim".to_string(), obs.to_string()),
            ("act_dim".to_string(), act.to_string()),
        ]
        .into(),
    })
    .expect("starting the log writer");
    let stats = log.stats().clone();
    let period_ns = (1e9 / rate) as i64;
    let t0 = flowpilot_core::rt::board::wall_ns() - n as i64 * period_ns;
    for i in 0..n {
        // keep the writer's queue from overflowing: nothing is dropped
        while i - stats.written.load(std::sync::atomic::Ordering::Relaxed) > 60_000 {
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut t = Transition {
            tick: i,
            mono_ns: i as i64 * period_ns,
            wall_ns: t0 + i as i64 * period_ns,
            episode: i / 500,
            n_obs: obs,
            n_act: act,
            reward: -((i % 500) as f64) / 500.0,
            log_prob: -1.5,
            applied_valid: true,
            ..Default::default()
        };
        for k in 0..obs {
            t.inputs[k] = ((i + k as u64) % 1000) as f32 / 1000.0;
        }
        for k in 0..act {
            t.sampled[k] = 0.1 * k as f32;
            t.applied[k] = 0.05 * k as f64;
        }
        log.push(&t);
    }
    log.close();
    let dropped = stats.not_written();
    println!(
        "wrote {} records to {} ({} dropped)",
        stats.written.load(std::sync::atomic::Ordering::Relaxed),
        dir.display(),
        dropped
    );
    assert_eq!(dropped, 0);
}
