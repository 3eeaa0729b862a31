//! `flowpilot bench`: batch-1 latency, allocations and the bandwidth bound
//! of the real-time sampler (or the time of SAC updates); prints what
//! [`crate::bench`] measures.

use std::path::PathBuf;

use anyhow::Result;

use crate::bench::{BenchReport, CompareReport};
use crate::cli::load;
use flowpilot_core::policy::model::WeightDtype;

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
    /// With `--sac`: LayerNorm (no affine) before each critic ReLU, as
    /// `finetune --critic-layer-norm`.
    #[arg(long)]
    critic_layer_norm: bool,
    /// With `--sac`: the BC weight λ of λ·(−log π(a_data|s)), as
    /// `finetune --bc-lambda`.
    #[arg(long, default_value_t = 0.0)]
    bc_lambda: f64,
    /// SAC batch size.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Also convert the model's kernels to this width at load (f16, bf16)
    /// and time it against the model with f32 kernels in the same run
    /// (interleaved), with the action and log-prob error over
    /// `--accuracy-n` random inputs.
    #[arg(long)]
    weights: Option<WeightDtype>,
    /// Random inputs for the `--weights` accuracy check.
    #[arg(long, default_value_t = 10000)]
    accuracy_n: usize,
}

fn sampler(a: BenchArgs) -> Result<()> {
    let m = load(&a.model)?;
    if let Some(w) = a.weights {
        // The reference is the f32 model: for an f32 file, the file itself.
        let base = m.with_weights(WeightDtype::F32)?;
        let half = m.with_weights(w)?;
        let r = crate::bench::compare(&base, &half, a.n, a.accuracy_n)?;
        if a.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print_compare(&a, &r);
        }
        return Ok(());
    }
    let r = crate::bench::run(&m, a.n, a.twin)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!("model        : {} ({})", a.model.display(), &r.model_digest);
    print_report("", &r);
    if let (Some(t), Some(ratio)) = (&r.twin, r.twin_over_sampler) {
        println!(
            "candle twin  : min {:.2} / median {:.2} / p99 {:.2} / max {:.2} us over {} samples",
            t.min_us, t.median_us, t.p99_us, t.max_us, t.samples
        );
        println!("twin/sampler : {ratio:.2}x (median)");
    }
    Ok(())
}

fn print_report(tag: &str, r: &BenchReport) {
    let l = &r.sampler;
    println!("weights{tag:<6}: {} kernels", r.weights);
    println!(
        "sampler{tag:<6}: min {:.2} / median {:.2} / p99 {:.2} / max {:.2} us over {} samples",
        l.min_us, l.median_us, l.p99_us, l.max_us, l.samples
    );
    println!("allocs{tag:<7}: {} per sample", r.allocations_per_sample);
    println!(
        "bound{tag:<8}: {:.2} us = {} weight bytes / {:.1} GB/s read bandwidth (same run)",
        r.bound_us, r.weight_bytes, r.read_bandwidth_gb_s
    );
    println!("median/bound{tag}: {:.2}x", r.median_over_bound);
}

fn print_compare(a: &BenchArgs, r: &CompareReport) {
    println!(
        "model        : {} ({}), f32 vs {} kernels converted at load, interleaved in one run",
        a.model.display(),
        r.base.model_digest,
        r.half.weights
    );
    print_report(" f32", &r.base);
    print_report(&format!(" {}", r.half.weights), &r.half);
    println!(
        "{} / f32     : min {:.3}x, median {:.3}x, p99 {:.3}x (goal <= 0.6x at the median)",
        r.half.weights, r.min_ratio, r.median_ratio, r.p99_ratio
    );
    let c = &r.accuracy;
    println!(
        "accuracy     : over {} random inputs, max |action err| {:.3e} (clipped, physical), max |raw action err| {:.3e} (mean of per-input max {:.3e}), max |log-prob err| {:.3e} (mean {:.3e}; max |log-prob| {:.1})",
        c.inputs,
        c.max_action_err,
        c.max_raw_action_err,
        c.mean_raw_action_err,
        c.max_log_prob_err,
        c.mean_log_prob_err,
        c.max_abs_log_prob
    );
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
    let l = crate::bench::sac_updates(&m, a.batch, n, 256, a.critic_layer_norm, a.bc_lambda)?;
    if a.json {
        println!("{}", serde_json::to_string(&l)?);
    } else {
        println!(
            "SAC update (batch {}, K={} C={}, critics 2x256{}, BC λ {}, {} threads): min {:.2} ms, median {:.2} ms, p99 {:.2} ms over {n} updates; {:.1} updates/s at the median",
            a.batch, m.spec.blocks, m.spec.hidden[1], if a.critic_layer_norm { " with LayerNorm" } else { "" }, a.bc_lambda, std::env::var("RAYON_NUM_THREADS").unwrap_or_default(),
            l.min_us / 1e3, l.median_us / 1e3, l.p99_us / 1e3, 1e6 / l.median_us
        );
    }
    Ok(())
}
