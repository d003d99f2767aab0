//! One connection from the primary: the secondary's side of the handshake, then the
//! request loop.
//!
//! Tasks: this one reads frames; a *disk* task applies requests strictly in arrival order
//! (the primary relies on it: a FLUSH covers every write queued before it, and overlapping
//! writes land in the order they were sent); a *writer* task sends `Received`, replies and
//! keepalives. The disk queue is bounded, so a slow disk slows the primary down instead of
//! growing memory.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hast_core::decision::{self, Decision, PrimaryState, SecondaryState, Side, SyncKind};
use hast_core::proto::auth;
use hast_core::proto::handshake::{
    self, ErrorMessage, Refusal, State, StateReply, SyncSource, Welcome,
};
use hast_core::proto::{flags, Header, Kind};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{lock, PeerConn, SecondaryShared};
use crate::daemon::hooks::Event;
use crate::daemon::stats::bump;
use crate::peer::{self, Frame, Outgoing, PeerError};
use crate::storage::{LocalStore, StorageError};

/// Requests queued for the disk task.
const DISK_QUEUE: usize = 256;

/// Runs one session until the primary goes away, a protocol error, or `cancel`.
pub async fn run(shared: Arc<SecondaryShared>, conn: PeerConn, cancel: CancellationToken) {
    let peer_addr = conn.peer;
    let PeerConn {
        mut reader,
        mut writer,
        hello,
        ..
    } = conn;
    let timeout = Duration::from_secs(shared.config().timeout.into());
    let result = tokio::select! {
        _ = cancel.cancelled() => return,
        r = handshake(&shared, &mut reader, &mut writer, &hello, timeout) => r,
    };
    match result {
        Ok(()) => {}
        Err(e) => {
            warn!(resource = %shared.name, "handshake with {peer_addr} failed: {e}");
            return;
        }
    }
    shared.connected.store(true, Ordering::SeqCst);
    info!(resource = %shared.name, "connected to primary {peer_addr}");
    shared.fire(Event::Connect);
    let outcome = serve(&shared, reader, writer, timeout, cancel).await;
    shared.connected.store(false, Ordering::SeqCst);
    match outcome {
        Ok(()) => info!(resource = %shared.name, "connection to primary {peer_addr} closed"),
        Err(e) => warn!(resource = %shared.name, "connection to primary {peer_addr} lost: {e}"),
    }
    shared.fire(Event::Disconnect);
}

async fn refuse(
    w: &mut OwnedWriteHalf,
    reason: Refusal,
    message: String,
    timeout: Duration,
) -> PeerError {
    let msg = ErrorMessage { reason, message };
    if let Ok(frame) = Outgoing::json(Kind::Error, &msg) {
        let _ = peer::send(w, &frame, timeout).await;
    }
    PeerError::Refusing(msg)
}

