//! Accepting clients on a hast.conf [`Address`] and shutting down cleanly.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hast_core::config::{Address, Family};
use tokio::net::{TcpListener, TcpSocket, UnixListener};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};

use super::backend::{Backend, ExportSet};
use super::connection::{serve_connection_with, ServeOptions};

/// Why a listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// The host name did not resolve to an address of the wanted family.
    #[error("{0}: no usable address")]
    NoAddress(String),
    /// A live server already answers on this UNIX socket.
    #[error("{0}: another server is listening on this socket")]
    InUse(PathBuf),
    /// Something other than a socket sits at the path; we never delete it.
    #[error("{0}: exists and is not a socket")]
    NotASocket(PathBuf),
    /// bind/listen/resolve failed.
    #[error("{addr}: {source}")]
    Io {
        /// The address being set up.
        addr: String,
        /// The underlying error.
        source: io::Error,
    },
}

/// Where a started server listens (with the real port when port 0 was asked for).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP socket.
    Tcp(SocketAddr),
    /// A UNIX socket.
    Unix(PathBuf),
}

/// The NBD server entry point.
#[derive(Debug)]
pub struct NbdServer;

/// A running listener; dropping it without [`shutdown`](Self::shutdown) leaves the
/// accept loop running until the runtime stops.
#[derive(Debug)]
pub struct NbdServerHandle {
    local: ListenAddr,
    cancel: CancellationToken,
    accept: JoinHandle<()>,
    connections: TaskTracker,
    socket_file: Option<(PathBuf, u64, u64)>,
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl NbdServer {
    /// Binds `addr` and serves `exports` with [`ServeOptions::default`].
    pub async fn start<B: Backend>(
        addr: &Address,
        exports: ExportSet<B>,
    ) -> Result<NbdServerHandle, ListenError> {
        NbdServer::start_with(addr, exports, ServeOptions::default()).await
    }

    /// Binds `addr` (UNIX: a stale socket file is replaced; TCP: SO_REUSEADDR) and
    /// accepts clients until [`NbdServerHandle::shutdown`].
    pub async fn start_with<B: Backend>(
        addr: &Address,
        exports: ExportSet<B>,
        options: ServeOptions,
    ) -> Result<NbdServerHandle, ListenError> {
        let (listener, local, socket_file) = match addr {
            Address::Unix(path) => {
                let (l, ident) = bind_unix(path)?;
                (
                    Listener::Unix(l),
                    ListenAddr::Unix(path.clone()),
                    Some(ident),
                )
            }
            Address::Tcp { family, host, port } => {
                let l = bind_tcp(*family, host, *port).await?;
                let local = l.local_addr().map_err(|source| io_err(addr, source))?;
                (Listener::Tcp(l), ListenAddr::Tcp(local), None)
            }
        };
        info!(addr = %addr, "NBD server listening");
        let cancel = CancellationToken::new();
        let connections = TaskTracker::new();
        let accept = tokio::spawn(accept_loop(
            listener,
            Arc::new(exports),
            Arc::new(options),
            cancel.clone(),
            connections.clone(),
        ));
        Ok(NbdServerHandle {
            local,
            cancel,
            accept,
            connections,
            socket_file,
        })
    }
}

impl NbdServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> &ListenAddr {
        &self.local
    }

    /// Stops accepting, tells every connection to stop reading requests, waits for
    /// requests already handed to the backend to be answered, and removes the socket
    /// file (if it is still ours).
    pub async fn shutdown(self) {
        self.cancel.cancel();
        if let Err(e) = self.accept.await {
            warn!("NBD accept loop ended abnormally: {e}");
        }
        self.connections.close();
        self.connections.wait().await;
        if let Some((path, dev, ino)) = &self.socket_file {
            let ours = std::fs::symlink_metadata(path)
                .is_ok_and(|m| m.file_type().is_socket() && m.dev() == *dev && m.ino() == *ino);
            if ours {
                if let Err(e) = std::fs::remove_file(path) {
                    warn!(path = %path.display(), "cannot remove NBD socket: {e}");
                }
            }
        }
        info!(addr = ?self.local, "NBD server stopped");
    }
}

fn io_err(addr: &impl std::fmt::Display, source: io::Error) -> ListenError {
    ListenError::Io {
        addr: addr.to_string(),
        source,
    }
}

/// Binds a UNIX socket, first removing a socket file no server answers on. Returns the
/// file's identity so that shutdown removes only the file we created.
fn bind_unix(path: &Path) -> Result<(UnixListener, (PathBuf, u64, u64)), ListenError> {
    let shown = path.display();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(ListenError::NotASocket(path.to_owned()));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(ListenError::InUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(|e| io_err(&shown, e))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| io_err(&shown, e))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| io_err(&shown, e))?;
    Ok((listener, (path.to_owned(), meta.dev(), meta.ino())))
}

async fn bind_tcp(family: Family, host: &str, port: u16) -> Result<TcpListener, ListenError> {
    let shown = format!("{host}:{port}");
    let candidates = tokio::net::lookup_host((host, port))
        .await
        .map_err(|e| io_err(&shown, e))?;
    let mut last_error = None;
    for sa in candidates {
        let wanted = match family {
            Family::Any => true,
            Family::V4 => sa.is_ipv4(),
            Family::V6 => sa.is_ipv6(),
        };
        if !wanted {
            continue;
        }
        let bound = (|| {
            let socket = if sa.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            socket.set_reuseaddr(true)?;
            socket.bind(sa)?;
            socket.listen(1024)
        })();
        match bound {
            Ok(l) => return Ok(l),
            Err(e) => last_error = Some(e),
        }
    }
    Err(match last_error {
        Some(e) => io_err(&shown, e),
        None => ListenError::NoAddress(shown),
    })
}

async fn accept_loop<B: Backend>(
    listener: Listener,
    exports: Arc<ExportSet<B>>,
    options: Arc<ServeOptions>,
    cancel: CancellationToken,
    connections: TaskTracker,
) {
    static NEXT_ID: AtomicU64 = AtomicU64::new(1);
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = accept(&listener) => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Typically EMFILE: back off rather than spin, and keep serving.
                warn!("NBD accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let span = info_span!("nbd", conn = id, peer = %peer);
        let (exports, options, cancel) = (exports.clone(), options.clone(), cancel.clone());
        connections.spawn(
            async move {
                info!("connection accepted");
                let result = match stream {
                    Stream::Tcp(s) => serve_connection_with(s, exports, &options, cancel).await,
                    Stream::Unix(s) => serve_connection_with(s, exports, &options, cancel).await,
                };
                match result {
                    Ok(how) => info!(reason = ?how, "connection closed"),
                    Err(e) => warn!("connection dropped: {e}"),
                }
            }
            .instrument(span),
        );
    }
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Stream, String)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, peer) = l.accept().await?;
            // Replies are small and latency-bound; Nagle would hold them back.
            s.set_nodelay(true)?;
            Ok((Stream::Tcp(s), peer.to_string()))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), "unix".to_owned()))
        }
    }
}
