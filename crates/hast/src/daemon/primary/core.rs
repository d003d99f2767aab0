//! The state of a resource in role primary, and the bookkeeping around it: the activemap
//! and its on-disk bitmap, the range locks, the metadata counters, the peer session.
//! The request paths that use it are in `io.rs`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hast_core::activemap::{ActiveMap, MapUpdate, WriteOutcome};
use hast_core::config;
use hast_core::decision::{self, PeerMemory};
use hast_core::metadata::{DataState, Metadata};
use hast_core::nbd::NbdErrno;
use hast_core::proto::handshake::{State, StateReply, SyncSource};
use hast_core::rangelock::{LockId, LockKind, RangeLocks};
use hast_core::replication::MapOutcome;
use tokio::sync::Notify;
use tracing::{error, info, warn};

use super::remote::{make_state, Session};
use super::sync::SyncTracker;
use crate::daemon::hooks::{self, Event};
use crate::daemon::stats::{bump, Stats};
use crate::peer::PeerError;
use crate::storage::{LocalStore, StorageError};

/// Shared state of a resource in role primary.
pub struct PrimaryCore {
    pub name: String,
    pub store: Arc<LocalStore>,
    pub stats: Stats,
    cfg: Mutex<Arc<config::Resource>>,
    map: Mutex<ActiveMap>,
    /// Serialises bitmap writes (the activemap protocol allows one at a time).
    map_io: tokio::sync::Mutex<()>,
    /// Woken when bits were cleared, for the lazy writer.
    pub map_dirty: Notify,
    ranges: Mutex<RangeLocks>,
    range_freed: Notify,
    /// The metadata as last written and what the counter rule needs beside it; the async
    /// mutex orders every metadata write (counters, data state).
    persisted: tokio::sync::Mutex<Persisted>,
    /// Copies of (resuid, localcnt, remotecnt) for status, readable without waiting.
    counters: Mutex<(u64, u64, u64)>,
    /// This node is the target of an unfinished sync from the secondary (the metadata's
    /// `SYNC_TARGET`, mirrored for the I/O path): owed extents are stale here.
    stale: AtomicBool,
    session: Mutex<Option<Arc<Session>>>,
    split_brain_reported: AtomicBool,
    sync: Arc<SyncTracker>,
    /// Woken when debt appears while the link is up, for the sync task.
    pub sync_wake: Notify,
    /// When the primary started, and the last application request (ms after it).
    started: std::time::Instant,
    last_request_ms: AtomicU64,
    /// Writes the secondary has written but not yet made durable (its page cache): their
    /// extents stay dirty until a FLUSH on the secondary covers them.
    undurable: Mutex<Vec<(u64, u64)>>,
    /// Woken when `undurable` gets an entry, for the durability keeper.
    pub undurable_added: Notify,
    /// Writes acknowledged before the secondary's final reply, still settling; the role
    /// stops only after they are done (they hold the provider open).
    pub background: tokio_util::task::TaskTracker,
    /// Trim is not supported by the provider: stop asking.
    pub no_discard: AtomicBool,
    failure: Mutex<Option<String>>,
}

/// The metadata as last written, and the primary's knowledge of the secondary's memory of
/// its `localcnt` (hast_core::decision::PeerMemory), kept under one lock so that a counter
/// raise and the end of a sync cannot interleave.
struct Persisted {
    meta: Metadata,
    memory: PeerMemory,
}

pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Withdraws a bitmap write whose task was cancelled before it could record the result.
struct MapWriteGuard<'a> {
    core: &'a PrimaryCore,
    generation: u64,
    armed: bool,
}

impl Drop for MapWriteGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            let _ = lock(&self.core.map).abandon_map_write(self.generation);
        }
    }
}

/// A range lock, released when dropped (after the request is fully settled, which for
/// memsync/async writes is after the reply to the client).
pub struct RangeGuard {
    core: Arc<PrimaryCore>,
    id: LockId,
}

impl Drop for RangeGuard {
    fn drop(&mut self) {
        lock(&self.core.ranges).unlock(self.id);
        self.core.range_freed.notify_waiters();
    }
}

