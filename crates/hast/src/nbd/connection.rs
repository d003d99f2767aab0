//! One client connection: the handshake driven by `hast_core::nbd::Negotiation`, then
//! the transmission phase with many requests in flight.
//!
//! Shape of the transmission phase: this task reads and validates requests and spawns one
//! task per request; a single writer task owns the socket's write half and sends replies
//! in completion order (by cookie). Two semaphores bound what one client can make us
//! hold: the number of requests in flight and the bytes of their payloads. A permit is
//! released only once the reply is written, so a client that stops reading replies stops
//! us reading its requests.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use hast_core::nbd::wire::{greeting, simple_reply, REQUEST_LEN};
use hast_core::nbd::{validate, Command, ExportInfo, NbdErrno, Negotiated, Negotiation};
use hast_core::nbd::{NegotiationError, RequestHeader, Then, Verdict};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};

use super::backend::{Backend, ExportSet};

/// Per-connection limits.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A client that leaves any single handshake read or write unfinished this long is
    /// dropped.
    pub handshake_timeout: Duration,
    /// Requests in flight per connection.
    pub max_in_flight: usize,
    /// Payload bytes (READ and WRITE lengths) in flight per connection; at least the
    /// advertised maximum payload so that one maximal request always fits.
    pub max_in_flight_bytes: u32,
    /// On shutdown, how long a connection waits for its client to read the replies still
    /// owed before dropping them.
    pub shutdown_grace: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            handshake_timeout: Duration::from_secs(30),
            max_in_flight: 64,
            max_in_flight_bytes: 128 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// How a connection ended without error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Closed {
    /// The client sent `NBD_OPT_ABORT` during the handshake.
    Aborted,
    /// The client sent `NBD_CMD_DISC`.
    Disconnected,
    /// The client closed the socket between messages.
    HungUp,
    /// The server is shutting down.
    Shutdown,
}

/// Why a connection was dropped.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Socket error, or the client closed the socket in the middle of a message.
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    /// The handshake broke a rule that ends the connection.
    #[error("handshake: {0}")]
    Handshake(#[from] NegotiationError),
    /// The client went quiet during the handshake.
    #[error("handshake timed out")]
    HandshakeTimeout,
    /// A request did not start with the request magic.
    #[error("{0}")]
    BadMagic(#[from] hast_core::nbd::wire::BadRequestMagic),
    /// A WRITE longer than the maximum payload we advertised.
    #[error("WRITE of {0} bytes exceeds the advertised maximum payload")]
    WriteTooLarge(u32),
    /// The export chosen in the handshake vanished (an ExportSet bug).
    #[error("negotiated export {0} is missing")]
    MissingExport(String),
}

/// Serves one client with [`ServeOptions::default`].
pub async fn serve_connection<S, B>(
    stream: S,
    exports: Arc<ExportSet<B>>,
    shutdown: CancellationToken,
) -> Result<Closed, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    serve_connection_with(stream, exports, &ServeOptions::default(), shutdown).await
}

/// Serves one client until it disconnects, breaks the protocol, or `shutdown` fires; in
/// every case requests already handed to the backend finish before this returns.
pub async fn serve_connection_with<S, B>(
    mut stream: S,
    exports: Arc<ExportSet<B>>,
    options: &ServeOptions,
    shutdown: CancellationToken,
) -> Result<Closed, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let handshake = handshake(&mut stream, &exports, options.handshake_timeout);
    let negotiated = tokio::select! {
        _ = shutdown.cancelled() => return Ok(Closed::Shutdown),
        r = handshake => match r? {
            Some(n) => n,
            None => return Ok(Closed::Aborted),
        },
    };
    let backend = exports
        .get(negotiated.export)
        .cloned()
        .ok_or_else(|| ConnectionError::MissingExport(negotiated.name.clone()))?;
    debug!(export = %negotiated.name, flags = negotiated.flags, "entering transmission");
    transmission(stream, backend, options, shutdown).await
}

async fn handshake<S, B>(
    stream: &mut S,
    exports: &ExportSet<B>,
    limit: Duration,
) -> Result<Option<Negotiated>, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Backend,
{
    timed(limit, stream.write_all(&greeting())).await?;
    timed(limit, stream.flush()).await?;
    let mut negotiation = Negotiation::new(exports.snapshot());
    loop {
        let mut buf = vec![0u8; negotiation.expect()];
        timed(limit, stream.read_exact(&mut buf)).await?;
        let outcome = negotiation.feed(&buf)?;
        if !outcome.reply.is_empty() {
            timed(limit, stream.write_all(&outcome.reply)).await?;
            timed(limit, stream.flush()).await?;
        }
        match outcome.then {
            Then::Continue => {}
            Then::Discard(n) => {
                let mut limited = (&mut *stream).take(n);
                let mut sink = tokio::io::sink();
                if timed(limit, tokio::io::copy(&mut limited, &mut sink)).await? < n {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
            }
            Then::Close => return Ok(None),
            Then::Transmission(n) => return Ok(Some(n)),
        }
    }
}

async fn timed<T>(
    limit: Duration,
    fut: impl std::future::Future<Output = io::Result<T>>,
) -> Result<T, ConnectionError> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ConnectionError::HandshakeTimeout),
    }
}

