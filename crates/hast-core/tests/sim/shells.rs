//! The simulated daemons: what hastd's shells do with the machines' actions (disk I/O with
//! latency and faults, frames on the link, answers to the client) and how events come
//! back. The rules are all in the machines; this only carries them out, like the daemon.

use hast_core::metadata::Role;
use hast_core::proto::handshake::Refusal;
use hast_core::replication::handshake::{HandshakeFailure, PrimaryHandshake};
use hast_core::replication::primary::{Action, Event, Notice};
use hast_core::replication::secondary::{Notice as SecNotice, SecondaryAction, SecondaryEvent};
use hast_core::replication::{errno, DataRef, IoId, LocalOp, ReqId, SessionId};

use crate::disk::BLOCK;
use crate::world::{apply_write, Ev, Frame, Proc, World};

impl World {
    /// Runs one event.
    pub fn dispatch(&mut self, ev: Ev) {
        match ev {
            Ev::Io {
                node,
                inc,
                io,
                op,
                data,
            } => {
                if self.nodes[node].inc == inc {
                    self.io_done(node, io, op, data);
                }
            }
            Ev::Map {
                node,
                inc,
                gen,
                image,
            } => {
                if self.nodes[node].inc == inc {
                    self.nodes[node].disk.bitmap = image;
                    self.feed_primary(node, Event::MapWritten { gen, ok: true });
                }
            }
            Ev::Meta {
                node,
                inc,
                gen,
                meta,
            } => {
                if self.nodes[node].inc == inc {
                    self.nodes[node].disk.meta = *meta;
                    if self.is_primary(node) {
                        self.feed_primary(node, Event::MetaWritten { gen, ok: true });
                    } else {
                        self.feed_secondary(node, SecondaryEvent::MetaWritten { gen, ok: true });
                    }
                }
            }
            Ev::FillBitmap { node, inc, session } => {
                if self.nodes[node].inc == inc {
                    let per = self.blocks_per_extent();
                    let disk = &mut self.nodes[node].disk;
                    let extents = disk.blocks().div_ceil(per);
                    for ext in 0..extents {
                        if let Some(b) = disk.bitmap.get_mut(ext / 8) {
                            *b |= 1 << (ext % 8);
                        }
                    }
                    self.feed_secondary(node, SecondaryEvent::BitmapFilled { session, ok: true });
                }
            }
            Ev::Deliver { conn, to, frame } => {
                if self.deliverable(conn, to, &frame) {
                    self.deliver(conn, to, *frame);
                }
            }
            Ev::Lost { conn, to } => self.lost(conn, to),
            Ev::Break { conn } => self.break_conn(conn, 1),
            Ev::Tick { node, inc } => {
                if self.nodes[node].inc == inc {
                    self.nodes[node].next_tick = None;
                    if self.is_primary(node) {
                        self.connector(node);
                        self.feed_primary(node, Event::Tick);
                    } else if self.is_secondary(node) {
                        self.feed_secondary(node, SecondaryEvent::Tick);
                        let inc = self.nodes[node].inc;
                        self.after(100, Ev::Tick { node, inc });
                    }
                }
            }
            Ev::Fenced { node, inc, gen } => {
                if self.nodes[node].inc == inc && self.is_primary(node) {
                    // Like a Pacemaker constraint with quorum: granted unless the other
                    // node's fence is in force (only an unfence, after a resync, lifts it).
                    let ok = self.fence_grant.is_none_or(|g| g == node);
                    if ok {
                        self.fence_grant = Some(node);
                    }
                    self.log(|| format!("node {node}: fence program {gen} ends, ok {ok}"));
                    self.feed_primary(node, Event::Fenced { gen, ok });
                }
            }
            Ev::ClientStep => self.client_step(),
            Ev::OperatorStep => self.operator_step(),
            Ev::FaultStep => self.fault_step(),
            Ev::Heal => {
                self.log(|| "partition healed".into());
                self.heal();
            }
            Ev::PartitionTimeout { since } => self.partition_timeout(since),
            Ev::Unslow { node } => self.nodes[node].disk.slow = 0,
        }
    }

    fn latency(&mut self, node: usize) -> u64 {
        self.rng.range(1, 4) + self.nodes[node].disk.slow
    }

