//! The peer listener: accepts primaries' connections on the `listen` addresses and hands
//! each, once checked, to the secondary worker of the resource it names.
//!
//! Checks, in order, each failure logged with the peer's address and the reason:
//! 1. the peer's IP is the `remote` of some resource (otherwise closed without a word,
//!    as FreeBSD: strangers learn nothing);
//! 2. it sends a valid `Hello` within the handshake timeout;
//! 3. the resource is configured here, the peer is that resource's `remote`, and the
//!    resource is in role secondary (otherwise an `Error` frame says why).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hast_core::config::Address;
use hast_core::proto::handshake::{ErrorMessage, Hello, Refusal};
use hast_core::proto::Kind;
use tokio::io::BufReader;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::resource::ResourceHandle;
use super::secondary::PeerConn;
use crate::peer::{self, Outgoing};

/// Time a connecting primary has to say `Hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(20);

/// Binds every `listen` address. Fails only if none can be bound.
pub async fn bind(addrs: &[Address]) -> anyhow::Result<Vec<TcpListener>> {
    let mut listeners = Vec::new();
    let mut errors = Vec::new();
    for addr in addrs {
        match bind_one(addr).await {
            Ok(l) => {
                info!("listening for primaries on {addr}");
                listeners.push(l);
            }
            Err(e) => {
                warn!("cannot listen on {addr}: {e:#}");
                errors.push(format!("{addr}: {e:#}"));
            }
        }
    }
    if listeners.is_empty() && !addrs.is_empty() {
        anyhow::bail!("cannot listen on any address: {}", errors.join("; "));
    }
    Ok(listeners)
}

async fn bind_one(addr: &Address) -> anyhow::Result<TcpListener> {
    let target = peer::resolve(addr).await?[0];
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if target.is_ipv6() {
        // So that `[::]:8457` and `0.0.0.0:8457` (the defaults) can both be bound.
        rustix::net::sockopt::set_ipv6_v6only(&socket, true).context("IPV6_V6ONLY")?;
    }
    socket.set_reuseaddr(true)?;
    socket
        .bind(target)
        .with_context(|| format!("bind {target}"))?;
    Ok(socket.listen(8)?)
}

/// What the listener needs from the daemon: the configuration in force and the resource a
/// primary asks for (the supervisor provides them; the listener does not know it).
pub trait Routing: Send + Sync + 'static {
    /// The configuration in force.
    fn current_config(&self) -> Arc<hast_core::config::Config>;
    /// The running resource of that name.
    fn resource_handle(&self, name: &str) -> Option<Arc<ResourceHandle>>;
}

/// Accepts connections until `stop`.
pub async fn serve<R: Routing>(sup: Arc<R>, listener: TcpListener, stop: CancellationToken) {
    loop {
        let (stream, addr) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(x) => x,
                Err(e) => {
                    warn!("peer accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let sup = sup.clone();
        tokio::spawn(async move {
            if let Err(reason) = admit(&sup, stream, addr).await {
                warn!("connection from {addr} refused: {reason}");
            }
        });
    }
}

async fn refuse(
    mut stream: tokio::net::tcp::OwnedWriteHalf,
    reason: Refusal,
    message: String,
) -> String {
    let msg = ErrorMessage {
        reason,
        message: message.clone(),
    };
    if let Ok(frame) = Outgoing::json(Kind::Error, &msg) {
        let _ = peer::send(&mut stream, &frame, HELLO_TIMEOUT).await;
    }
    message
}

async fn admit<R: Routing>(
    sup: &Arc<R>,
    stream: TcpStream,
    addr: SocketAddr,
) -> Result<(), String> {
    let _ = stream.set_nodelay(true);
    let config = sup.current_config();
    let mut known = false;
    for res in &config.resources {
        if let Some(remote) = &res.remote {
            if peer::is_remote(remote, addr.ip()).await {
                known = true;
                break;
            }
        }
    }
    if !known {
        return Err("not the remote address of any resource".into());
    }
    let (rd, wr) = stream.into_split();
    let mut reader = BufReader::new(rd);
    let hello: Hello = peer::expect_json(&mut reader, Kind::Hello, HELLO_TIMEOUT)
        .await
        .map_err(|e| format!("no valid hello: {e}"))?;
    let Some(res) = config.resource(&hello.resource) else {
        let text = format!("resource '{}' is not configured here", hello.resource);
        return Err(refuse(wr, Refusal::UnknownResource, text).await);
    };
    let allowed = match &res.remote {
        Some(remote) => peer::is_remote(remote, addr.ip()).await,
        None => false,
    };
    if !allowed {
        let text = format!("{addr} is not the remote of resource '{}'", res.name);
        return Err(refuse(wr, Refusal::NoAccess, text).await);
    }
    let Some(handle) = sup.resource_handle(&res.name) else {
        let text = format!("resource '{}' is not configured here", res.name);
        return Err(refuse(wr, Refusal::UnknownResource, text).await);
    };
    let conn = Box::new(PeerConn {
        reader,
        writer: wr,
        peer: addr,
        hello,
    });

    match handle.offer_peer(conn) {
        Ok(()) => Ok(()),
        Err((conn, role)) => {
            let text = format!(
                "{}: this node acts as {} for the resource and not as secondary",
                res.name,
                role.as_str()
            );
            Err(refuse(conn.writer, Refusal::NotSecondary, text).await)
        }
    }
}
