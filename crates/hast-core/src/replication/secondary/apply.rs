//! Requests, applied strictly in arrival order: one data operation at a time, flushes
//! beside them, failures recorded before they are answered, `SyncDone` after everything
//! before it.

use super::*;

impl Secondary {
    pub(super) fn on_request(
        &mut self,
        session: SessionId,
        seq: u64,
        req: PeerRequest,
        out: &mut Vec<SecondaryAction>,
    ) {
        let Some(s) = self.sessions.get_mut(&session).filter(|s| !s.lost) else {
            return; // read before the session was dropped: never acknowledged, not applied
        };
        if !matches!(s.stage, Stage::Accepted) {
            return self.violation(session, "a request before the handshake ended".into(), out);
        }
        if !s.open.insert(seq) {
            return self.violation(session, format!("request {seq} while one is open"), out);
        }
        self.open += 1;
        self.queue.push_back(Queued { session, seq, req });
        if let PeerRequest::Write { memsync: true, .. } = req {
            out.push(SecondaryAction::Received { session, seq });
        }
    }

    pub(super) fn on_local(
        &mut self,
        io: IoId,
        result: Result<(), u32>,
        out: &mut Vec<SecondaryAction>,
    ) {
        if let Some(q) = self.data_ops.remove(&io) {
            match result {
                Ok(()) if q.req.needs_flush() => {
                    let flush = self.io();
                    self.flushes.insert(flush, q);
                    out.push(SecondaryAction::Local {
                        io: flush,
                        op: LocalOp::Flush,
                    });
                }
                Ok(()) if matches!(q.req, PeerRequest::Read { .. }) => {
                    if self.flush_in_flight() && !self.reads_after_failure_ok() {
                        self.parked_reads.push((io, q));
                    } else {
                        self.answer_read(io, q, out);
                    }
                }
                Ok(()) => self.reply(q, Ok(None), out),
                Err(errno) => {
                    let unsupported_trim =
                        matches!(q.req, PeerRequest::Trim { .. }) && errno == EOPNOTSUPP;
                    if q.req.modifies() && !unsupported_trim {
                        self.failed(q, errno, out);
                    } else {
                        self.reply(q, Err(errno), out);
                    }
                }
            }
        } else if let Some(q) = self.flushes.remove(&io) {
            let failed_before = self.sessions.get(&q.session).is_some_and(|s| s.failed);
            match result {
                // An earlier failure of this session may have taken written data with it
                // (Linux drops the pages of a failed writeback, and a later fdatasync
                // succeeds): this flush succeeding proves nothing about the writes it
                // covers, so it fails too.
                Ok(()) if failed_before && !self.flush_after_failure_ok() => {
                    self.failed(q, EIO, out)
                }
                Ok(()) => self.reply(q, Ok(None), out),
                Err(errno) => self.failed(q, errno, out),
            }
        } else if let Some(SyncDone::Flushing(_, q)) = self
            .sync_done
            .take_if(|s| matches!(s, SyncDone::Flushing(id, _) if *id == io))
        {
            self.sync_done_flushed(q, result, out);
        }
        if !self.flush_in_flight() {
            for (io, q) in std::mem::take(&mut self.parked_reads) {
                self.answer_read(io, q, out);
            }
        }
    }

    /// A flush (a FLUSH, a FUA write's, `SyncDone`'s) is on the disk.
    fn flush_in_flight(&self) -> bool {
        !self.flushes.is_empty() || matches!(self.sync_done, Some(SyncDone::Flushing(..)))
    }

    /// A READ's data came back. After a failed flush (or write) this disk may have dropped
    /// written pages, and a read returns what lies under them: older data, with no error.
    /// So a read is answered EIO once a failure is on record, and a read that ended while
    /// a flush was in flight waits for that flush (the pages may have gone under it before
    /// its failure was heard of).
    fn answer_read(&mut self, io: IoId, q: Queued, out: &mut Vec<SecondaryAction>) {
        let failed = self.meta.current().datastate.write_failed()
            || self.sessions.get(&q.session).is_some_and(|s| s.failed);
        if failed && !self.reads_after_failure_ok() {
            out.push(SecondaryAction::Release(DataRef::Local(io)));
            self.reply(q, Err(EIO), out);
        } else {
            self.reply(q, Ok(Some(DataRef::Local(io))), out);
        }
    }

    #[cfg(feature = "mutations")]
    fn reads_after_failure_ok(&self) -> bool {
        self.mutation == Some(Mutation::SecondaryReadsAfterFailure)
    }

    #[cfg(not(feature = "mutations"))]
    fn reads_after_failure_ok(&self) -> bool {
        false
    }

    /// `SyncDone`'s flush completed.
    pub(super) fn sync_done_flushed(
        &mut self,
        q: Queued,
        result: Result<(), u32>,
        out: &mut Vec<SecondaryAction>,
    ) {
        if let Err(errno) = result {
            return self.failed(q, errno, out);
        }
        if self.sessions.get(&q.session).is_some_and(|s| s.failed) {
            out.push(SecondaryAction::Notice(Notice::SyncDoneAfterFailure));
            return self.reply(q, Ok(None), out);
        }
        let PeerRequest::SyncDone { localcnt } = q.req else {
            return self.reply(q, Ok(None), out);
        };
        // This copy has everything the primary wrote up to `localcnt`: remembered with
        // the consistency, so that if the primary fails before recording the sync on its
        // side, this node promoted and written is not taken for a split-brain.
        let before = (self.meta.current().datastate, self.meta.current().remotecnt);
        if before.0.is_consistent() && before.1 == localcnt {
            return self.reply(q, Ok(None), out);
        }
        let gen = self.meta.change(|m| {
            m.datastate = DataState::CONSISTENT;
            m.remotecnt = localcnt;
        });
        self.sync_done = Some(SyncDone::Recording);
        self.waiters.push((gen, Waiter::SyncDone(q, before)));
    }