    /// A local I/O completes: it lands on the disk now (or fails), and the machine hears.
    fn io_done(&mut self, node: usize, io: IoId, op: LocalOp, data: Option<Vec<u64>>) {
        let disk = &mut self.nodes[node].disk;
        let result = match op {
            LocalOp::Write { fua, .. }
            | LocalOp::Zeroes { fua, .. }
            | LocalOp::Trim { fua, .. } => {
                if matches!(op, LocalOp::Trim { .. }) && disk.no_discard {
                    Err(errno::EOPNOTSUPP)
                } else if disk.take_write_fault() {
                    Err(errno::EIO)
                } else {
                    apply_write(disk, op, data.as_deref());
                    if fua && disk.take_flush_fault() {
                        Err(errno::EIO)
                    } else {
                        if fua {
                            disk.flush();
                        }
                        Ok(())
                    }
                }
            }
            LocalOp::Read { offset, len } => {
                if disk.take_read_fault() {
                    Err(errno::EIO)
                } else {
                    let read = disk.read((offset / BLOCK) as usize, (len / BLOCK) as usize);
                    match &mut self.nodes[node].proc {
                        Some(Proc::Primary(p)) => {
                            p.local.insert(io, read);
                        }
                        Some(Proc::Secondary(s)) => {
                            s.local.insert(io, read);
                        }
                        None => {}
                    }
                    Ok(())
                }
            }
            LocalOp::Flush => {
                if disk.take_flush_fault() {
                    // A failed fdatasync may have dropped dirty pages (Linux marks them
                    // clean): some of what was written is gone.
                    let mut rng = self.rng.clone();
                    disk.power_loss(&mut rng);
                    self.rng.next();
                    Err(errno::EIO)
                } else {
                    disk.flush();
                    Ok(())
                }
            }
        };
        if self.is_primary(node) {
            self.feed_primary(node, Event::Local { io, result });
        } else if self.is_secondary(node) {
            self.feed_secondary(node, SecondaryEvent::Local { io, result });
        }
    }

    /// The bytes an action names, in the node's shell.
    fn resolve(&mut self, node: usize, data: DataRef, take: bool) -> Option<Vec<u64>> {
        let proc = self.nodes[node].proc.as_mut()?;
        let (local, peer, payloads) = match proc {
            Proc::Primary(p) => (&mut p.local, &mut p.peer, Some(&mut p.payloads)),
            Proc::Secondary(s) => (&mut s.local, &mut s.peer, None),
        };
        match data {
            DataRef::Client(ReqId(r)) => payloads?.get(&r).cloned(),
            DataRef::Local(io) if take => local.remove(&io),
            DataRef::Local(io) => local.get(&io).cloned(),
            DataRef::Peer(s, seq) if take => peer.remove(&(s, seq)),
            DataRef::Peer(s, seq) => peer.get(&(s, seq)).cloned(),
        }
    }

    fn schedule_io(&mut self, node: usize, io: IoId, op: LocalOp) {
        self.schedule_io_in(node, io, op, false);
    }

    /// `fifo`: the I/O ends no earlier than the previous FIFO one of this process
    /// (events of the same time run in the order scheduled).
    fn schedule_io_in(&mut self, node: usize, io: IoId, op: LocalOp, fifo: bool) {
        let data = match op {
            LocalOp::Write { data, .. } => self.resolve(node, data, true),
            _ => None,
        };
        let inc = self.nodes[node].inc;
        let mut delay = self.latency(node);
        if fifo {
            let n = &mut self.nodes[node];
            let last = if n.fifo.0 == inc { n.fifo.1 } else { 0 };
            let at = (self.now + delay).max(last);
            n.fifo = (inc, at);
            delay = at - self.now;
        }
        self.after(
            delay,
            Ev::Io {
                node,
                inc,
                io,
                op,
                data,
            },
        );
    }

    pub fn feed_primary(&mut self, node: usize, event: Event) {
        let now = self.now;
        if std::env::var_os("SIM_TRACE_ACTIONS").is_some() {
            self.log(|| {
                format!("node {node} event {event:?}")
                    .chars()
                    .take(200)
                    .collect()
            });
        }
        let actions = match &mut self.nodes[node].proc {
            Some(Proc::Primary(p)) => p.m.handle(now, event),
            _ => return,
        };
        for a in actions {
            self.primary_action(node, a);
        }
        self.schedule_tick(node);
    }

