//! The primary's request paths: what happens to each NBD request (docs/architecture.md,
//! "A write on the primary").
//!
//! The rules that decide (when to answer, what stays dirty, when the counters rise, when
//! the link is dropped) are `hast_core::replication`'s; this file gathers the facts and
//! carries out its `Settlement`s. Ordering rules, each the reason for a step below:
//! - the on-disk activemap covers a write's extents *before* its data goes anywhere
//!   (`mark_dirty`), so a crash at any point leaves every possibly-different extent marked;
//! - the request is queued to the secondary and the local write started together; the NBD
//!   reply waits for the mode's ack point (`replication::plan_write`);
//! - a write the secondary did not confirm durable stays dirty (sync-owed), and an
//!   acknowledged one raises `localcnt`, persisted before the reply (or as soon as the
//!   loss is known, for an early answer);
//! - a write holds its range lock until it is settled on both nodes (after the reply for
//!   memsync and async), so an overlapping write, or a sync chunk, waits for it: both nodes
//!   apply overlapping writes in the same order.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use hast_core::nbd::{ExportInfo, NbdErrno};
use hast_core::proto::{flags, Header, Kind};
use hast_core::replication::{
    self, AckPoint, Modify, PeerFlush, PeerResult, ReadSource, Settlement, WriteFacts,
};
use tracing::{info, warn};

pub use super::core::PrimaryCore;
use super::remote::{RemoteError, Session, Ticket};
use crate::daemon::stats::bump;
use crate::nbd::Backend;
use crate::storage::{LocalStore, StorageError};

/// The errno of a failed local operation, as Linux numbers it.
fn os_errno(err: &StorageError) -> u32 {
    match err {
        StorageError::Io { source, .. } => source
            .raw_os_error()
            .and_then(|e| u32::try_from(e).ok())
            .unwrap_or(replication::errno::EIO),
        StorageError::OutOfBounds { .. } => 22,
        StorageError::Unsupported { .. } => replication::errno::EOPNOTSUPP,
        _ => replication::errno::EIO,
    }
}

fn nbd_errno(errno: u32) -> NbdErrno {
    NbdErrno::from_os_errno(i32::try_from(errno).unwrap_or(5))
}

/// What a modifying request sends to the secondary.
enum Mirror {
    Write(Arc<Vec<u8>>),
    Trim,
    WriteZeroes { may_trim: bool },
}

impl Mirror {
    fn what(&self) -> Modify {
        match self {
            Mirror::Trim => Modify::Trim,
            Mirror::Write(_) | Mirror::WriteZeroes { .. } => Modify::Data,
        }
    }
}

/// Largest TRIM or WRITE_ZEROES sent as one piece: a 4 GiB request as one frame could
/// keep the secondary busy past the watchdog's `timeout`.
const ZERO_PIECE: u64 = hast_core::proto::MAX_IO as u64;

/// The pieces `(offset, len, fua)` of a large TRIM or WRITE_ZEROES; only the last carries
/// the client's FUA (its flush covers the earlier pieces on each node).
fn pieces(offset: u64, len: u64, fua: bool) -> impl Iterator<Item = (u64, u64, bool)> {
    let end = offset + len;
    (offset..end).step_by(ZERO_PIECE as usize).map(move |at| {
        let n = ZERO_PIECE.min(end - at);
        (at, n, fua && at + n == end)
    })
}

impl PrimaryCore {
    /// Carries out a settlement in the order the rules require: the activemap, then the
    /// counter raise (persisted), then the link; returns the client's answer, if one is
    /// still due. The map comes first so that a concurrent end of sync sees the debt.
    async fn carry_out(
        &self,
        s: Settlement,
        offset: u64,
        len: u64,
        session: Option<&Session>,
    ) -> Option<Result<(), NbdErrno>> {
        let mapped = self.settle_map(offset, len, s.map).await;
        let raised = if s.raise_localcnt {
            self.raise_localcnt("a write was acknowledged that the secondary has not confirmed")
                .await
        } else {
            Ok(())
        };
        if s.drop_peer {
            if let Some(session) = session {
                warn!(resource = %self.name, "the secondary failed a request at {offset} (+{len}): \
                      dropping the connection (its copy may lack writes it confirmed; the sync repairs it)");
                session.close();
            }
        }
        if s.wake_sync {
            self.sync_wake.notify_one();
        }
        let reply = s.reply?;
        Some(match (reply, raised, mapped) {
            (Err(e), _, _) => Err(nbd_errno(e)),
            // Not recorded on disk: the write must not be acknowledged.
            (Ok(()), Err(e), _) | (Ok(()), Ok(()), Err(e)) => Err(e),
            (Ok(()), Ok(()), Ok(())) => Ok(()),
        })
    }

