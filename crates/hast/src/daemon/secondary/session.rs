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
use hast_core::metadata::DataState;
use hast_core::proto::auth;
use hast_core::proto::handshake::{
    self, ErrorMessage, Refusal, State, StateReply, SyncSource, Welcome,
};
use hast_core::proto::{flags, Header, Kind};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

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
    let counters = decision::decide(
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
    let consistent = meta.datastate.is_consistent();
    let decision = decision::apply_data_states(counters, state.consistent, consistent);
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
        Decision::SourceInconsistent { .. } => {
            let text = decision.to_string();
            error!(resource = %shared.name, "{text} Counters: {counters}; this node is {}.", meta.datastate);
            return Err(refuse(w, Refusal::SourceInconsistent, text, timeout).await);
        }
        _ => {}
    }
    // One metadata write, before the reply: the adopted resuid, and (if the sync about to
    // start overwrites this copy) the mark that this copy is incomplete until it ends.
    let mut next = meta.clone();
    if decision.secondary_adopts_resuid() {
        next.resuid = state.resuid;
    }
    if decision.sync_target() == Some(Side::Secondary) {
        next.datastate = next.datastate.with(DataState::SYNC_TARGET);
    }
    if next != *meta {
        let to_write = next.clone();
        let store = shared.store.clone();
        match tokio::task::spawn_blocking(move || store.write_metadata(&to_write)).await {
            Ok(Ok(())) => {
                *meta = next;
                *lock(&shared.counters) = (meta.resuid, meta.localcnt, meta.remotecnt);
                *lock(&shared.datastate) = meta.datastate;
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
        consistent,
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
        tokio::task::spawn_blocking(move || DiskThread::new(shared, out).run(job_rx))
    };
    let result: Result<(), PeerError> = async {
        loop {
            let frame: Frame = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                _ = writer_done.cancelled() => return Err(PeerError::Closed),
                frame = peer::read_frame(&mut reader, timeout) => frame?,
            };
            let h = frame.header;
            let job = match h.kind {
                Kind::Keepalive => continue,
                Kind::Read | Kind::Trim | Kind::WriteZeroes | Kind::Flush | Kind::SyncDone => Job {
                    header: h,
                    data: Vec::new(),
                },
                // Verified before anything else happens: a corrupt payload ends the
                // session and the primary keeps the extent dirty.
                Kind::Write => Job {
                    header: h,
                    data: frame.data()?,
                },
                other => {
                    return Err(PeerError::Protocol(format!(
                        "unexpected {other:?} frame from the primary"
                    )))
                }
            };
            // Queued for the disk *before* it is acknowledged as received: from the
            // `Received` on, the disk thread applies it whatever happens to the link.
            if job_tx.send(job).await.is_err() {
                return Err(PeerError::Closed);
            }
            if h.kind == Kind::Write && h.flags & flags::MEMSYNC != 0 {
                let received = Outgoing::bare(Header {
                    seq: h.seq,
                    ..Header::new(Kind::Received, h.seq)
                });
                if out_tx.send(received).await.is_err() {
                    return Err(PeerError::Closed);
                }
            }
        }
    }
    .await;
    // Every request read off the socket is applied, whether or not its reply can still
    // go out: the primary may have acknowledged it to its client on `Received`, and a
    // role change (or a new primary) must find it on disk.
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
    let mut rx = rx;
    if let Err(e) = peer::send_loop(&mut rx, wr, timeout, &CancellationToken::new()).await {
        debug!("sending to the primary failed: {e}");
    }
    done.cancel();
    // Keep draining so that the disk thread never blocks on replies nobody will send.
    while rx.recv().await.is_some() {}
}

fn errno_of(e: &StorageError) -> u32 {
    match e {
        StorageError::Io { source, .. } => source.raw_os_error().map_or(5, |n| n as u32),
        StorageError::OutOfBounds { .. } => 22,
        StorageError::Unsupported { .. } => 95,
        _ => 5,
    }
}