    fn primary_action(&mut self, node: usize, a: Action) {
        let inc = self.nodes[node].inc;
        if std::env::var_os("SIM_TRACE_ACTIONS").is_some() {
            self.log(|| {
                format!("node {node} action {a:?}")
                    .chars()
                    .take(200)
                    .collect()
            });
        }
        match a {
            Action::WriteMap { gen, image } => {
                let d = self.latency(node);
                self.after(
                    d,
                    Ev::Map {
                        node,
                        inc,
                        gen,
                        image,
                    },
                );
            }
            Action::WriteMeta { gen, meta } => {
                let d = self.latency(node);
                self.after(
                    d,
                    Ev::Meta {
                        node,
                        inc,
                        gen,
                        meta: Box::new(meta),
                    },
                );
            }
            Action::Local { io, op } => self.schedule_io(node, io, op),
            Action::Send {
                session,
                seq,
                req,
                data,
            } => {
                let data = data.and_then(|d| {
                    let take = !matches!(d, DataRef::Client(_));
                    self.resolve(node, d, take)
                });
                self.send(session, node, Frame::Request { seq, req, data });
            }
            Action::Reply { req, result } => {
                let result = match result {
                    Ok(Some(d)) => Ok(self.resolve(node, d, true)),
                    Ok(None) => Ok(None),
                    Err(e) => Err(e),
                };
                if let Some(Proc::Primary(p)) = &mut self.nodes[node].proc {
                    p.payloads.remove(&req.0);
                }
                self.client_answer(node, req.0, result);
            }
            Action::Release(d) => {
                let _ = self.resolve(node, d, true);
            }
            Action::HandshakeState { session, state } => {
                self.send(session, node, Frame::State(state));
            }
            Action::SessionUp { .. } => {}
            Action::DropPeer { session, why } => {
                self.log(|| format!("node {node} drops session {}: {why}", session.0));
                // Like the daemon's connector: a dropped handshake ends the attempt.
                if let Some(Proc::Primary(p)) = &mut self.nodes[node].proc {
                    if p.connecting.as_ref().is_some_and(|(s, _)| *s == session) {
                        p.connecting = None;
                    }
                }
                self.break_conn(session, 1);
            }
            Action::Notify(n) => {
                if n == Notice::SplitBrain {
                    self.nodes[node].split_brain = true;
                }
                if let Notice::SyncComplete { .. } | Notice::InSync = n {
                    self.pair_reconciled();
                }
                self.log(|| format!("node {node}: {n:?}"));
            }
            Action::Failed(what) => self.log(|| format!("node {node} failed: {what}")),
            Action::Stopped => self.process_stopped(node),
            // The fence program: a moment, sometimes one that hangs until the machine's
            // timeout; its verdict is the cluster's at the moment it ends.
            Action::Fence { gen } => {
                if self.rng.chance(10) {
                    self.log(|| format!("node {node}: fence program {gen} hangs"));
                } else {
                    let d = self.rng.range(1, 60);
                    self.after(d, Ev::Fenced { node, inc, gen });
                }
            }
            Action::Unfence => {
                let grant = self.fence_grant.take();
                self.log(|| format!("node {node}: unfence (grant was {grant:?})"));
            }
        }
    }

    pub fn feed_secondary(&mut self, node: usize, event: SecondaryEvent) {
        let now = self.now;
        let actions = match &mut self.nodes[node].proc {
            Some(Proc::Secondary(s)) => s.m.handle(now, event),
            _ => return,
        };
        for a in actions {
            self.secondary_action(node, a);
        }
    }

