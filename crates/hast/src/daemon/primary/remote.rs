//! The primary's side of the peer link: connect, handshake, and a [`Session`] that carries
//! requests to the secondary and matches replies by sequence number.
//!
//! Tasks per session: a *writer* (the only task writing the socket; sends a keepalive when
//! idle) and a *reader* (matches `Received`/`Reply` frames to waiting requests). When
//! either fails, the session closes: every request still waiting gets
//! [`RemoteError::Disconnected`], so its extents stay dirty and are synchronised later.
//!
//! The *connector* task keeps a session up while the resource is primary: it connects,
//! runs the handshake, waits for the session to end, and retries with backoff (1 s,
//! doubling, at most [`RECONNECT_MAX`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hast_core::config::{Checksum, Compression};
use hast_core::decision;
use hast_core::proto::auth;
use hast_core::proto::handshake::{self, Hello, Refusal, State, StateReply, SyncSource, Welcome};
use hast_core::proto::{Header, Kind};
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::io::PrimaryCore;
use crate::daemon::hooks::Event;
use crate::peer::{self, Frame, Outgoing, PeerError};

/// Longest wait between reconnection attempts (FreeBSD's HAST_KEEPALIVE).
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);
/// Frames queued for the writer before senders wait.
const SEND_QUEUE: usize = 1024;
/// Bytes of write data sent to the secondary and not yet answered, at most. This bounds
/// the memory an `async` backlog can take, and how far `async` runs ahead of the
/// secondary before writes wait (at least one maximal request must fit).
const UNANSWERED_BYTES: u32 = 64 << 20;

/// Why a request did not succeed on the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteError {
    /// The connection was lost before the final reply.
    Disconnected,
    /// The secondary answered with this errno.
    Failed(u32),
}

/// What a request waits for.
pub struct Ticket {
    /// Fires when the secondary has the data in memory (memsync writes only).
    pub received: Option<oneshot::Receiver<()>>,
    /// The final result; READ data on success.
    pub reply: oneshot::Receiver<Result<Vec<u8>, RemoteError>>,
}

impl Ticket {
    /// Waits for the final reply.
    pub async fn done(self) -> Result<Vec<u8>, RemoteError> {
        self.reply.await.unwrap_or(Err(RemoteError::Disconnected))
    }
}

