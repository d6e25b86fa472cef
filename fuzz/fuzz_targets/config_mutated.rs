//! libFuzzer entry for the `config_mutated` target (body in `dataplane/tests/fuzz/targets.rs`).
#![no_main]

#[path = "../../dataplane/tests/fuzz/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::config_mutated(data));
