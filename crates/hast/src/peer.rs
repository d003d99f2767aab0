//! The peer link's socket side: framed reads and writes over TCP with timeouts, address
//! resolution, connecting (bound to `source`), and the peer-address check. What the
//! frames mean is `hast_core::proto`'s business.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use hast_core::config::{Address, Family};
use hast_core::config::{Checksum, Compression};
use hast_core::proto::auth;
use hast_core::proto::handshake::{self, ErrorMessage, HandshakeError};
use hast_core::proto::payload::{self, Body, PayloadError};
use hast_core::proto::{FrameError, Header, Kind, HEADER_LEN};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Why the peer link failed. Every variant closes the connection.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    /// Socket error.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// Nothing arrived within the timeout.
    #[error("no data from the peer for {0} s")]
    Timeout(u64),
    /// The peer accepted nothing we sent for this long.
    #[error("the peer accepted no data for {0} s")]
    SendTimeout(u64),
    /// The peer closed the connection.
    #[error("connection closed by the peer")]
    Closed,
    /// A header failed validation.
    #[error("invalid frame: {0}")]
    Frame(#[from] FrameError),
    /// A payload failed its checksum or decompression.
    #[error("invalid payload: {0}")]
    Payload(#[from] PayloadError),
    /// A handshake message was malformed.
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// The peer sent something that makes no sense here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer refused us, with its reason.
    #[error("refused by the peer: {}", .0.message)]
    Refused(ErrorMessage),
    /// We refused the peer (and told it why).
    #[error("refused: {}", .0.message)]
    Refusing(ErrorMessage),
    /// The shared-secret authentication failed (or one side has no key).
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The address could not be resolved or connected.
    #[error("{0}")]
    Address(String),
}

/// A received frame.
#[derive(Debug)]
pub struct Frame {
    /// Its validated header.
    pub header: Header,
    /// Its payload, still transformed (see [`Frame::data`]).
    pub payload: Vec<u8>,
}

impl Frame {
    /// The payload with its transforms verified and undone: `length` bytes.
    pub fn data(&self) -> Result<Vec<u8>, PayloadError> {
        payload::open(self.header.transform, &self.payload, self.header.length)
    }
}

/// Fills `buf`. `timeout` bounds the wait for *progress* (any byte), not the whole read,
/// so a large payload on a slow but live link is not mistaken for a dead peer.
async fn read_full<R: AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    timeout: Duration,
) -> Result<(), PeerError> {
    let mut filled = 0;
    while filled < buf.len() {
        match tokio::time::timeout(timeout, r.read(&mut buf[filled..])).await {
            Err(_) => return Err(PeerError::Timeout(timeout.as_secs())),
            Ok(Ok(0)) => return Err(PeerError::Closed),
            Ok(Ok(n)) => filled += n,
            Ok(Err(e)) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Reads one frame, waiting at most `timeout` for each piece of it.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    timeout: Duration,
) -> Result<Frame, PeerError> {
    let mut head = [0u8; HEADER_LEN];
    read_full(r, &mut head, timeout).await?;
    let header = Header::decode(&head)?;
    // Bounded by Header::decode (Kind::max_payload), so a hostile length cannot make us
    // allocate more than one maximal I/O.
    let mut payload = vec![0u8; header.payload_len as usize];
    read_full(r, &mut payload, timeout).await?;
    Ok(Frame { header, payload })
}

/// A frame on its way out. Data is shared with the local write (no copy) unless a
/// transform produced a new buffer.
#[derive(Debug)]
pub struct Outgoing {
    /// Header; `payload_len` and `transform` are filled in by the constructors.
    pub header: Header,
    /// Checksum bytes, sent before the body.
    pub prefix: Vec<u8>,
    /// The body.
    pub body: OutBody,
}

/// The body of an outgoing frame.
#[derive(Debug)]
pub enum OutBody {
    /// No payload.
    None,
    /// Shared application data.
    Shared(Arc<Vec<u8>>),
    /// A buffer of its own.
    Owned(Vec<u8>),
}

impl Outgoing {
    /// A frame without payload.
    pub fn bare(header: Header) -> Outgoing {
        Outgoing {
            header: Header {
                payload_len: 0,
                transform: 0,
                ..header
            },
            prefix: Vec::new(),
            body: OutBody::None,
        }
    }

    /// A handshake frame carrying `msg` as JSON.
    pub fn json<T: Serialize>(kind: Kind, msg: &T) -> Result<Outgoing, PeerError> {
        let bytes = handshake::encode(msg)?;
        let header = Header {
            payload_len: bytes.len() as u32,
            ..Header::new(kind, 0)
        };
        Ok(Outgoing {
            header,
            prefix: Vec::new(),
            body: OutBody::Owned(bytes),
        })
    }

    /// A frame carrying `data` (its `length`), transformed as configured.
    pub fn data(
        header: Header,
        data: Arc<Vec<u8>>,
        compression: Compression,
        checksum: Checksum,
    ) -> Outgoing {
        let sealed = payload::seal(&data, compression, checksum);
        let len = sealed.len(&data) as u32;
        let header = Header {
            transform: sealed.transform,
            payload_len: len,
            length: data.len() as u32,
            ..header
        };
        let body = match sealed.body {
            Body::Original => OutBody::Shared(data),
            Body::Packed(p) => OutBody::Owned(p),
        };
        Outgoing {
            header,
            prefix: sealed.prefix,
            body,
        }
    }

    /// Writes the frame (no flush).
    pub async fn write_to<W: AsyncWrite + Unpin>(&self, w: &mut W) -> io::Result<()> {
        w.write_all(&self.header.encode()).await?;
        w.write_all(&self.prefix).await?;
        match &self.body {
            OutBody::None => Ok(()),
            OutBody::Shared(data) => w.write_all(data).await,
            OutBody::Owned(data) => w.write_all(data).await,
        }
    }
}

/// Sends one frame and flushes, within `timeout`.
pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    frame: &Outgoing,
    timeout: Duration,
) -> Result<(), PeerError> {
    let io = async {
        frame.write_to(w).await?;
        w.flush().await
    };
    match tokio::time::timeout(timeout, io).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(PeerError::Timeout(timeout.as_secs())),
    }
}

