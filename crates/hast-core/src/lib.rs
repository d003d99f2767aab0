//! The I/O-free core of hast: everything that decides, nothing that touches a disk, a
//! socket or a clock. The daemon (`hastd`) and the control tool (`hastctl`) carry out
//! what these modules decide. See `docs/architecture.md`.
//!
//! | module | job |
//! |---|---|
//! | [`config`] | hast.conf(5) lexer, parser and per-node resolution |
//! | [`metadata`] | the on-disk header and layout of a local component |
//! | [`activemap`] | dirty-extent bookkeeping and the keepdirty LRU |
//! | [`rangelock`] | exclusion between sync chunks and application writes |
//! | [`replication`] | per-request rules of the primary: ack point, owed, counters, link |
//! | [`decision`] | the connect-time counter table: in sync, sync direction, split-brain |
//! | [`nbd`] | the NBD protocol (fixed newstyle), codec and request validation |
//! | [`proto`] | the peer protocol: frames, payload transforms, handshake |
//! | [`control`] | hastctl ⇄ hastd messages |
//! | [`units`], [`sysexits`] | sizes and exit codes as FreeBSD's tools have them |

pub mod activemap;
pub mod config;
pub mod control;
pub mod decision;
/// The bodies of the fuzz targets in `fuzz/`, shared with the corpus replay test.
pub mod fuzz_targets;
pub mod metadata;
pub mod nbd;
pub mod proto;
pub mod rangelock;
pub mod replication;
pub mod sysexits;
pub mod units;
