//! Synchronisation: for as long as a session lives, copy the sync-owed extents (ours ∪
//! the secondary's, merged at the handshake, and any debt that appears later) in the
//! direction the counters decided. A pass ends when nothing is owed; the secondary then
//! confirms it (`SyncDone`: it makes everything durable and, if it was the target, records
//! its copy as consistent) and the primary takes the mirror of its counters. Debt that
//! appears while the link stays up wakes the task for another pass within moments.
//!
//! Each chunk (at most 1 MiB, never across an extent) holds a *sync* range lock while it
//! is read on one node and written on the other, so an application write to the same
//! bytes waits and cannot be overwritten by stale data. Chunks carry unique sequence
//! numbers like any request; up to [`WINDOW`] extents are copied at once, and `syncrate`
//! (if set) caps the copy rate while the application uses the device. A chunk that fails
//! on a disk is retried; the sync ends
//! (interrupted, `syncintr`) only when the connection does, and restarts at the next
//! connection from the extents still owed. At the end the primary's counters become the
//! mirror of the secondary's (§6.1) and the local copy is authoritative again.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hast_core::control::SyncProgress;
use hast_core::proto::handshake::SyncSource;
use hast_core::proto::{flags, Header, Kind};
use tracing::{info, warn};

use super::core::PrimaryCore;
use super::remote::{RemoteError, Session};
use crate::daemon::hooks::Event;

/// Attempts per chunk before the extent is left owed for the next round.
const CHUNK_ATTEMPTS: u32 = 3;
/// Pause between rounds when chunks failed on a disk.
const RETRY_PAUSE: Duration = Duration::from_secs(5);

/// Progress of the running synchronisation, for `hastctl status`.
#[derive(Debug, Default)]
pub struct SyncTracker(Mutex<Option<(Instant, u64, u64)>>);

impl SyncTracker {
    fn set(&self, v: Option<(Instant, u64, u64)>) {
        if let Ok(mut s) = self.0.lock() {
            *s = v;
        }
    }

    fn add(&self, bytes: u64) {
        if let Ok(mut s) = self.0.lock() {
            if let Some((_, done, _)) = s.as_mut() {
                *done += bytes;
            }
        }
    }

    /// A snapshot, if a sync runs; `remaining` comes from the activemap.
    pub fn progress(&self, remaining: u64) -> Option<SyncProgress> {
        let (start, done, _) = (*self.0.lock().ok()?)?;
        let secs = start.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            (done as f64 / secs) as u64
        } else {
            0
        };
        Some(SyncProgress {
            synced_bytes: done,
            remaining_bytes: remaining,
            rate_bytes_per_sec: rate,
            eta_seconds: (rate > 0).then(|| remaining / rate),
        })
    }
}

enum ChunkError {
    /// The link is gone: the sync is interrupted.
    Disconnected,
    /// A disk refused; worth a retry.
    Io(String),
}

async fn copy_chunk(
    core: &Arc<PrimaryCore>,
    session: &Session,
    src: SyncSource,
    offset: u64,
    len: u64,
    durable: bool,
) -> Result<(), ChunkError> {
    let _range = core.lock_sync_range(offset, len).await;
    let remote = |e| match e {
        RemoteError::Disconnected => ChunkError::Disconnected,
        RemoteError::Failed(errno) => ChunkError::Io(format!("secondary errno {errno}")),
    };
    match src {
        SyncSource::Primary => {
            let data = core
                .blocking(move |store| {
                    let mut buf = vec![0u8; len as usize];
                    store.read(offset, &mut buf)?;
                    Ok(buf)
                })
                .await
                .map_err(|e| ChunkError::Io(e.to_string()))?;
            // The last chunk of an extent carries FUA: the secondary makes the whole
            // extent durable (it applies requests in order) before the extent is paid.
            let fua = if durable { flags::FUA } else { 0 };
            let header = Header {
                flags: flags::SYNC | fua,
                offset,
                length: len as u32,
                ..Header::new(Kind::Write, 0)
            };
            match session
                .submit(header, Some(Arc::new(data)))
                .await
                .done()
                .await
            {
                Ok(_) => {}
                Err(RemoteError::Failed(errno)) => {
                    // The secondary's disk failed a write: it recorded that it is
                    // inconsistent; drop the link and start over (replication rule 4).
                    warn!(resource = %core.name, "the secondary failed a sync write at {offset} (+{len}): \
                          errno {errno}; dropping the connection");
                    session.close();
                    return Err(ChunkError::Disconnected);
                }
                Err(e) => return Err(remote(e)),
            }
        }
        SyncSource::Secondary => {
            let header = Header {
                flags: flags::SYNC,
                offset,
                length: len as u32,
                ..Header::new(Kind::Read, 0)
            };
            let data = session
                .submit(header, None)
                .await
                .done()
                .await
                .map_err(remote)?;
            if data.len() as u64 != len {
                return Err(ChunkError::Io("short read from the secondary".into()));
            }
            core.blocking(move |store| store.write(offset, &data))
                .await
                .map_err(|e| ChunkError::Io(e.to_string()))?;
        }
    }
    Ok(())
}

