//! libFuzzer target: flowpilot_core::fuzz_targets::config_parser (see fuzz/Cargo.toml).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flowpilot_core::fuzz_targets::config_parser(data));
