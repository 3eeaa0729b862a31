//! libFuzzer target: flowpilot_core::fuzz_targets::fleet_batch (see fuzz/Cargo.toml).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flowpilot_core::fuzz_targets::fleet_batch(data));