/// Flushes running beside the disk thread, so `SyncDone` can wait for them.
#[derive(Default)]
struct FlushesInFlight {
    count: std::sync::Mutex<usize>,
    idle: std::sync::Condvar,
}

impl FlushesInFlight {
    fn start(&self) {
        *lock(&self.count) += 1;
    }

    fn end(&self) {
        *lock(&self.count) -= 1;
        self.idle.notify_all();
    }

    fn wait_idle(&self) {
        let mut count = lock(&self.count);
        while *count > 0 {
            count = match self.idle.wait(count) {
                Ok(c) => c,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
    }
}

/// The disk thread: one blocking thread per session applies requests in arrival order
/// (FreeBSD's disk thread), with no hop through the runtime per request.
///
/// Flushes (FLUSH, and the flush of a FUA write) run beside it: every write the flush
/// must cover was written before it started, so later writes need not wait for the
/// fdatasync, and the flush's reply goes out when it is done.
///
/// A write or flush that fails here means the primary's copy and ours now differ in a
/// way only a sync repairs, and the primary may already have answered its client: the
/// failure is recorded on disk (`WRITE_FAILED`, so this node refuses to become primary
/// and to be a sync source) *before* it is reported, and a `SyncDone` later on the same
/// connection does not clear it (the primary sent it before it knew).
struct DiskThread {
    shared: Arc<SecondaryShared>,
    out: mpsc::Sender<Outgoing>,
    runtime: tokio::runtime::Handle,
    failed: Arc<std::sync::atomic::AtomicBool>,
    flushes: Arc<FlushesInFlight>,
}

impl DiskThread {
    fn new(shared: Arc<SecondaryShared>, out: mpsc::Sender<Outgoing>) -> DiskThread {
        DiskThread {
            shared,
            out,
            runtime: tokio::runtime::Handle::current(),
            failed: Arc::default(),
            flushes: Arc::default(),
        }
    }

    fn run(self, mut jobs: mpsc::Receiver<Job>) {
        let shared = &self.shared;
        let mut map_cleared = false;
        while let Some(job) = jobs.blocking_recv() {
            if !map_cleared {
                // The primary merged our map into its own and persisted the union before
                // it sent anything, so ours can go: from now on the primary tracks every
                // extent.
                map_cleared = true;
                if let Err(e) = shared.store.write_bitmap(&[]) {
                    warn!(resource = %shared.name, "cannot clear the activemap: {e}");
                }
            }
            persist_datastate(shared);
            let h = job.header;
            bump(&shared.stats.local_queue);
            if h.kind == Kind::SyncDone {
                let result = self.sync_done();
                shared.stats.local_queue.fetch_sub(1, Ordering::Relaxed);
                self.reply(h, result);
                continue;
            }
            let needs_flush = h.kind == Kind::Flush || h.flags & flags::FUA != 0;
            let result = execute(&shared.store, job);
            if let Err(e) = &result {
                self.failed_here(h, e);
            }
            if needs_flush && result.is_ok() {
                self.flush_beside(h);
                continue;
            }
            shared.stats.local_queue.fetch_sub(1, Ordering::Relaxed);
            self.reply(h, result);
        }
        // The session is over: wait for the flushes so their failures are recorded before
        // a role change can read the metadata.
        self.flushes.wait_idle();
        persist_datastate(shared);
    }

    /// Sends the reply to `h`; a closed link is not a reason to stop applying requests.
    fn reply(&self, h: Header, result: Result<Option<Vec<u8>>, StorageError>) {
        let _ = self.out.blocking_send(reply_for(&self.shared, h, result));
    }

    /// Runs the flush of `h` beside the thread and replies when it is done.
    fn flush_beside(&self, h: Header) {
        let (shared, out) = (self.shared.clone(), self.out.clone());
        let (failed, flushes) = (self.failed.clone(), self.flushes.clone());
        flushes.start();
        self.runtime.spawn_blocking(move || {
            let result = shared.store.flush().map(|()| None);
            if let Err(e) = &result {
                failed.store(true, Ordering::SeqCst);
                record_write_failure(&shared, h, e);
            }
            shared.stats.local_queue.fetch_sub(1, Ordering::Relaxed);
            let _ = out.blocking_send(reply_for(&shared, h, result));
            flushes.end();
        });
    }

    /// A request failed: record it before the reply says so (see the type's doc).
    fn failed_here(&self, h: Header, e: &StorageError) {
        let modifies = matches!(h.kind, Kind::Write | Kind::WriteZeroes | Kind::Trim);
        let unsupported_trim =
            h.kind == Kind::Trim && matches!(e, StorageError::Unsupported { .. });
        if modifies && !unsupported_trim {
            self.failed.store(true, Ordering::SeqCst);
            record_write_failure(&self.shared, h, e);
        }
    }

    /// `SyncDone`: every flush in flight is done, then one more makes everything applied
    /// so far durable; only then is the copy recorded as consistent.
    fn sync_done(&self) -> Result<Option<Vec<u8>>, StorageError> {
        let shared = &self.shared;
        self.flushes.wait_idle();
        shared.store.flush()?;
        if self.failed.load(Ordering::SeqCst) {
            info!(resource = %shared.name, "the primary reports the sync complete, but a write failed \
                  here since; this copy stays marked inconsistent until the next sync");
            return Ok(None);
        }
        let mut meta = shared.meta.blocking_lock();
        if meta.datastate.is_consistent() {
            return Ok(None);
        }
        let mut next = meta.clone();
        next.datastate = DataState::CONSISTENT;
        shared.store.write_metadata(&next)?;
        *meta = next;
        *lock(&shared.datastate) = DataState::CONSISTENT;
        shared.unpersisted.store(false, Ordering::SeqCst);
        info!(resource = %shared.name, "synchronization from the primary complete: this copy is consistent");
        Ok(None)
    }
}

/// Records `WRITE_FAILED` after a failed write or flush (see [`DiskThread`]): in memory at
/// once, on disk as soon as a metadata write succeeds.
fn record_write_failure(shared: &SecondaryShared, h: Header, e: &StorageError) {
    let mut meta = shared.meta.blocking_lock();
    if meta.datastate.write_failed() {
        return;
    }
    error!(resource = %shared.name, "{:?} at {} (+{}) from the primary failed: {e}; \
           this copy is inconsistent until the primary resynchronizes it", h.kind, h.offset, h.length);
    meta.datastate = meta.datastate.with(DataState::WRITE_FAILED);
    *lock(&shared.datastate) = meta.datastate;
    shared.unpersisted.store(true, Ordering::SeqCst);
    drop(meta);
    persist_datastate(shared);
}

/// Writes the in-memory data state to the metadata if a write of it is still owed. The
/// failed writeback that made it necessary may be reported to the first fdatasync after
/// it, i.e. to this one, so a failure is retried now and before every later request.
pub(super) fn persist_datastate(shared: &SecondaryShared) {
    if !shared.unpersisted.load(Ordering::SeqCst) {
        return;
    }
    let meta = shared.meta.blocking_lock();
    let written = shared
        .store
        .write_metadata(&meta)
        .or_else(|_| shared.store.write_metadata(&meta));
    match written {
        Ok(()) => shared.unpersisted.store(false, Ordering::SeqCst),
        Err(e) => {
            warn!(resource = %shared.name, "cannot record the failure in the metadata yet: {e}")
        }
    }
}

/// Applies a request, except its flush (see [`DiskThread`]).
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
        // A provider that cannot discard says so: the primary keeps the range owed so the
        // sync makes both copies equal.
        Kind::Trim => store.discard(offset, len)?,
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
        Kind::Flush | Kind::SyncDone => (&stats.flushes, &stats.flush_errors),
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
            if !matches!(e, StorageError::Unsupported { .. }) {
                bump(errors);
                warn!(resource = %shared.name, "request from the primary failed: {e}");
            }
            Outgoing::bare(Header {
                status: errno_of(&e),
                ..reply
            })
        }
    }
}
