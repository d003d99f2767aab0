//! The primary's event loop: one task owns the state machine
//! (`hast_core::replication::primary`), turns everything that happens (client requests,
//! finished disk I/O, frames from the secondary, the connector's hand-overs, time) into
//! its events, and carries out its actions: disk I/O on the blocking pool, frames to the
//! session's writer, answers to the NBD connections, log lines and hooks. It decides
//! nothing itself.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hast_core::nbd::NbdErrno;
use hast_core::proto::handshake::State;
use hast_core::replication::primary::{Action, Event, Primary};
use hast_core::replication::{DataRef, IoId, ReqId, SessionId};
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

mod disk;
mod notices;

use self::disk::succeeded;

use super::input::{Answer, ClientOp, Input, SessionConn};
use super::link;
use crate::daemon::hooks::{self, Event as Hook, FenceVerb};
use crate::daemon::primary::Shared;
use crate::daemon::stats::bump;
use crate::peer::Outgoing;
use crate::storage::LocalStore;

/// A live session's writer.
struct Session {
    tx: mpsc::UnboundedSender<Outgoing>,
    stop: tokio_util::sync::CancellationToken,
}

/// The loop's state beside the machine: the bytes the machine names, the waiting
/// clients, the sessions.
pub struct Shell {
    machine: Primary,
    shared: Arc<Shared>,
    store: Arc<LocalStore>,
    inputs: mpsc::UnboundedSender<Input>,
    started: Instant,
    next_req: u64,
    replies: HashMap<ReqId, oneshot::Sender<Answer>>,
    payloads: HashMap<ReqId, Arc<Vec<u8>>>,
    local: HashMap<IoId, Vec<u8>>,
    peer: HashMap<(SessionId, u64), Vec<u8>>,
    states: HashMap<SessionId, oneshot::Sender<State>>,
    conns: HashMap<SessionId, Box<SessionConn>>,
    sessions: HashMap<SessionId, Session>,
    /// The session that is up, if any (its end is the connector's cue to reconnect).
    up: Option<SessionId>,
    /// Logged the refusal of a stale copy (once until it changes).
    refusing: bool,
}

impl Shell {
    pub fn new(
        machine: Primary,
        shared: Arc<Shared>,
        store: Arc<LocalStore>,
        inputs: mpsc::UnboundedSender<Input>,
    ) -> Shell {
        Shell {
            machine,
            shared,
            store,
            inputs,
            started: Instant::now(),
            next_req: 1,
            replies: HashMap::new(),
            payloads: HashMap::new(),
            local: HashMap::new(),
            peer: HashMap::new(),
            states: HashMap::new(),
            conns: HashMap::new(),
            sessions: HashMap::new(),
            up: None,
            refusing: false,
        }
    }

    fn now(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Runs until the machine has stopped.
    pub async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        loop {
            let next = self
                .machine
                .next_deadline()
                .map(|t| t.saturating_sub(self.now()))
                .unwrap_or(100)
                .clamp(1, 100);
            let input = tokio::select! {
                input = rx.recv() => match input {
                    Some(input) => Some(input),
                    None => return,
                },
                _ = tokio::time::sleep(Duration::from_millis(next)) => None,
            };
            match input {
                Some(input) => self.input(input),
                None => self.feed(Event::Tick),
            }
            // Take whatever else is waiting before publishing the status.
            while let Ok(input) = rx.try_recv() {
                self.input(input);
            }
            self.publish();
            if self.machine.is_stopped() {
                for (_, s) in self.sessions.drain() {
                    s.stop.cancel();
                }
                return;
            }
        }
    }

