//! The primary's side of the link: the hand-over from the handshake (counters and merged
//! bitmap on disk before the first request), sending with sequence numbers and a budget
//! of unanswered bytes, matching answers to their owners, the watchdog, and what a lost
//! connection means for everything that waited on it.

use std::collections::{BTreeMap, VecDeque};

use super::{Action, Notice, Primary, UNANSWERED_BYTES};
use crate::activemap::MapUpdate;
use crate::decision::{self, PeerMemory};
use crate::metadata::DataState;
use crate::proto::handshake::{State, StateReply, SyncSource};
use crate::replication::{DataRef, Mutation, PeerFlush, PeerRequest, PeerResult, ReqId, SessionId};

/// Who waits for a request sent to the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Owner {
    Write(ReqId),
    Read(ReqId),
    Flush(ReqId),
    Durability,
    Sync(u64),
    SyncDone,
}

#[derive(Debug)]
struct Inflight {
    owner: Owner,
    request: PeerRequest,
    data: Option<DataRef>,
    /// When it went out (None: queued behind the budget).
    sent: Option<u64>,
}

/// An established session.
#[derive(Debug)]
pub(super) struct Session {
    pub(super) id: SessionId,
    pub(super) syncsrc: SyncSource,
    /// The secondary's (localcnt, remotecnt) at the handshake: mirrored after a sync.
    pub(super) peer_counters: (u64, u64),
    next_seq: u64,
    inflight: BTreeMap<u64, Inflight>,
    /// Requests waiting for budget, in order (nothing overtakes them: a FLUSH must stay
    /// behind the writes it covers).
    queue: VecDeque<u64>,
    unanswered: u64,
    last_answer: u64,
}

/// The handshake in progress.
#[derive(Debug)]
pub(super) enum Handshake {
    /// Waiting for the resuid (and any pending counter change) to be on disk.
    Meta(u64, bool),
    /// `State` was sent, with this `localcnt`.
    Sent(u64),
    /// The answer is applied: waiting for the bitmap and metadata generations.
    Applying {
        map: Option<u64>,
        meta: u64,
        reply: StateReply,
    },
}

/// The state of the link.
#[derive(Debug)]
pub(super) enum Link {
    Down,
    Handshaking(SessionId, Handshake),
    Up(Session),
}

impl Link {
    pub(super) fn up_id(&self) -> Option<SessionId> {
        match self {
            Link::Up(s) => Some(s.id),
            _ => None,
        }
    }

    pub(super) fn queue_sizes(&self) -> (u64, u64) {
        match self {
            Link::Up(s) => (s.queue.len() as u64, s.inflight.len() as u64),
            _ => (0, 0),
        }
    }

    /// When the watchdog could fire next.
    pub(super) fn watchdog_due(&self, timeout: u64) -> Option<u64> {
        let Link::Up(s) = self else {
            return None;
        };
        let oldest = s.inflight.values().filter_map(|i| i.sent).min()?;
        Some(oldest.max(s.last_answer) + timeout + 1)
    }
}

impl Primary {
    pub(super) fn on_handshake_begin(&mut self, session: SessionId, random: u64) {
        if self.stopping.is_some() || self.disk_failed {
            let why = if self.disk_failed {
                "the local disk failed: this copy serves nothing"
            } else {
                "the role is ending"
            };
            self.out.push(Action::DropPeer {
                session,
                why: why.into(),
            });
            return;
        }
        if let Link::Up(s) = &self.link {
            // A new connection replaces a session the shell has given up on.
            let old = s.id;
            self.on_lost(old);
        }
        let mut virgin = false;
        let current = self.meta.current().resuid;
        if let Some(init) = decision::primary_resuid(current, random) {
            virgin = init.virgin;
            if init.resuid != current {
                let _ = self.change_meta(|m| m.resuid = init.resuid);
            }
        }
        // Writes still in flight may be acknowledged during the handshake without the
        // secondary, which decides on the `State` sent now: raise the counter first, so
        // it knows it is behind (new writes wait for the handshake: `hold_write`).
        if self.writes_may_raise_without_peer() && !self.mutated(Mutation::NoHandshakeGuard) {
            let _ = self.raise_localcnt();
        }
        // Everything the State reports must be on disk first.
        let gen = self.change_meta(|_| {});
        self.link = Link::Handshaking(session, Handshake::Meta(gen, virgin));
        self.link_meta_ready();
    }

