//! The simulated world: two nodes (disks, processes running the real state machines),
//! the link between them, the client, the operator and the faults, driven by one event
//! queue in virtual time. Everything random comes from one seeded generator and every
//! collection iterates in a fixed order, so a seed replays bit for bit.

use std::collections::{BTreeMap, BTreeSet};

use hast_core::activemap::{self, ActiveMap};
use hast_core::config::ReplicationMode;
use hast_core::metadata::{DataState, Layout, Metadata, Role};
use hast_core::proto::handshake::{ErrorMessage, Hello, State, StateReply, Welcome};
use hast_core::replication::primary::{self, Primary};
use hast_core::replication::secondary::Secondary;
use hast_core::replication::{IoId, LocalOp, PeerRequest, SessionId};

use crate::client::Client;
use crate::disk::{Disk, BLOCK};
use crate::rng::Rng;

/// The shape of every simulated run.
#[derive(Debug, Clone)]
pub struct Shape {
    pub mode: ReplicationMode,
    pub extents: u64,
    pub extentsize: u64,
    pub keepdirty: u32,
    /// Client requests to issue before the final settle.
    pub requests: u64,
    /// Client requests in flight at most.
    pub depth: usize,
    /// Faults to inject, at most.
    pub faults: u64,
    pub timeout_ms: u64,
    /// The primaries run with a `fence` program (seeds from `FENCING_SEEDS`): a
    /// cluster-wide grant that one node at a time may hold, like Pacemaker's constraint.
    pub fencing: bool,
    #[cfg(feature = "mutations")]
    pub mutation: Option<hast_core::replication::Mutation>,
}

/// `fence_timeout` of the simulated primaries, when fencing.
pub const FENCE_TIMEOUT_MS: u64 = 500;

/// A frame on the link.
#[derive(Debug, Clone)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    State(State),
    StateReply(StateReply, Option<Vec<u8>>),
    Refused(ErrorMessage),
    Request {
        seq: u64,
        req: PeerRequest,
        data: Option<Vec<u64>>,
    },
    Received {
        seq: u64,
    },
    Reply {
        seq: u64,
        result: Result<(), u32>,
        data: Option<Vec<u64>>,
    },
}

/// A scheduled happening.
#[derive(Debug, Clone)]
pub enum Ev {
    /// A local I/O of a process completes (and lands on its disk).
    Io {
        node: usize,
        inc: u64,
        io: IoId,
        op: LocalOp,
        data: Option<Vec<u64>>,
    },
    /// A bitmap write completes.
    Map {
        node: usize,
        inc: u64,
        gen: u64,
        image: Vec<u8>,
    },
    /// A metadata write completes.
    Meta {
        node: usize,
        inc: u64,
        gen: u64,
        meta: Box<Metadata>,
    },
    /// The secondary's all-ones bitmap (before a full sync's metadata) is on disk.
    FillBitmap {
        node: usize,
        inc: u64,
        session: SessionId,
    },
    /// A frame arrives at the end `to` of connection `conn`.
    Deliver {
        conn: SessionId,
        to: usize,
        frame: Box<Frame>,
    },
    /// The end `to` of `conn` learns that the connection is gone.
    Lost {
        conn: SessionId,
        to: usize,
    },
    /// A connection is closed by one end (after what it sent is on the wire).
    Break {
        conn: SessionId,
    },
    /// A machine's deadline.
    Tick {
        node: usize,
        inc: u64,
    },
    ClientStep,
    OperatorStep,
    FaultStep,
    /// A partition ends.
    Heal,
    /// A partition has lasted `timeout`: connections across it are gone.
    PartitionTimeout {
        since: u64,
    },
    /// A slow disk becomes normal again.
    Unslow {
        node: usize,
    },
    /// The fence program `gen` of a primary ends.
    Fenced {
        node: usize,
        inc: u64,
        gen: u64,
    },
}

/// A running process on a node.
#[derive(Debug)]
pub enum Proc {
    Primary(Box<PrimaryShell>),
    Secondary(Box<SecondaryShell>),
}

