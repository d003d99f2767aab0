//! A client write (WRITE, TRIM, WRITE_ZEROES) from admission to its answer, in one
//! straight line: admit → range lock → bitmap on disk → local write and send at once →
//! the mode's ack point → settle (activemap, counter raise, link) → unlock → answer.

mod settle;

use super::fence::Admit;
use super::link::{Link, Owner};
use super::{Action, IoOwner, Notice, Primary};
use crate::activemap::WriteOutcome;
use crate::rangelock::LockId;
use crate::replication::{
    admit_write, errno, plan_write, AckPoint, DataRef, LocalOp, Mutation, PeerRequest, PeerResult,
    ReqId, SessionId, WriteOp, WritePlan,
};

/// The answer a settled write still owes its client (`None`: answered early).
type Answer = Option<Result<(), u32>>;

/// One client write in flight.
#[derive(Debug)]
pub(super) struct WriteReq {
    offset: u64,
    len: u64,
    fua: bool,
    op: WriteOp,
    /// The copy was stale when the write was admitted.
    stale: bool,
    plan: WritePlan,
    stage: Stage,
    lock: Option<LockId>,
    local: Option<Result<(), u32>>,
    /// A FUA write's local data is written; its local flush is in flight.
    flushing: bool,
    peer: PeerLeg,
    /// The session it was sent on.
    session: Option<SessionId>,
    /// The secondary confirmed it in memory (memsync's `Received`).
    received: bool,
    acked: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for its range lock.
    Lock,
    /// Waiting for the bitmap of this generation to be on disk.
    Map(u64),
    /// Data is going out.
    Running,
    /// Settled; the answer waits for the counter raise of this generation.
    Meta(u64, Answer),
    /// Settled without the secondary; its success waits for the fence's verdict
    /// (`fence.rs`), and so does its counter raise (`.1`).
    Fence(Answer, bool),
}

/// The secondary's leg of a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PeerLeg {
    /// Not sent: no session.
    NotSent,
    /// Sent (or queued), waiting; `received`: memsync's `Received` came.
    Pending { seq: u64, received: bool },
    /// Ended.
    Done(PeerResult),
}

/// A write held back while a handshake runs (see `Primary::hold_write`).
#[derive(Debug, Clone, Copy)]
pub(super) struct HeldWrite {
    pub(super) req: ReqId,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) fua: bool,
    pub(super) op: WriteOp,
}

impl Primary {
    pub(super) fn on_write(&mut self, req: ReqId, offset: u64, len: u64, fua: bool, op: WriteOp) {
        self.last_request = Some(self.now);
        if self.stopping.is_some() {
            return self.answer(req, Err(errno::ESHUTDOWN));
        }
        if self.disk_failed {
            return self.answer(req, Err(errno::EIO));
        }
        if op == WriteOp::Trim && self.no_discard {
            return self.answer(req, Ok(()));
        }
        let held = HeldWrite {
            req,
            offset,
            len,
            fua,
            op,
        };
        if self.hold_write(held) {
            return;
        }
        if let Err(e) = admit_write(self.stale, self.link.up_id().is_some()) {
            self.out.push(Action::Notify(Notice::RefusedStale));
            return self.answer(req, Err(e));
        }
        match self.fence_admit() {
            Admit::Pass => {}
            Admit::Wait => return self.held.push_back(held),
            Admit::Refuse => return self.answer(req, Err(errno::EIO)),
        }
        let plan = plan_write(self.settings.mode, fua, self.stale);
        self.writes.insert(
            req,
            WriteReq {
                offset,
                len,
                fua,
                op,
                stale: self.stale,
                plan,
                stage: Stage::Lock,
                lock: None,
                local: None,
                flushing: false,
                peer: PeerLeg::NotSent,
                session: None,
                received: false,
                acked: false,
            },
        );
        self.lock_queue.push_back(req);
        self.pump_locks();
    }

    /// Holds a new write while a handshake runs: acknowledged without the secondary, it
    /// would change `localcnt` after the secondary decided on the `State` (and it would
    /// consider itself up to date while lacking the write). It goes on once the session
    /// is up (then mirrored like any other) or the attempt failed. Returns whether held.
    pub(super) fn hold_write(&mut self, held: HeldWrite) -> bool {
        let handshaking = matches!(self.link, Link::Handshaking(..));
        if !handshaking || self.stopping.is_some() || self.mutated(Mutation::NoHandshakeGuard) {
            return false;
        }
        self.held.push_back(held);
        true
    }

