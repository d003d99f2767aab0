//! The resource task: the one owner of the secondary's machine. It turns connections,
//! requests, disk and metadata results and ticks into events, and carries out the
//! machine's actions in the order given: frames to the connections, operations to the
//! disk, metadata writes to the blocking pool, notices to the log and the hooks. WRITE
//! data and READ results are kept here under the names the actions use.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hast_core::proto::handshake::Refusal;
use hast_core::replication::errno::EIO;
use hast_core::replication::secondary::{
    received_header, reply_header, Notice, Secondary as Machine, SecondaryAction as Action,
    SecondaryEvent,
};
use hast_core::replication::{DataRef, IoId, LocalOp, SessionId};
use tokio::sync::mpsc::{self, UnboundedSender};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::conn::{self, Step};
use super::disk::{self, Job};
pub(super) use super::input::Input;
use super::{lock, PeerConn, Shared};
use crate::daemon::hooks::Event;
use crate::peer::{self, Outgoing};

/// Requests in the machine's keeping at most (read off the sockets, not answered yet).
const REQUESTS: usize = 256;
/// Frames waiting for a connection's writer; when it is full the task waits (a slow
/// link slows the disk down, and with it the reader, instead of growing memory).
const OUT_QUEUE: usize = 2 * REQUESTS;
/// How often the machine gets a tick.
const TICK: Duration = Duration::from_secs(1);

/// What goes to a connection, in the order the machine said it.
enum Out {
    Frame(SessionId, Outgoing),
    Close(SessionId),
}

/// A connection as the task sees it.
struct Conn {
    peer: std::net::SocketAddr,
    steps: UnboundedSender<Step>,
    out: mpsc::Sender<Outgoing>,
    dropped: CancellationToken,
}

struct Task {
    shared: Arc<Shared>,
    machine: Machine,
    inputs: UnboundedSender<Input>,
    permits: Arc<Semaphore>,
    conns: HashMap<SessionId, Conn>,
    tasks: JoinSet<()>,
    writes: HashMap<(SessionId, u64), Vec<u8>>,
    held: HashMap<(SessionId, u64), OwnedSemaphorePermit>,
    reads: HashMap<IoId, Outgoing>,
    disk: std::sync::mpsc::Sender<Job>,
    next_session: u64,
    base: Instant,
    meta_error: String,
    /// Frames and closes to pass on once the current event is handled.
    outbox: Vec<Out>,
    stopped: bool,
}

/// Runs the secondary until `stop`, then until everything queued is applied.
pub(super) async fn run(
    shared: Arc<Shared>,
    machine: Machine,
    mut conns: mpsc::Receiver<Box<PeerConn>>,
    stop: CancellationToken,
) {
    let (inputs, mut rx) = mpsc::unbounded_channel();
    let (disk_tx, disk_rx) = std::sync::mpsc::channel();
    let disk_thread = disk::spawn(
        shared.name.clone(),
        shared.store.clone(),
        disk_rx,
        inputs.clone(),
    );
    let mut t = Task {
        shared,
        machine,
        inputs,
        permits: Arc::new(Semaphore::new(REQUESTS)),
        conns: HashMap::new(),
        tasks: JoinSet::new(),
        writes: HashMap::new(),
        held: HashMap::new(),
        reads: HashMap::new(),
        disk: disk_tx,
        next_session: 1,
        base: Instant::now(),
        meta_error: String::new(),
        outbox: Vec::new(),
        stopped: false,
    };
    let mut tick = tokio::time::interval(TICK);
    let mut stopping = false;
    while !t.stopped {
        tokio::select! {
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conns.close();
                t.feed(SecondaryEvent::Stop);
            }
            conn = conns.recv(), if !stopping => match conn {
                Some(conn) => t.connect(*conn),
                None => {
                    stopping = true;
                    t.feed(SecondaryEvent::Stop);
                }
            },
            Some(input) = rx.recv() => t.input(input),
            _ = tick.tick() => t.feed(SecondaryEvent::Tick),
        }
        t.pass_on().await;
    }
    // Every session was closed before `Stopped`: let their tasks finish (hooks, logs).
    t.conns.clear();
    while t.tasks.join_next().await.is_some() {}
    let Task { disk, .. } = t;
    drop(disk);
    let _ = disk_thread.await;
}

