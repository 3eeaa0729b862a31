//! `flowpilot bare-loop`: the machine's own wake-up floor. A periodic
//! thread with the control thread's timer (absolute deadlines on
//! CLOCK_MONOTONIC), timer slack and RT settings (core's `Periodic` and
//! `apply_rt_settings`) that does no work; `bench/loop_bench.py --baseline`
//! runs it beside the node in the same run, so the node's jitter is
//! reported as a ratio to this floor rather than as an absolute that
//! swings with the host (docs/performance.md).

use anyhow::Result;

use flowpilot_core::rt::clock::Periodic;
use flowpilot_core::sched::apply_rt_settings;

#[derive(clap::Args)]
pub(crate) struct BareLoopArgs {
    /// Loop rate in Hz.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// SCHED_FIFO priority (the node's rt.fifo_priority).
    #[arg(long)]
    fifo_priority: Option<i32>,
    /// CPU to pin to (the node's rt.cpu).
    #[arg(long)]
    cpu: Option<usize>,
    /// Lock memory (the node's rt.mlockall).
    #[arg(long)]
    mlockall: bool,
}

#[derive(serde::Serialize)]
struct Report {
    rate_hz: f64,
    wakeups: usize,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    missed: u64,
    warnings: Vec<String>,
}

pub(crate) fn run(a: BareLoopArgs) -> Result<()> {
    anyhow::ensure!(
        (1.0..=10_000.0).contains(&a.rate) && a.seconds > 0.0 && a.seconds <= 3600.0,
        "--rate must be within 1..10000 Hz and --seconds within 0..3600"
    );
    let n = (a.rate * a.seconds).ceil() as usize;
    let (prio, cpu, lock) = (a.fifo_priority, a.cpu, a.mlockall);
    let rate = a.rate;
    let r = std::thread::Builder::new()
        .name("bare-loop".into())
        .spawn(move || {
            let warnings = apply_rt_settings(prio, cpu, lock);
            let mut late = Vec::with_capacity(n);
            let mut missed = 0;
            let mut timer = Periodic::new(rate);
            for _ in 0..n {
                let (l, m) = timer.wait();
                late.push(l);
                missed += m;
            }
            late.sort_unstable();
            let q = |p: f64| late[((late.len() - 1) as f64 * p).round() as usize] as f64 / 1e3;
            Report {
                rate_hz: rate,
                wakeups: late.len(),
                p50_us: q(0.5),
                p99_us: q(0.99),
                max_us: q(1.0),
                missed,
                warnings,
            }
        })?
        .join()
        .map_err(|_| anyhow::anyhow!("the loop thread panicked"))?;
    println!("{}", serde_json::to_string(&r)?);
    Ok(())
}
