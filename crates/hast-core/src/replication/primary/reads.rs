//! Client reads and flushes, and the batched durability flush that lets replicated writes
//! become clean once a flush on the secondary covers them.

use super::link::Owner;
use super::{Action, IoOwner, Notice, Primary};
use crate::replication::{
    errno, read_source, settle_flush, DataRef, LocalOp, MapOutcome, Mutation, PeerFlush,
    PeerRequest, ReadSource, ReqId, SessionId,
};

/// A client read in flight.
#[derive(Debug, Clone, Copy)]
pub(super) struct ReadReq {
    offset: u64,
    len: u64,
    /// From the secondary: the seq it waits for.
    peer: Option<u64>,
}

/// A client flush in flight.
#[derive(Debug)]
pub(super) struct FlushReq {
    local: Option<Result<(), u32>>,
    peer: FlushLeg,
    /// Writes the secondary had written but not flushed when this flush was sent.
    batch: Vec<(u64, u64)>,
    /// Waiting for the counter raise of this generation, with the answer.
    meta: Option<(u64, Result<(), u32>)>,
    /// Waiting for the fence's verdict (`fence.rs`), with the answer it gets if the
    /// peer is fenced (then after a counter raise).
    fence: Option<Result<(), u32>>,
    /// Writes answered before it (`Primary::acked_writes` when it came).
    covers: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlushLeg {
    Pending(u64),
    Done(PeerFlush),
}

impl Primary {
    pub(super) fn on_read(&mut self, req: ReqId, offset: u64, len: u64) {
        self.last_request = Some(self.now);
        if self.stopping.is_some() {
            return self.answer(req, Err(errno::ESHUTDOWN));
        }
        if self.disk_failed {
            return self.answer(req, Err(errno::EIO));
        }
        let synced = !self.stale || self.map.is_synced(offset, len).unwrap_or(false);
        let mut source = read_source(self.stale, synced, self.link.up_id().is_some());
        if self.mutated(Mutation::StaleReads) {
            source = ReadSource::Local;
        }
        self.reads.insert(
            req,
            ReadReq {
                offset,
                len,
                peer: None,
            },
        );
        match source {
            ReadSource::Local => {
                let io = self.new_io(IoOwner::Read(req));
                self.out.push(Action::Local {
                    io,
                    op: LocalOp::Read { offset, len },
                });
            }
            // The local copy is stale here until the sync reaches it.
            ReadSource::Peer => self.read_from_peer(req),
            ReadSource::Fail => {
                self.reads.remove(&req);
                self.out.push(Action::Notify(Notice::RefusedStale));
                self.answer(req, Err(errno::EIO));
            }
        }
    }

    fn read_from_peer(&mut self, req: ReqId) {
        let Some(r) = self.reads.get(&req).copied() else {
            return;
        };
        let request = PeerRequest::Read {
            offset: r.offset,
            len: u32::try_from(r.len).unwrap_or(u32::MAX),
            sync: false,
        };
        match self.send(Owner::Read(req), request, None) {
            Some(seq) => {
                if let Some(r) = self.reads.get_mut(&req) {
                    r.peer = Some(seq);
                }
            }
            None => {
                self.reads.remove(&req);
                self.answer(req, Err(errno::EIO));
            }
        }
    }

    pub(super) fn read_local_done(
        &mut self,
        req: ReqId,
        io: crate::replication::IoId,
        result: Result<(), u32>,
    ) {
        match result {
            // A local flush failed meanwhile: what this read returned may be the old
            // data under pages the kernel dropped.
            Ok(()) if self.disk_failed => {
                self.reads.remove(&req);
                self.out.push(Action::Release(DataRef::Local(io)));
                self.answer(req, Err(errno::EIO));
            }
            Ok(()) => {
                self.reads.remove(&req);
                self.out.push(Action::Reply {
                    req,
                    result: Ok(Some(DataRef::Local(io))),
                });
            }
            // The secondary's copy may still be readable (FreeBSD masks local read
            // errors the same way), where it is not behind: never from an extent still
            // owed to it, whose data there may be older than what was acknowledged.
            Err(_) if self.link.up_id().is_some() && self.peer_has(req) => {
                self.read_from_peer(req);
            }
            Err(e) => {
                self.reads.remove(&req);
                self.answer(req, Err(e));
            }
        }
    }

    /// Whether the secondary holds the current data of a read's range (no extent of it
    /// is owed to the secondary).
    fn peer_has(&self, req: ReqId) -> bool {
        let Some(r) = self.reads.get(&req) else {
            return false;
        };
        // A stale primary's owed extents are where the secondary is the newer side.
        self.stale
            || self.map.is_synced(r.offset, r.len).unwrap_or(false)
            || self.mutated(Mutation::PeerReadsOwedExtents)
    }

