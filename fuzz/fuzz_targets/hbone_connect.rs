//! libFuzzer entry for the `hbone_connect` target (body in `dataplane/tests/fuzz/targets.rs`).
#![no_main]

#[path = "../../dataplane/tests/fuzz/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::hbone_connect(data));
