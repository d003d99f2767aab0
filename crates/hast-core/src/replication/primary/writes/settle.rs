//! A write's end: the rules (`rules::settle_write`) decide, this carries it out in
//! order (activemap, counter raise, link, unlock, answer), and answers the writes that
//! waited for their counter raise.

use super::{Answer, PeerLeg, Stage};
use crate::replication::primary::fence::FenceWait;
use crate::replication::primary::{Action, Notice, Primary};
use crate::replication::{
    errno, settle_write, AckPoint, MapOutcome, Mutation, PeerResult, ReqId, WriteFacts, WriteOp,
};

impl Primary {
    /// Both legs ended: the rules decide (`replication::settle_write`), this carries it
    /// out in order: activemap (so a concurrent end of sync sees the debt), counter raise,
    /// link, unlock, answer.
    pub(in crate::replication::primary) fn settle(&mut self, req: ReqId, local: Result<(), u32>) {
        let Some(w) = self.writes.get(&req) else {
            return;
        };
        let peer = match w.peer {
            PeerLeg::Done(p) => p,
            PeerLeg::NotSent | PeerLeg::Pending { .. } => PeerResult::NotSent,
        };
        let facts = WriteFacts {
            what: w.op.modify(),
            local,
            peer,
            stale: w.stale,
            acked: w.acked,
            received: w.received,
            async_ack: w.plan.ack == AckPoint::Local,
            local_durable: w.fua,
        };
        let (offset, len, op) = (w.offset, w.len, w.op);
        let gone = w.session != self.link.up_id();
        let mut s = settle_write(facts);
        if s.map == MapOutcome::Undurable && gone {
            // Written there but not flushed, and the session that would have flushed it
            // has ended (perhaps with the secondary's power): owed, as `lose` does with
            // the writes that settled before the end.
            s.map = MapOutcome::Owed;
        }
        if self.disk_failed {
            // This copy is untrusted now: it promises nothing, and must not look newer.
            s.reply = s.reply.map(|r| r.and(Err(errno::EIO)));
            s.raise_localcnt = false;
        }
        if self.mutated(Mutation::EarlyClean) && local.is_ok() {
            if let PeerResult::Written { .. } = peer {
                s.map = MapOutcome::Replicated;
            }
        }
        self.settle_map(offset, len, s.map);
        if s.drop_peer {
            if let PeerResult::Failed(errno) = peer {
                self.out
                    .push(Action::Notify(Notice::PeerFailed { offset, len, errno }));
            }
            self.drop_session(
                "the secondary failed a request (its copy may lack writes it confirmed)",
            );
        }
        let lock = self.writes.get_mut(&req).and_then(|w| w.lock.take());
        self.lock_release(lock);
        // A TRIM the provider cannot do is still a valid TRIM (the data stays); its range
        // is owed so the secondary ends the same.
        let reply = match s.reply {
            Some(Err(errno::EOPNOTSUPP)) if op == WriteOp::Trim => Some(Ok(())),
            other => other,
        };
        let confirmed = matches!(peer, PeerResult::Written { .. });
        if reply == Some(Ok(())) && !confirmed && self.fence_holds_answer() {
            self.set_stage(req, Stage::Fence(reply, s.raise_localcnt));
            return;
        }
        self.finish(req, reply, s.raise_localcnt);
    }

    /// The answer of a settled write, after the counter raise it needs is on disk.
    fn finish(&mut self, req: ReqId, reply: Answer, raise: bool) {
        if reply == Some(Ok(())) {
            self.acked_writes += 1;
        }
        if raise {
            let gen = self.raise_localcnt();
            if !self.meta_on_disk(gen) {
                self.set_stage(req, Stage::Meta(gen, reply));
                return;
            }
        }
        self.writes.remove(&req);
        if let Some(result) = reply {
            self.answer(req, result);
        }
    }

    /// The fence gave its verdict: the writes waiting for it go on, or fail.
    pub(in crate::replication::primary) fn fence_waiters_ready(&mut self, verdict: FenceWait) {
        let ready: Vec<(ReqId, Answer, bool)> = self
            .writes
            .iter()
            .filter_map(|(r, w)| match w.stage {
                Stage::Fence(reply, raise) => Some((*r, reply, raise)),
                _ => None,
            })
            .collect();
        for (req, reply, raise) in ready {
            match verdict {
                FenceWait::Passed => self.finish(req, reply, raise),
                FenceWait::Refused => {
                    self.writes.remove(&req);
                    self.answer(req, Err(errno::EIO));
                }
            }
        }
    }

    /// The activemap side of a settlement.
    pub(in crate::replication::primary) fn settle_map(
        &mut self,
        offset: u64,
        len: u64,
        outcome: MapOutcome,
    ) {
        match outcome {
            MapOutcome::Undurable => {
                self.undurable.push((offset, len));
                if self.durability_due.is_none() {
                    self.durability_due =
                        Some(self.now + crate::replication::primary::DURABILITY_DELAY_MS);
                }
            }
            settled => match self
                .map
                .write_complete(offset, len, settled.write_outcome())
            {
                Ok(update) => {
                    let _ = self.follow(update);
                    // Debt with a live session (whatever the link was when the request
                    // went out): the sync copies it now.
                    if settled == MapOutcome::Owed && self.link.up_id().is_some() {
                        self.syncer_wake();
                    }
                }
                Err(_) => self.fail("activemap bookkeeping error"),
            },
        }
    }

    /// Metadata reached the disk (or a write of it failed): writes waiting for their
    /// counter raise are answered (with EIO if the raise could not be recorded).
    pub(in crate::replication::primary) fn write_meta_ready(&mut self, ok: bool) {
        let ready: Vec<(ReqId, u64, Answer)> = self
            .writes
            .iter()
            .filter_map(|(r, w)| match w.stage {
                Stage::Meta(gen, reply) => Some((*r, gen, reply)),
                _ => None,
            })
            .collect();
        for (req, gen, reply) in ready {
            let reply = if self.meta_on_disk(gen) {
                reply
            } else if !ok {
                reply.map(|r| r.and(Err(errno::EIO)))
            } else {
                continue;
            };
            self.writes.remove(&req);
            if let Some(result) = reply {
                self.answer(req, result);
            }
        }
    }
}