    pub(super) fn read_peer_done(
        &mut self,
        req: ReqId,
        session: SessionId,
        seq: u64,
        result: Result<(), u32>,
    ) {
        self.reads.remove(&req);
        let result = match result {
            Ok(()) => Ok(Some(DataRef::Peer(session, seq))),
            Err(e) => Err(e),
        };
        self.out.push(Action::Reply { req, result });
    }

    pub(super) fn read_peer_lost(&mut self, req: ReqId) {
        self.reads.remove(&req);
        self.answer(req, Err(errno::EIO));
    }

    pub(super) fn on_flush(&mut self, req: ReqId) {
        self.last_request = Some(self.now);
        if self.stopping.is_some() {
            return self.answer(req, Err(errno::ESHUTDOWN));
        }
        if self.disk_failed {
            return self.answer(req, Err(errno::EIO));
        }
        // The secondary applies requests in order: its flush covers every write queued
        // before it, which includes every write already answered to the client.
        let batch = std::mem::take(&mut self.undurable);
        let peer = match self.send(Owner::Flush(req), PeerRequest::Flush, None) {
            Some(seq) => FlushLeg::Pending(seq),
            None => FlushLeg::Done(PeerFlush::NotSent),
        };
        self.flushes.insert(
            req,
            FlushReq {
                local: None,
                peer,
                batch,
                meta: None,
                fence: None,
                covers: self.acked_writes,
            },
        );
        let io = self.new_io(IoOwner::Flush(req));
        self.out.push(Action::Local {
            io,
            op: LocalOp::Flush,
        });
    }

    pub(super) fn flush_local_done(&mut self, req: ReqId, result: Result<(), u32>) {
        if let Err(e) = result {
            self.local_flush_failed(e);
        }
        if let Some(f) = self.flushes.get_mut(&req) {
            f.local = Some(result);
        }
        self.flush_check(req);
    }

    pub(super) fn flush_peer_done(&mut self, req: ReqId, peer: PeerFlush) {
        if let Some(f) = self.flushes.get_mut(&req) {
            f.peer = FlushLeg::Done(peer);
        }
        self.flush_check(req);
    }

    fn flush_check(&mut self, req: ReqId) {
        let Some(f) = self.flushes.get_mut(&req) else {
            return;
        };
        let (Some(local), FlushLeg::Done(peer), None, None) = (f.local, f.peer, f.meta, f.fence)
        else {
            return;
        };
        let batch = std::mem::take(&mut f.batch);
        let covers = f.covers;
        if peer == PeerFlush::Done {
            self.flushed_upto = self.flushed_upto.max(covers);
        }
        let unflushed = self.flushed_upto < covers;
        let mut s = settle_flush(local, peer, batch.len(), self.stale, true, unflushed);
        if self.disk_failed {
            // This copy is untrusted now: it promises nothing, and must not look newer.
            s.reply = s.reply.and(Err(errno::EIO));
            s.raise_localcnt = false;
        }
        self.carry_out_flush(s.covered, s.drop_peer, peer, batch);
        if s.raise_localcnt && s.reply.is_ok() && self.fence_holds_answer() {
            // Its success says the writes before it are safe although the secondary did
            // not confirm them: only if the peer is fenced.
            if let Some(f) = self.flushes.get_mut(&req) {
                f.fence = Some(s.reply);
            }
            return;
        }
        self.flush_finish(req, s.reply, s.raise_localcnt);
    }

    /// A settled flush's answer, after the counter raise it needs is on disk.
    fn flush_finish(&mut self, req: ReqId, reply: Result<(), u32>, raise: bool) {
        if raise {
            let gen = self.raise_localcnt();
            if !self.meta_on_disk(gen) {
                if let Some(f) = self.flushes.get_mut(&req) {
                    f.fence = None;
                    f.meta = Some((gen, reply));
                }
                return;
            }
        }
        self.flushes.remove(&req);
        self.answer(req, reply);
    }

    /// The fence gave its verdict: flushes waiting for it are answered (after their
    /// counter raise), or fail.
    pub(super) fn flush_fence_ready(&mut self, passed: bool) {
        let ready: Vec<(ReqId, Result<(), u32>)> = self
            .flushes
            .iter()
            .filter_map(|(r, f)| f.fence.map(|reply| (*r, reply)))
            .collect();
        for (req, reply) in ready {
            if passed {
                self.flush_finish(req, reply, true);
            } else {
                self.flushes.remove(&req);
                self.answer(req, Err(errno::EIO));
            }
        }
    }