async fn handshake(
    shared: &SecondaryShared,
    r: &mut tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    w: &mut OwnedWriteHalf,
    hello: &handshake::Hello,
    timeout: Duration,
) -> Result<(), PeerError> {
    let Some(version) = handshake::choose_version(&hello.versions) else {
        let text = format!(
            "no common protocol version (primary speaks {:?}, we speak {:?})",
            hello.versions,
            handshake::VERSIONS
        );
        return Err(refuse(w, Refusal::Version, text, timeout).await);
    };
    // Shared-secret authentication (auth.rs): with a key, the primary must prove it too.
    let key = match shared
        .config()
        .authkey
        .as_deref()
        .map(peer::load_key)
        .transpose()
    {
        Ok(key) => key,
        Err(e) => return Err(refuse(w, Refusal::LocalFailure, e.to_string(), timeout).await),
    };
    let primary_nonce = hello
        .nonce
        .as_deref()
        .and_then(auth::from_hex)
        .filter(|n| n.len() == auth::NONCE_LEN);
    let mut welcome = Welcome {
        version,
        capabilities: Vec::new(),
        nonce: None,
        proof: None,
    };
    let mut our_nonce = None;
    if let Some(key) = &key {
        let Some(np) = primary_nonce
            .as_ref()
            .filter(|_| hello.capabilities.iter().any(|c| c == auth::CAPABILITY))
        else {
            let text = "authentication required: the primary has no authkey (configure the same key on both nodes)";
            return Err(refuse(w, Refusal::Auth, text.into(), timeout).await);
        };
        let ns = peer::nonce();
        welcome.capabilities.push(auth::CAPABILITY.into());
        welcome.nonce = Some(auth::to_hex(&ns));
        welcome.proof = Some(auth::to_hex(&auth::prove(
            key,
            auth::Prover::Secondary,
            &hello.resource,
            np,
            &ns,
        )));
        our_nonce = Some(ns);
    }
    peer::send(w, &Outgoing::json(Kind::Welcome, &welcome)?, timeout).await?;
    let state: State = peer::expect_json(r, Kind::State, timeout).await?;
    if let (Some(key), Some(np), Some(ns)) = (&key, &primary_nonce, &our_nonce) {
        let proof = state.proof.as_deref().and_then(auth::from_hex);
        if !proof
            .is_some_and(|p| auth::verify(key, auth::Prover::Primary, &hello.resource, np, ns, &p))
        {
            let text = "authentication failed: the primary does not know our authkey";
            return Err(refuse(w, Refusal::Auth, text.into(), timeout).await);
        }
    }
    let store = &shared.store;
    if state.datasize != store.datasize() || state.extentsize != store.extentsize() {
        let text = format!(
            "data size or extent size differs (primary {}/{}, secondary {}/{}): create both with the same -m and -e",
            state.datasize,
            state.extentsize,
            store.datasize(),
            store.extentsize()
        );
        return Err(refuse(w, Refusal::SizeMismatch, text, timeout).await);
    }
    let mut meta = shared.meta.lock().await;
    let decision = decision::decide(
        &PrimaryState {
            resuid: state.resuid,
            localcnt: state.localcnt,
            remotecnt: state.remotecnt,
            virgin: state.virgin,
        },
        &SecondaryState {
            resuid: meta.resuid,
            localcnt: meta.localcnt,
            remotecnt: meta.remotecnt,
        },
    );
    debug!(resource = %shared.name, "connect-time decision: {decision:?}");
    match decision {
        Decision::SplitBrain => {
            shared.report_split_brain();
            let text = decision
                .errmsg()
                .unwrap_or_else(|| "Split-brain condition!".into());
            return Err(refuse(w, Refusal::SplitBrain, text, timeout).await);
        }
        Decision::ResuidMismatch { .. } => {
            let text = decision
                .errmsg()
                .unwrap_or_else(|| "Resource unique ID mismatch.".into());
            warn!(resource = %shared.name, "{text}");
            return Err(refuse(w, Refusal::ResuidMismatch, text, timeout).await);
        }
        _ => {}
    }
    if decision.secondary_adopts_resuid() {
        let mut next = meta.clone();
        next.resuid = state.resuid;
        let to_write = next.clone();
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.write_metadata(&to_write)).await {
            Ok(Ok(())) => {
                *meta = next;
                *lock(&shared.counters) = (meta.resuid, meta.localcnt, meta.remotecnt);
            }
            _ => {
                let text = "cannot write metadata on the secondary".to_string();
                return Err(refuse(w, Refusal::LocalFailure, text, timeout).await);
            }
        }
    }
    let kind = decision.sync_kind();
    let bitmap = if kind == SyncKind::Regular {
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.read_bitmap()).await {
            Ok(Ok(bits)) => Some(bits),
            _ => {
                let text = "cannot read the activemap on the secondary".to_string();
                return Err(refuse(w, Refusal::LocalFailure, text, timeout).await);
            }
        }
    } else {
        None
    };
    let syncsrc = match decision.syncsrc() {
        Some(Side::Secondary) => SyncSource::Secondary,
        _ => SyncSource::Primary,
    };
    let reply = StateReply {
        localcnt: meta.localcnt,
        remotecnt: meta.remotecnt,
        virgin: decision.reply_virgin(),
        syncsrc,
        full_sync: kind == SyncKind::Full,
        mapsize: bitmap.as_ref().map_or(0, |b| b.len() as u32),
    };
    drop(meta);
    peer::send(w, &Outgoing::json(Kind::StateReply, &reply)?, timeout).await?;
    if let Some(bits) = bitmap {
        let cfg = shared.config();
        let header = Header::new(Kind::Bitmap, 0);
        let frame = Outgoing::data(header, Arc::new(bits), cfg.compression, cfg.checksum);
        peer::send(w, &frame, timeout).await?;
    }
    shared.split_brain_reported.store(false, Ordering::SeqCst);
    Ok(())
}