impl Task {
    fn feed(&mut self, event: SecondaryEvent) {
        let now = self.base.elapsed().as_millis() as u64;
        for action in self.machine.handle(now, event) {
            self.act(action);
        }
        *lock(&self.shared.status) = self.machine.status();
    }

    /// Hands the frames of the last event to the writers, waiting for room (a writer
    /// that fails keeps draining, so this never waits past its send timeout), then closes
    /// what the machine closed.
    async fn pass_on(&mut self) {
        for out in std::mem::take(&mut self.outbox) {
            match out {
                Out::Frame(session, frame) => {
                    if let Some(conn) = self.conns.get(&session) {
                        let _ = conn.out.send(frame).await;
                    }
                }
                Out::Close(session) => {
                    self.conns.remove(&session);
                    self.writes.retain(|(s, _), _| *s != session);
                    self.held.retain(|(s, _), _| *s != session);
                }
            }
        }
    }

    fn connect(&mut self, conn: PeerConn) {
        while self.tasks.try_join_next().is_some() {}
        let session = SessionId(self.next_session);
        self.next_session += 1;
        let PeerConn {
            reader,
            writer,
            peer,
            hello,
        } = conn;
        let (steps_tx, steps) = mpsc::unbounded_channel();
        let (out_tx, out) = mpsc::channel(OUT_QUEUE);
        let dropped = CancellationToken::new();
        let ctx = conn::Ctx {
            shared: self.shared.clone(),
            session,
            inputs: self.inputs.clone(),
            permits: self.permits.clone(),
        };
        let halves = conn::Halves {
            reader,
            writer,
            peer,
            steps,
            out,
            dropped: dropped.clone(),
        };
        self.tasks.spawn(conn::run(ctx, halves));
        self.conns.insert(
            session,
            Conn {
                peer,
                steps: steps_tx,
                out: out_tx,
                dropped,
            },
        );
        let key = self.shared.config().authkey.as_deref().map(peer::load_key);
        let key = key.transpose().map_err(|e| e.to_string());
        self.feed(SecondaryEvent::Hello {
            session,
            hello,
            key,
            nonce: peer::nonce(),
        });
    }

    fn input(&mut self, input: Input) {
        match input {
            Input::Event(event) => self.feed(event),
            Input::Request {
                session,
                seq,
                req,
                data,
                permit,
            } => {
                // Read before the session was dropped: never acknowledged, not applied.
                if !self.machine.takes_requests(session) {
                    return;
                }
                if let Some(data) = data {
                    self.writes.entry((session, seq)).or_insert(data);
                }
                self.held.entry((session, seq)).or_insert(permit);
                self.feed(SecondaryEvent::Request { session, seq, req });
            }
            Input::Disk { io, result, read } => {
                if let Some(read) = read {
                    self.reads.insert(io, read);
                }
                self.feed(SecondaryEvent::Local { io, result });
            }
            Input::Meta { gen, result } => {
                if let Err(e) = &result {
                    self.meta_error.clone_from(e);
                }
                let ok = result.is_ok();
                self.feed(SecondaryEvent::MetaWritten { gen, ok });
            }
        }
    }

    fn step(&self, session: SessionId, step: Step) {
        if let Some(conn) = self.conns.get(&session) {
            let _ = conn.steps.send(step);
        }
    }

    fn send(&mut self, session: SessionId, frame: Outgoing) {
        self.outbox.push(Out::Frame(session, frame));
    }

