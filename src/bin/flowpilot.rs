//! `flowpilot`: the command line (see `flowpilot --help` and the README).
//! The code lives in crates/cli; this file only names the installed binary.

fn main() {
    flowpilot_cli::main()
}