    /// Lets the held writes go on once no handshake runs and the fence program, if one
    /// runs for lack of a session, has ended (or the role is ending).
    pub(super) fn release_held(&mut self) {
        let waiting = matches!(self.link, Link::Handshaking(..)) || self.fence_holds_writes();
        if self.held.is_empty() || (waiting && self.stopping.is_none()) {
            return;
        }
        let held: Vec<HeldWrite> = self.held.drain(..).collect();
        for w in held {
            self.on_write(w.req, w.offset, w.len, w.fua, w.op);
        }
    }

    /// Whether a write under way may yet be acknowledged, or raise the counter, without
    /// the secondary. With the fence gate closed, none whose answer is still owed can:
    /// it waits for the verdict, which is applied outside handshakes (`fence.rs`); only
    /// one answered early (`async`) may still raise when it settles.
    pub(super) fn writes_may_raise_without_peer(&self) -> bool {
        let gated = self.fence_holds_answer() && !self.mutated(Mutation::RaiseForFenceWaiters);
        self.writes.values().any(|w| match w.stage {
            Stage::Fence(..) => !gated,
            _ => !gated || w.acked,
        })
    }

    /// Whether a write already under way was not sent on the current session (it went
    /// out before it, or with no session at all): the secondary may lack it whatever the
    /// activemap says now, until it settles (owed, then copied by the sync).
    pub(super) fn writes_outside_session(&self) -> bool {
        let up = self.link.up_id();
        self.writes
            .values()
            .any(|w| matches!(w.stage, Stage::Running) && w.session != up)
    }

    /// Gives range locks to the writes waiting for one, in arrival order; an overlapping
    /// write still in flight (or a waiting sync chunk) holds a write back, others pass.
    pub(super) fn pump_locks(&mut self) {
        let waiting: Vec<ReqId> = self.lock_queue.drain(..).collect();
        for req in waiting {
            let Some(w) = self.writes.get_mut(&req) else {
                continue;
            };
            match self.locks.try_lock_ordered(w.offset, w.len) {
                Some(id) => {
                    w.lock = Some(id);
                    self.start(req);
                }
                None => self.lock_queue.push_back(req),
            }
        }
    }

    /// The range is locked: mark the extents dirty, wait for the bitmap if needed.
    fn start(&mut self, req: ReqId) {
        let Some(w) = self.writes.get(&req) else {
            return;
        };
        let (offset, len) = (w.offset, w.len);
        match self.map.write_start(offset, len) {
            Ok(update) => match self.follow(update) {
                Some(gen) => self.set_stage(req, Stage::Map(gen)),
                None => self.run(req),
            },
            Err(_) => {
                self.unlock(req);
                self.writes.remove(&req);
                self.answer(req, Err(22));
            }
        }
    }

    fn set_stage(&mut self, req: ReqId, stage: Stage) {
        if let Some(w) = self.writes.get_mut(&req) {
            w.stage = stage;
        }
    }