    fn act(&mut self, action: Action) {
        let name = self.shared.name.clone();
        match action {
            Action::Welcome { session, welcome } => self.step(session, Step::Welcome(welcome)),
            Action::Accept {
                session,
                reply,
                send_bitmap,
                decision,
            } => {
                debug!(resource = %name, "connect-time decision: {decision:?}");
                self.step(session, Step::Accept { reply, send_bitmap });
            }
            Action::Refuse { session, message } => self.step(session, Step::Refuse(message)),
            Action::Drop { session } => {
                if let Some(conn) = self.conns.get(&session) {
                    conn.dropped.cancel();
                }
            }
            Action::Close { session } => self.outbox.push(Out::Close(session)),
            Action::ClearBitmap { .. } => {
                let _ = self.disk.send(Job::ClearBitmap);
            }
            Action::FillBitmap { session } => {
                let _ = self.disk.send(Job::FillBitmap(session));
            }
            Action::Local {
                io,
                op: LocalOp::Flush,
            } => disk::flush(name, self.shared.store.clone(), io, self.inputs.clone()),
            Action::Local { io, op } => {
                let data = match op {
                    LocalOp::Write {
                        data: DataRef::Peer(session, seq),
                        ..
                    } => self.writes.remove(&(session, seq)),
                    _ => None,
                };
                let cfg = self.shared.config();
                let job = Job::Op {
                    io,
                    op,
                    data,
                    seal: (cfg.compression, cfg.checksum),
                };
                if self.disk.send(job).is_err() {
                    let failed = Input::Disk {
                        io,
                        result: Err(EIO),
                        read: None,
                    };
                    let _ = self.inputs.send(failed);
                }
            }
            Action::Received { session, seq } => {
                self.send(session, Outgoing::bare(received_header(seq)));
            }
            Action::Reply {
                session,
                seq,
                result,
            } => {
                self.held.remove(&(session, seq));
                let frame = match result {
                    Ok(Some(DataRef::Local(io))) => match self.reads.remove(&io) {
                        Some(mut frame) => {
                            frame.header.seq = seq;
                            frame
                        }
                        None => Outgoing::bare(reply_header(seq, EIO)),
                    },
                    Ok(_) => Outgoing::bare(reply_header(seq, 0)),
                    Err(errno) => Outgoing::bare(reply_header(seq, errno)),
                };
                self.send(session, frame);
            }
            Action::Release(DataRef::Local(io)) => {
                self.reads.remove(&io);
            }
            Action::Release(_) => {}
            Action::WriteMeta { gen, meta } => {
                disk::write_meta(self.shared.store.clone(), gen, meta, self.inputs.clone())
            }
            Action::Notice(notice) => self.notice(notice),
            Action::Stopped => self.stopped = true,
        }
    }

    fn peer(&self, session: SessionId) -> String {
        self.conns
            .get(&session)
            .map_or_else(|| "the primary".into(), |c| c.peer.to_string())
    }

    fn notice(&mut self, notice: Notice) {
        let name = &self.shared.name;
        match notice {
            Notice::Replaced { new, .. } => {
                info!(resource = %name, "new connection from {} replaces the current one", self.peer(new));
            }
            Notice::Refused {
                reason: Refusal::SourceInconsistent,
                detail,
                ..
            } => error!(resource = %name, "{detail}"),
            Notice::Refused { detail, .. } => warn!(resource = %name, "{detail}"),
            Notice::SplitBrain => {
                error!(resource = %name, "split-brain condition: both nodes were written while apart; \
                       refusing the primary until an operator discards one side");
                self.shared.fire(Event::SplitBrain);
            }
            Notice::WriteFailed {
                kind,
                offset,
                len,
                errno,
            } => {
                let e = std::io::Error::from_raw_os_error(errno as i32);
                error!(resource = %name, "{kind:?} at {offset} (+{len}) from the primary failed: {e}; \
                       this copy is inconsistent until the primary resynchronizes it");
            }
            Notice::SyncConfirmed => {
                info!(resource = %name, "synchronization from the primary complete: this copy is consistent")
            }
            Notice::SyncDoneAfterFailure => {
                info!(resource = %name, "the primary reports the sync complete, but a write failed \
                      here since; this copy stays marked inconsistent until the next sync")
            }
            Notice::MetaWriteFailed => {
                warn!(resource = %name, "cannot write the metadata yet: {}; retrying", self.meta_error)
            }
            Notice::Violation { session, reason } => {
                warn!(resource = %name, "connection to primary {} dropped: protocol violation: {reason}", self.peer(session));
            }
        }
    }
}
