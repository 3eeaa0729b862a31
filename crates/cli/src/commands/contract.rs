//! `flowpilot contract --json`: the cross-process contract
//! ([`flowpilot_core::contract`]: decision and stop codes, log metadata
//! keys, checkpoint file names, flags, QoS by role, fleet topics) as one
//! JSON object, for the Python side (tests, scripts, sims), so none of them
//! spells a code or a file name by hand.

use anyhow::Result;

#[derive(clap::Args)]
pub(crate) struct ContractArgs {
    /// Print JSON (the only format; the flag says so at the call site).
    #[arg(long)]
    json: bool,
}

pub(crate) fn run(_a: ContractArgs) -> Result<()> {
    println!(
        "{}",
        serde_json::to_string_pretty(&flowpilot_core::contract::to_json())?
    );
    Ok(())
}