    /// The generations writes are waiting for on disk.
    pub(super) fn writes_waiting_for_map(&self) -> impl Iterator<Item = u64> + '_ {
        self.writes.values().filter_map(|w| match w.stage {
            Stage::Map(gen) => Some(gen),
            _ => None,
        })
    }

    /// A bitmap write ended: writes it covers go on; if it failed, they fail (nothing of
    /// them went out).
    pub(super) fn map_waiters_ready(&mut self, ok: bool) {
        let ready: Vec<(ReqId, u64)> = self
            .writes
            .iter()
            .filter_map(|(r, w)| match w.stage {
                Stage::Map(gen) => Some((*r, gen)),
                _ => None,
            })
            .collect();
        for (req, gen) in ready {
            if self.map_on_disk(gen) {
                self.run(req);
            } else if !ok {
                if let Some(w) = self.writes.remove(&req) {
                    let _ = self
                        .map
                        .write_complete(w.offset, w.len, WriteOutcome::NotReplicated);
                    self.lock_release(w.lock);
                    self.answer(req, Err(errno::EIO));
                }
            }
        }
        self.link_map_ready();
    }

    /// The bitmap covers the write: the local write and the send start together.
    fn run(&mut self, req: ReqId) {
        let session_up = self.link.up_id().is_some();
        let Some(w) = self.writes.get_mut(&req) else {
            return;
        };
        w.stage = Stage::Running;
        let (offset, len, fua, op, plan) = (w.offset, w.len, w.fua, w.op, w.plan);
        // FUA's local flush is a step of its own (below), so that a failed flush is
        // told apart from a failed write: the first means the local copy lost data.
        let _ = fua;
        let local = match op {
            WriteOp::Data => LocalOp::Write {
                offset,
                len,
                data: DataRef::Client(req),
                fua: false,
            },
            WriteOp::Trim => LocalOp::Trim {
                offset,
                len,
                fua: false,
            },
            WriteOp::Zeroes { may_trim } => LocalOp::Zeroes {
                offset,
                len,
                may_trim,
                fua: false,
            },
        };
        let io = self.new_io(IoOwner::Write(req));
        self.out.push(Action::Local { io, op: local });
        if !session_up {
            return;
        }
        // Lengths come from validated NBD requests: at most the export's limits, and the
        // shell splits TRIM/WRITE_ZEROES into pieces that fit a frame.
        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
        let (request, data) = match op {
            WriteOp::Data => (
                PeerRequest::Write {
                    offset,
                    len: len32,
                    fua: plan.peer_fua,
                    memsync: plan.ack == AckPoint::Received,
                    sync: false,
                },
                Some(DataRef::Client(req)),
            ),
            WriteOp::Trim => (
                PeerRequest::Trim {
                    offset,
                    len: len32,
                    fua: plan.peer_fua,
                },
                None,
            ),
            WriteOp::Zeroes { may_trim } => (
                PeerRequest::WriteZeroes {
                    offset,
                    len: len32,
                    fua: plan.peer_fua,
                    may_trim,
                },
                None,
            ),
        };
        if let Some(seq) = self.send(Owner::Write(req), request, data) {
            let session = self.link.up_id();
            if let Some(w) = self.writes.get_mut(&req) {
                w.peer = PeerLeg::Pending {
                    seq,
                    received: false,
                };
                w.session = session;
            }
        }
    }

    pub(super) fn write_local_done(&mut self, req: ReqId, result: Result<(), u32>) {
        let Some(w) = self.writes.get_mut(&req) else {
            return;
        };
        if w.flushing {
            w.flushing = false;
            w.local = Some(result);
            if let Err(e) = result {
                self.local_flush_failed(e);
            }
            return self.check(req);
        }
        if w.fua && result.is_ok() {
            w.flushing = true;
            let io = self.new_io(IoOwner::Write(req));
            self.out.push(Action::Local {
                io,
                op: LocalOp::Flush,
            });
            return;
        }
        w.local = Some(result);
        let (offset, len, op) = (w.offset, w.len, w.op);
        match result {
            Err(errno::EOPNOTSUPP) if op == WriteOp::Trim => {
                if !self.no_discard {
                    self.no_discard = true;
                    self.out.push(Action::Notify(Notice::NoDiscard));
                }
            }
            Err(errno) => self
                .out
                .push(Action::Notify(Notice::LocalFailed { offset, len, errno })),
            Ok(()) => {}
        }
        self.check(req);
    }

    pub(super) fn write_received(&mut self, req: ReqId) {
        if let Some(w) = self.writes.get_mut(&req) {
            if let PeerLeg::Pending { received, .. } = &mut w.peer {
                *received = true;
                w.received = true;
            }
        }
        self.check(req);
    }

    pub(super) fn write_peer_done(&mut self, req: ReqId, result: PeerResult) {
        if let Some(w) = self.writes.get_mut(&req) {
            w.peer = PeerLeg::Done(result);
        }
        self.check(req);
    }

    /// Answers early once the mode's ack point is reached; settles once both legs ended.
    fn check(&mut self, req: ReqId) {
        let Some(w) = self.writes.get_mut(&req) else {
            return;
        };
        if w.stage != Stage::Running {
            return;
        }
        if !w.acked && w.local == Some(Ok(())) {
            let early = match (w.plan.ack, w.peer) {
                (AckPoint::Local, PeerLeg::Pending { .. }) => true,
                (AckPoint::Received, PeerLeg::Pending { received, .. }) => received,
                _ => false,
            };
            if early {
                w.acked = true;
                self.acked_writes += 1;
                self.out.push(Action::Reply {
                    req,
                    result: Ok(None),
                });
            }
        }
        let Some(w) = self.writes.get(&req) else {
            return;
        };
        if let (Some(local), PeerLeg::Done(_) | PeerLeg::NotSent) = (w.local, w.peer) {
            self.settle(req, local);
        }
    }

    pub(super) fn unlock(&mut self, req: ReqId) {
        let lock = self.writes.get_mut(&req).and_then(|w| w.lock.take());
        self.lock_release(lock);
    }

    pub(super) fn lock_release(&mut self, lock: Option<LockId>) {
        if let Some(id) = lock {
            self.locks.unlock(id);
            self.pump_locks();
            self.sync_locks_freed();
        }
    }

    pub(super) fn answer(&mut self, req: ReqId, result: Result<(), u32>) {
        self.out.push(Action::Reply {
            req,
            result: result.map(|()| None),
        });
    }

    /// The secondary's leg of every write waiting on `seq`'s session ended with the link.
    pub(super) fn write_peer_lost(&mut self, req: ReqId) {
        self.write_peer_done(req, PeerResult::Lost);
    }
}
