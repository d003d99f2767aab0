//! The bodies of the coverage-guided fuzz targets (`fuzz/`, `fuzz/README.md`): one
//! function per target, taking the fuzzer's bytes. The libFuzzer binaries in
//! `fuzz/fuzz_targets/` call these, and `tests/fuzz_corpora.rs` replays every committed
//! corpus file through them in an ordinary `cargo test`, so both run the same code.
//!
//! Every target feeds a decoder that a stranger (a network client, a peer, a
//! hand-edited file) can reach, exactly as the daemon would, and asserts what the decoder
//! promises: no panic on any input, decode → encode → decode round trips, lengths within
//! the bounds the header declared, and the invariants of what it accepted. A failed
//! assertion is a bug in the decoder (or in a promise written in its documentation).
//!
//! Some targets take a leading *mode byte* that does not come from the wire: it picks
//! among a few realistic configurations (which export, which keys) or asks the target to
//! recompute a checksum the fuzzer cannot forge (the frame and metadata CRCs, a proof of
//! the shared key), so that the code behind the check is explored too. Each function
//! documents its input layout.

//!
//! | file | targets |
//! |---|---|
//! | `nbd.rs` | `nbd_request`, `nbd_negotiate`: what an NBD client sends |
//! | `peer.rs` | `peer_frame`, `peer_payload`, `peer_handshake_json`, `peer_handshake`: what a peer sends |
//! | `files.rs` | `config`, `units_size`, `metadata`: what a file on disk holds |

mod files;
mod nbd;
mod peer;

pub use self::files::{config, metadata, units_size};
pub use self::nbd::{nbd_negotiate, nbd_request};
pub use self::peer::{peer_frame, peer_handshake, peer_handshake_json, peer_payload};

/// The body of one fuzz target.
pub type Target = fn(&[u8]);

/// Every target, by the name of its `fuzz/fuzz_targets/<name>.rs` and corpus directory
/// `fuzz/corpus/<name>/`.
pub const TARGETS: &[(&str, Target)] = &[
    ("nbd_request", nbd_request),
    ("nbd_negotiate", nbd_negotiate),
    ("peer_frame", peer_frame),
    ("peer_payload", peer_payload),
    ("peer_handshake_json", peer_handshake_json),
    ("peer_handshake", peer_handshake),
    ("config", config),
    ("units_size", units_size),
    ("metadata", metadata),
];