    fn secondary_action(&mut self, node: usize, a: SecondaryAction) {
        let inc = self.nodes[node].inc;
        match a {
            SecondaryAction::Welcome { session, welcome } => {
                self.send(session, node, Frame::Welcome(welcome));
            }
            SecondaryAction::Accept {
                session,
                mut reply,
                send_bitmap,
                ..
            } => {
                let bitmap = send_bitmap.then(|| self.nodes[node].disk.bitmap.clone());
                reply.mapsize = bitmap.as_ref().map_or(0, |b| b.len() as u32);
                self.send(session, node, Frame::StateReply(reply, bitmap));
            }
            SecondaryAction::Refuse { session, message } => {
                self.send(session, node, Frame::Refused(message));
            }
            SecondaryAction::Drop { .. } => {}
            // Everything for it was sent: close once it is on the wire.
            SecondaryAction::Close { session } => self.after(3, Ev::Break { conn: session }),
            SecondaryAction::ClearBitmap { .. } => {
                // Before the next local operation: done at once.
                let len = self.nodes[node].disk.bitmap.len();
                self.nodes[node].disk.bitmap = vec![0; len];
            }
            SecondaryAction::FillBitmap { session } => {
                let d = self.latency(node);
                self.after(d, Ev::FillBitmap { node, inc, session });
            }
            SecondaryAction::Local { io, op } => {
                // The secondary's disk thread applies data operations one after the
                // other, in the order given; a flush runs beside them.
                let fifo = !matches!(op, LocalOp::Flush);
                self.schedule_io_in(node, io, op, fifo)
            }
            SecondaryAction::Received { session, seq } => {
                self.send(session, node, Frame::Received { seq });
            }
            SecondaryAction::Reply {
                session,
                seq,
                result,
            } => {
                let (result, data) = match result {
                    Ok(Some(d)) => (Ok(()), self.resolve(node, d, true)),
                    Ok(None) => (Ok(()), None),
                    Err(e) => (Err(e), None),
                };
                if let Some(Proc::Secondary(s)) = &mut self.nodes[node].proc {
                    s.peer.remove(&(session, seq));
                }
                self.send(session, node, Frame::Reply { seq, result, data });
            }
            SecondaryAction::Release(d) => {
                let _ = self.resolve(node, d, true);
            }
            SecondaryAction::WriteMeta { gen, meta } => {
                let d = self.latency(node);
                self.after(
                    d,
                    Ev::Meta {
                        node,
                        inc,
                        gen,
                        meta: Box::new(meta),
                    },
                );
            }
            SecondaryAction::Notice(n) => {
                if n == SecNotice::SplitBrain {
                    self.nodes[node].split_brain = true;
                }
                if let SecNotice::Refused {
                    reason: Refusal::SourceInconsistent,
                    ..
                } = n
                {
                    self.nodes[node].source_inconsistent = true;
                }
                self.log(|| format!("node {node} (secondary): {n:?}"));
            }
            SecondaryAction::Stopped => {
                // Secondary::stop flushes the disk after the machine stopped.
                self.nodes[node].disk.flush();
                self.process_stopped(node);
            }
        }
    }

    /// A process finished its role: the next one starts (the operator asked for it).
    fn process_stopped(&mut self, node: usize) {
        self.nodes[node].proc = None;
        self.nodes[node].inc += 1;
        // The role's sockets close with it, including a connection it had not yet heard
        // of (accepted as it stopped): the other end reads EOF.
        self.break_conns_of(node);
        self.nodes[node].role = Role::Init;
        let next = self.nodes[node].next_role.take();
        self.log(|| format!("node {node} stopped; next {next:?}"));
        match next {
            Some(Role::Primary) => {
                let _ = self.start_primary(node);
            }
            Some(Role::Secondary) => self.start_secondary(node),
            _ => {}
        }
        self.operator_after_stop(node);
    }

    /// The primary's connector: one attempt at a time, a new one 100 ms after a failure.
    fn connector(&mut self, node: usize) {
        let other = 1 - node;
        let now = self.now;
        let ready = match &self.nodes[node].proc {
            Some(Proc::Primary(p)) => {
                p.connecting.is_none()
                    && p.m.session().is_none()
                    && !p.stopping
                    && now >= p.next_connect
            }
            _ => false,
        };
        if !ready {
            return;
        }
        if let Some(Proc::Primary(p)) = &mut self.nodes[node].proc {
            p.next_connect = now + 100;
        }
        if !self.is_secondary(other) || self.partition.is_some() {
            return;
        }
        let session = self.new_session(node, other);
        let (hs, hello) = PrimaryHandshake::start("r0", None, None);
        if let Some(Proc::Primary(p)) = &mut self.nodes[node].proc {
            p.connecting = Some((session, hs));
        }
        self.log(|| format!("node {node} connects (session {})", session.0));
        self.send(session, node, Frame::Hello(hello));
    }

    fn connecting(&mut self, node: usize, session: SessionId) -> Option<&mut PrimaryHandshake> {
        match &mut self.nodes[node].proc {
            Some(Proc::Primary(p)) => match &mut p.connecting {
                Some((s, hs)) if *s == session => Some(hs),
                _ => None,
            },
            _ => None,
        }
    }

    fn handshake_failed(&mut self, node: usize, session: SessionId, split_brain: bool) {
        if let Some(Proc::Primary(p)) = &mut self.nodes[node].proc {
            if p.connecting.as_ref().is_some_and(|(s, _)| *s == session) {
                p.connecting = None;
            }
        }
        self.break_conn(session, 1);
        self.feed_primary(
            node,
            Event::HandshakeFailed {
                session,
                split_brain,
            },
        );
    }

    fn deliver(&mut self, conn: SessionId, to: usize, frame: Frame) {
        if self.is_primary(to) {
            self.deliver_to_primary(conn, to, frame);
        } else if self.is_secondary(to) {
            self.deliver_to_secondary(conn, to, frame);
        }
    }