/// What the primary's shell keeps beside its machine: the bytes the machine names.
#[derive(Debug)]
pub struct PrimaryShell {
    pub m: Primary,
    pub payloads: BTreeMap<u64, Vec<u64>>,
    pub local: BTreeMap<IoId, Vec<u64>>,
    pub peer: BTreeMap<(SessionId, u64), Vec<u64>>,
    /// The connection being set up, and its handshake.
    pub connecting: Option<(
        SessionId,
        hast_core::replication::handshake::PrimaryHandshake,
    )>,
    pub next_connect: u64,
    pub stopping: bool,
}

/// The secondary's shell.
#[derive(Debug)]
pub struct SecondaryShell {
    pub m: Secondary,
    pub local: BTreeMap<IoId, Vec<u64>>,
    pub peer: BTreeMap<(SessionId, u64), Vec<u64>>,
    pub stopping: bool,
}

#[derive(Debug)]
pub struct Node {
    pub disk: Disk,
    /// Process incarnation: events of an older one are dropped.
    pub inc: u64,
    pub proc: Option<Proc>,
    /// The role the operator last asked for (None: a role change is in progress).
    pub role: Role,
    /// Role to take once the current process has stopped.
    pub next_role: Option<Role>,
    pub next_tick: Option<u64>,
    /// This node reported split-brain since the last recovery.
    pub split_brain: bool,
    /// Its next start as primary is forced (`hastctl role -f primary`).
    pub force_primary: bool,
    /// As secondary, it refused the primary because its own copy, newer by the
    /// counters, is inconsistent.
    pub source_inconsistent: bool,
    /// The last refusal of role primary.
    pub refused: bool,
    /// The promotion epoch of its current (or last) primary role.
    pub epoch: u64,
    /// When it last became primary.
    pub promoted_at: u64,
    /// It acknowledged a write as a primary without a secondary since the copies were
    /// last the same.
    pub acked_alone: bool,

    /// Being discarded after a split-brain: recreate once stopped, then secondary.
    pub recreate: bool,
    /// (incarnation, time) the secondary's last in-order disk operation ends.
    pub fifo: (u64, u64),
}

#[derive(Debug, Clone)]
pub struct Conn {
    pub primary: usize,
    pub secondary: usize,
    pub p_inc: u64,
    pub s_inc: u64,
    pub alive: bool,
}

pub struct World {
    pub shape: Shape,
    pub rng: Rng,
    pub now: u64,
    queue: BTreeMap<(u64, u64), Ev>,
    seq: u64,
    pub nodes: [Node; 2],
    pub conns: BTreeMap<SessionId, Conn>,
    next_session: u64,
    /// A partition since this time.
    pub partition: Option<u64>,
    /// Frames held by a partition (TCP retransmits them after the heal).
    held: Vec<(SessionId, usize, Frame)>,
    pub client: Client,
    pub violations: Vec<String>,
    pub steps: u64,
    pub issued: u64,
    pub faults: u64,
    /// Faults that hit a pair already without redundancy: for the single-fault rules
    /// they count as a second failure.
    pub degraded_hits: u64,
    /// Promotions so far (each one an epoch).
    pub epoch: u64,
    /// Split-brains detected and resolved.
    pub split_brains: u64,
    /// Promotions refused (inconsistent copy).
    pub refusals: u64,
    /// The node the operator promoted by mistake during a partition, if any.
    pub mistaken: Option<usize>,
    /// With fencing: the node whose fence is in force (the cluster's constraint).
    pub fence_grant: Option<usize>,
    /// Two primaries since the second's promotion: (that node, when).
    pub split: Option<(usize, u64)>,
    /// The pair completed its first synchronization: until then only one copy exists,
    /// and the faults wait (as an administrator waits for `complete`).
    pub paired: bool,
    /// When a sync last made the two copies the same.
    pub reconciled_at: u64,
    /// The node the operator is switching the primary role to.
    pub switch_to: Option<usize>,
    /// A planned failback to a node not yet resynchronised: the application is stopped
    /// until the new primary is connected (its status says so), and the manager promotes
    /// that node although it lacks writes (the handshake makes it a stale primary).
    pub failback: bool,
    pub settle_started: Option<u64>,
    /// No node could be promoted by the rules since this time.
    pub stuck_since: Option<u64>,
    /// Forced promotions: a double failure left no copy with every acknowledged write,
    /// and the operator accepted the best one (`hastctl role -f`).
    pub forced: u64,
    pub verified: bool,
    pub fault_log: BTreeMap<&'static str, u64>,
    pub trace: Option<Vec<String>>,
    /// The final settle has begun: no more faults or requests.
    pub settling: bool,
}

