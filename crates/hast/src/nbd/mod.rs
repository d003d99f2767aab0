//! The NBD server: serves any [`Backend`] to real NBD clients (qemu, libnbd tools, fio,
//! the kernel's nbd-client) over a UNIX or TCP socket.
//!
//! The protocol decisions (handshake, validation, encoding) are `hast_core::nbd`'s; this
//! module moves bytes and runs requests concurrently. See `docs/nbd.md`.
//!
//! ```no_run
//! # async fn demo(backend: std::sync::Arc<hast::nbd::FileBackend>) -> anyhow::Result<()> {
//! use hast::nbd::{ExportSet, NbdServer};
//! let addr = hast_core::config::Address::Unix("/run/hast/r0.sock".into());
//! let server = NbdServer::start(&addr, ExportSet::single("r0", backend)).await?;
//! // ... until the resource stops being primary:
//! server.shutdown().await;
//! # Ok(()) }
//! ```

mod backend;
mod connection;
mod file_backend;
mod listener;

pub use backend::{Backend, ExportSet};
pub use connection::ServeOptions;
pub use connection::{serve_connection, serve_connection_with, Closed, ConnectionError};
pub use file_backend::FileBackend;
pub use hast_core::nbd::{ExportInfo, NbdErrno};
pub use listener::{ListenAddr, ListenError, NbdServer, NbdServerHandle};
