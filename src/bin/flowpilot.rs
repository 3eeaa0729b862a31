//! `flowpilot`: the command line (see `flowpilot --help` and the README).
//! The code lives in crates/cli; this file only names the installed binary.
//!
//! It declares no `required-features` on purpose: cargo-ament-build (colcon)
//! installs only the binaries whose required features were named on its
//! command line, and `colcon build --cargo-args --features ros` must install
//! the learner beside the node. A build without the default `cli` feature
//! (the node alone, no candle) gets this stub instead.

#[cfg(feature = "cli")]
fn main() {
    flowpilot_cli::main()
}

#[cfg(not(feature = "cli"))]
fn main() {
    eprintln!("flowpilot: built without the `cli` feature; rebuild with default features");
    std::process::exit(2);
}