impl World {
    pub fn new(seed: u64, shape: Shape) -> World {
        let datasize = shape.extents * shape.extentsize;
        let bitmap = activemap::ondisk_size(datasize, shape.extentsize as u32, BLOCK as u32);
        let mediasize = datasize + 4096 + bitmap;
        let layout =
            Layout::compute(mediasize, shape.extentsize, BLOCK as u32).expect("simulated layout");
        assert_eq!(
            layout.datasize(),
            datasize,
            "the layout must not round the data area"
        );
        let meta = Metadata::new("r0", layout, shape.keepdirty).expect("simulated metadata");
        let blocks = (datasize / BLOCK) as usize;
        let node = |_| Node {
            disk: Disk::new(blocks, meta.clone(), bitmap as usize),
            inc: 0,
            proc: None,
            role: Role::Init,
            next_role: None,
            next_tick: None,
            split_brain: false,
            force_primary: false,
            source_inconsistent: false,
            refused: false,
            epoch: 0,
            promoted_at: 0,
            acked_alone: false,
            recreate: false,
            fifo: (0, 0),
        };
        let trace = std::env::var_os("SIM_TRACE").map(|_| Vec::new());
        World {
            rng: Rng::new(seed),
            now: 0,
            queue: BTreeMap::new(),
            seq: 0,
            nodes: [node(0), node(1)],
            conns: BTreeMap::new(),
            next_session: 1,
            partition: None,
            held: Vec::new(),
            client: Client::new(blocks),
            violations: Vec::new(),
            steps: 0,
            issued: 0,
            faults: 0,
            degraded_hits: 0,
            epoch: 0,
            split_brains: 0,
            refusals: 0,
            mistaken: None,
            fence_grant: None,
            split: None,
            paired: false,
            reconciled_at: 0,
            switch_to: None,
            failback: false,
            settle_started: None,
            stuck_since: None,
            forced: 0,
            verified: false,
            fault_log: BTreeMap::new(),
            trace,
            settling: false,
            shape,
        }
    }

    pub fn blocks_per_extent(&self) -> usize {
        (self.shape.extentsize / BLOCK) as usize
    }

    pub fn log(&mut self, line: impl FnOnce() -> String) {
        if let Some(t) = &mut self.trace {
            let l = format!("{:>7} {}", self.now, line());
            eprintln!("{l}");
            t.push(l);
        }
    }

    pub fn violation(&mut self, what: String) {
        self.log(|| format!("VIOLATION {what}"));
        self.violations.push(what);
    }

    pub fn at(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.queue.insert((time.max(self.now), self.seq), ev);
    }

    pub fn after(&mut self, delay: u64, ev: Ev) {
        self.at(self.now + delay, ev);
    }

    /// The next event, advancing the clock.
    pub fn pop(&mut self) -> Option<Ev> {
        let (&(time, seq), _) = self.queue.iter().next()?;
        let ev = self.queue.remove(&(time, seq))?;
        self.now = time;
        self.steps += 1;
        Some(ev)
    }

    /// Events still queued for a process incarnation (for a crash: which writes may land).
    pub fn pending_ios(&self, node: usize, inc: u64) -> Vec<(IoId, LocalOp, Option<Vec<u64>>)> {
        self.queue
            .values()
            .filter_map(|e| match e {
                Ev::Io {
                    node: n,
                    inc: i,
                    io,
                    op,
                    data,
                } if *n == node && *i == inc => Some((*io, *op, data.clone())),
                _ => None,
            })
            .collect()
    }

