//! libFuzzer entry for the `normalize` target (body in `dataplane/tests/fuzz/targets.rs`).
#![no_main]

#[path = "../../dataplane/tests/fuzz/targets.rs"]
mod targets;

libfuzzer_sys::fuzz_target!(|data: &[u8]| targets::normalize_path(data));
