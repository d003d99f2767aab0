//! The peer protocol between primary and secondary: frames, payload transforms and the
//! handshake, without sockets. One TCP connection per resource carries requests from the
//! primary and replies from the secondary; `docs/protocol.md` is the reference.
//!
//! Invariants every receiver relies on:
//! - a header is validated (magic, CRC-32C, kind, flags, lengths, payload bound) before
//!   any payload byte is read, so a hostile peer cannot make us allocate more than
//!   `Kind::max_payload`;
//! - a data payload is verified (checksum) before it is decompressed, and must expand to
//!   exactly the announced length;
//! - any violation closes that connection; it never touches another resource.

pub mod auth;
pub mod frame;
pub mod handshake;
pub mod lzf;
pub mod payload;

pub use frame::{flags, FrameError, Header, Kind, HEADER_LEN, MAX_IO};
