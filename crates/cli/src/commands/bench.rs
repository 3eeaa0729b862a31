//! `flowpilot bench`: batch-1 latency, allocations and the bandwidth bound
//! of the real-time sampler (or the time of SAC updates); prints what
//! [`crate::bench`] measures.

use std::path::PathBuf;

use anyhow::Result;

use crate::cli::load;

#[derive(clap::Args)]
pub(crate) struct BenchArgs {
    model: PathBuf,
    /// Timed samples.
    #[arg(long, default_value_t = 20000)]
    n: usize,
    /// Also time the candle twin at batch 1, in the same run.
    #[arg(long)]
    twin: bool,
    #[arg(long)]
    json: bool,
    /// Instead: time SAC updates (this flow as the actor, 2×256 critics).
    #[arg(long)]
    sac: bool,
    /// SAC batch size.
    #[arg(long, default_value_t = 256)]
    batch: usize,
}

fn sampler(a: BenchArgs) -> Result<()> {
    let m = load(&a.model)?;
    let r = crate::bench::run(&m, a.n, a.twin)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    let l = &r.sampler;
    println!("model        : {} ({})", a.model.display(), &r.model_digest);
    println!(
        "sampler      : min {:.2} / median {:.2} / p99 {:.2} / max {:.2} us over {} samples",
        l.min_us, l.median_us, l.p99_us, l.max_us, l.samples
    );
    println!("allocations  : {} per sample", r.allocations_per_sample);
    println!(
        "bound        : {:.2} us = {} weight bytes / {:.1} GB/s read bandwidth (same run)",
        r.bound_us, r.weight_bytes, r.read_bandwidth_gb_s
    );
    println!("median/bound : {:.2}x", r.median_over_bound);
    if let (Some(t), Some(ratio)) = (&r.twin, r.twin_over_sampler) {
        println!(
            "candle twin  : min {:.2} / median {:.2} / p99 {:.2} / max {:.2} us over {} samples",
            t.min_us, t.median_us, t.p99_us, t.max_us, t.samples
        );
        println!("twin/sampler : {ratio:.2}x (median)");
    }
    Ok(())
}

pub(crate) fn run(a: BenchArgs) -> Result<()> {
    if a.sac {
        sac(a)
    } else {
        sampler(a)
    }
}

fn sac(a: BenchArgs) -> Result<()> {
    let m = load(&a.model)?;
    let n = a.n.min(200);
    let l = crate::bench::sac_updates(&m, a.batch, n, 256)?;
    if a.json {
        println!("{}", serde_json::to_string(&l)?);
    } else {
        println!(
            "SAC update (batch {}, K={} C={}, critics 2x256, {} threads): min {:.2} ms, median {:.2} ms, p99 {:.2} ms over {n} updates; {:.1} updates/s at the median",
            a.batch, m.spec.blocks, m.spec.hidden[1], std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
            l.min_us / 1e3, l.median_us / 1e3, l.p99_us / 1e3, 1e6 / l.median_us
        );
    }
    Ok(())
}