impl PrimaryCore {
    /// Wraps an opened store whose on-disk map was loaded into `map`.
    pub fn new(
        cfg: Arc<config::Resource>,
        store: LocalStore,
        meta: Metadata,
        map: ActiveMap,
    ) -> PrimaryCore {
        let counters = (meta.resuid, meta.localcnt, meta.remotecnt);
        let stale = meta.datastate.is_sync_target();
        PrimaryCore {
            name: cfg.name.clone(),
            store: Arc::new(store),
            stats: Stats::default(),
            cfg: Mutex::new(cfg),
            map: Mutex::new(map),
            map_io: tokio::sync::Mutex::new(()),
            map_dirty: Notify::new(),
            ranges: Mutex::new(RangeLocks::new()),
            range_freed: Notify::new(),
            persisted: tokio::sync::Mutex::new(Persisted {
                meta,
                // Not connected since start: the secondary may have missed writes of an
                // earlier run, so the first unconfirmed write raises the counter.
                memory: PeerMemory::UNKNOWN,
            }),
            counters: Mutex::new(counters),
            stale: AtomicBool::new(stale),
            session: Mutex::new(None),
            split_brain_reported: AtomicBool::new(false),
            sync: Arc::new(SyncTracker::default()),
            sync_wake: Notify::new(),
            started: std::time::Instant::now(),
            last_request_ms: AtomicU64::new(0),
            background: tokio_util::task::TaskTracker::new(),
            undurable: Mutex::new(Vec::new()),
            undurable_added: Notify::new(),
            no_discard: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
    }

    /// The live configuration.
    pub fn config(&self) -> Arc<config::Resource> {
        lock(&self.cfg).clone()
    }

    /// Applies an in-place configuration change.
    pub fn set_config(&self, cfg: Arc<config::Resource>) {
        *lock(&self.cfg) = cfg;
    }

    /// Runs the exec hook for `event`.
    pub fn fire(&self, event: Event) {
        hooks::fire(self.config().exec.as_deref(), &self.name, &event);
    }

    /// keepdirty from the metadata.
    pub fn keepdirty(&self) -> u32 {
        lock(&self.map).keepdirty()
    }

    /// Bytes in dirty extents.
    pub fn dirty_bytes(&self) -> u64 {
        lock(&self.map).dirty_bytes()
    }

    /// (resuid, localcnt, remotecnt) as last persisted.
    pub fn counters(&self) -> (u64, u64, u64) {
        *lock(&self.counters)
    }

    /// Notes an application request (the sync yields to the application while it is
    /// busy, see `syncrate`).
    pub fn note_request(&self) {
        let ms = self.started.elapsed().as_millis() as u64;
        self.last_request_ms.store(ms.max(1), Ordering::Relaxed);
    }

    /// Whether the application used the device within the last second.
    pub fn application_active(&self) -> bool {
        let last = self.last_request_ms.load(Ordering::Relaxed);
        last != 0 && (self.started.elapsed().as_millis() as u64).saturating_sub(last) < 1000
    }

    /// Progress of the running synchronisation.
    pub fn sync_tracker(&self) -> Arc<SyncTracker> {
        self.sync.clone()
    }

    /// The live session to the secondary, if any.
    pub fn session(&self) -> Option<Arc<Session>> {
        let mut slot = lock(&self.session);
        if slot.as_ref().is_some_and(|s| s.is_closed()) {
            *slot = None;
        }
        slot.clone()
    }

    /// Installs or removes the session.
    pub fn set_session(&self, session: Option<Arc<Session>>) {
        *lock(&self.session) = session;
    }

    /// Whether the peer is connected.
    pub fn is_connected(&self) -> bool {
        self.session().is_some()
    }

    /// Whether this node is the target of an unfinished sync from the secondary.
    pub fn is_stale(&self) -> bool {
        self.stale.load(Ordering::SeqCst)
    }

    /// A fatal error of this resource, if one happened.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    pub(super) fn fail(&self, what: String) {
        error!(resource = %self.name, "{what}");
        let mut slot = lock(&self.failure);
        if slot.is_none() {
            *slot = Some(what);
        }
    }

