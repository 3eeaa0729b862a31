//! The `flowpilot` command tree (clap), its dispatch, and small helpers the
//! commands share. Runs at the binary's edge, off any control loop.

use std::path::Path;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use crate::commands::{
    bare_loop, bench, contract, convert, demos, eval, finetune, import, inspect, keygen, log_prob,
    new, replay, report, sample, train,
};
use flowpilot_core::policy::model::ModelFile;

#[derive(Parser)]
#[command(
    name = "flowpilot",
    version,
    about = "Real-time normalizing-flow robot policies"
)]
pub(crate) struct Cli {
    /// Threads for candle/rayon (training and the twin). The real-time
    /// sampler is single-threaded regardless.
    #[arg(long, global = true, default_value_t = 1)]
    threads: usize,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Print a model's architecture, dims, digest and parameter count.
    Inspect(inspect::InspectArgs),
    /// Sample one action.
    Sample(sample::SampleArgs),
    /// Exact log p(action | obs, goal) of a normalised action, and its latent.
    LogProb(log_prob::LogProbArgs),
    /// Import a policy trained with other code.
    #[command(subcommand)]
    Import(import::ImportCmd),
    /// Batch-1 latency, allocations and the bandwidth bound.
    Bench(bench::BenchArgs),
    /// A periodic loop doing no work with the node's timer and RT
    /// settings: the machine's wake-up floor (JSON p50/p99/max).
    BareLoop(bare_loop::BareLoopArgs),
    /// Create a fresh (or fully random, for benchmarks) model file.
    New(new::NewArgs),
    /// Store a model's dense kernels in another width (f32, f16, bf16).
    Convert(convert::ConvertArgs),
    /// Train a policy.
    #[command(subcommand)]
    Train(train::TrainCmd),
    /// Generate demonstrations from a built-in expert.
    #[command(subcommand)]
    Demos(demos::DemosCmd),
    /// Evaluate a policy on a built-in task.
    #[command(subcommand)]
    Eval(eval::EvalCmd),
    /// Fine-tune a flow policy with SAC (exact log π) from transition logs
    /// (replayed, and followed live with --follow) or a fixed dataset.
    Finetune(finetune::FinetuneArgs),
    /// A new ed25519 key pair for signing policy versions: KEY (private,
    /// mode 0600) and KEY.pub (for a robot's hot_swap.trusted_keys).
    Keygen(keygen::KeygenArgs),
    /// Re-run a policy on a transition log's observations and report where
    /// its samples differ from the logged ones (bit-identical for the
    /// policy and seeds that wrote the log).
    Replay(replay::ReplayArgs),
    /// A session report: plots and one self-contained HTML page from a
    /// transition log (and the checkpoint directory).
    Report(report::ReportArgs),
    /// The cross-process contract (codes, log metadata keys, file names,
    /// flags, QoS by role) as JSON, for scripts and tests.
    Contract(contract::ContractArgs),
}

impl Cli {
    /// Threads for candle/rayon (`--threads`).
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Run the chosen subcommand.
    pub(crate) fn run(self) -> Result<()> {
        match self.cmd {
            Cmd::Inspect(a) => inspect::run(a),
            Cmd::Sample(a) => sample::run(a),
            Cmd::LogProb(a) => log_prob::run(a),
            Cmd::Import(c) => import::run(c),
            Cmd::Bench(a) => bench::run(a),
            Cmd::New(a) => new::run(a),
            Cmd::Convert(a) => convert::run(a),
            Cmd::BareLoop(a) => bare_loop::run(a),
            Cmd::Train(c) => train::run(c),
            Cmd::Demos(c) => demos::run(c),
            Cmd::Eval(c) => eval::run(c),
            Cmd::Finetune(a) => finetune::run(a),
            Cmd::Keygen(a) => keygen::run(a),
            Cmd::Replay(a) => replay::run(a),
            Cmd::Report(a) => report::run(a),
            Cmd::Contract(a) => contract::run(a),
        }
    }
}

/// A model file, with its path in the error.
pub(crate) fn load(path: &Path) -> Result<ModelFile> {
    ModelFile::load(path).with_context(|| format!("loading model {}", path.display()))
}