    fn feed(&mut self, event: Event) {
        let now = self.now();
        for action in self.machine.handle(now, event) {
            self.act(action);
        }
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Client { op, reply } => {
                let req = ReqId(self.next_req);
                self.next_req += 1;
                self.replies.insert(req, reply);
                let event = match op {
                    ClientOp::Write {
                        offset,
                        len,
                        fua,
                        op,
                        data,
                    } => {
                        if let Some(data) = data {
                            self.payloads.insert(req, data);
                        }
                        Event::Write {
                            req,
                            offset,
                            len,
                            fua,
                            op,
                        }
                    }
                    ClientOp::Read { offset, len } => Event::Read { req, offset, len },
                    ClientOp::Flush => Event::Flush { req },
                };
                self.feed(event);
            }
            Input::Local { io, result } => {
                let result = result.map(|data| {
                    if let Some(data) = data {
                        self.local.insert(io, data);
                    }
                });
                self.feed(Event::Local { io, result });
            }
            Input::MapWritten { gen, ok } => self.feed(Event::MapWritten { gen, ok }),
            Input::MetaWritten { gen, ok, counters } => {
                if ok {
                    self.shared.counters_written(counters);
                }
                self.feed(Event::MetaWritten { gen, ok });
            }
            Input::HandshakeBegin {
                session,
                random,
                state,
            } => {
                self.states.insert(session, state);
                self.feed(Event::HandshakeBegin { session, random });
            }
            Input::HandshakeReply {
                session,
                reply,
                peer_map,
                conn,
            } => {
                self.conns.insert(session, conn);
                self.feed(Event::HandshakeReply {
                    session,
                    reply,
                    peer_map,
                });
            }
            Input::HandshakeFailed {
                session,
                split_brain,
            } => {
                self.states.remove(&session);
                self.conns.remove(&session);
                self.feed(Event::HandshakeFailed {
                    session,
                    split_brain,
                });
            }
            Input::Received { session, seq } => self.feed(Event::Received { session, seq }),
            Input::Reply {
                session,
                seq,
                result,
                data,
            } => {
                if let Some(data) = data {
                    self.peer.insert((session, seq), data);
                }
                self.feed(Event::Reply {
                    session,
                    seq,
                    result,
                });
            }
            Input::Lost { session } => {
                self.conns.remove(&session);
                if let Some(s) = self.sessions.remove(&session) {
                    s.stop.cancel();
                }
                self.feed(Event::Lost { session });
                self.peer.retain(|(s, _), _| *s != session);
            }
            Input::Settings(settings) => self.machine.set_settings(settings),
            Input::CloseSession => {
                // Its reader and writer end and report `Lost`, as for any broken link.
                if let Some(s) = self.up.and_then(|s| self.sessions.get(&s)) {
                    s.stop.cancel();
                }
            }
            Input::Fenced { gen, ok } => self.feed(Event::Fenced { gen, ok }),
            Input::Stop => self.feed(Event::Stop),
        }
    }

    /// The bytes behind a reference, taken out of the shell's keeping.
    fn take(&mut self, data: DataRef) -> Option<Arc<Vec<u8>>> {
        match data {
            DataRef::Client(req) => self.payloads.get(&req).cloned(),
            DataRef::Local(io) => self.local.remove(&io).map(Arc::new),
            DataRef::Peer(s, seq) => self.peer.remove(&(s, seq)).map(Arc::new),
        }
    }

    fn act(&mut self, action: Action) {
        match action {
            Action::WriteMap { gen, image } => self.on_disk(move |store, shared| {
                bump(&shared.stats.activemap_updates);
                let ok = succeeded(shared, "activemap", store.write_bitmap(&image));
                Input::MapWritten { gen, ok }
            }),
            Action::WriteMeta { gen, meta } => self.on_disk(move |store, shared| {
                let counters = (meta.resuid, meta.localcnt, meta.remotecnt);
                let ok = succeeded(shared, "metadata", store.write_metadata(&meta));
                Input::MetaWritten { gen, ok, counters }
            }),
            Action::Local { io, op } => self.local_io(io, op),
            Action::Send {
                session,
                seq,
                req,
                data,
            } => {
                let header = req.header(seq);
                let data = data.and_then(|d| self.take(d));
                if let Some(s) = self.sessions.get(&session) {
                    let cfg = self.shared.config();
                    let frame = match data {
                        Some(d) => Outgoing::data(header, d, cfg.compression, cfg.checksum),
                        None => Outgoing::bare(header),
                    };
                    let _ = s.tx.send(frame);
                }
            }
            Action::Reply { req, result } => {
                self.payloads.remove(&req);
                let answer = match result {
                    Ok(Some(d)) => match self.take(d) {
                        Some(bytes) => Ok(Some(
                            Arc::try_unwrap(bytes).unwrap_or_else(|a| (*a).clone()),
                        )),
                        None => Err(NbdErrno::Eio),
                    },
                    Ok(None) => Ok(None),
                    Err(e) => Err(NbdErrno::from_os_errno(i32::try_from(e).unwrap_or(5))),
                };
                if let Some(tx) = self.replies.remove(&req) {
                    let _ = tx.send(answer);
                }
            }
            Action::Release(d) => {
                let _ = self.take(d);
            }
            Action::HandshakeState { session, state } => {
                if let Some(tx) = self.states.remove(&session) {
                    let _ = tx.send(state);
                }
            }
            Action::SessionUp { session, syncsrc } => {
                let Some(conn) = self.conns.remove(&session) else {
                    return;
                };
                let (tx, stop) =
                    link::start_session(session, *conn, &self.shared, self.inputs.clone());
                self.sessions.insert(session, Session { tx, stop });
                self.up = Some(session);
                let remote = self.shared.config().remote_text.clone();
                info!(resource = %self.shared.name, "connected to {remote} (sync source {syncsrc:?})");
                self.shared.fire(Hook::Connect);
            }
            Action::DropPeer { session, why } => {
                warn!(resource = %self.shared.name, "dropping the connection to the secondary: {why}");
                self.states.remove(&session);
                self.conns.remove(&session);
                if let Some(s) = self.sessions.remove(&session) {
                    s.stop.cancel();
                }
                self.shared.session_ended(session);
            }
            Action::Notify(n) => self.notice(n),
            Action::Failed(what) => {
                error!(resource = %self.shared.name, "{what}");
                self.shared.set_failure(what);
            }
            Action::Fence { gen } => self.run_fence(Some(gen)),
            Action::Unfence => self.run_fence(None),
            Action::Stopped => {}
        }
    }

    /// Runs the fence program (`Some(gen)`: fence, reported as [`Input::Fenced`]) or
    /// the unfence step (`None`), off the loop.
    fn run_fence(&self, gen: Option<u64>) {
        let cfg = self.shared.config();
        let name = self.shared.name.clone();
        let inputs = self.inputs.clone();
        let timeout = Duration::from_secs(u64::from(cfg.fence_timeout));
        tokio::spawn(async move {
            let verb = if gen.is_some() {
                FenceVerb::Fence
            } else {
                FenceVerb::Unfence
            };
            let ok = match cfg.fence.as_deref() {
                Some(program) => {
                    hooks::fence(program, &name, &cfg.remote_text, verb, timeout).await
                }
                None => {
                    error!(resource = %name, "fencing is on but no 'fence' program is configured any more");
                    false
                }
            };
            if let Some(gen) = gen {
                let _ = inputs.send(Input::Fenced { gen, ok });
            }
        });
    }

    /// What `hastctl status` reads, without waiting for the loop.
    fn publish(&self) {
        self.shared.publish(self.machine.status());
    }
}
