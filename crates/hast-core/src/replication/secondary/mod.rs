//! The secondary's state machine: it takes the primary's handshake and requests, applies
//! them to the local disk strictly in arrival order, records failures in the metadata
//! before it reports them, and confirms a completed sync (`docs/invariants.md` §4, §5;
//! `docs/protocol.md`, "Requests and replies"). No I/O, no clock: [`Secondary::handle`]
//! takes one [`SecondaryEvent`] (with the time, in milliseconds of any monotonic clock)
//! and returns the [`SecondaryAction`]s to carry out, in order, as a `Vec`; the shell
//! reports what they led to as further events.
//!
//! Rules, each with its unit test in `tests.rs`, and all of them checked together over
//! random schedules of requests, completions, failures and reconnections in
//! `tests/schedules.rs`:
//!
//! - **Arrival order, one data operation at a time.** Requests are queued as they arrive;
//!   the next READ, WRITE, TRIM or WRITE_ZEROES starts when the previous one completed.
//!   A flush (FLUSH, or the flush a FUA request needs after its own operation) starts once
//!   everything before it completed and runs beside the later operations; its request is
//!   answered when it is done.
//! - **Everything queued is applied.** A request is queued before its `Received` goes out
//!   and is applied whatever happens to its connection; replies to a lost session are
//!   still emitted (the daemon drops what it cannot send).
//! - **A failure is on disk before it is reported.** A WRITE, WRITE_ZEROES, TRIM (except
//!   a TRIM the disk cannot do: EOPNOTSUPP is answered and not recorded) or flush that
//!   fails sets [`DataState::WRITE_FAILED`] and marks its session failed; the error reply
//!   waits until a metadata write of that state was attempted (written or not: a failure
//!   after a failed attempt is answered at once; a failed write is retried once at once,
//!   then again later: on [`SecondaryEvent::Tick`] or on an event [`META_RETRY_MS`] after
//!   the failure).
//! - **`SyncDone`** waits for every earlier operation and flush (and for the record of
//!   any earlier failure), runs one flush, then, unless its session failed, records the
//!   copy as consistent and answers once that is on disk. Later requests wait for it. A
//!   failure of its flush is a failed flush; a failure to record consistency is answered
//!   EIO and changes nothing.
//! - **One session at a time.** A `Hello` pre-empts every other session; the `State` of
//!   the new one is decided only once everything queued before has been answered, against
//!   the metadata as it then is, and the metadata the decision changes is written before
//!   the `StateReply` (`Accept`) goes out.
//! - The activemap is cleared once per accepted session, before its first request is
//!   applied: the primary persisted the union of both maps before it sent anything.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

pub use events::{
    received_header, reply_header, Notice, SecondaryAction, SecondaryEvent, SecondaryStatus,
    META_RETRY_MS,
};

use super::handshake::{Accepted, SecondaryHandshake};
use super::meta::MetaWrites;
use super::rules::errno::{EIO, EOPNOTSUPP};
#[cfg(feature = "mutations")]
use super::Mutation;
use super::{DataRef, IoId, LocalOp, PeerRequest, SessionId};
use crate::control::Statistics;
use crate::decision::SyncKind;
use crate::metadata::{DataState, Metadata};
use crate::proto::auth;
use crate::proto::handshake::{ErrorMessage, Hello, Refusal, State};
use crate::proto::Kind;

mod accept;
mod apply;
mod events;

/// Data operations the disk may hold at once. It applies them in order on one thread;
/// more than one lets it go from one to the next without waiting for the machine.
pub const DISK_PIPELINE: usize = 32;

/// A request in the machine's keeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Queued {
    session: SessionId,
    seq: u64,
    req: PeerRequest,
}

#[derive(Debug)]
enum Stage {
    /// Welcomed; waiting for `State`.
    Welcomed(Box<SecondaryHandshake>),
    /// `State` received; decided once everything before is answered.
    Deferred(Box<SecondaryHandshake>, Box<State>),
    /// Accepted; its metadata is being written.
    Persisting,
    /// Requests flow.
    Accepted,
}

