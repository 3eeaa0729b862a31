//! libFuzzer target: flowpilot_core::fuzz_targets::cdr_decoder (see fuzz/Cargo.toml).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| flowpilot_core::fuzz_targets::cdr_decoder(data));