/// Extents copied at once, so a link with latency stays busy.
const WINDOW: usize = 4;

/// Keeps the sync under `syncrate` while the application uses the device.
struct Pacer {
    rate: u64,
    next: tokio::sync::Mutex<Instant>,
}

impl Pacer {
    async fn pace(&self, core: &PrimaryCore, len: u64) {
        if self.rate == 0 {
            return;
        }
        let mut next = self.next.lock().await;
        let now = Instant::now();
        if !core.application_active() {
            // Idle device: full speed, and no debt carried into the next busy period.
            *next = now;
            return;
        }
        let start = (*next).max(now);
        *next = start + Duration::from_secs_f64(len as f64 / self.rate as f64);
        drop(next);
        tokio::time::sleep_until(start.into()).await;
    }
}

async fn copy_extent(
    core: Arc<PrimaryCore>,
    session: Arc<Session>,
    pacer: Arc<Pacer>,
    tracker: Arc<SyncTracker>,
    ext: u64,
    chunks: Vec<(u64, u64)>,
) -> Result<u64, ChunkError> {
    let src = session.syncsrc;
    let mut copied = 0;
    let count = chunks.len();
    for (i, (offset, len)) in chunks.into_iter().enumerate() {
        let durable = i + 1 == count;
        let mut attempt = 0;
        loop {
            attempt += 1;
            pacer.pace(&core, len).await;
            match copy_chunk(&core, &session, src, offset, len, durable).await {
                Ok(()) => {
                    copied += len;
                    tracker.add(len);
                    break;
                }
                Err(ChunkError::Io(e)) if attempt < CHUNK_ATTEMPTS => {
                    warn!(resource = %core.name, "sync chunk at {offset} (+{len}) failed, retrying: {e}");
                }
                Err(ChunkError::Io(e)) => {
                    warn!(resource = %core.name, "sync of extent {ext} failed {attempt} times at {offset}: {e}; it stays owed");
                    return Err(ChunkError::Io(e));
                }
                Err(ChunkError::Disconnected) => return Err(ChunkError::Disconnected),
            }
        }
    }
    if src == SyncSource::Secondary {
        // Our copy of the extent must be durable before its debt is paid.
        core.blocking(|store| store.flush())
            .await
            .map_err(|e| ChunkError::Io(e.to_string()))?;
    }
    Ok(copied)
}

/// How a pass over the owed extents ended.
enum Pass {
    /// Nothing is owed any more; `copied` bytes were copied.
    Done { copied: u64 },
    /// The link dropped.
    Interrupted,
}

/// Runs the synchronisation for `session` until the link drops.
pub async fn run(core: Arc<PrimaryCore>, session: Arc<Session>, tracker: Arc<SyncTracker>) {
    let mut first = true;
    loop {
        let copied = match pass(&core, &session, &tracker, first).await {
            Pass::Done { copied } => copied,
            Pass::Interrupted => return,
        };
        first = false;
        match complete(&core, &session).await {
            Ok(true) => {}
            // Debt appeared after the pass: go again.
            Ok(false) => continue,
            Err(e) => {
                warn!(resource = %core.name, "cannot record the end of the synchronization: {e}");
                return;
            }
        }
        if copied > 0 {
            core.fire(Event::SyncDone);
        }
        tokio::select! {
            _ = session.closed() => return,
            _ = core.sync_wake.notified() => {}
        }
    }
}