#[derive(Debug)]
struct Session {
    stage: Stage,
    /// Dropped: nothing more is taken from it.
    lost: bool,
    /// A write or flush of this session failed.
    failed: bool,
    map_cleared: bool,
    /// Sequence numbers received and not answered.
    open: BTreeSet<u64>,
}

#[derive(Debug)]
enum Waiter {
    /// A failure reply.
    Reply(Queued, u32),
    /// `SyncDone`'s record of consistency and of the primary's counter; what to restore
    /// if it cannot be written.
    SyncDone(Queued, (DataState, u64)),
    /// A handshake's metadata; `before` to restore if it cannot be written.
    Accept(SessionId, Box<Accepted>, Box<Metadata>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SyncDone {
    Flushing(IoId, Queued),
    Recording,
}

/// The secondary's machine for one resource.
#[derive(Debug)]
pub struct Secondary {
    meta: MetaWrites,
    sessions: BTreeMap<SessionId, Session>,
    queue: VecDeque<Queued>,
    /// Data operations given to the disk, which applies them in the order given.
    data_ops: BTreeMap<IoId, Queued>,
    flushes: BTreeMap<IoId, Queued>,
    /// READs that ended while a flush was in flight: answered once no flush is.
    parked_reads: Vec<(IoId, Queued)>,
    sync_done: Option<SyncDone>,
    waiters: Vec<(u64, Waiter)>,
    /// A full sync's acceptance, waiting for its all-ones bitmap.
    filling: Option<(SessionId, Box<Accepted>)>,
    /// The metadata write in flight.
    meta_writing: Option<u64>,
    next_io: u64,
    /// Requests received and not answered.
    open: u64,
    /// The first write of a failure run failed; the next failure ends the attempt.
    meta_retried: bool,
    /// When the last attempt failed (retry blocked until [`META_RETRY_MS`] later).
    meta_failed_at: Option<u64>,
    /// The newest generation whose write was attempted and failed.
    meta_attempted: u64,
    stopping: bool,
    stopped: bool,
    split_brain_reported: bool,
    stats: Statistics,
    #[cfg(feature = "mutations")]
    mutation: Option<Mutation>,
}

fn kind(req: &PeerRequest) -> Kind {
    req.header(0).kind
}

impl Secondary {
    /// Starts from the metadata read from disk.
    pub fn new(meta: Metadata) -> Secondary {
        Secondary {
            meta: MetaWrites::new(meta),
            sessions: BTreeMap::new(),
            queue: VecDeque::new(),
            data_ops: BTreeMap::new(),
            flushes: BTreeMap::new(),
            parked_reads: Vec::new(),
            sync_done: None,
            waiters: Vec::new(),
            filling: None,
            meta_writing: None,
            next_io: 1,
            open: 0,
            meta_retried: false,
            meta_failed_at: None,
            meta_attempted: 0,
            stopping: false,
            stopped: false,
            split_brain_reported: false,
            stats: Statistics::default(),
            #[cfg(feature = "mutations")]
            mutation: None,
        }
    }

    /// Switches a rule off (simulator only).
    #[cfg(feature = "mutations")]
    pub fn set_mutation(&mut self, mutation: Option<Mutation>) {
        self.mutation = mutation;
    }

    /// The metadata this node acts on (written or about to be).
    pub fn metadata(&self) -> &Metadata {
        self.meta.current()
    }

    /// The status for `hastctl`.
    pub fn status(&self) -> SecondaryStatus {
        let (now, disk) = (self.meta.current(), self.meta.on_disk());
        let datastate = DataState::from_bits(now.datastate.bits() | disk.datastate.bits())
            .unwrap_or(now.datastate);
        SecondaryStatus {
            connected: self
                .sessions
                .values()
                .any(|s| !s.lost && matches!(s.stage, Stage::Accepted)),
            datastate,
            resuid: disk.resuid,
            localcnt: disk.localcnt,
            remotecnt: disk.remotecnt,
            queue: self.open,
            stats: self.stats,
            split_brain: self.split_brain_reported,
        }
    }

    /// Whether requests from `session` are taken (it is accepted and not dropped).
    pub fn takes_requests(&self, session: SessionId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| !s.lost && matches!(s.stage, Stage::Accepted))
    }

    /// Handles one event at time `now_ms` (any monotonic clock; used only to pace
    /// metadata retries) and returns what to do, in order.
    pub fn handle(&mut self, now_ms: u64, event: SecondaryEvent) -> Vec<SecondaryAction> {
        let mut out = Vec::new();
        let mut retry_now = false;
        match event {
            SecondaryEvent::Hello {
                session,
                hello,
                key,
                nonce,
            } => self.on_hello(session, &hello, key, nonce, &mut out),
            SecondaryEvent::State { session, state } => self.on_state(session, state, &mut out),
            SecondaryEvent::Request { session, seq, req } => {
                self.on_request(session, seq, req, &mut out)
            }
            SecondaryEvent::Local { io, result } => self.on_local(io, result, &mut out),
            SecondaryEvent::MetaWritten { gen, ok } => self.on_meta(now_ms, gen, ok, &mut out),
            SecondaryEvent::BitmapFilled { session, ok } => self.on_filled(session, ok, &mut out),
            SecondaryEvent::Lost { session } => self.lose(session, &mut out),
            SecondaryEvent::Tick => retry_now = true,
            SecondaryEvent::Stop => {
                self.stopping = true;
                // One more attempt at whatever is not on disk yet, at once.
                self.meta_failed_at = None;
                retry_now = true;
                let live: Vec<SessionId> = self.sessions.keys().copied().collect();
                for session in live {
                    self.lose(session, &mut out);
                }
            }
        }
        self.pump(now_ms, retry_now, &mut out);
        out
    }

    fn on_meta(&mut self, now_ms: u64, gen: u64, ok: bool, out: &mut Vec<SecondaryAction>) {
        if self.meta_writing.take_if(|g| *g == gen).is_none() {
            return;
        }
        self.meta.written(gen, ok);
        if ok {
            self.meta_retried = false;
            self.meta_failed_at = None;
            let waiters = std::mem::take(&mut self.waiters);
            let (ready, waiting): (Vec<_>, Vec<_>) = waiters
                .into_iter()
                .partition(|(g, _)| self.meta.is_written(*g));
            self.waiters = waiting;
            for (_, w) in ready {
                self.release(w, true, out);
            }
            return;
        }
        if !self.meta_retried {
            // A failed writeback is reported to the next fdatasync, possibly this one's:
            // one immediate retry tells a stale error from a failing disk.
            self.meta_retried = true;
            return;
        }
        self.meta_retried = false;
        if self.meta_failed_at.is_none() {
            out.push(SecondaryAction::Notice(Notice::MetaWriteFailed));
        }
        self.meta_failed_at = Some(now_ms);
        self.meta_attempted = self.meta_attempted.max(gen);
        let waiters = std::mem::take(&mut self.waiters);
        let (failed, waiting): (Vec<_>, Vec<_>) = waiters.into_iter().partition(|(g, _)| *g <= gen);
        self.waiters = waiting;
        for (_, w) in failed {
            self.release(w, false, out);
        }
    }

    /// A metadata write `w` waited for was written (`ok`) or could not be.
    fn release(&mut self, w: Waiter, ok: bool, out: &mut Vec<SecondaryAction>) {
        match w {
            Waiter::Reply(q, errno) => self.reply(q, Err(errno), out),
            Waiter::SyncDone(q, before) => {
                self.sync_done = None;
                if ok {
                    out.push(SecondaryAction::Notice(Notice::SyncConfirmed));
                    self.reply(q, Ok(None), out);
                } else {
                    self.meta.change(|m| (m.datastate, m.remotecnt) = before);
                    self.reply(q, Err(EIO), out);
                }
            }
            Waiter::Accept(session, accepted, before) => {
                if !ok {
                    self.meta.change(|m| *m = *before);
                }
                let live = self.sessions.get(&session).is_some_and(|s| !s.lost);
                match (live, ok) {
                    (true, true) => self.accept(session, *accepted, out),
                    (true, false) => {
                        let message = ErrorMessage {
                            reason: Refusal::LocalFailure,
                            message: "cannot write metadata on the secondary".into(),
                        };
                        self.refuse(session, message, out);
                    }
                    (false, _) => {
                        if self.sessions.remove(&session).is_some() {
                            out.push(SecondaryAction::Close { session });
                        }
                    }
                }
            }
        }
    }

    fn violation(&mut self, session: SessionId, reason: String, out: &mut Vec<SecondaryAction>) {
        out.push(SecondaryAction::Notice(Notice::Violation {
            session,
            reason,
        }));
        self.lose(session, out);
    }

    /// Nothing more comes from `session`; what it queued is still applied.
    fn lose(&mut self, session: SessionId, out: &mut Vec<SecondaryAction>) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if !s.lost {
            s.lost = true;
            out.push(SecondaryAction::Drop { session });
            #[cfg(feature = "mutations")]
            if self.mutation == Some(Mutation::DropSecondaryQueue) {
                let mut dropped = Vec::new();
                self.queue.retain(|q| {
                    let keep = q.session != session;
                    if !keep {
                        dropped.push(q.seq);
                    }
                    keep
                });
                for seq in dropped {
                    if s.open.remove(&seq) {
                        self.open = self.open.saturating_sub(1);
                    }
                }
            }
        }
        self.retire(session, out);
    }