    /// Split-brain: logged and the hook fired once per condition (until a connection
    /// succeeds or the role changes), not at every reconnect attempt.
    pub fn report_split_brain(&self) {
        if !self.split_brain_reported.swap(true, Ordering::SeqCst) {
            error!(resource = %self.name, "split-brain condition: both nodes were written while apart; \
                   nothing will be synchronised until an operator discards one side");
            self.fire(Event::SplitBrain);
        }
    }

    /// Whether the last connection attempt ended in split-brain.
    pub fn split_brain(&self) -> bool {
        self.split_brain_reported.load(Ordering::SeqCst)
    }

    /// Runs `f` on the blocking pool, counting it as a local request.
    pub async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
    where
        T: Send + 'static,
        F: FnOnce(&LocalStore) -> Result<T, StorageError> + Send + 'static,
    {
        let store = self.store.clone();
        bump(&self.stats.local_queue);
        let result = tokio::task::spawn_blocking(move || f(&store)).await;
        self.stats.local_queue.fetch_sub(1, Ordering::Relaxed);
        result.unwrap_or_else(|join| {
            Err(StorageError::Io {
                path: self.store.provider().path().to_path_buf(),
                op: crate::storage::Op::Write,
                offset: 0,
                len: 0,
                source: std::io::Error::other(join.to_string()),
            })
        })
    }

    /// Gets the on-disk bitmap to at least `generation`. One writer at a time; a writer
    /// writes the newest image, which covers every waiter that queued behind it. Never
    /// returns `Ok` unless the disk has the generation.
    pub async fn write_map(&self, generation: u64) -> Result<(), NbdErrno> {
        if lock(&self.map).written_generation() >= generation {
            return Ok(());
        }
        let _io = self.map_io.lock().await;
        let snapshot = {
            let mut map = lock(&self.map);
            if map.written_generation() >= generation {
                return Ok(());
            }
            // Under `map_io` no other write can be in progress: a marker left here is
            // from a writer whose task was cancelled mid-write (its guard should have
            // withdrawn it). Withdraw it rather than trust it.
            if let Some(stale) = map.map_write_in_progress() {
                warn!(resource = %self.name, "withdrawing an abandoned activemap write (generation {stale})");
                let _ = map.abandon_map_write(stale);
            }
            map.begin_map_write()
        };
        let Some(snapshot) = snapshot else {
            // Up to date after all (the written generation only grows).
            return if lock(&self.map).written_generation() >= generation {
                Ok(())
            } else {
                self.fail(format!(
                    "activemap write of generation {generation} could not start"
                ));
                Err(NbdErrno::Eio)
            };
        };
        // If this future is dropped during the I/O, the guard withdraws the write so the
        // next writer starts afresh instead of waiting on (or skipping for) a ghost.
        let mut guard = MapWriteGuard {
            core: self,
            generation: snapshot.generation,
            armed: true,
        };
        let image = snapshot.image;
        let result = self.blocking(move |store| store.write_bitmap(&image)).await;
        guard.armed = false;
        bump(&self.stats.activemap_updates);
        let mut map = lock(&self.map);
        match result {
            Ok(()) => {
                let _ = map.mark_written(snapshot.generation);
                Ok(())
            }
            Err(e) => {
                let _ = map.abandon_map_write(snapshot.generation);
                drop(map);
                bump(&self.stats.write_errors);
                self.fail(format!("activemap write failed: {e}"));
                Err(NbdErrno::Eio)
            }
        }
    }

    /// Writes the bitmap if the disk lags behind (clean extents become clean on disk).
    pub async fn write_map_if_needed(&self) -> Result<(), NbdErrno> {
        let generation = {
            let map = lock(&self.map);
            if !map.map_write_needed() {
                return Ok(());
            }
            map.generation()
        };
        self.write_map(generation).await
    }

    fn follow(&self, update: MapUpdate) -> Option<u64> {
        match update {
            MapUpdate::None => None,
            MapUpdate::Write { generation } => Some(generation),
            MapUpdate::Lazy { .. } => {
                self.map_dirty.notify_one();
                None
            }
        }
    }