/// A reply on its way to the writer, with the permits it holds until it is sent.
struct Reply {
    cookie: u64,
    result: Result<Option<Vec<u8>>, NbdErrno>,
    _permits: Permits,
}

async fn transmission<S, B>(
    stream: S,
    backend: Arc<B>,
    options: &ServeOptions,
    shutdown: CancellationToken,
) -> Result<Closed, ConnectionError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    B: Backend,
{
    let info = backend.info();
    let (rd, wr) = tokio::io::split(stream);
    let mut rd = BufReader::with_capacity(128 * 1024, rd);
    let (tx, rx) = mpsc::channel::<Reply>(options.max_in_flight.max(1) * 2);
    let writer_gone = CancellationToken::new();
    let writer = tokio::spawn(write_replies(wr, rx, writer_gone.clone()));
    let tasks = TaskTracker::new();
    let limits = Limits::new(options, &info);

    let result = read_requests(
        &mut rd,
        &info,
        &backend,
        &limits,
        &tx,
        &tasks,
        &shutdown,
        &writer_gone,
    )
    .await;

    // Whatever ended the loop, requests already handed to the backend complete and their
    // replies are sent (if the socket still takes them) before the connection closes.
    // The writer ends once every task has sent its reply and dropped its sender. A client
    // that stopped reading replies would stall it forever; on shutdown it gets a grace
    // period, then the writer is aborted, which drops the queue and lets tasks finish.
    tasks.close();
    drop(tx);
    let mut writer = writer;
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(options.shutdown_grace).await;
    };
    tokio::select! {
        r = &mut writer => {
            if let Ok(Err(e)) = r {
                debug!("writing replies failed: {e}");
            }
        }
        _ = grace => {
            warn!("client not reading replies; dropping them to shut down");
            writer.abort();
            let _ = writer.await;
        }
    }
    tasks.wait().await;
    result
}

struct Limits {
    slots: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_bytes: u32,
}

impl Limits {
    fn new(options: &ServeOptions, info: &ExportInfo) -> Limits {
        let (_, _, max_payload) = info.block_sizes();
        let max_bytes = options.max_in_flight_bytes.max(max_payload);
        Limits {
            slots: Arc::new(Semaphore::new(options.max_in_flight.max(1))),
            bytes: Arc::new(Semaphore::new(max_bytes as usize)),
            max_bytes,
        }
    }

    /// Waits for room for one more request carrying `payload` bytes. The semaphores are
    /// never closed, so a permit is always granted; `None` would only mean "unbounded".
    async fn acquire(&self, payload: u32) -> Permits {
        let slot = self.slots.clone().acquire_owned().await.ok();
        let bytes = self
            .bytes
            .clone()
            .acquire_many_owned(payload.min(self.max_bytes))
            .await
            .ok();
        (slot, bytes)
    }
}

type Permits = (Option<OwnedSemaphorePermit>, Option<OwnedSemaphorePermit>);