/// Reads a handshake frame that must be `kind` (an `Error` frame becomes `Refused`).
pub async fn expect_json<R, T>(r: &mut R, kind: Kind, timeout: Duration) -> Result<T, PeerError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let frame = read_frame(r, timeout).await?;
    if frame.header.kind == Kind::Error {
        return Err(PeerError::Refused(handshake::decode(&frame.payload)?));
    }
    if frame.header.kind != kind {
        return Err(PeerError::Protocol(format!(
            "expected {kind:?}, got {:?}",
            frame.header.kind
        )));
    }
    Ok(handshake::decode(&frame.payload)?)
}

/// The socket addresses `addr` stands for (TCP only), in resolver order.
pub async fn resolve(addr: &Address) -> Result<Vec<SocketAddr>, PeerError> {
    let Address::Tcp { family, host, port } = addr else {
        return Err(PeerError::Address(format!("{addr} is not a TCP address")));
    };
    let found = tokio::net::lookup_host((host.as_str(), *port))
        .await
        .map_err(|e| PeerError::Address(format!("cannot resolve {addr}: {e}")))?;
    let list: Vec<SocketAddr> = found
        .filter(|a| match family {
            Family::Any => true,
            Family::V4 => a.is_ipv4(),
            Family::V6 => a.is_ipv6(),
        })
        .collect();
    if list.is_empty() {
        return Err(PeerError::Address(format!(
            "{addr} resolves to no usable address"
        )));
    }
    Ok(list)
}

/// Whether `peer` is one of the addresses of `remote` (the IP only, as FreeBSD).
pub async fn is_remote(remote: &Address, peer: IpAddr) -> bool {
    let normalise = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    };
    match resolve(remote).await {
        Ok(list) => list.iter().any(|a| normalise(a.ip()) == normalise(peer)),
        Err(_) => false,
    }
}