    pub fn new_session(&mut self, primary: usize, secondary: usize) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        let conn = Conn {
            primary,
            secondary,
            p_inc: self.nodes[primary].inc,
            s_inc: self.nodes[secondary].inc,
            alive: true,
        };
        self.conns.insert(id, conn);
        id
    }

    /// Sends a frame from `from` on `conn`: delivered after a link delay, held during a
    /// partition, dropped if the connection is gone.
    pub fn send(&mut self, conn: SessionId, from: usize, frame: Frame) {
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        let to = if from == c.primary {
            c.secondary
        } else {
            c.primary
        };
        let delay = self.rng.range(0, 2);
        self.after(
            delay,
            Ev::Deliver {
                conn,
                to,
                frame: Box::new(frame),
            },
        );
    }

    /// Whether a frame may be handed to `to` now; a partition holds it.
    pub fn deliverable(&mut self, conn: SessionId, to: usize, frame: &Frame) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        let inc = if to == c.primary { c.p_inc } else { c.s_inc };
        if !c.alive || self.nodes[to].inc != inc {
            return false;
        }
        if self.partition.is_some() {
            self.held.push((conn, to, frame.clone()));
            return false;
        }
        true
    }

    /// Closes a connection: each live end learns it after `delay` (a partition delays the
    /// news to the side that cannot hear the close until its timeout).
    pub fn break_conn(&mut self, conn: SessionId, delay: u64) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.alive {
            return;
        }
        c.alive = false;
        let (p, s) = (c.primary, c.secondary);
        // Across a partition each end notices by its own timeout, counted from when the
        // frames stopped (the partition's start), as the daemons' readers do.
        let delay = match self.partition {
            Some(since) => delay.max((since + self.shape.timeout_ms).saturating_sub(self.now)),
            None => delay,
        };
        self.after(delay, Ev::Lost { conn, to: p });
        self.after(delay, Ev::Lost { conn, to: s });
    }

    /// Every connection of `node` breaks (its process died).
    pub fn break_conns_of(&mut self, node: usize) {
        let ids: Vec<SessionId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.alive && (c.primary == node || c.secondary == node))
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.break_conn(id, 1);
        }
    }

    pub fn heal(&mut self) {
        if self.partition.take().is_none() {
            return;
        }
        for (conn, to, frame) in std::mem::take(&mut self.held) {
            self.after(
                1,
                Ev::Deliver {
                    conn,
                    to,
                    frame: Box::new(frame),
                },
            );
        }
    }

    pub fn partition_timeout(&mut self, since: u64) {
        if self.partition != Some(since) {
            return;
        }
        let ids: Vec<SessionId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.alive)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.break_conn(id, 0);
        }
        self.held
            .retain(|(c, _, _)| self.conns.get(c).is_some_and(|c| c.alive));
    }

    pub fn is_primary(&self, node: usize) -> bool {
        matches!(self.nodes[node].proc, Some(Proc::Primary(_)))
    }

    pub fn is_secondary(&self, node: usize) -> bool {
        matches!(self.nodes[node].proc, Some(Proc::Secondary(_)))
    }

    pub fn primary_settings(&self) -> primary::Settings {
        primary::Settings {
            mode: self.shape.mode,
            timeout_ms: self.shape.timeout_ms,
            syncrate: 0,
            fence_timeout_ms: self.shape.fencing.then_some(FENCE_TIMEOUT_MS),
        }
    }

    /// Starts a primary machine on `node` over what its disk holds; `false` if the rules
    /// refuse (an inconsistent copy).
    pub fn start_primary(&mut self, node: usize) -> bool {
        if std::mem::take(&mut self.nodes[node].force_primary) {
            // `hastctl role -f primary`: the copy is recorded consistent as it is.
            self.nodes[node].disk.meta.datastate = DataState::CONSISTENT;
        }
        let meta = self.nodes[node].disk.meta.clone();
        if hast_core::replication::may_promote(meta.datastate, false).is_err() {
            self.nodes[node].refused = true;
            self.refusals += 1;
            self.log(|| format!("node {node} refuses role primary: {}", meta.datastate));
            return false;
        }
        let mut map = ActiveMap::new(
            meta.datasize(),
            meta.extentsize(),
            meta.keepdirty(),
            BLOCK as u32,
        )
        .expect("activemap");
        let _ = map.load(&self.nodes[node].disk.bitmap);
        #[allow(unused_mut)]
        let mut m = Primary::new(self.primary_settings(), meta, map, self.now);
        #[cfg(feature = "mutations")]
        m.set_mutation(self.shape.mutation);
        self.nodes[node].inc += 1;
        self.nodes[node].refused = false;
        self.epoch += 1;
        self.nodes[node].epoch = self.epoch;
        self.nodes[node].promoted_at = self.now;
        self.nodes[node].proc = Some(Proc::Primary(Box::new(PrimaryShell {
            m,
            payloads: BTreeMap::new(),
            local: BTreeMap::new(),
            peer: BTreeMap::new(),
            connecting: None,
            next_connect: self.now,
            stopping: false,
        })));
        self.nodes[node].role = Role::Primary;
        self.log(|| format!("node {node} is primary"));
        let inc = self.nodes[node].inc;
        self.after(0, Ev::Tick { node, inc });
        true
    }

    pub fn start_secondary(&mut self, node: usize) {
        let meta = self.nodes[node].disk.meta.clone();
        #[allow(unused_mut)]
        let mut m = Secondary::new(meta);
        #[cfg(feature = "mutations")]
        m.set_mutation(self.shape.mutation);
        self.nodes[node].inc += 1;
        self.nodes[node].proc = Some(Proc::Secondary(Box::new(SecondaryShell {
            m,
            local: BTreeMap::new(),
            peer: BTreeMap::new(),
            stopping: false,
        })));
        self.nodes[node].role = Role::Secondary;
        self.log(|| format!("node {node} is secondary"));
    }

    /// SIGKILL: the process is gone; writes it had in flight land or not; the page cache
    /// survives (power loss is [`World::power_loss`]).
    pub fn kill(&mut self, node: usize) {
        let inc = self.nodes[node].inc;
        for (_, op, data) in self.pending_ios(node, inc) {
            if self.rng.chance(50) {
                apply_write(&mut self.nodes[node].disk, op, data.as_deref());
            }
        }
        self.nodes[node].inc += 1;
        self.nodes[node].proc = None;
        self.nodes[node].role = Role::Init;
        self.nodes[node].next_role = None;
        self.break_conns_of(node);
        let abandoned: Vec<u64> = self
            .client
            .pending
            .iter()
            .filter(|(_, p)| p.node == node)
            .map(|(r, _)| *r)
            .collect();
        for r in abandoned {
            self.client.abandon(r);
        }
        self.log(|| format!("node {node} killed"));
    }

    pub fn power_loss(&mut self, node: usize) {
        if self.is_primary(node) {
            // The client runs on the primary's host: unflushed writes carry no promise.
            self.client.lose_unflushed();
        } else if self.shape.fencing {
            self.client.lose_unflushed_of(node);
        }
        self.kill(node);
        let disk = &mut self.nodes[node].disk;
        disk.power_loss(&mut self.rng);
        self.log(|| format!("node {node} lost power"));
    }

    /// A tick for `node` at its machine's next deadline (and at least every 100 ms).
    pub fn schedule_tick(&mut self, node: usize) {
        let deadline = match &self.nodes[node].proc {
            Some(Proc::Primary(p)) => p.m.next_deadline(),
            Some(Proc::Secondary(_)) => None,
            None => return,
        };
        let at = deadline
            .unwrap_or(self.now + 100)
            .min(self.now + 100)
            .max(self.now + 1);
        if self.nodes[node]
            .next_tick
            .is_some_and(|t| t <= at && t > self.now)
        {
            return;
        }
        self.nodes[node].next_tick = Some(at);
        let inc = self.nodes[node].inc;
        self.at(at, Ev::Tick { node, inc });
    }

    /// Blocks whose contents differ between the nodes' disks (as read now, and as they
    /// would survive a power failure).
    pub fn differing_extents(&self) -> BTreeSet<u64> {
        let per = self.blocks_per_extent();
        let (a, b) = (&self.nodes[0].disk, &self.nodes[1].disk);
        (0..a.blocks())
            .filter(|&i| a.get(i) != b.get(i) || a.durable(i) != b.durable(i))
            .map(|i| (i / per) as u64)
            .collect()
    }
}

/// What a write that was in flight does to a disk if it lands.
pub fn apply_write(disk: &mut Disk, op: LocalOp, data: Option<&[u64]>) {
    match op {
        LocalOp::Write { offset, len, .. } => {
            let first = (offset / BLOCK) as usize;
            let n = (len / BLOCK) as usize;
            if let Some(d) = data {
                disk.write(first, &d[..n.min(d.len())]);
            }
        }
        LocalOp::Zeroes { offset, len, .. } | LocalOp::Trim { offset, len, .. } => {
            let first = (offset / BLOCK) as usize;
            let n = (len / BLOCK) as usize;
            disk.write(first, &vec![0; n]);
        }
        LocalOp::Read { .. } | LocalOp::Flush => {}
    }
}