struct Pending {
    received: Option<oneshot::Sender<()>>,
    reply: oneshot::Sender<Result<Vec<u8>, RemoteError>>,
    since: Instant,
    /// Released with the entry (reply or session end).
    _budget: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// An established link to the secondary.
pub struct Session {
    tx: mpsc::Sender<Outgoing>,
    pending: Mutex<HashMap<u64, Pending>>,
    /// When the secondary last answered a request (`Received` or `Reply`).
    last_answer: Mutex<Instant>,
    budget: Arc<tokio::sync::Semaphore>,
    next_seq: AtomicU64,
    closed: CancellationToken,
    /// Which side holds the good data, from the handshake.
    pub syncsrc: SyncSource,
    /// The secondary's counters at the handshake: the primary mirrors them after a sync.
    pub peer_counters: (u64, u64),
    compression: Compression,
    checksum: Checksum,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Session {
    /// Queues a request; `data` is sent as the payload of a WRITE. The returned ticket
    /// resolves when the secondary answers or the session dies.
    pub async fn submit(&self, mut header: Header, data: Option<Arc<Vec<u8>>>) -> Ticket {
        let budget = match &data {
            Some(d) => {
                let want = u32::try_from(d.len())
                    .unwrap_or(UNANSWERED_BYTES)
                    .min(UNANSWERED_BYTES);
                self.budget.clone().acquire_many_owned(want).await.ok()
            }
            None => None,
        };
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        header.seq = seq;
        let (reply_tx, reply_rx) = oneshot::channel();
        let (received_tx, received_rx) = if header.flags & hast_core::proto::flags::MEMSYNC != 0 {
            let (tx, rx) = oneshot::channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        let frame = match data {
            Some(data) => Outgoing::data(header, data, self.compression, self.checksum),
            None => Outgoing::bare(header),
        };
        if self.closed.is_cancelled() {
            let _ = reply_tx.send(Err(RemoteError::Disconnected));
            return Ticket {
                received: received_rx,
                reply: reply_rx,
            };
        }
        lock(&self.pending).insert(
            seq,
            Pending {
                received: received_tx,
                reply: reply_tx,
                since: Instant::now(),
                _budget: budget,
            },
        );
        if self.tx.send(frame).await.is_err() {
            // The writer is gone: the session is closing and will fail this request.
            self.close();
        }
        Ticket {
            received: received_rx,
            reply: reply_rx,
        }
    }

    /// Whether the session has ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_cancelled()
    }

    /// Ends the session: the tasks stop, every waiting request fails with Disconnected.
    pub fn close(&self) {
        self.closed.cancel();
        lock(&self.pending).clear();
    }

    /// Frames waiting to be sent, and requests waiting for their final reply.
    pub fn queue_sizes(&self) -> (u64, u64) {
        let send = self.tx.max_capacity() - self.tx.capacity();
        (send as u64, lock(&self.pending).len() as u64)
    }

    /// The age of the oldest request still waiting for its final reply.
    fn oldest_pending(&self) -> Option<Duration> {
        lock(&self.pending)
            .values()
            .map(|p| p.since.elapsed())
            .max()
    }

    /// Resolves when the session has ended.
    pub async fn closed(&self) {
        self.closed.cancelled().await;
    }
}

async fn writer_task(
    mut rx: mpsc::Receiver<Outgoing>,
    wr: OwnedWriteHalf,
    session: Arc<Session>,
    timeout: Duration,
    name: String,
) {
    if let Err(e) = peer::send_loop(&mut rx, wr, timeout, &session.closed).await {
        warn!(resource = %name, "sending to the secondary failed: {e}");
    }
    session.close();
}

async fn reader_task(rd: OwnedReadHalf, session: Arc<Session>, timeout: Duration, name: String) {
    let mut r = BufReader::with_capacity(256 << 10, rd);
    let result: Result<(), PeerError> = async {
        loop {
            let frame = tokio::select! {
                _ = session.closed() => return Ok(()),
                frame = peer::read_frame(&mut r, timeout) => frame?,
            };
            dispatch_reply(&session, frame)?;
        }
    }
    .await;
    if let Err(e) = result {
        warn!(resource = %name, "connection to the secondary lost: {e}");
    }
    session.close();
}

/// Keepalives prove the secondary's process is alive, not that its disk answers: when a
/// request has waited longer than `timeout` and no request at all was answered for as
/// long, the session ends (its extents stay dirty), so a stuck secondary cannot hang the
/// primary's writes forever, while a slow link whose answers still trickle in is kept.
async fn watchdog(session: Arc<Session>, timeout: Duration, name: String) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = session.closed() => return,
            _ = tick.tick() => {
                // Stuck, not slow: a request waits longer than `timeout` and nothing at
                // all was answered meanwhile (on a slow link answers keep trickling in).
                let quiet = lock(&session.last_answer).elapsed();
                if quiet > timeout && session.oldest_pending().is_some_and(|age| age > timeout) {
                    warn!(resource = %name, "the secondary did not complete a request within {} s; dropping the connection", timeout.as_secs());
                    session.close();
                    return;
                }
            }
        }
    }
}