/// A request for the disk task.
struct Job {
    header: Header,
    data: Vec<u8>,
}

async fn serve(
    shared: &Arc<SecondaryShared>,
    mut reader: tokio::io::BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: OwnedWriteHalf,
    timeout: Duration,
    cancel: CancellationToken,
) -> Result<(), PeerError> {
    let (out_tx, out_rx) = mpsc::channel::<Outgoing>(DISK_QUEUE * 2);
    let (job_tx, job_rx) = mpsc::channel::<Job>(DISK_QUEUE);
    let writer_done = CancellationToken::new();
    let writer_task = tokio::spawn(write_loop(out_rx, writer, timeout, writer_done.clone()));
    let disk_task = {
        let (shared, out) = (shared.clone(), out_tx.clone());
        tokio::task::spawn_blocking(move || disk_thread(shared, job_rx, out))
    };
    let result: Result<(), PeerError> = async {
        loop {
            let frame: Frame = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = writer_done.cancelled() => return Err(PeerError::Closed),
                frame = peer::read_frame(&mut reader, timeout) => frame?,
            };
            let h = frame.header;
            match h.kind {
                Kind::Keepalive => continue,
                Kind::Read | Kind::Trim | Kind::WriteZeroes | Kind::Flush => {
                    if job_tx
                        .send(Job {
                            header: h,
                            data: Vec::new(),
                        })
                        .await
                        .is_err()
                    {
                        return Err(PeerError::Closed);
                    }
                }
                Kind::Write => {
                    // Verified before anything else happens: a corrupt payload ends the
                    // session and the primary keeps the extent dirty.
                    let data = frame.data()?;
                    if h.flags & flags::MEMSYNC != 0 {
                        let received = Outgoing::bare(Header {
                            seq: h.seq,
                            ..Header::new(Kind::Received, h.seq)
                        });
                        if out_tx.send(received).await.is_err() {
                            return Err(PeerError::Closed);
                        }
                    }
                    if job_tx.send(Job { header: h, data }).await.is_err() {
                        return Err(PeerError::Closed);
                    }
                }
                other => {
                    return Err(PeerError::Protocol(format!(
                        "unexpected {other:?} frame from the primary"
                    )))
                }
            }
        }
    }
    .await;
    // Let queued requests finish so their replies still go out if the socket lives.
    drop(job_tx);
    let _ = disk_task.await;
    drop(out_tx);
    let _ = writer_task.await;
    result
}

async fn write_loop(
    rx: mpsc::Receiver<Outgoing>,
    wr: OwnedWriteHalf,
    timeout: Duration,
    done: CancellationToken,
) {
    if let Err(e) = peer::send_loop(rx, wr, timeout, &CancellationToken::new()).await {
        debug!("sending to the primary failed: {e}");
    }
    done.cancel();
}