    /// A modifying request or a flush failed: record it, answer once recorded.
    pub(super) fn failed(&mut self, q: Queued, errno: u32, out: &mut Vec<SecondaryAction>) {
        if let Some(s) = self.sessions.get_mut(&q.session) {
            s.failed = true;
        }
        if !self.meta.current().datastate.write_failed() {
            let (offset, len) = q.req.range().unwrap_or((0, 0));
            out.push(SecondaryAction::Notice(Notice::WriteFailed {
                kind: kind(&q.req),
                offset,
                len,
                errno,
            }));
        }
        let gen = self
            .meta
            .change(|m| m.datastate = m.datastate.with(DataState::WRITE_FAILED));
        if self.meta.is_written(gen) || self.meta_attempted >= gen {
            self.reply(q, Err(errno), out);
        } else {
            self.waiters.push((gen, Waiter::Reply(q, errno)));
        }
    }

    pub(super) fn reply(
        &mut self,
        q: Queued,
        result: Result<Option<DataRef>, u32>,
        out: &mut Vec<SecondaryAction>,
    ) {
        let st = &mut self.stats;
        let (count, errors) = match q.req {
            PeerRequest::Read { .. } => (&mut st.reads, &mut st.read_errors),
            PeerRequest::Trim { .. } => (&mut st.deletes, &mut st.delete_errors),
            PeerRequest::Flush | PeerRequest::SyncDone { .. } => {
                (&mut st.flushes, &mut st.flush_errors)
            }
            PeerRequest::Write { .. } | PeerRequest::WriteZeroes { .. } => {
                (&mut st.writes, &mut st.write_errors)
            }
        };
        *count += 1;
        if result.as_ref().is_err_and(|e| *e != EOPNOTSUPP) {
            *errors += 1;
        }
        if let Some(s) = self.sessions.get_mut(&q.session) {
            if s.open.remove(&q.seq) {
                self.open = self.open.saturating_sub(1);
            }
        }
        out.push(SecondaryAction::Reply {
            session: q.session,
            seq: q.seq,
            result,
        });
        self.retire(q.session, out);
    }

    pub(super) fn io(&mut self) -> IoId {
        let io = IoId(self.next_io);
        self.next_io += 1;
        io
    }

    /// Gives the disk the queued requests, in order: data operations up to
    /// [`DISK_PIPELINE`] at a time (the disk applies them in the order given, so a later
    /// write of the same range lands last, without a round trip through the machine
    /// per write); a flush (or `SyncDone`) only once every earlier data operation has
    /// ended, so that it covers them.
    pub(super) fn start_ops(&mut self, out: &mut Vec<SecondaryAction>) {
        while self.sync_done.is_none() && self.data_ops.len() < DISK_PIPELINE {
            let Some(&q) = self.queue.front() else { break };
            let flushes = matches!(q.req, PeerRequest::Flush | PeerRequest::SyncDone { .. });
            if flushes && !self.data_ops.is_empty() {
                break;
            }
            // `SyncDone` waits for every earlier flush, and for the record of every
            // earlier failure: it must not overtake what it may not clear.
            let recording = self
                .waiters
                .iter()
                .any(|(_, w)| matches!(w, Waiter::Reply(..)));
            if matches!(q.req, PeerRequest::SyncDone { .. })
                && (!self.flushes.is_empty() || recording)
            {
                break;
            }
            self.queue.pop_front();
            if let Some(s) = self.sessions.get_mut(&q.session).filter(|s| !s.map_cleared) {
                s.map_cleared = true;
                out.push(SecondaryAction::ClearBitmap { session: q.session });
            }
            let io = self.io();
            let op = match q.req {
                PeerRequest::SyncDone { .. } => {
                    self.sync_done = Some(SyncDone::Flushing(io, q));
                    LocalOp::Flush
                }
                PeerRequest::Flush => {
                    self.flushes.insert(io, q);
                    LocalOp::Flush
                }
                PeerRequest::Read { offset, len, .. } => LocalOp::Read {
                    offset,
                    len: len.into(),
                },
                PeerRequest::Write { offset, len, .. } => LocalOp::Write {
                    offset,
                    len: len.into(),
                    data: DataRef::Peer(q.session, q.seq),
                    fua: false,
                },
                PeerRequest::Trim { offset, len, .. } => LocalOp::Trim {
                    offset,
                    len: len.into(),
                    fua: false,
                },
                PeerRequest::WriteZeroes {
                    offset,
                    len,
                    may_trim,
                    ..
                } => LocalOp::Zeroes {
                    offset,
                    len: len.into(),
                    may_trim,
                    fua: false,
                },
            };
            if !matches!(op, LocalOp::Flush) {
                self.data_ops.insert(io, q);
            }
            out.push(SecondaryAction::Local { io, op });
        }
    }

    #[cfg(feature = "mutations")]
    pub(super) fn flush_after_failure_ok(&self) -> bool {
        self.mutation == Some(Mutation::FlushAfterFailureOk)
    }

    #[cfg(not(feature = "mutations"))]
    pub(super) fn flush_after_failure_ok(&self) -> bool {
        false
    }
}