#[allow(clippy::too_many_arguments)]
async fn read_requests<R, B>(
    rd: &mut R,
    info: &ExportInfo,
    backend: &Arc<B>,
    limits: &Limits,
    tx: &mpsc::Sender<Reply>,
    tasks: &TaskTracker,
    shutdown: &CancellationToken,
    writer_gone: &CancellationToken,
) -> Result<Closed, ConnectionError>
where
    R: AsyncRead + Unpin,
    B: Backend,
{
    let mut header = [0u8; REQUEST_LEN];
    loop {
        let first = tokio::select! {
            biased;
            _ = shutdown.cancelled() => return Ok(Closed::Shutdown),
            _ = writer_gone.cancelled() => return Ok(Closed::HungUp),
            r = rd.read(&mut header[..1]) => r?,
        };
        if first == 0 {
            return Ok(Closed::HungUp);
        }
        // Every read below also watches shutdown: a client stalling mid-message must not
        // hold the server's shutdown.
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(Closed::Shutdown),
            r = rd.read_exact(&mut header[1..]) => { r?; }
        }
        let req = RequestHeader::parse(&header)?;
        match validate(&req, info) {
            Verdict::Close { length } => {
                warn!(
                    cookie = req.cookie,
                    length, "WRITE larger than the advertised maximum"
                );
                return Err(ConnectionError::WriteTooLarge(length));
            }
            Verdict::Reject { errno, discard } => {
                warn!(
                    command = req.command,
                    flags = req.flags,
                    offset = req.offset,
                    length = req.length,
                    %errno,
                    "request rejected"
                );
                let mut limited = (&mut *rd).take(u64::from(discard));
                let mut sink = tokio::io::sink();
                let copied = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(Closed::Shutdown),
                    r = tokio::io::copy(&mut limited, &mut sink) => r?,
                };
                if copied < u64::from(discard) {
                    return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
                }
                let reply = Reply {
                    cookie: req.cookie,
                    result: Err(errno),
                    _permits: (None, None),
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(Closed::Shutdown),
                    r = tx.send(reply) => if r.is_err() { return Ok(Closed::HungUp) },
                }
            }
            Verdict::Execute(Command::Disconnect) => return Ok(Closed::Disconnected),
            Verdict::Execute(command) => {
                let payload = match command {
                    Command::Read { length, .. } | Command::Write { length, .. } => length,
                    _ => 0,
                };
                // Waiting here is the backpressure on a client that floods requests or
                // does not read replies; shutdown must still get through.
                let permits = tokio::select! {
                    _ = shutdown.cancelled() => return Ok(Closed::Shutdown),
                    p = limits.acquire(payload) => p,
                };
                let data = match command {
                    Command::Write { length, .. } => {
                        let mut data = vec![0u8; length as usize];
                        // A short payload means the client vanished mid-request: the
                        // partial write is dropped, never handed to the backend.
                        tokio::select! {
                            biased;
                            _ = shutdown.cancelled() => return Ok(Closed::Shutdown),
                            r = rd.read_exact(&mut data) => { r?; }
                        }
                        data
                    }
                    _ => Vec::new(),
                };
                let backend = Arc::clone(backend);
                let tx = tx.clone();
                let cookie = req.cookie;
                tasks.spawn(async move {
                    let result = execute(&*backend, command, data).await;
                    let reply = Reply {
                        cookie,
                        result,
                        _permits: permits,
                    };
                    // The writer is gone only if the client is; nothing left to tell it.
                    let _ = tx.send(reply).await;
                });
            }
        }
    }
}

async fn execute<B: Backend>(
    backend: &B,
    command: Command,
    data: Vec<u8>,
) -> Result<Option<Vec<u8>>, NbdErrno> {
    match command {
        Command::Read { length: 0, .. } => Ok(Some(Vec::new())),
        Command::Read { offset, length } => {
            let buf = backend.read(offset, length).await?;
            if buf.len() != length as usize {
                warn!(
                    offset,
                    length,
                    got = buf.len(),
                    "backend returned a short read"
                );
                return Err(NbdErrno::Eio);
            }
            Ok(Some(buf))
        }
        Command::Write { length: 0, .. }
        | Command::Trim { length: 0, .. }
        | Command::WriteZeroes { length: 0, .. } => Ok(None),
        Command::Write { offset, fua, .. } => backend.write(offset, data, fua).await.map(|_| None),
        Command::Flush => backend.flush().await.map(|_| None),
        Command::Trim {
            offset,
            length,
            fua,
        } => backend.trim(offset, length, fua).await.map(|_| None),
        Command::WriteZeroes {
            offset,
            length,
            may_trim,
            fua,
        } => backend
            .write_zeroes(offset, length, may_trim, fua)
            .await
            .map(|_| None),
        Command::Disconnect => Ok(None),
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    wr: W,
    mut rx: mpsc::Receiver<Reply>,
    gone: CancellationToken,
) -> io::Result<()> {
    let mut w = BufWriter::with_capacity(128 * 1024, wr);
    let result = async {
        while let Some(reply) = rx.recv().await {
            put_reply(&mut w, reply).await?;
            // Batch whatever else is ready into the same flush.
            while let Ok(reply) = rx.try_recv() {
                put_reply(&mut w, reply).await?;
            }
            w.flush().await?;
        }
        w.shutdown().await
    }
    .await;
    if result.is_err() {
        gone.cancel();
    }
    result
}

async fn put_reply<W: AsyncWrite + Unpin>(w: &mut BufWriter<W>, reply: Reply) -> io::Result<()> {
    match reply.result {
        Ok(data) => {
            w.write_all(&simple_reply(None, reply.cookie)).await?;
            if let Some(data) = data {
                w.write_all(&data).await?;
            }
        }
        Err(errno) => {
            w.write_all(&simple_reply(Some(errno), reply.cookie))
                .await?
        }
    }
    Ok(())
}
