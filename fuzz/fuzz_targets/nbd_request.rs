#![no_main]
//! See `hast_core::fuzz_targets::nbd_request` for the input layout and what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hast_core::fuzz_targets::nbd_request(data));
