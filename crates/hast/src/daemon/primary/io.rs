//! The primary's request paths: what happens to each NBD request (docs/architecture.md,
//! "A write on the primary").
//!
//! Ordering rules, each the reason for a step below:
//! - the on-disk activemap covers a write's extents *before* its data goes anywhere
//!   (`mark_dirty`), so a crash at any point leaves every possibly-different extent marked;
//! - the request is queued to the secondary and the local write started together; the NBD
//!   reply waits for what the replication mode requires: fullsync the secondary's final
//!   reply, memsync its `Received`, async nothing; FUA always waits for both nodes' disks;
//! - a write the secondary did not confirm stays dirty (sync-owed), and if the peer is gone
//!   the first such write of the outage bumps `localcnt`, persisted before the reply;
//! - a write holds its range lock until it is settled on both nodes (after the reply for
//!   memsync and async), so an overlapping write, or a sync chunk, waits for it: both nodes
//!   apply overlapping writes in the same order.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use hast_core::activemap::WriteOutcome;
use hast_core::config::ReplicationMode;
use hast_core::nbd::{ExportInfo, NbdErrno};
use hast_core::proto::{flags, Header, Kind};
use tracing::{info, warn};

pub use super::core::PrimaryCore;
use super::core::RangeGuard;
use super::remote::{RemoteError, Ticket};
use crate::daemon::stats::bump;
use crate::nbd::Backend;
use crate::storage::{LocalStore, StorageError};

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

/// Why a modifying request failed.
enum Failed {
    /// The activemap or metadata could not be made to cover the write (already counted
    /// and logged); nothing was written.
    Bookkeeping(NbdErrno),
    /// The local disk refused the operation.
    Local(StorageError),
}

/// What a modifying request sends to the secondary.
enum Mirror {
    Write(Arc<Vec<u8>>),
    Trim,
    WriteZeroes { may_trim: bool },
}

impl PrimaryCore {
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

    /// Settles a write whose remote leg ended with `remote` (None: never sent).
    async fn settle(
        &self,
        offset: u64,
        len: u64,
        remote: Option<Result<Vec<u8>, RemoteError>>,
        durable: bool,
    ) -> Result<(), NbdErrno> {
        if let Some(Err(RemoteError::Failed(errno))) = remote {
            warn!(resource = %self.name, "secondary failed a write at {offset} (+{len}): errno {errno}; extent stays dirty");
        }
        match remote {
            // Written there, but maybe only in its page cache: clean after its next flush.
            Some(Ok(_)) if !durable => {
                self.written_not_durable(offset, len);
                Ok(())
            }
            Some(Ok(_)) => self.write_done(offset, len, WriteOutcome::Replicated).await,
            _ => {
                self.write_done(offset, len, WriteOutcome::NotReplicated)
                    .await
            }
        }
    }

    /// The common path of WRITE, TRIM and WRITE_ZEROES.
    async fn modify<F>(
        self: &Arc<Self>,
        offset: u64,
        len: u64,
        fua: bool,
        mirror: Mirror,
        apply: F,
    ) -> Result<(), Failed>
    where
        F: FnOnce(&LocalStore) -> Result<(), StorageError> + Send + 'static,
    {
        let range = self.lock_range(offset, len).await;
        self.mark_dirty(offset, len)
            .await
            .map_err(Failed::Bookkeeping)?;
        let mode = self.config().replication;
        let ticket = match self.session() {
            Some(session) => {
                let (kind, mut fl, data) = match mirror {
                    Mirror::Write(data) => (Kind::Write, 0, Some(data)),
                    Mirror::Trim => (Kind::Trim, 0, None),
                    Mirror::WriteZeroes { may_trim } => (
                        Kind::WriteZeroes,
                        if may_trim { flags::MAY_TRIM } else { 0 },
                        None,
                    ),
                };
                if fua {
                    fl |= flags::FUA;
                } else if mode == ReplicationMode::Memsync && kind == Kind::Write {
                    fl |= flags::MEMSYNC;
                }
                let header = Header {
                    flags: fl,
                    offset,
                    length: len as u32,
                    ..Header::new(kind, 0)
                };
                Some(session.submit(header, data).await)
            }
            None => None,
        };
        let local = self
            .blocking(move |store| {
                apply(store)?;
                if fua {
                    store.flush()?;
                }
                Ok(())
            })
            .await;
        self.finish(range, offset, len, fua, mode, ticket, local)
            .await
    }