fn dispatch_reply(session: &Session, frame: Frame) -> Result<(), PeerError> {
    let h = frame.header;
    if matches!(h.kind, Kind::Received | Kind::Reply) {
        *lock(&session.last_answer) = Instant::now();
    }
    match h.kind {
        Kind::Keepalive => Ok(()),
        Kind::Received => {
            if let Some(p) = lock(&session.pending).get_mut(&h.seq) {
                if let Some(tx) = p.received.take() {
                    let _ = tx.send(());
                }
            }
            Ok(())
        }
        Kind::Reply => {
            let Some(p) = lock(&session.pending).remove(&h.seq) else {
                return Err(PeerError::Protocol(format!(
                    "reply for unknown request {}",
                    h.seq
                )));
            };
            let result = if h.status != 0 {
                Err(RemoteError::Failed(h.status))
            } else if h.payload_len > 0 || h.length > 0 {
                // A payload that fails its checksum kills the link (and with it this
                // request): the data cannot be trusted, the extents stay dirty.
                Ok(frame.data()?)
            } else {
                Ok(Vec::new())
            };
            let _ = p.reply.send(result);
            Ok(())
        }
        other => Err(PeerError::Protocol(format!(
            "unexpected {other:?} frame from the secondary"
        ))),
    }
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(b)
}

/// Checks the secondary's proof of the key and returns ours (hex).
fn authenticate(
    key: &[u8],
    resource: &str,
    np: &[u8],
    welcome: &Welcome,
) -> Result<String, PeerError> {
    let ns = welcome.nonce.as_deref().and_then(auth::from_hex);
    let proof = welcome.proof.as_deref().and_then(auth::from_hex);
    let (Some(ns), Some(proof)) = (ns, proof) else {
        return Err(PeerError::Auth(
            "the secondary did not authenticate: it has no authkey (configure the same key on both nodes)".into(),
        ));
    };
    if !auth::verify(key, auth::Prover::Secondary, resource, np, &ns, &proof) {
        return Err(PeerError::Auth(
            "the secondary does not know our authkey (are the keys different?)".into(),
        ));
    }
    Ok(auth::to_hex(&auth::prove(
        key,
        auth::Prover::Primary,
        resource,
        np,
        &ns,
    )))
}

/// Connects and runs the primary's side of the handshake; on success the session's
/// tasks are running.
async fn establish(core: &Arc<PrimaryCore>) -> Result<Arc<Session>, PeerError> {
    let cfg = core.config();
    let Some(remote) = cfg.remote.clone() else {
        return Err(PeerError::Address("remote is 'none'".into()));
    };
    let timeout = Duration::from_secs(cfg.timeout.into());
    let stream = peer::connect(&remote, cfg.source.as_ref(), timeout).await?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);

    let key = cfg.authkey.as_deref().map(peer::load_key).transpose()?;
    let our_nonce = key.as_ref().map(|_| peer::nonce());
    let hello = Hello {
        versions: handshake::VERSIONS.to_vec(),
        resource: cfg.name.clone(),
        capabilities: key.iter().map(|_| auth::CAPABILITY.to_string()).collect(),
        nonce: our_nonce.map(|n| auth::to_hex(&n)),
    };
    peer::send(&mut wr, &Outgoing::json(Kind::Hello, &hello)?, timeout).await?;
    let welcome: Welcome = peer::expect_json(&mut rd, Kind::Welcome, timeout).await?;
    debug!(resource = %cfg.name, "secondary speaks protocol version {}", welcome.version);
    let proof = match (&key, &our_nonce) {
        (Some(key), Some(np)) => Some(authenticate(key, &cfg.name, np, &welcome)?),
        _ => None,
    };

    let mut state = core.handshake_state(random_u64).await?;
    state.proof = proof;
    peer::send(&mut wr, &Outgoing::json(Kind::State, &state)?, timeout).await?;
    let reply: StateReply = match peer::expect_json(&mut rd, Kind::StateReply, timeout).await {
        Err(PeerError::Refused(msg)) => {
            if msg.reason == Refusal::SplitBrain {
                core.report_split_brain();
            }
            return Err(PeerError::Refused(msg));
        }
        other => other?,
    };
    let bitmap = if reply.mapsize > 0 {
        let frame = peer::read_frame(&mut rd, timeout).await?;
        if frame.header.kind != Kind::Bitmap || frame.header.length != reply.mapsize {
            return Err(PeerError::Protocol(
                "expected the secondary's activemap".into(),
            ));
        }
        Some(frame.data()?)
    } else {
        None
    };
    core.apply_handshake(&state, &reply, bitmap.as_deref())
        .await
        .map_err(|e| PeerError::Protocol(format!("cannot record the handshake: {e}")))?;

    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    let session = Arc::new(Session {
        tx,
        pending: Mutex::new(HashMap::new()),
        last_answer: Mutex::new(Instant::now()),
        budget: Arc::new(tokio::sync::Semaphore::new(UNANSWERED_BYTES as usize)),
        next_seq: AtomicU64::new(1),
        closed: CancellationToken::new(),
        syncsrc: reply.syncsrc,
        peer_counters: (reply.localcnt, reply.remotecnt),
        compression: cfg.compression,
        checksum: cfg.checksum,
    });
    tokio::spawn(writer_task(
        rx,
        wr,
        session.clone(),
        timeout,
        cfg.name.clone(),
    ));
    tokio::spawn(reader_task(
        rd.into_inner(),
        session.clone(),
        timeout,
        cfg.name.clone(),
    ));
    tokio::spawn(watchdog(session.clone(), timeout, cfg.name.clone()));
    Ok(session)
}