/// Connects to `remote` (first resolved address), bound to `source` if given.
pub async fn connect(
    remote: &Address,
    source: Option<&Address>,
    timeout: Duration,
) -> Result<TcpStream, PeerError> {
    let target = resolve(remote).await?[0];
    let socket = if target.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        let Address::Tcp { host, port, .. } = source else {
            return Err(PeerError::Address(format!(
                "source {source} is not a TCP address"
            )));
        };
        let ip: IpAddr = host
            .parse()
            .map_err(|_| PeerError::Address(format!("source {source} must be an IP address")))?;
        socket.bind(SocketAddr::new(ip, *port))?;
    }
    let stream = match tokio::time::timeout(timeout, socket.connect(target)).await {
        Ok(stream) => stream?,
        Err(_) => return Err(PeerError::Timeout(timeout.as_secs())),
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Keepalive interval for a `timeout`: well inside it, so one lost keepalive is no outage.
pub fn keepalive_interval(timeout: Duration) -> Duration {
    (timeout / 3).clamp(Duration::from_millis(500), Duration::from_secs(10))
}

/// An `AsyncWrite` that records when the socket last accepted bytes (milliseconds since
/// `base`, shared so the writer's watchdog can read it while a write is under way).
struct ProgressWriter<W> {
    inner: W,
    base: std::time::Instant,
    last_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl<W> ProgressWriter<W> {
    fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, std::sync::atomic::Ordering::Relaxed);
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for ProgressWriter<W> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let std::task::Poll::Ready(Ok(n)) = &polled {
            if *n > 0 {
                self.touch();
            }
        }
        polled
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Where a connection's writer takes its frames from: a bounded queue (the secondary's
/// replies, with backpressure) or an unbounded one (the primary's requests, bounded by
/// the state machine's budget of unanswered bytes instead).
pub trait FrameQueue: Send {
    /// The next frame; `None` when every sender is gone.
    fn next(&mut self) -> impl std::future::Future<Output = Option<Outgoing>> + Send;
    /// A frame that is already queued, if any.
    fn try_next(&mut self) -> Option<Outgoing>;
}

impl FrameQueue for tokio::sync::mpsc::Receiver<Outgoing> {
    fn next(&mut self) -> impl std::future::Future<Output = Option<Outgoing>> + Send {
        self.recv()
    }
    fn try_next(&mut self) -> Option<Outgoing> {
        self.try_recv().ok()
    }
}

impl FrameQueue for tokio::sync::mpsc::UnboundedReceiver<Outgoing> {
    fn next(&mut self) -> impl std::future::Future<Output = Option<Outgoing>> + Send {
        self.recv()
    }
    fn try_next(&mut self) -> Option<Outgoing> {
        self.try_recv().ok()
    }
}

/// The one writer of a connection: sends queued frames (batching what is queued into one
/// flush), and a keepalive whenever nothing was sent for [`keepalive_interval`]. Ends when
/// the queue closes (Ok), `stop` fires (Ok), or the socket accepts nothing for `timeout`
/// (a slow link that still moves is not a dead one).
pub async fn send_loop<W: AsyncWrite + Unpin, Q: FrameQueue>(
    rx: &mut Q,
    w: W,
    timeout: Duration,
    stop: &tokio_util::sync::CancellationToken,
) -> Result<(), PeerError> {
    let base = std::time::Instant::now();
    let last_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let progress = ProgressWriter {
        inner: w,
        base,
        last_ms: last_ms.clone(),
    };
    let mut w = tokio::io::BufWriter::with_capacity(256 << 10, progress);
    let idle = keepalive_interval(timeout);
    let stalled = || {
        let last = Duration::from_millis(last_ms.load(std::sync::atomic::Ordering::Relaxed));
        base.elapsed().saturating_sub(last) > timeout
    };
    loop {
        let frame = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            frame = tokio::time::timeout(idle, rx.next()) => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(()),
            Err(_) => Outgoing::bare(Header::new(Kind::Keepalive, 0)),
        };
        w.get_ref().touch();
        let io = async {
            frame.write_to(&mut w).await?;
            while let Some(next) = rx.try_next() {
                next.write_to(&mut w).await?;
            }
            w.flush().await
        };
        tokio::pin!(io);
        let mut check = tokio::time::interval(Duration::from_millis(250));
        loop {
            tokio::select! {
                result = &mut io => { result?; break; }
                _ = check.tick() => {
                    if stalled() {
                        return Err(PeerError::SendTimeout(timeout.as_secs()));
                    }
                }
            }
        }
    }
}

/// Reads the shared key of `authkey`: the file's bytes, less one trailing newline (so
/// `echo secret > key` works), at least [`auth::MIN_KEY_LEN`] of them.
pub fn load_key(path: &std::path::Path) -> Result<Vec<u8>, PeerError> {
    let mut key = std::fs::read(path)
        .map_err(|e| PeerError::Auth(format!("cannot read authkey {}: {e}", path.display())))?;
    if key.last() == Some(&b'\n') {
        key.pop();
        if key.last() == Some(&b'\r') {
            key.pop();
        }
    }
    if key.len() < auth::MIN_KEY_LEN {
        return Err(PeerError::Auth(format!(
            "authkey {} holds {} bytes; at least {} are needed (e.g. head -c 32 /dev/urandom)",
            path.display(),
            key.len(),
            auth::MIN_KEY_LEN
        )));
    }
    Ok(key)
}

/// A fresh random nonce for the authentication exchange.
pub fn nonce() -> [u8; auth::NONCE_LEN] {
    let mut n = [0u8; auth::NONCE_LEN];
    let _ = rustix::rand::getrandom(&mut n, rustix::rand::GetRandomFlags::empty());
    n
}