    fn state(&self, virgin: bool) -> State {
        let m = self.meta.current();
        State {
            resuid: m.resuid,
            localcnt: m.localcnt,
            remotecnt: m.remotecnt,
            virgin,
            datasize: m.datasize(),
            extentsize: m.extentsize(),
            proof: None,
            consistent: m.datastate.is_consistent(),
        }
    }

    pub(super) fn on_handshake_reply(
        &mut self,
        session: SessionId,
        reply: StateReply,
        peer_map: Option<Vec<u8>>,
    ) {
        let Link::Handshaking(id, Handshake::Sent(sent_localcnt)) = &self.link else {
            return self.superseded(session);
        };
        let (id, sent_localcnt) = (*id, *sent_localcnt);
        if id != session {
            return self.superseded(session);
        }
        // Never true (writes wait for the handshake, see `hold_write`); kept so that a
        // change there cannot silently make the secondary trust stale counters.
        if self.meta.current().localcnt != sent_localcnt
            && !self.mutated(Mutation::NoHandshakeGuard)
        {
            // A write was acknowledged without the secondary after `State` went out: the
            // secondary decided on counters that no longer hold, and might consider
            // itself up to date while it lacks that write. Start over with the new
            // counters (the raise happens once per disconnection, so the next handshake
            // does not meet this again).
            self.link = Link::Down;
            self.out.push(Action::DropPeer {
                session,
                why: "localcnt changed during the handshake; reconnecting".into(),
            });
            return;
        }
        // The secondary's dirty extents become ours, on disk before the first request:
        // it clears its own map when that request arrives.
        let mut update = match peer_map.as_deref() {
            Some(bits) => match self.map.merge(bits) {
                Ok(u) => u,
                Err(_) => {
                    self.link = Link::Down;
                    self.out.push(Action::DropPeer {
                        session,
                        why: "the secondary sent an activemap of the wrong size".into(),
                    });
                    return;
                }
            },
            None => MapUpdate::None,
        };
        if reply.full_sync {
            update = self.map.set_all();
        }
        let map = self.follow(update);
        let target = reply.syncsrc == SyncSource::Secondary;
        let meta = self.change_meta(|m| {
            if let Some(l) = decision::localcnt_after_virgin_reply(reply.virgin, m.localcnt) {
                m.localcnt = l;
            }
            if target {
                m.datastate = m.datastate.with(DataState::SYNC_TARGET);
            }
        });
        self.memory = PeerMemory::learned(reply.remotecnt);
        if target && !self.stale {
            self.stale = true;
            self.out.push(Action::Notify(Notice::Stale));
        }
        self.split_brain = false;
        self.link = Link::Handshaking(session, Handshake::Applying { map, meta, reply });
        self.link_map_ready();
    }

    /// An answer for a handshake that is no longer the current one (or the role is
    /// ending): the connection must still be closed, or its connector would wait for a
    /// session that never starts.
    fn superseded(&mut self, session: SessionId) {
        self.out.push(Action::DropPeer {
            session,
            why: "the handshake was superseded".into(),
        });
    }

    pub(super) fn on_handshake_failed(&mut self, session: SessionId, split_brain: bool) {
        if matches!(&self.link, Link::Handshaking(id, _) if *id == session) {
            self.link = Link::Down;
        }
        if split_brain && !self.split_brain {
            self.split_brain = true;
            self.out.push(Action::Notify(Notice::SplitBrain));
        }
    }