    /// The common path of WRITE, TRIM and WRITE_ZEROES (one straight line: admit, lock,
    /// mark dirty, send and write at once, wait for the mode's ack point, settle).
    async fn modify<F>(
        self: &Arc<Self>,
        offset: u64,
        len: u64,
        fua: bool,
        mirror: Mirror,
        apply: F,
    ) -> Result<(), NbdErrno>
    where
        F: FnOnce(&LocalStore) -> Result<(), StorageError> + Send + 'static,
    {
        let stale = self.is_stale();
        let session = self.session();
        replication::admit_write(stale, session.is_some()).map_err(|e| {
            warn!(resource = %self.name, "write refused: this copy is stale and the secondary, \
                  which has the good data, is not connected");
            nbd_errno(e)
        })?;
        let range = self.lock_range(offset, len).await;
        self.mark_dirty(offset, len).await?;
        let plan = replication::plan_write(self.config().replication, fua, stale);
        let what = mirror.what();
        let ticket = match &session {
            Some(session) => Some(submit_mirror(session, offset, len, mirror, plan).await),
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
        let local = local.map_err(|e| {
            let errors = match what {
                Modify::Trim => &self.stats.delete_errors,
                Modify::Data => &self.stats.write_errors,
            };
            if !matches!(e, StorageError::Unsupported { .. }) {
                bump(errors);
                warn!(resource = %self.name, "local write at {offset} (+{len}) failed: {e}");
            }
            os_errno(&e)
        });
        let Some(mut ticket) = ticket else {
            let facts = WriteFacts {
                what,
                local,
                peer: PeerResult::NotSent,
                stale,
                acked: false,
            };
            let reply = self.carry_out(replication::settle_write(facts), offset, len, None);
            let reply = reply.await;
            drop(range);
            return reply.unwrap_or(Ok(()));
        };
        let early = local.is_ok()
            && match plan.ack {
                AckPoint::Local => true,
                AckPoint::Received => match ticket.received.take() {
                    Some(rx) => rx.await.is_ok(),
                    None => false,
                },
                AckPoint::Final => false,
            };
        let session = session.clone();
        let settle = {
            let core = self.clone();
            async move {
                let peer = peer_result(ticket.done().await, plan.peer_fua);
                let facts = WriteFacts {
                    what,
                    local,
                    peer,
                    stale,
                    acked: early,
                };
                let s = replication::settle_write(facts);
                let reply = core.carry_out(s, offset, len, session.as_deref()).await;
                drop(range);
                reply
            }
        };
        if early {
            // Answered now; the final reply settles the activemap and frees the range.
            self.background.spawn(settle);
            return Ok(());
        }
        settle.await.unwrap_or(Ok(()))
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
            Err(RemoteError::Failed(e)) => Err(nbd_errno(e)),
            Err(RemoteError::Disconnected) => Err(NbdErrno::Eio),
        }
    }

    /// Flushes the secondary (and, beside it, runs `local`: the local flush of a client
    /// FLUSH), settling the writes the secondary had written but not flushed before: clean
    /// if its flush succeeded, owed (and the counters raised) otherwise. The background
    /// durability flush passes `client = false` and an empty `local`.
    pub async fn flush_peer(
        &self,
        local: impl std::future::Future<Output = Result<(), u32>>,
        client: bool,
    ) -> Result<(), NbdErrno> {
        let batch = self.take_undurable();
        let session = self.session();
        if batch.is_empty() && !client {
            return Ok(());
        }
        let peer = async {
            match &session {
                Some(session) => {
                    let ticket = session.submit(Header::new(Kind::Flush, 0), None).await;
                    match ticket.done().await {
                        Ok(_) => PeerFlush::Done,
                        Err(RemoteError::Failed(e)) => PeerFlush::Failed(e),
                        Err(RemoteError::Disconnected) => PeerFlush::Lost,
                    }
                }
                None => PeerFlush::NotSent,
            }
        };
        let (peer, local) = tokio::join!(peer, local);
        let s = replication::settle_flush(local, peer, batch.len(), self.is_stale());
        let mut result = Ok(());
        for (offset, len) in batch {
            if let Err(e) = self.settle_map(offset, len, s.covered).await {
                result = Err(e);
            }
        }
        if s.raise_localcnt {
            result = result.and(
                self.raise_localcnt(
                    "writes acknowledged as written were not made durable on the secondary",
                )
                .await,
            );
        }
        if s.drop_peer {
            if let (Some(session), PeerFlush::Failed(e)) = (&session, peer) {
                warn!(resource = %self.name, "flush on the secondary failed (errno {e}): dropping the connection \
                      (writes it had confirmed may be lost there; the sync repairs it)");
                session.close();
            }
        }
        match s.reply {
            Err(e) => Err(nbd_errno(e)),
            Ok(()) => result,
        }
    }
}