/// Keeps the link to the secondary up until `stop`.
pub async fn connector(core: Arc<PrimaryCore>, stop: CancellationToken) {
    let mut backoff = Duration::from_secs(1);
    let mut last_error = String::new();
    loop {
        if core.config().remote.is_none() {
            // `remote none`: standalone by configuration; wait for a reload to change it.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_MAX) => continue,
            }
        }
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            attempt = establish(&core) => attempt,
        };
        match attempt {
            Ok(session) => {
                backoff = Duration::from_secs(1);
                last_error.clear();
                let remote = core.config().remote_text.clone();
                info!(resource = %core.name, "connected to {remote} (sync source {:?})", session.syncsrc);
                core.set_session(Some(session.clone()));
                core.fire(Event::Connect);
                let sync = tokio::spawn(super::sync::run(
                    core.clone(),
                    session.clone(),
                    core.sync_tracker(),
                ));
                tokio::select! {
                    _ = stop.cancelled() => {
                        session.close();
                        let _ = sync.await;
                        core.set_session(None);
                        return;
                    }
                    _ = session.closed() => {}
                }
                let _ = sync.await;
                core.set_session(None);
                // Writes the secondary had written but not flushed are owed now (and the
                // counters raised: they were acknowledged).
                let _ = core.flush_peer(async { Ok(()) }, false).await;
                info!(resource = %core.name, "disconnected from {remote}");
                core.fire(Event::Disconnect);
            }
            Err(e) => {
                let text = e.to_string();
                // Say it once per condition, not at every retry.
                if text != last_error {
                    warn!(resource = %core.name, "cannot connect to the secondary: {text}");
                    last_error = text;
                } else {
                    debug!(resource = %core.name, "still cannot connect: {last_error}");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}

/// Builds the handshake `State` (generating the resuid on first contact).
pub(super) fn make_state(
    meta: &mut hast_core::metadata::Metadata,
    random: impl Fn() -> u64,
) -> (State, bool) {
    let mut virgin = false;
    let mut changed = false;
    loop {
        match decision::primary_resuid(meta.resuid, random()) {
            Some(init) => {
                if init.resuid != meta.resuid {
                    meta.resuid = init.resuid;
                    changed = true;
                }
                virgin = init.virgin;
                break;
            }
            None if meta.resuid != 0 => break,
            None => continue,
        }
    }
    let state = State {
        resuid: meta.resuid,
        localcnt: meta.localcnt,
        remotecnt: meta.remotecnt,
        virgin,
        datasize: meta.datasize(),
        extentsize: meta.extentsize(),
        proof: None,
        consistent: meta.datastate.is_consistent(),
    };
    (state, changed)
}

impl Drop for Session {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}
