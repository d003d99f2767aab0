//! The primary's I/O path: what happens to each NBD request (docs/architecture.md, "A
//! write on the primary").
//!
//! Ordering rules, each the reason for a step below:
//! - the on-disk activemap covers a write's extents *before* its data goes anywhere
//!   (`mark_dirty`), so a crash at any point leaves every possibly-different extent marked;
//! - with the peer absent, `localcnt` is bumped and persisted *before* the write is issued,
//!   so the counters show this node diverged even if we crash right after the write;
//! - a write's extents become clean only when the peer confirmed it; until then they are
//!   sync-owed and stay dirty on disk (`WriteOutcome::NotReplicated`);
//! - application writes hold a *regular* range lock so a sync chunk (read here, written
//!   there) can never interleave with them.
//!
//! Disk I/O runs on tokio's blocking pool: `LocalStore` is synchronous positioned I/O.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use hast_core::activemap::{ActiveMap, MapUpdate, WriteOutcome};
use hast_core::decision;
use hast_core::metadata::Metadata;
use hast_core::nbd::{ExportInfo, NbdErrno};
use hast_core::rangelock::{LockId, LockKind, RangeLocks};
use tokio::sync::Notify;
use tracing::{error, info, warn};

use crate::daemon::stats::{bump, Stats};
use crate::nbd::Backend;
use crate::storage::{LocalStore, StorageError};

/// Shared state of a resource in role primary.
pub struct PrimaryCore {
    pub name: String,
    pub store: Arc<LocalStore>,
    pub stats: Stats,
    map: Mutex<ActiveMap>,
    /// Serialises bitmap writes (the activemap protocol allows one at a time).
    map_io: tokio::sync::Mutex<()>,
    /// Woken when a bitmap write finishes, for the lazy writer.
    pub map_dirty: Notify,
    ranges: Mutex<RangeLocks>,
    range_freed: Notify,
    /// The metadata as last written; the async mutex orders counter updates.
    meta: tokio::sync::Mutex<Metadata>,
    /// Copies of the counters for status, readable without waiting.
    counters: Mutex<(u64, u64, u64)>,
    /// The secondary's remotecnt learnt at the last handshake (0 if never connected).
    peer_remotecnt: AtomicU64,
    /// A replicated path exists (peer connected and in sync). Always false until the
    /// peer link lands; then writes are acknowledged per replication mode.
    connected: AtomicBool,
    /// Trim is not supported by the provider: stop asking.
    no_discard: AtomicBool,
    failure: Mutex<Option<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

fn errno(err: &StorageError) -> NbdErrno {
    match err {
        StorageError::Io { source, .. } => source
            .raw_os_error()
            .map(NbdErrno::from_os_errno)
            .unwrap_or(NbdErrno::Eio),
        StorageError::OutOfBounds { .. } => NbdErrno::Einval,
        StorageError::Unsupported { .. } => NbdErrno::Enotsup,
        _ => NbdErrno::Eio,
    }
}

/// Releases a range lock when the request is done, whatever path it takes.
struct RangeGuard<'a> {
    core: &'a PrimaryCore,
    id: LockId,
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        lock(&self.core.ranges).unlock(self.id);
        self.core.range_freed.notify_waiters();
    }
}

impl PrimaryCore {
    /// Wraps an opened store whose on-disk map was loaded into `map`.
    pub fn new(name: String, store: LocalStore, meta: Metadata, map: ActiveMap) -> PrimaryCore {
        let counters = (meta.resuid, meta.localcnt, meta.remotecnt);
        PrimaryCore {
            name,
            store: Arc::new(store),
            stats: Stats::default(),
            map: Mutex::new(map),
            map_io: tokio::sync::Mutex::new(()),
            map_dirty: Notify::new(),
            ranges: Mutex::new(RangeLocks::new()),
            range_freed: Notify::new(),
            meta: tokio::sync::Mutex::new(meta),
            counters: Mutex::new(counters),
            peer_remotecnt: AtomicU64::new(0),
            connected: AtomicBool::new(false),
            no_discard: AtomicBool::new(false),
            failure: Mutex::new(None),
        }
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

    /// Whether the peer is connected.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::SeqCst)
    }

    /// A fatal error of this resource, if one happened.
    pub fn failure(&self) -> Option<String> {
        lock(&self.failure).clone()
    }

    fn fail(&self, what: String) {
        error!(resource = %self.name, "{what}");
        let mut slot = lock(&self.failure);
        if slot.is_none() {
            *slot = Some(what);
        }
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StorageError>
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
    /// writes the newest image, which covers every waiter that queued behind it.
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
            map.begin_map_write()
        };
        let Some(snapshot) = snapshot else {
            return Ok(());
        };
        let image = snapshot.image;
        let result = self.blocking(move |store| store.write_bitmap(&image)).await;
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

    /// Counts and logs a failed local leg; bookkeeping failures were counted already.
    fn local_result(
        &self,
        result: Result<(), Failed>,
        errors: &AtomicU64,
        what: &str,
    ) -> Result<(), NbdErrno> {
        match result {
            Ok(()) => Ok(()),
            Err(Failed::Bookkeeping(e)) => Err(e),
            Err(Failed::Local(e)) => {
                bump(errors);
                warn!(resource = %self.name, "{what} failed: {e}");
                Err(errno(&e))
            }
        }
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

    async fn lock_range(&self, offset: u64, len: u64) -> RangeGuard<'_> {
        loop {
            let freed = self.range_freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(id) = lock(&self.ranges).try_lock_ordered(offset, len) {
                return RangeGuard { core: self, id };
            }
            freed.await;
        }
    }