    /// Metadata reached the disk: a handshake waiting for it goes on.
    pub(super) fn link_meta_ready(&mut self) {
        if let Link::Handshaking(session, Handshake::Meta(gen, virgin)) = self.link {
            if self.meta_on_disk(gen) {
                let state = self.state(virgin);
                self.link = Link::Handshaking(session, Handshake::Sent(state.localcnt));
                self.out.push(Action::HandshakeState { session, state });
            }
            return;
        }
        self.link_map_ready();
    }

    /// The bitmap or metadata reached the disk: the session may start once both did.
    pub(super) fn link_map_ready(&mut self) {
        let Link::Handshaking(session, Handshake::Applying { map, meta, reply }) = &self.link
        else {
            return;
        };
        let map_ok = map.is_none_or(|g| self.map_on_disk(g));
        if !map_ok || !self.meta_on_disk(*meta) {
            return;
        }
        let (session, reply) = (*session, *reply);
        let m = self.meta.current();
        let detail = format!(
            "primary {}/{} secondary {}/{}{}",
            m.localcnt,
            m.remotecnt,
            reply.localcnt,
            reply.remotecnt,
            if reply.full_sync { " (full sync)" } else { "" }
        );
        self.link = Link::Up(Session {
            id: session,
            syncsrc: reply.syncsrc,
            peer_counters: (reply.localcnt, reply.remotecnt),
            next_seq: 1,
            inflight: BTreeMap::new(),
            queue: VecDeque::new(),
            unanswered: 0,
            last_answer: self.now,
        });
        self.fence_session_up();
        self.out.push(Action::SessionUp {
            session,
            syncsrc: reply.syncsrc,
        });
        self.out.push(Action::Notify(Notice::Connected {
            syncsrc: reply.syncsrc,
            detail,
            owed: self.map.dirty_bytes(),
        }));
        self.syncer_start();
    }

    /// Sends (or queues behind the budget) a request on the session; `None` if there is
    /// no session.
    pub(super) fn send(
        &mut self,
        owner: Owner,
        request: PeerRequest,
        data: Option<DataRef>,
    ) -> Option<u64> {
        let now = self.now;
        let Link::Up(s) = &mut self.link else {
            return None;
        };
        let seq = s.next_seq;
        s.next_seq += 1;
        s.inflight.insert(
            seq,
            Inflight {
                owner,
                request,
                data,
                sent: None,
            },
        );
        s.queue.push_back(seq);
        let session = s.id;
        let _ = now;
        self.drain_queue(session);
        Some(seq)
    }

    /// Sends queued requests while the budget allows (one request always fits).
    fn drain_queue(&mut self, session: SessionId) {
        let now = self.now;
        let Link::Up(s) = &mut self.link else {
            return;
        };
        if s.id != session {
            return;
        }
        while let Some(&seq) = s.queue.front() {
            let Some(i) = s.inflight.get_mut(&seq) else {
                s.queue.pop_front();
                continue;
            };
            let bytes = u64::from(i.request.payload_len());
            if s.unanswered > 0 && s.unanswered + bytes > UNANSWERED_BYTES {
                break;
            }
            s.queue.pop_front();
            s.unanswered += bytes;
            i.sent = Some(now);
            self.out.push(Action::Send {
                session,
                seq,
                req: i.request,
                data: i.data,
            });
        }
    }

    /// The live session `session`, which just answered (for the watchdog).
    fn answering(&mut self, session: SessionId) -> Option<&mut Session> {
        let now = self.now;
        match &mut self.link {
            Link::Up(s) if s.id == session => {
                s.last_answer = now;
                Some(s)
            }
            _ => None,
        }
    }

    pub(super) fn on_received(&mut self, session: SessionId, seq: u64) {
        let Some(s) = self.answering(session) else {
            return;
        };
        if let Some(Owner::Write(req)) = s.inflight.get(&seq).map(|i| i.owner) {
            self.write_received(req);
        }
    }

