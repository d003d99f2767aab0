//! The I/O shell of hast: local storage, the NBD server, the daemon and hastctl's
//! commands. Decisions live in `hast-core`; this crate carries them out.
//!
//! | module | job |
//! |---|---|
//! | [`conf`] | read hast.conf from disk and learn this node's identity |
//! | [`control`] | framing of the hastctl ⇄ hastd messages |
//! | [`storage`] | the local component: open + flock, sizes, positioned I/O, metadata |
//! | [`nbd`] | the NBD server (sockets) over the `hast_core::nbd` codec |
//! | [`peer`] | the peer link: framed socket I/O, resolution, connect, peer check |
//! | [`daemon`] | hastd: supervisor, control socket, per-resource workers |
//! | [`ctl`] | hastctl's subcommands |

pub mod conf;
pub mod control;
pub mod ctl;
pub mod daemon;
pub mod nbd;
pub mod peer;
pub mod storage;
