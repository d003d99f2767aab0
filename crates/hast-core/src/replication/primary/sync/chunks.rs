//! One extent's copy, chunk by chunk: read on the source, write on the target, the
//! target's flush (FUA on the last chunk), our own flush, then the extent is marked
//! synced; its range lock is held until then.

use super::{Copy, Stage, SyncState};
use crate::proto::handshake::SyncSource;
use crate::rangelock::LockKind;
use crate::replication::primary::link::Owner;
use crate::replication::primary::{Action, IoOwner, Notice, Primary, BUSY_MS, SYNC_ATTEMPTS};
use crate::replication::{DataRef, IoId, LocalOp, Mutation, PeerRequest, SessionId};

impl Primary {
    pub(super) fn copy_mut(&mut self, ext: u64) -> Option<&mut Copy> {
        match &mut self.syncer.state {
            SyncState::Pass(p) => p.copies.get_mut(&ext),
            _ => None,
        }
    }

    /// Starts the current chunk of `ext` if the pacer and the range lock allow.
    pub(in crate::replication::primary) fn start_chunk(&mut self, ext: u64) {
        let Some((_, source, _)) = self.session_facts() else {
            return;
        };
        let Some((offset, len)) = self
            .copy_mut(ext)
            .and_then(|c| c.chunks.get(c.index).copied())
        else {
            return;
        };
        // `syncrate` caps the copy only while the application uses the device.
        let busy = self
            .last_request
            .is_some_and(|t| self.now.saturating_sub(t) < BUSY_MS);
        let rate = self.settings.syncrate;
        let paced = rate > 0 && busy;
        if paced && self.syncer.pace_next > self.now {
            return;
        }
        let Some(lock) = self.locks.try_lock(LockKind::Sync, offset, len) else {
            return;
        };
        self.syncer.pace_next = if paced {
            self.now + len.saturating_mul(1000) / rate
        } else {
            self.now
        };
        let stage = match source {
            SyncSource::Primary => {
                let io = self.new_io(IoOwner::Sync(ext));
                self.out.push(Action::Local {
                    io,
                    op: LocalOp::Read { offset, len },
                });
                Stage::ReadLocal(io)
            }
            SyncSource::Secondary => {
                let request = PeerRequest::Read {
                    offset,
                    len: u32::try_from(len).unwrap_or(u32::MAX),
                    sync: true,
                };
                match self.send(Owner::Sync(ext), request, None) {
                    Some(seq) => Stage::ReadPeer(seq),
                    None => {
                        self.locks.unlock(lock);
                        return;
                    }
                }
            }
        };
        if let Some(c) = self.copy_mut(ext) {
            c.lock = Some(lock);
            c.stage = stage;
        }
    }

    pub(in crate::replication::primary) fn sync_local_done(
        &mut self,
        ext: u64,
        io: IoId,
        result: Result<(), u32>,
    ) {
        let Some(c) = self.copy_mut(ext) else {
            // The pass ended meanwhile: nobody will send what was read.
            if result.is_ok() {
                self.out.push(Action::Release(DataRef::Local(io)));
            }
            return;
        };
        let (offset, len) = c.chunks.get(c.index).copied().unwrap_or((0, 0));
        let last = c.index + 1 == c.chunks.len();
        match (c.stage, result) {
            (Stage::ReadLocal(i), Ok(())) if i == io => {
                // The last chunk of an extent carries FUA: the secondary makes the whole
                // extent durable (it applies requests in order) before it is paid.
                let request = PeerRequest::Write {
                    offset,
                    len: u32::try_from(len).unwrap_or(u32::MAX),
                    fua: last,
                    memsync: false,
                    sync: true,
                };
                match self.send(Owner::Sync(ext), request, Some(DataRef::Local(io))) {
                    Some(seq) => {
                        if let Some(c) = self.copy_mut(ext) {
                            c.stage = Stage::SendWrite(seq);
                        }
                    }
                    None => self.chunk_failed(ext, "the link dropped".into()),
                }
            }
            (Stage::WriteLocal(i), Ok(())) if i == io => self.chunk_done(ext),
            (Stage::FlushLocal(i), Ok(())) if i == io => self.extent_done(ext),
            (Stage::FlushLocal(i), Err(e)) if i == io => {
                self.local_flush_failed(e);
                self.chunk_failed(ext, format!("local flush errno {e}"));
            }
            (Stage::ReadLocal(i) | Stage::WriteLocal(i), Err(e)) if i == io => {
                self.chunk_failed(ext, format!("local errno {e}"));
            }
            _ => {}
        }
    }