    pub(super) fn on_reply(&mut self, session: SessionId, seq: u64, result: Result<(), u32>) {
        let Some(s) = self.answering(session) else {
            return;
        };
        let Some(i) = s.inflight.remove(&seq) else {
            return;
        };
        if i.sent.is_some() {
            s.unanswered = s
                .unanswered
                .saturating_sub(u64::from(i.request.payload_len()));
        }
        self.drain_queue(session);
        match i.owner {
            Owner::Write(req) => {
                let durable = i.request.needs_flush();
                let peer = match result {
                    Ok(()) => PeerResult::Written { durable },
                    Err(e) => PeerResult::Failed(e),
                };
                self.write_peer_done(req, peer);
            }
            Owner::Read(req) => self.read_peer_done(req, session, seq, result),
            Owner::Flush(req) => self.flush_peer_done(req, flush_result(result)),
            Owner::Durability => self.durability_peer_done(flush_result(result)),
            Owner::Sync(ext) => self.sync_peer_done(ext, session, seq, result),
            Owner::SyncDone => self.sync_done_reply(result),
        }
    }

    pub(super) fn on_lost(&mut self, session: SessionId) {
        match &self.link {
            Link::Handshaking(id, _) if *id == session => self.link = Link::Down,
            Link::Up(s) if s.id == session => self.lose(),
            _ => {}
        }
    }

    /// Ends the session on the machine's own decision (watchdog, a failure there).
    pub(super) fn drop_session(&mut self, why: &str) {
        if let Some(session) = self.link.up_id() {
            self.out.push(Action::DropPeer {
                session,
                why: why.to_string(),
            });
            self.lose();
        }
    }

    /// The session is gone: every request waiting on it ends as lost, in order.
    fn lose(&mut self) {
        let Link::Up(s) = std::mem::replace(&mut self.link, Link::Down) else {
            return;
        };
        self.out.push(Action::Notify(Notice::Disconnected));
        // Before the requests below settle: what the secondary did not confirm waits.
        self.fence_session_lost();
        self.syncer_lost();
        for (_, i) in s.inflight {
            match i.owner {
                Owner::Write(req) => self.write_peer_lost(req),
                Owner::Read(req) => self.read_peer_lost(req),
                Owner::Flush(req) => self.flush_peer_done(req, PeerFlush::Lost),
                Owner::Durability => self.durability_peer_done(PeerFlush::Lost),
                Owner::Sync(_) | Owner::SyncDone => {}
            }
        }
        // Written there but never flushed: owed now (and they were acknowledged).
        let batch = std::mem::take(&mut self.undurable);
        if !batch.is_empty() {
            self.durability_settle(Ok(()), PeerFlush::NotSent, batch);
            self.fence_undurable_at_loss();
        }
        self.durability_due = None;
    }

    /// The watchdog: a request unanswered for `timeout` while nothing at all was answered
    /// for as long means a stuck secondary (a slow one still trickles answers).
    pub(super) fn watchdog_tick(&mut self) {
        let timeout = self.settings.timeout_ms;
        if self
            .link
            .watchdog_due(timeout)
            .is_some_and(|due| self.now >= due)
        {
            let secs = timeout / 1000;
            self.drop_session(&format!(
                "the secondary did not complete a request within {secs} s"
            ));
        }
    }

    /// The secondary's counters at the handshake, and the sync source, of the session.
    pub(super) fn session_facts(&self) -> Option<(SessionId, SyncSource, (u64, u64))> {
        match &self.link {
            Link::Up(s) => Some((s.id, s.syncsrc, s.peer_counters)),
            _ => None,
        }
    }
}

fn flush_result(result: Result<(), u32>) -> PeerFlush {
    match result {
        Ok(()) => PeerFlush::Done,
        Err(e) => PeerFlush::Failed(e),
    }
}