    fn deliver_to_primary(&mut self, session: SessionId, node: usize, frame: Frame) {
        match frame {
            Frame::Welcome(w) => {
                let Some(hs) = self.connecting(node, session) else {
                    return;
                };
                match hs.on_welcome(&w) {
                    Ok(_) => {
                        let random = self.rng.next() | 1;
                        self.feed_primary(node, Event::HandshakeBegin { session, random });
                    }
                    Err(_) => self.handshake_failed(node, session, false),
                }
            }
            Frame::StateReply(reply, bitmap) => {
                let own = self.nodes[node].disk.bitmap.len() as u64;
                let Some(hs) = self.connecting(node, session) else {
                    return;
                };
                match hs.on_state_reply(&reply, own) {
                    Ok(_) => {
                        if let Some(Proc::Primary(p)) = &mut self.nodes[node].proc {
                            p.connecting = None;
                        }
                        self.feed_primary(
                            node,
                            Event::HandshakeReply {
                                session,
                                reply,
                                peer_map: bitmap,
                            },
                        );
                    }
                    Err(_) => self.handshake_failed(node, session, false),
                }
            }
            Frame::Refused(msg) => {
                let Some(hs) = self.connecting(node, session) else {
                    return;
                };
                let split_brain = matches!(
                    hs.on_error(msg),
                    HandshakeFailure::Refused {
                        split_brain: true,
                        ..
                    }
                );
                self.handshake_failed(node, session, split_brain);
            }
            Frame::Received { seq } => self.feed_primary(node, Event::Received { session, seq }),
            Frame::Reply { seq, result, data } => {
                if let (Some(d), Some(Proc::Primary(p))) = (data, &mut self.nodes[node].proc) {
                    p.peer.insert((session, seq), d);
                }
                self.feed_primary(
                    node,
                    Event::Reply {
                        session,
                        seq,
                        result,
                    },
                );
            }
            Frame::Hello(_) | Frame::State(_) | Frame::Request { .. } => {}
        }
    }

    fn deliver_to_secondary(&mut self, session: SessionId, node: usize, frame: Frame) {
        match frame {
            Frame::Hello(hello) => {
                let mut nonce = [0u8; 32];
                for b in &mut nonce {
                    *b = self.rng.next() as u8;
                }
                self.feed_secondary(
                    node,
                    SecondaryEvent::Hello {
                        session,
                        hello,
                        key: Ok(None),
                        nonce,
                    },
                );
            }
            Frame::State(state) => {
                self.feed_secondary(node, SecondaryEvent::State { session, state })
            }
            Frame::Request { seq, req, data } => {
                if let (Some(d), Some(Proc::Secondary(s))) = (data, &mut self.nodes[node].proc) {
                    s.peer.insert((session, seq), d);
                }
                self.feed_secondary(node, SecondaryEvent::Request { session, seq, req });
            }
            _ => {}
        }
    }

    fn lost(&mut self, conn: SessionId, to: usize) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let inc = if to == c.primary { c.p_inc } else { c.s_inc };
        if self.nodes[to].inc != inc {
            return;
        }
        if self.is_primary(to) {
            let connecting = matches!(&self.nodes[to].proc,
                Some(Proc::Primary(p)) if p.connecting.as_ref().is_some_and(|(s, _)| *s == conn));
            if connecting {
                self.handshake_failed(to, conn, false);
            }
            self.feed_primary(to, Event::Lost { session: conn });
        } else if self.is_secondary(to) {
            self.feed_secondary(to, SecondaryEvent::Lost { session: conn });
        }
    }

    /// Whether the pair is up, connected, synchronised and quiet.
    pub fn settled(&self) -> Option<usize> {
        let p = (0..2).find(|&n| self.is_primary(n))?;
        let s = 1 - p;
        let Some(Proc::Primary(ps)) = &self.nodes[p].proc else {
            return None;
        };
        let st = ps.m.status();
        let sec_ok = match &self.nodes[s].proc {
            Some(Proc::Secondary(ss)) => {
                let ss = ss.m.status();
                ss.connected && ss.datastate.is_consistent() && ss.queue == 0
            }
            _ => false,
        };
        (st.connected
            && sec_ok
            && st.dirty == 0
            && st.sync.is_none()
            && !st.stale
            && !st.disk_failed
            && self.client.pending.is_empty()
            && !ps.stopping)
            .then_some(p)
    }
}