    /// Takes the write range lock (waits for overlapping writes and sync chunks).
    pub async fn lock_range(self: &Arc<Self>, offset: u64, len: u64) -> RangeGuard {
        loop {
            let freed = self.range_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(id) = lock(&self.ranges).try_lock_ordered(offset, len) {
                return RangeGuard {
                    core: self.clone(),
                    id,
                };
            }
            freed.await;
        }
    }

    /// Takes a sync range lock: waits for application writes in flight on the range (and
    /// keeps new ones off it meanwhile, see `rangelock`'s fairness note).
    pub async fn lock_sync_range(self: &Arc<Self>, offset: u64, len: u64) -> RangeGuard {
        loop {
            let freed = self.range_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(id) = lock(&self.ranges).try_lock(LockKind::Sync, offset, len) {
                return RangeGuard {
                    core: self.clone(),
                    id,
                };
            }
            freed.await;
        }
    }

    /// Drops a waiting sync chunk's reservation (the sync stopped).
    pub fn cancel_sync_wait(&self) {
        lock(&self.ranges).cancel_sync_wait();
        self.range_freed.notify_waiters();
    }

    /// The next sync-owed extent at or after `from`, with its chunks.
    pub fn next_sync_extent(&self, from: u64) -> Option<(u64, Vec<(u64, u64)>)> {
        let map = lock(&self.map);
        let ext = map.next_sync_extent(from)?;
        Some((ext, map.sync_chunks(ext).collect()))
    }

    /// Bytes still owed to the peer.
    pub fn owed_bytes(&self) -> u64 {
        lock(&self.map).sync_owed_bytes()
    }

    /// Extent `ext` was copied: its debt is paid (written to disk lazily).
    pub fn extent_synced(&self, ext: u64) {
        let update = lock(&self.map).extent_synced(ext);
        match update {
            Ok(update) => {
                let _ = self.follow(update);
            }
            Err(e) => warn!(resource = %self.name, "activemap refused sync of extent {ext}: {e}"),
        }
    }

    /// After a complete synchronisation (the secondary confirmed it with `SyncDone`): the
    /// primary takes the mirror image of the secondary's counters (§6.1) and its copy is
    /// no longer stale, both in one metadata write. Refused if debt appeared meanwhile:
    /// the check and the write happen under the metadata lock, and debt is always
    /// recorded in the map *before* its counter raise takes that lock, so a write that
    /// failed on the secondary can never be forgotten by a mirror taken after it.
    pub async fn sync_completed(&self, peer_counters: (u64, u64)) -> Result<bool, String> {
        let _ = self.write_map_if_needed().await;
        let (localcnt, remotecnt) = decision::counters_after_sync(peer_counters.0, peer_counters.1);
        let mut p = self.persisted.lock().await;
        if self.owed_bytes() > 0 {
            return Ok(false);
        }
        if p.meta.localcnt != localcnt
            || p.meta.remotecnt != remotecnt
            || !p.meta.datastate.is_consistent()
        {
            let mut next = p.meta.clone();
            next.localcnt = localcnt;
            next.remotecnt = remotecnt;
            next.datastate = DataState::CONSISTENT;
            self.write_meta(&mut p.meta, next)
                .await
                .map_err(|e| e.to_string())?;
        }
        p.memory = PeerMemory::learned(peer_counters.1);
        if self.stale.swap(false, Ordering::SeqCst) {
            info!(resource = %self.name, "the local copy is up to date again");
        }
        Ok(true)
    }