fn errno_of(e: &StorageError) -> u32 {
    match e {
        StorageError::Io { source, .. } => source.raw_os_error().map_or(5, |n| n as u32),
        StorageError::OutOfBounds { .. } => 22,
        StorageError::Unsupported { .. } => 95,
        _ => 5,
    }
}

/// The disk thread: one blocking thread per session applies requests in arrival order
/// (FreeBSD's disk thread), with no hop through the runtime per request.
///
/// Flushes (FLUSH, and the flush of a FUA write) run beside it: every write the flush
/// must cover was written before it started, so later writes need not wait for the
/// fdatasync, and the flush's reply goes out when it is done.
fn disk_thread(
    shared: Arc<SecondaryShared>,
    mut jobs: mpsc::Receiver<Job>,
    out: mpsc::Sender<Outgoing>,
) {
    let runtime = tokio::runtime::Handle::current();
    let mut map_cleared = false;
    while let Some(job) = jobs.blocking_recv() {
        if !map_cleared {
            // The primary merged our map into its own and persisted the union before it
            // sent anything, so ours can go: from now on the primary tracks every extent.
            map_cleared = true;
            if let Err(e) = shared.store.write_bitmap(&[]) {
                warn!(resource = %shared.name, "cannot clear the activemap: {e}");
            }
        }
        let h = job.header;
        let needs_flush = h.kind == Kind::Flush || h.flags & flags::FUA != 0;
        bump(&shared.stats.local_queue);
        let result = execute(&shared.store, job);
        if needs_flush && result.is_ok() {
            let (shared, out) = (shared.clone(), out.clone());
            runtime.spawn_blocking(move || {
                let result = shared.store.flush().map(|()| None);
                shared.stats.local_queue.fetch_sub(1, Ordering::Relaxed);
                let _ = out.blocking_send(reply_for(&shared, h, result));
            });
            continue;
        }
        shared.stats.local_queue.fetch_sub(1, Ordering::Relaxed);
        if out.blocking_send(reply_for(&shared, h, result)).is_err() {
            break;
        }
    }
}

/// Applies a request, except its flush (see [`disk_thread`]).
fn execute(store: &LocalStore, job: Job) -> Result<Option<Vec<u8>>, StorageError> {
    let h = job.header;
    let (offset, len) = (h.offset, u64::from(h.length));
    match h.kind {
        Kind::Read => {
            let mut buf = vec![0u8; len as usize];
            store.read(offset, &mut buf)?;
            return Ok(Some(buf));
        }
        Kind::Write => store.write(offset, &job.data)?,
        Kind::Trim => match store.discard(offset, len) {
            Err(StorageError::Unsupported { .. }) => {}
            other => other?,
        },
        Kind::WriteZeroes => store.write_zeroes(offset, len)?,
        _ => {}
    }
    Ok(None)
}

/// The reply to request `h`, counted in the statistics.
fn reply_for(
    shared: &SecondaryShared,
    h: Header,
    result: Result<Option<Vec<u8>>, StorageError>,
) -> Outgoing {
    let stats = &shared.stats;
    let (counter, errors) = match h.kind {
        Kind::Read => (&stats.reads, &stats.read_errors),
        Kind::Trim => (&stats.deletes, &stats.delete_errors),
        Kind::Flush => (&stats.flushes, &stats.flush_errors),
        _ => (&stats.writes, &stats.write_errors),
    };
    bump(counter);
    let reply = Header {
        seq: h.seq,
        flags: h.flags & flags::SYNC,
        ..Header::new(Kind::Reply, h.seq)
    };
    match result {
        Ok(Some(data)) => {
            let cfg = shared.config();
            Outgoing::data(reply, Arc::new(data), cfg.compression, cfg.checksum)
        }
        Ok(None) => Outgoing::bare(reply),
        Err(e) => {
            bump(errors);
            warn!(resource = %shared.name, "request from the primary failed: {e}");
            Outgoing::bare(Header {
                status: errno_of(&e),
                ..reply
            })
        }
    }
}