    /// Marks the extents of a write dirty and gets that onto the disk before returning.
    async fn mark_dirty(&self, offset: u64, len: u64) -> Result<(), NbdErrno> {
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

    async fn write_done(
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

    /// §7.1: the first write while the peer is away bumps localcnt, persisted first.
    async fn note_unreplicated_write(&self) -> Result<(), NbdErrno> {
        if self.is_connected() {
            return Ok(());
        }
        let mut meta = self.meta.lock().await;
        let peer_remotecnt = self.peer_remotecnt.load(Ordering::SeqCst);
        if !decision::must_bump_localcnt(self.is_connected(), meta.localcnt, peer_remotecnt) {
            return Ok(());
        }
        let mut next = meta.clone();
        next.localcnt += 1;
        let to_write = next.clone();
        match self
            .blocking(move |store| store.write_metadata(&to_write))
            .await
        {
            Ok(()) => {
                info!(resource = %self.name, "peer not connected: localcnt raised to {}", next.localcnt);
                *lock(&self.counters) = (next.resuid, next.localcnt, next.remotecnt);
                *meta = next;
                Ok(())
            }
            Err(e) => {
                bump(&self.stats.write_errors);
                self.fail(format!("metadata write failed: {e}"));
                Err(NbdErrno::Eio)
            }
        }
    }

    /// The common path of WRITE, TRIM and WRITE_ZEROES: lock, mark, count, apply, settle.
    async fn modify<F>(&self, offset: u64, len: u64, fua: bool, apply: F) -> Result<(), Failed>
    where
        F: FnOnce(&LocalStore) -> Result<(), StorageError> + Send + 'static,
    {
        let _range = self.lock_range(offset, len).await;
        self.mark_dirty(offset, len)
            .await
            .map_err(Failed::Bookkeeping)?;
        if let Err(e) = self.note_unreplicated_write().await {
            let _ = self
                .write_done(offset, len, WriteOutcome::NotReplicated)
                .await;
            return Err(Failed::Bookkeeping(e));
        }
        let result = self
            .blocking(move |store| {
                apply(store)?;
                if fua {
                    store.flush()?;
                }
                Ok(())
            })
            .await;
        // No peer yet: nothing was replicated, so the extents stay owed to the peer.
        let settled = self
            .write_done(offset, len, WriteOutcome::NotReplicated)
            .await;
        result.map_err(Failed::Local)?;
        settled.map_err(Failed::Bookkeeping)
    }
}

/// Why a modifying request failed.
enum Failed {
    /// The activemap or metadata could not be made to cover the write (already counted
    /// and logged); nothing was written.
    Bookkeeping(NbdErrno),
    /// The local disk refused the operation.
    Local(StorageError),
}

/// The NBD face of a primary resource.
pub struct PrimaryBackend(pub Arc<PrimaryCore>);

impl Backend for PrimaryBackend {
    fn info(&self) -> ExportInfo {
        let mut info = ExportInfo::new(self.0.store.datasize());
        info.can_multi_conn = true;
        info.description = format!("hast resource {}", self.0.name);
        info
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, NbdErrno> {
        let core = &self.0;
        bump(&core.stats.reads);
        let result = core
            .blocking(move |store| {
                let mut buf = vec![0u8; len as usize];
                store.read(offset, &mut buf)?;
                Ok(buf)
            })
            .await;
        result.map_err(|e| {
            bump(&core.stats.read_errors);
            warn!(resource = %core.name, "local read failed: {e}");
            errno(&e)
        })
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), NbdErrno> {
        let core = &self.0;
        bump(&core.stats.writes);
        let len = data.len() as u64;
        let result = core
            .modify(offset, len, fua, move |store| store.write(offset, &data))
            .await;
        core.local_result(result, &core.stats.write_errors, "write")
    }

    async fn flush(&self) -> Result<(), NbdErrno> {
        let core = &self.0;
        bump(&core.stats.flushes);
        core.blocking(|store| store.flush()).await.map_err(|e| {
            bump(&core.stats.flush_errors);
            warn!(resource = %core.name, "flush failed: {e}");
            errno(&e)
        })
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), NbdErrno> {
        let core = self.0.clone();
        bump(&core.stats.deletes);
        if core.no_discard.load(Ordering::Relaxed) {
            return Ok(());
        }
        let result = core
            .modify(offset, len.into(), fua, move |store| {
                store.discard(offset, len.into())
            })
            .await;
        if let Err(Failed::Local(StorageError::Unsupported { .. })) = result {
            // TRIM is advisory: a provider that cannot discard keeps its data, which is
            // a valid outcome; remember and stop asking.
            core.no_discard.store(true, Ordering::Relaxed);
            info!(resource = %core.name, "provider does not support discard; TRIM becomes a no-op");
            return Ok(());
        }
        core.local_result(result, &core.stats.delete_errors, "discard")
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), NbdErrno> {
        let core = &self.0;
        bump(&core.stats.writes);
        let _ = may_trim; // zero_range keeps the blocks allocated either way, which NO_HOLE allows
        let result = core
            .modify(offset, len.into(), fua, move |store| {
                store.write_zeroes(offset, len.into())
            })
            .await;
        core.local_result(result, &core.stats.write_errors, "write zeroes")
    }
}
