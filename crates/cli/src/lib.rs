//! flowpilot-cli: the `flowpilot` command (train, sample, inspect, eval,
//! bench, finetune, import), the benchmark tasks and the plots. Runs off the
//! robot's control loop; the node starts `flowpilot finetune` as its learner.
//!
//! - `cli`: the clap command tree and its dispatch.
//! - `commands`: one module per subcommand (its flags and its `run`).
//! - [`bench`](mod@bench), [`plot`], [`tasks`]: measurements, plots and the built-in
//!   tasks, also used by the integration tests.

// The crate docs are the house tour, private modules included: build them
// with `cargo doc --document-private-items` (scripts/test.sh checks them).
#![allow(rustdoc::private_intra_doc_links)]

pub mod bench;
mod cli;
mod commands;
pub mod plot;
pub mod tasks;

use clap::Parser;

// Counts heap allocations so `bench` can report allocations per sample.
#[global_allocator]
static ALLOC: flowpilot_core::alloc_count::CountingAlloc =
    flowpilot_core::alloc_count::CountingAlloc;

/// The `flowpilot` binary: logging to stderr (RUST_LOG, default `warn`),
/// flags, thread pools pinned before any starts, then the subcommand.
pub fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = cli::Cli::parse();
    flowpilot_learn::pin_threads(cli.threads());
    if let Err(e) = cli.run() {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