/// The end of a pass: the secondary confirms (its flush makes everything it applied
/// durable, and a sync target records that its copy is whole), then the primary mirrors
/// its counters. `Ok(false)`: debt appeared meanwhile, nothing was recorded.
async fn complete(core: &Arc<PrimaryCore>, session: &Session) -> Result<bool, String> {
    let confirmed = session
        .submit(Header::new(Kind::SyncDone, 0), None)
        .await
        .done()
        .await;
    match confirmed {
        Ok(_) => core.sync_completed(session.peer_counters).await,
        Err(RemoteError::Failed(errno)) => {
            warn!(resource = %core.name, "the secondary could not make the synchronized data durable \
                  (errno {errno}); dropping the connection");
            session.close();
            Err("the secondary failed to confirm the sync".into())
        }
        Err(RemoteError::Disconnected) => Err("the connection was lost".into()),
    }
}

/// Copies owed extents until none is left or the link drops.
async fn pass(
    core: &Arc<PrimaryCore>,
    session: &Arc<Session>,
    tracker: &Arc<SyncTracker>,
    first: bool,
) -> Pass {
    let src = session.syncsrc;
    let total = core.owed_bytes();
    let start = Instant::now();
    let mut copied = 0u64;
    let pacer = Arc::new(Pacer {
        rate: core.config().syncrate,
        next: tokio::sync::Mutex::new(start),
    });
    if total == 0 {
        if first {
            info!(resource = %core.name, "nodes are in sync");
        }
        return Pass::Done { copied: 0 };
    }
    info!(resource = %core.name, "synchronization started ({src:?} is the source): {total} bytes to go");
    core.fire(Event::SyncStart);
    tracker.set(Some((start, 0, total)));
    loop {
        let mut failed = 0u32;
        let mut cursor = 0;
        let mut exhausted = false;
        let mut running = tokio::task::JoinSet::new();
        loop {
            while !exhausted && running.len() < WINDOW {
                match core.next_sync_extent(cursor) {
                    Some((ext, chunks)) => {
                        cursor = ext + 1;
                        let task = copy_extent(
                            core.clone(),
                            session.clone(),
                            pacer.clone(),
                            tracker.clone(),
                            ext,
                            chunks,
                        );
                        running.spawn(async move { (ext, task.await) });
                    }
                    None => exhausted = true,
                }
            }
            let Some(joined) = running.join_next().await else {
                break;
            };
            match joined {
                Ok((ext, Ok(bytes))) => {
                    copied += bytes;
                    core.extent_synced(ext);
                }
                Ok((_, Err(ChunkError::Io(_)))) => failed += 1,
                Ok((_, Err(ChunkError::Disconnected))) => {
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                    return interrupted(core, tracker, start, copied);
                }
                Err(join) => {
                    warn!(resource = %core.name, "sync task failed: {join}");
                    failed += 1;
                }
            }
        }
        if session.is_closed() {
            return interrupted(core, tracker, start, copied);
        }
        if failed == 0 {
            // A write that failed meanwhile may have re-owed an extent behind the cursor:
            // only an empty map ends the pass.
            if core.next_sync_extent(0).is_none() {
                break;
            }
            continue;
        }
        // Some extents could not be copied: try again later, while the link lives.
        tokio::select! {
            _ = session.closed() => return interrupted(core, tracker, start, copied),
            _ = tokio::time::sleep(RETRY_PAUSE) => {}
        }
    }
    tracker.set(None);
    let secs = start.elapsed().as_secs_f64().max(0.001);
    info!(
        resource = %core.name,
        "synchronization complete: {copied} bytes synchronized in {secs:.1}s ({:.0} bytes/s)",
        copied as f64 / secs
    );
    Pass::Done { copied }
}

fn interrupted(core: &PrimaryCore, tracker: &SyncTracker, start: Instant, copied: u64) -> Pass {
    core.cancel_sync_wait();
    tracker.set(None);
    info!(
        resource = %core.name,
        "synchronization interrupted after {:.1}s: {copied} bytes synchronized so far",
        start.elapsed().as_secs_f64()
    );
    core.fire(Event::SyncIntr);
    Pass::Interrupted
}
