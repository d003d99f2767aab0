#![no_main]
//! See `hast_core::fuzz_targets::config` for the input layout and what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hast_core::fuzz_targets::config(data));
