//! The NBD protocol, server side: wire constants and messages ([`wire`]), the
//! fixed-newstyle handshake as a sans-IO state machine ([`negotiate`]), what an export
//! advertises ([`export`]) and request validation ([`validate()`]).
//!
//! No I/O here: `hast::nbd` moves the bytes. The spec is the public-domain
//! `doc/proto.md` of the NetworkBlockDevice/nbd project; what we implement and where we
//! choose among its options is written down in `docs/nbd.md`.

pub mod export;
pub mod negotiate;
pub mod validate;
pub mod wire;

pub use export::{ExportInfo, MAX_PAYLOAD};
pub use negotiate::{NamedExport, Negotiated, Negotiation, NegotiationError, Outcome, Then};
pub use validate::{validate, Command, Verdict};
pub use wire::{NbdErrno, RequestHeader};

#[cfg(test)]
mod proptests;