    /// Closes a dropped session once everything it sent is answered.
    fn retire(&mut self, session: SessionId, out: &mut Vec<SecondaryAction>) {
        let done = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.lost && s.open.is_empty() && !matches!(s.stage, Stage::Persisting));
        if done {
            self.sessions.remove(&session);
            out.push(SecondaryAction::Close { session });
        }
    }

    fn pump(&mut self, now_ms: u64, retry_now: bool, out: &mut Vec<SecondaryAction>) {
        self.start_ops(out);
        self.decide_handshake(out);
        self.write_meta(now_ms, retry_now, out);
        if self.stopping && !self.stopped && self.idle() {
            // `change` with no change: the generation wanted last.
            let wanted = self.meta.change(|_| {});
            let settled = self.meta.is_written(wanted) || self.meta_failed_at.is_some();
            if settled && !self.meta.busy() {
                self.stopped = true;
                out.push(SecondaryAction::Stopped);
            }
        }
    }

    /// Nothing queued, running or waiting.
    fn idle(&self) -> bool {
        self.open == 0
            && self.queue.is_empty()
            && self.data_ops.is_empty()
            && self.flushes.is_empty()
            && self.parked_reads.is_empty()
            && self.sync_done.is_none()
            && self.waiters.is_empty()
            && self.filling.is_none()
    }

    /// Issues the next metadata write, unless one is in flight or a failure paces retries.
    fn write_meta(&mut self, now_ms: u64, retry_now: bool, out: &mut Vec<SecondaryAction>) {
        if self.meta.busy() {
            return;
        }
        if let Some(at) = self.meta_failed_at {
            if !retry_now && now_ms < at.saturating_add(META_RETRY_MS) {
                return;
            }
        }
        if let Some((gen, meta)) = self.meta.next_write() {
            self.meta_writing = Some(gen);
            out.push(SecondaryAction::WriteMeta { gen, meta });
        }
    }
}

#[cfg(test)]
mod tests;