/// Queues the secondary's leg of a modifying request.
async fn submit_mirror(
    session: &Session,
    offset: u64,
    len: u64,
    mirror: Mirror,
    plan: replication::WritePlan,
) -> Ticket {
    let (kind, mut fl, data) = match mirror {
        Mirror::Write(data) => (Kind::Write, 0, Some(data)),
        Mirror::Trim => (Kind::Trim, 0, None),
        Mirror::WriteZeroes { may_trim } => (
            Kind::WriteZeroes,
            if may_trim { flags::MAY_TRIM } else { 0 },
            None,
        ),
    };
    if plan.peer_fua {
        fl |= flags::FUA;
    }
    if plan.ack == AckPoint::Received && kind == Kind::Write {
        fl |= flags::MEMSYNC;
    }
    let header = Header {
        flags: fl,
        offset,
        length: len as u32,
        ..Header::new(kind, 0)
    };
    session.submit(header, data).await
}

/// The secondary's leg as the replication rules see it.
fn peer_result(result: Result<Vec<u8>, RemoteError>, durable: bool) -> PeerResult {
    match result {
        Ok(_) => PeerResult::Written { durable },
        Err(RemoteError::Failed(e)) => PeerResult::Failed(e),
        Err(RemoteError::Disconnected) => PeerResult::Lost,
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
        let stale = core.is_stale();
        let synced = !stale || core.is_synced(offset, len.into());
        match replication::read_source(stale, synced, core.is_connected()) {
            ReadSource::Local => {}
            // The local copy is stale here until the sync from the secondary reaches it.
            ReadSource::Peer => return core.remote_read(offset, len).await,
            ReadSource::Fail => {
                bump(&core.stats.read_errors);
                warn!(resource = %core.name, "read at {offset} (+{len}) refused: this copy is stale there \
                      and the secondary, which has the good data, is not connected");
                return Err(NbdErrno::Eio);
            }
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
                Err(nbd_errno(os_errno(&e)))
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
        core.modify(offset, len, fua, Mirror::Write(data), move |store| {
            store.write(offset, &local)
        })
        .await
    }

    async fn flush(&self) -> Result<(), NbdErrno> {
        let core = &self.0;
        bump(&core.stats.flushes);
        core.note_request();
        // The secondary applies requests in order: its flush covers every write queued
        // before it, which includes every write already acknowledged to the client.
        let local = async {
            core.blocking(|store| store.flush()).await.map_err(|e| {
                bump(&core.stats.flush_errors);
                warn!(resource = %core.name, "flush failed: {e}");
                os_errno(&e)
            })
        };
        core.flush_peer(local, true).await
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), NbdErrno> {
        let core = &self.0;
        bump(&core.stats.deletes);
        core.note_request();
        // Block devices discard whole sectors only. TRIM is advisory, so shrink the range
        // to the sectors it covers entirely; both nodes get the same range.
        let sector = u64::from(core.store.sector_size().max(1));
        let start = offset.div_ceil(sector) * sector;
        let end = (offset + u64::from(len)) / sector * sector;
        if end <= start {
            return Ok(());
        }
        for (at, n, fua) in pieces(start, end - start, fua) {
            if core.no_discard.load(Ordering::Relaxed) {
                return Ok(());
            }
            let result = core
                .modify(at, n, fua, Mirror::Trim, move |store| store.discard(at, n))
                .await;
            match result {
                // TRIM is advisory: a provider that cannot discard keeps its data, which
                // is a valid outcome. The range is owed, so the sync makes the secondary
                // match; stop asking.
                Err(NbdErrno::Enotsup) => {
                    core.no_discard.store(true, Ordering::Relaxed);
                    info!(resource = %core.name, "provider does not support discard; TRIM becomes a no-op");
                    return Ok(());
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
        }
        Ok(())
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
        for (at, n, fua) in pieces(offset, len.into(), fua) {
            core.modify(at, n, fua, Mirror::WriteZeroes { may_trim }, move |store| {
                store.write_zeroes(at, n)
            })
            .await?;
        }
        Ok(())
    }
}