    /// Marks the extents of a write dirty and gets that onto the disk before returning.
    pub async fn mark_dirty(&self, offset: u64, len: u64) -> Result<(), NbdErrno> {
        let update = lock(&self.map).write_start(offset, len).map_err(|e| {
            warn!(resource = %self.name, "activemap refused a write: {e}");
            NbdErrno::Einval
        })?;
        if let Some(generation) = self.follow(update) {
            if let Err(e) = self.write_map(generation).await {
                // Undo the start so the extent is not counted pending forever.
                let _ = lock(&self.map).write_complete(offset, len, WriteOutcome::NotReplicated);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Settles a write in the activemap once its outcome on the peer is known.
    pub async fn write_done(
        &self,
        offset: u64,
        len: u64,
        outcome: WriteOutcome,
    ) -> Result<(), NbdErrno> {
        let update = lock(&self.map).write_complete(offset, len, outcome);
        match update {
            Ok(update) => match self.follow(update) {
                Some(generation) => self.write_map(generation).await,
                None => Ok(()),
            },
            Err(e) => {
                self.fail(format!("activemap bookkeeping error: {e}"));
                Err(NbdErrno::Eio)
            }
        }
    }

    /// Settles a write's extents as the replication rules decided: clean, owed, or (written
    /// on the secondary but not flushed there) pending until its next flush.
    pub async fn settle_map(&self, offset: u64, len: u64, map: MapOutcome) -> Result<(), NbdErrno> {
        match map {
            MapOutcome::Undurable => {
                lock(&self.undurable).push((offset, len));
                self.undurable_added.notify_one();
                Ok(())
            }
            settled => self.write_done(offset, len, settled.write_outcome()).await,
        }
    }

    /// Takes the writes the secondary has written but not yet flushed; a flush sent to it
    /// after this covers them all (it applies requests in order).
    pub fn take_undurable(&self) -> Vec<(u64, u64)> {
        std::mem::take(&mut *lock(&self.undurable))
    }

    /// Whether no extent of the range is owed (while stale: the local copy is good there).
    pub fn is_synced(&self, offset: u64, len: u64) -> bool {
        lock(&self.map).is_synced(offset, len).unwrap_or(false)
    }

    async fn write_meta(&self, meta: &mut Metadata, next: Metadata) -> Result<(), StorageError> {
        let to_write = next.clone();
        self.blocking(move |store| store.write_metadata(&to_write))
            .await?;
        *lock(&self.counters) = (next.resuid, next.localcnt, next.remotecnt);
        *meta = next;
        Ok(())
    }

    /// Raises `localcnt` past the secondary's memory, persisted, when a write is (or was)
    /// acknowledged that the secondary may lack (hast_core::replication rule 3). A no-op
    /// once this epoch's raise is on disk. An error means the raise is not on disk, so
    /// the write must not be acknowledged.
    pub async fn raise_localcnt(&self, why: &str) -> Result<(), NbdErrno> {
        let mut p = self.persisted.lock().await;
        let Some(raised) = p.memory.raise(p.meta.localcnt) else {
            return Ok(());
        };
        let old = p.meta.localcnt;
        let mut next = p.meta.clone();
        next.localcnt = raised;
        match self.write_meta(&mut p.meta, next).await {
            Ok(()) => {
                p.memory = p.memory.after_raise(old);
                info!(resource = %self.name, "localcnt raised to {raised}: {why}");
                Ok(())
            }
            Err(e) => {
                bump(&self.stats.write_errors);
                self.fail(format!("metadata write failed: {e}"));
                Err(NbdErrno::Eio)
            }
        }
    }

    /// The handshake's `State`, generating (and persisting) the resuid on first contact.
    pub async fn handshake_state(&self, random: impl Fn() -> u64) -> Result<State, PeerError> {
        let mut p = self.persisted.lock().await;
        let mut next = p.meta.clone();
        let (state, changed) = make_state(&mut next, random);
        if changed {
            self.write_meta(&mut p.meta, next)
                .await
                .map_err(|e| PeerError::Protocol(format!("cannot persist the new resuid: {e}")))?;
        }
        Ok(state)
    }

    /// Records what the secondary answered: its counters, the sync direction, its dirty
    /// extents (merged into ours and persisted before any request goes out). When the
    /// secondary has the newer data, this node records on disk that it is a sync target
    /// before anything is copied: its owed extents are stale until the sync completes.
    pub async fn apply_handshake(
        &self,
        state: &State,
        reply: &StateReply,
        peer_map: Option<&[u8]>,
    ) -> Result<(), String> {
        let update = {
            let mut map = lock(&self.map);
            let mut update = match peer_map {
                Some(bits) => map.merge(bits).map_err(|e| e.to_string())?,
                None => MapUpdate::None,
            };
            if reply.full_sync {
                update = map.set_all();
            }
            update
        };
        if let Some(generation) = self.follow(update) {
            self.write_map(generation)
                .await
                .map_err(|e| format!("activemap write failed: {e}"))?;
        }
        let mut p = self.persisted.lock().await;
        let mut next = p.meta.clone();
        if let Some(localcnt) = decision::localcnt_after_virgin_reply(reply.virgin, next.localcnt) {
            next.localcnt = localcnt;
        }
        if reply.syncsrc == SyncSource::Secondary {
            next.datastate = next.datastate.with(DataState::SYNC_TARGET);
        }
        if next != p.meta {
            self.write_meta(&mut p.meta, next)
                .await
                .map_err(|e| e.to_string())?;
        }
        p.memory = PeerMemory::learned(reply.remotecnt);
        if reply.syncsrc == SyncSource::Secondary && !self.stale.swap(true, Ordering::SeqCst) {
            warn!(resource = %self.name, "the secondary has newer data: this copy is stale until the sync completes \
                  (reads of unsynchronized extents go to the secondary)");
        }
        drop(p);
        self.split_brain_reported.store(false, Ordering::SeqCst);
        let owed = lock(&self.map).dirty_bytes();
        info!(
            resource = %self.name,
            "handshake: primary {}/{} secondary {}/{}{}, sync from {:?}, {owed} bytes to synchronise",
            state.localcnt, state.remotecnt, reply.localcnt, reply.remotecnt,
            if reply.full_sync { " (full sync)" } else { "" },
            reply.syncsrc
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::Poll;

    use hast_core::config::NodeIdentity;

    use super::*;
    use crate::ctl::create::{create_one, CreateOptions};

    /// A primary core on a fresh 16 MiB provider in `dir`, with no peer.
    fn core_in(dir: &std::path::Path) -> Arc<PrimaryCore> {
        let img = dir.join("a.img");
        std::fs::File::create(&img)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let text = format!(
            "resource r0 {{\n on a {{ local {} remote none }}\n}}\n",
            img.display()
        );
        let config =
            hast_core::config::parse(&text, "test.conf", &NodeIdentity::Named("a".into())).unwrap();
        let res = config.resources.into_iter().next().unwrap();
        create_one(&res, &CreateOptions::default()).unwrap();
        let (store, meta) = LocalStore::open(&res.local, &res.name, false).unwrap();
        let map =
            ActiveMap::new(meta.datasize(), meta.extentsize(), meta.keepdirty(), 512).unwrap();
        Arc::new(PrimaryCore::new(Arc::new(res), store, meta, map))
    }

    /// A bitmap write whose task is cancelled mid-I/O must not leave the activemap
    /// believing a write is in progress: the next `write_map` would otherwise return `Ok`
    /// without writing, and data would go out before its extent is marked on disk.
    #[tokio::test]
    async fn a_cancelled_map_write_never_makes_the_next_one_skip() {
        let dir = tempfile::tempdir().unwrap();
        let core = core_in(dir.path());
        let start = |core: &PrimaryCore, ext: u64| match lock(&core.map)
            .write_start(ext * (2 << 20), 4096)
            .unwrap()
        {
            MapUpdate::Write { generation } => generation,
            other => panic!("{other:?}"),
        };
        // Poll a bitmap write once (its pwrite is then on the blocking pool) and drop it;
        // a pwrite quick enough to finish before the poll returns makes a try useless.
        let mut cancelled = false;
        for ext in 0..8 {
            let generation = start(&core, ext);
            let mut write = Box::pin(core.write_map(generation));
            let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
            drop(write);
            if first.is_pending() {
                cancelled = true;
                break;
            }
        }
        assert!(cancelled, "no bitmap write was ever caught in flight");
        let next = start(&core, 7);
        core.write_map(next).await.unwrap();
        assert!(
            lock(&core.map).written_generation() >= next,
            "write_map returned Ok without writing the bitmap"
        );
        let on_disk = core.store.read_bitmap().unwrap();
        assert_eq!(on_disk[0] & 0x80, 0x80, "extent 7 is set on disk");
    }
}