    pub(super) fn flush_meta_ready(&mut self, ok: bool) {
        let ready: Vec<(ReqId, u64, Result<(), u32>)> = self
            .flushes
            .iter()
            .filter_map(|(r, f)| f.meta.map(|(gen, reply)| (*r, gen, reply)))
            .collect();
        for (req, gen, reply) in ready {
            if self.meta_on_disk(gen) || !ok {
                let reply = if self.meta_on_disk(gen) {
                    reply
                } else {
                    reply.and(Err(errno::EIO))
                };
                self.flushes.remove(&req);
                self.answer(req, reply);
            }
        }
    }

    /// Whether the batched durability flush is in flight.
    pub(super) fn durability_in_flight(&self) -> bool {
        self.durability.is_some()
    }

    /// The batched durability flush: due `DURABILITY_DELAY_MS` after a replicated write
    /// was written on the secondary without a flush. It flushes both nodes.
    pub(super) fn durability_tick(&mut self) {
        // A failed disk proves nothing by flushing: the writes stay pending (dirty).
        if self.durability.is_some() || self.undurable.is_empty() || self.disk_failed {
            return;
        }
        if self.durability_due.is_some_and(|due| self.now < due) {
            return;
        }
        self.durability_due = None;
        let batch = std::mem::take(&mut self.undurable);
        let peer = match self.send(Owner::Durability, PeerRequest::Flush, None) {
            Some(seq) => FlushLeg::Pending(seq),
            None => FlushLeg::Done(PeerFlush::NotSent),
        };
        let io = self.new_io(IoOwner::Durability);
        self.out.push(Action::Local {
            io,
            op: LocalOp::Flush,
        });
        self.durability = Some(Durability {
            local: None,
            peer,
            batch,
            covers: self.acked_writes,
        });
    }

    pub(super) fn durability_peer_done(&mut self, peer: PeerFlush) {
        if let Some(d) = &mut self.durability {
            d.peer = FlushLeg::Done(peer);
        }
        self.durability_check();
    }

    pub(super) fn durability_local_done(&mut self, result: Result<(), u32>) {
        // At once, not when the secondary's flush answers: reads and writes meanwhile
        // would use a copy that may have lost data.
        if let Err(e) = result {
            self.local_flush_failed(e);
        }
        if let Some(d) = &mut self.durability {
            d.local = Some(result);
        }
        self.durability_check();
    }

    fn durability_check(&mut self) {
        let Some(d) = &self.durability else {
            return;
        };
        let (Some(local), FlushLeg::Done(peer)) = (d.local, d.peer) else {
            return;
        };
        let Some(d) = self.durability.take() else {
            return;
        };
        if let Err(e) = local {
            self.local_flush_failed(e);
        }
        if peer == PeerFlush::Done {
            self.flushed_upto = self.flushed_upto.max(d.covers);
        }
        self.durability_settle(local, peer, d.batch);
    }

    /// Settles writes the secondary had written but not flushed: clean if both flushes
    /// succeeded; owed if the secondary's did not (they were acknowledged, so the counter
    /// rises); pending again if the local one failed.
    pub(super) fn durability_settle(
        &mut self,
        local: Result<(), u32>,
        peer: PeerFlush,
        batch: Vec<(u64, u64)>,
    ) {
        let s = settle_flush(local, peer, batch.len(), self.stale, false, false);
        self.carry_out_flush(s.covered, s.drop_peer, peer, batch);
        if s.raise_localcnt {
            let _ = self.raise_localcnt();
        }
    }

    /// What every flush settlement does: the writes it covered settle `covered`, and a
    /// secondary whose flush failed is dropped.
    fn carry_out_flush(
        &mut self,
        covered: MapOutcome,
        drop_peer: bool,
        peer: PeerFlush,
        batch: Vec<(u64, u64)>,
    ) {
        for (offset, len) in batch {
            self.settle_map(offset, len, covered);
        }
        if drop_peer {
            if let PeerFlush::Failed(errno) = peer {
                self.out.push(Action::Notify(Notice::PeerFailed {
                    offset: 0,
                    len: 0,
                    errno,
                }));
            }
            self.drop_session(
                "flush on the secondary failed (writes it had confirmed may be lost there)",
            );
        }
    }
}

/// The batched durability flush in flight.
#[derive(Debug)]
pub(super) struct Durability {
    local: Option<Result<(), u32>>,
    peer: FlushLeg,
    batch: Vec<(u64, u64)>,
    /// Writes answered before it was sent.
    covers: u64,
}