    pub(in crate::replication::primary) fn sync_peer_done(
        &mut self,
        ext: u64,
        session: SessionId,
        seq: u64,
        result: Result<(), u32>,
    ) {
        let Some(c) = self.copy_mut(ext) else {
            if result.is_ok() {
                self.out.push(Action::Release(DataRef::Peer(session, seq)));
            }
            return;
        };
        let (offset, len) = c.chunks.get(c.index).copied().unwrap_or((0, 0));
        match (c.stage, result) {
            (Stage::SendWrite(s), Ok(())) if s == seq => self.chunk_done(ext),
            (Stage::SendWrite(s), Err(errno)) if s == seq => {
                // The secondary's disk failed a write: it recorded that it is
                // inconsistent; drop the link and start over (replication rule 4).
                self.out
                    .push(Action::Notify(Notice::PeerFailed { offset, len, errno }));
                self.drop_session("the secondary failed a sync write");
            }
            (Stage::ReadPeer(s), Ok(())) if s == seq => {
                let io = self.new_io(IoOwner::Sync(ext));
                self.out.push(Action::Local {
                    io,
                    op: LocalOp::Write {
                        offset,
                        len,
                        data: DataRef::Peer(session, seq),
                        fua: false,
                    },
                });
                if let Some(c) = self.copy_mut(ext) {
                    c.stage = Stage::WriteLocal(io);
                }
            }
            (Stage::ReadPeer(s), Err(e)) if s == seq => {
                self.chunk_failed(ext, format!("secondary errno {e}"));
            }
            (Stage::FlushPeer(s), Ok(())) if s == seq => self.flush_extent_locally(ext),
            (Stage::FlushPeer(s), Err(errno)) if s == seq => {
                // The source's disk failed a flush: its copy is not trustworthy any
                // more; it recorded that, and the session ends (replication rule 4).
                self.out.push(Action::Notify(Notice::PeerFailed {
                    offset: 0,
                    len: 0,
                    errno,
                }));
                self.drop_session("the secondary failed to flush a synchronised extent");
            }
            _ => {}
        }
    }

    fn chunk_done(&mut self, ext: u64) {
        let Some(c) = self.copy_mut(ext) else {
            return;
        };
        let len = c.chunks.get(c.index).map_or(0, |&(_, l)| l);
        c.index += 1;
        c.attempts = 0;
        c.stage = Stage::Waiting;
        let finished = c.index >= c.chunks.len();
        // The last chunk keeps its range lock until the extent is marked synced: a write
        // failing on it meanwhile would make it owed again, and the mark would erase that.
        let keep = finished && !self.mutated(Mutation::SyncUnlocksEarly);
        let Some(c) = self.copy_mut(ext) else {
            return;
        };
        let lock = if keep { None } else { c.lock.take() };
        if let SyncState::Pass(p) = &mut self.syncer.state {
            p.copied += len;
        }
        if let Some(id) = lock {
            self.locks.unlock(id);
        }
        if finished {
            // The extent is paid only when durable on both: the target flushed it (FUA
            // on the last chunk, or the flush here), and the source's copy of it, which
            // may still be in a page cache, is flushed too — else a power failure could
            // lose data the other node has, in an extent no bitmap marks.
            let from_secondary = self
                .session_facts()
                .is_some_and(|(_, src, _)| src == SyncSource::Secondary);
            if from_secondary && !self.mutated(Mutation::SyncSourceUnflushed) {
                match self.send(Owner::Sync(ext), PeerRequest::Flush, None) {
                    Some(seq) => {
                        if let Some(c) = self.copy_mut(ext) {
                            c.stage = Stage::FlushPeer(seq);
                        }
                    }
                    None => self.chunk_failed(ext, "the link dropped".into()),
                }
            } else {
                self.flush_extent_locally(ext);
            }
        }
        self.pump_locks();
        self.sync_locks_freed();
    }

    /// The extent's last step: our own copy flushed, then it is paid.
    fn flush_extent_locally(&mut self, ext: u64) {
        let io = self.new_io(IoOwner::Sync(ext));
        self.out.push(Action::Local {
            io,
            op: LocalOp::Flush,
        });
        if let Some(c) = self.copy_mut(ext) {
            c.stage = Stage::FlushLocal(io);
        }
    }

    fn extent_done(&mut self, ext: u64) {
        let copy = match &mut self.syncer.state {
            SyncState::Pass(p) => p.copies.remove(&ext),
            _ => None,
        };
        match self.map.extent_synced(ext) {
            Ok(update) => {
                let _ = self.follow(update);
            }
            Err(_) => self.fail("activemap refused a synchronised extent"),
        }
        if let Some(id) = copy.and_then(|c| c.lock) {
            self.locks.unlock(id);
            self.pump_locks();
            self.sync_locks_freed();
        }
        self.sync_tick();
    }

    fn chunk_failed(&mut self, ext: u64, what: String) {
        let Some(c) = self.copy_mut(ext) else {
            return;
        };
        let offset = c.chunks.get(c.index).map_or(0, |&(o, _)| o);
        let lock = c.lock.take();
        c.attempts += 1;
        c.stage = Stage::Waiting;
        let give_up = c.attempts >= SYNC_ATTEMPTS;
        if let Some(id) = lock {
            self.locks.unlock(id);
        }
        self.out
            .push(Action::Notify(Notice::SyncChunkFailed { offset, what }));
        if give_up {
            if let SyncState::Pass(p) = &mut self.syncer.state {
                p.copies.remove(&ext);
                p.failed += 1;
            }
        }
        self.pump_locks();
        self.sync_locks_freed();
        self.sync_tick();
    }
}
