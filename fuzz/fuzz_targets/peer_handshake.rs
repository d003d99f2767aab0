#![no_main]
//! See `hast_core::fuzz_targets::peer_handshake` for the input layout and what it asserts.

libfuzzer_sys::fuzz_target!(|data: &[u8]| hast_core::fuzz_targets::peer_handshake(data));