    /// Waits for what the replication mode requires, then settles (now, or in the
    /// background once the secondary's final reply arrives).
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        self: &Arc<Self>,
        range: RangeGuard,
        offset: u64,
        len: u64,
        fua: bool,
        mode: ReplicationMode,
        ticket: Option<Ticket>,
        local: Result<(), StorageError>,
    ) -> Result<(), Failed> {
        let Some(ticket) = ticket else {
            // Not sent: owed to the peer, and the counters must say we diverged.
            let bump = self.note_unreplicated_write().await;
            let settled = self.settle(offset, len, None, false).await;
            drop(range);
            local.map_err(Failed::Local)?;
            bump.and(settled).map_err(Failed::Bookkeeping)?;
            return Ok(());
        };
        let early = !fua && local.is_ok() && mode != ReplicationMode::Fullsync;
        let received = match (early, mode, ticket.received) {
            (true, ReplicationMode::Async, _) => true,
            (true, ReplicationMode::Memsync, Some(rx)) => rx.await.is_ok(),
            _ => false,
        };
        if received {
            // Acknowledge now; the final reply settles the activemap and frees the range.
            let core = self.clone();
            let reply = ticket.reply;
            self.background.spawn(async move {
                let remote = reply.await.unwrap_or(Err(RemoteError::Disconnected));
                let _ = core.settle(offset, len, Some(remote), false).await;
                drop(range);
            });
            return Ok(());
        }
        let remote = Ticket {
            received: None,
            reply: ticket.reply,
        }
        .done()
        .await;
        let replicated = remote.is_ok();
        let bump = if replicated {
            Ok(())
        } else {
            self.note_unreplicated_write().await
        };
        let settled = self.settle(offset, len, Some(remote), fua).await;
        drop(range);
        local.map_err(Failed::Local)?;
        bump.and(settled).map_err(Failed::Bookkeeping)
    }

    async fn remote_read(&self, offset: u64, len: u32) -> Result<Vec<u8>, NbdErrno> {
        let Some(session) = self.session() else {
            return Err(NbdErrno::Eio);
        };
        let header = Header {
            offset,
            length: len,
            ..Header::new(Kind::Read, 0)
        };
        match session.submit(header, None).await.done().await {
            Ok(data) if data.len() == len as usize => Ok(data),
            Ok(_) => Err(NbdErrno::Eio),
            Err(RemoteError::Failed(e)) => Err(NbdErrno::from_os_errno(e as i32)),
            Err(RemoteError::Disconnected) => Err(NbdErrno::Eio),
        }
    }
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
        core.note_request();
        if !core.locally_valid(offset, len.into()) {
            // The local copy is stale until the sync from the secondary reaches it.
            return core.remote_read(offset, len).await;
        }
        let result = core
            .blocking(move |store| {
                let mut buf = vec![0u8; len as usize];
                store.read(offset, &mut buf)?;
                Ok(buf)
            })
            .await;
        match result {
            Ok(buf) => Ok(buf),
            Err(e) => {
                bump(&core.stats.read_errors);
                warn!(resource = %core.name, "local read failed: {e}");
                // The secondary's copy may still be readable (FreeBSD masks local read
                // errors the same way).
                if core.is_connected() {
                    if let Ok(data) = core.remote_read(offset, len).await {
                        return Ok(data);
                    }
                }
                Err(errno(&e))
            }
        }
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), NbdErrno> {
        let core = &self.0;
        bump(&core.stats.writes);
        core.note_request();
        let len = data.len() as u64;
        let data = Arc::new(data);
        let local = data.clone();
        let result = core
            .modify(offset, len, fua, Mirror::Write(data), move |store| {
                store.write(offset, &local)
            })
            .await;
        core.local_result(result, &core.stats.write_errors, "write")
    }

    async fn flush(&self) -> Result<(), NbdErrno> {
        let core = &self.0;
        bump(&core.stats.flushes);
        core.note_request();
        // The secondary applies requests in order: its flush covers every write queued
        // before it, which includes every write already acknowledged to the client.
        let remote = match core.session() {
            Some(session) => Some(session.submit(Header::new(Kind::Flush, 0), None).await),
            None => None,
        };
        let local = core.blocking(|store| store.flush()).await;
        if let Some(ticket) = remote {
            if let Err(e) = ticket.done().await {
                warn!(resource = %core.name, "flush on the secondary failed: {e:?}");
            }
        }
        local.map_err(|e| {
            bump(&core.stats.flush_errors);
            warn!(resource = %core.name, "flush failed: {e}");
            errno(&e)
        })
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), NbdErrno> {
        let core = &self.0;
        bump(&core.stats.deletes);
        core.note_request();
        if core.no_discard.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Block devices discard whole sectors only. TRIM is advisory, so shrink the range
        // to the sectors it covers entirely; both nodes get the same range.
        let sector = u64::from(core.store.sector_size().max(1));
        let start = offset.div_ceil(sector) * sector;
        let end = (offset + u64::from(len)) / sector * sector;
        if end <= start {
            return Ok(());
        }
        let (offset, len) = (start, (end - start) as u32);
        let result = core
            .modify(offset, len.into(), fua, Mirror::Trim, move |store| {
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
        core.note_request();
        let result = core
            .modify(
                offset,
                len.into(),
                fua,
                Mirror::WriteZeroes { may_trim },
                move |store| store.write_zeroes(offset, len.into()),
            )
            .await;
        core.local_result(result, &core.stats.write_errors, "write zeroes")
    }
}
