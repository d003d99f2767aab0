//! What the primary's machine takes and gives: its events, its actions, the notices for
//! the log, its settings and its status.

use crate::config::ReplicationMode;
use crate::metadata::Metadata;
use crate::proto::handshake::{State, StateReply, SyncSource};
use crate::replication::{DataRef, IoId, LocalOp, PeerRequest, ReqId, SessionId, WriteOp};

/// Settings from the configuration; `set_settings` applies a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// The replication mode.
    pub mode: ReplicationMode,
    /// The peer `timeout`, in milliseconds (the watchdog).
    pub timeout_ms: u64,
    /// `syncrate` in bytes per second while the application is busy; 0: unlimited.
    pub syncrate: u64,
    /// `fence_timeout` in milliseconds when `fence` is configured; `None`: no fencing
    /// (see `fence.rs`).
    pub fence_timeout_ms: Option<u64>,
}

/// An input of the machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A client WRITE (payload kept by the shell as [`DataRef::Client`]), TRIM or
    /// WRITE_ZEROES, already validated against the export.
    Write {
        /// The request.
        req: ReqId,
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// The client's FUA.
        fua: bool,
        /// What it does.
        op: WriteOp,
    },
    /// A client FLUSH.
    Flush {
        /// The request.
        req: ReqId,
    },
    /// A client READ.
    Read {
        /// The request.
        req: ReqId,
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// A local I/O ended.
    Local {
        /// Which.
        io: IoId,
        /// `Err(errno)` on failure.
        result: Result<(), u32>,
    },
    /// A bitmap write ended.
    MapWritten {
        /// Its generation.
        gen: u64,
        /// Written (and flushed if `metaflush`).
        ok: bool,
    },
    /// A metadata write ended.
    MetaWritten {
        /// Its generation.
        gen: u64,
        /// Written and flushed.
        ok: bool,
    },
    /// A connection to the secondary reached the point where the primary sends `State`:
    /// the machine answers with [`Action::HandshakeState`] (after persisting a fresh
    /// resuid, if it has none; `random` is the candidate, never 0).
    HandshakeBegin {
        /// The connection.
        session: SessionId,
        /// A random resuid candidate.
        random: u64,
    },
    /// The secondary accepted: its answer and activemap (for a regular sync).
    HandshakeReply {
        /// The connection.
        session: SessionId,
        /// Its `StateReply`.
        reply: StateReply,
        /// Its activemap, when `reply.mapsize > 0`.
        peer_map: Option<Vec<u8>>,
    },
    /// The connection attempt ended before a session; `split_brain` if the secondary
    /// refused for split-brain.
    HandshakeFailed {
        /// The connection.
        session: SessionId,
        /// Refused for split-brain.
        split_brain: bool,
    },
    /// The secondary has a memsync write in memory.
    Received {
        /// The connection.
        session: SessionId,
        /// The request.
        seq: u64,
    },
    /// The secondary's final answer (READ data kept by the shell as [`DataRef::Peer`]).
    Reply {
        /// The connection.
        session: SessionId,
        /// The request.
        seq: u64,
        /// `Err(errno)` if it failed there.
        result: Result<(), u32>,
    },
    /// The connection is gone.
    Lost {
        /// The connection.
        session: SessionId,
    },
    /// The fence program of [`Action::Fence`] `gen` ended: `ok` if it exited 0.
    Fenced {
        /// Which run.
        gen: u64,
        /// The peer is fenced.
        ok: bool,
    },
    /// Time passed (deadlines: durability flush, lazy bitmap, watchdog, sync pacing,
    /// fence timeout).
    Tick,
    /// The role ends: finish what is in flight, then [`Action::Stopped`].
    Stop,
}

/// An output of the machine, to be carried out in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Write the bitmap image (then flush it with `metaflush`), report [`Event::MapWritten`].
    WriteMap {
        /// Generation to report.
        gen: u64,
        /// The bitmap bytes.
        image: Vec<u8>,
    },
    /// Write (and flush) the metadata header, report [`Event::MetaWritten`].
    WriteMeta {
        /// Generation to report.
        gen: u64,
        /// The header.
        meta: Metadata,
    },
    /// A local disk operation; report [`Event::Local`].
    Local {
        /// Its number.
        io: IoId,
        /// What to do.
        op: LocalOp,
    },
    /// Send a request to the secondary on `session` (WRITE data from `data`).
    Send {
        /// The connection.
        session: SessionId,
        /// Its sequence number.
        seq: u64,
        /// The request.
        req: PeerRequest,
        /// Where the WRITE payload is.
        data: Option<DataRef>,
    },
    /// Answer a client request (READ data from the reference). The shell may forget the
    /// request's payload after this.
    Reply {
        /// The request.
        req: ReqId,
        /// `Ok(data)` or `Err(errno)`.
        result: Result<Option<DataRef>, u32>,
    },
    /// Send `State` (the proof is the shell's) on a connection being set up.
    HandshakeState {
        /// The connection.
        session: SessionId,
        /// The primary's state.
        state: State,
    },
    /// The session may carry requests now (the merged bitmap and counters are on disk).
    SessionUp {
        /// The connection.
        session: SessionId,
        /// Which side has the good data.
        syncsrc: SyncSource,
    },
    /// Close the connection (the machine considers it lost already).
    DropPeer {
        /// The connection.
        session: SessionId,
        /// For the log.
        why: String,
    },
    /// Run `<fence> fence <resource>`, report [`Event::Fenced`]; kill it after
    /// `fence_timeout` (the machine counts it failed then).
    Fence {
        /// The run's number.
        gen: u64,
    },
    /// Run `<fence> unfence <resource>` (after the fence programs the machine started
    /// have ended); nothing waits for it.
    Unfence,
    /// Nothing will use these bytes any more: the shell may free them.
    Release(DataRef),
    /// Something an operator or a hook should hear about.
    Notify(Notice),
    /// A fatal error of this resource (a bitmap or metadata write failed): the shell marks
    /// it failed. The machine keeps answering (with errors where it must).
    Failed(String),
    /// Stopping is complete: nothing in flight, bitmap and counters on disk, local disk
    /// flushed.
    Stopped,
}

/// Events worth a log line or a hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// `localcnt` was raised (persisted before the answers that needed it).
    LocalcntRaised {
        /// The new value.
        to: u64,
    },
    /// A session started: counters of both and what is owed.
    Connected {
        /// Which side has the good data.
        syncsrc: SyncSource,
        /// The line's detail, e.g. "primary 1/0 secondary 0/0 (full sync)".
        detail: String,
        /// Bytes owed at the start.
        owed: u64,
    },
    /// The session ended.
    Disconnected,
    /// This copy is stale until the sync from the secondary completes.
    Stale,
    /// The local copy is up to date again.
    UpToDate,
    /// A sync pass started.
    SyncStarted {
        /// Bytes to copy.
        bytes: u64,
        /// The source.
        source: SyncSource,
    },
    /// Nothing was owed when the session started.
    InSync,
    /// A sync pass copied everything owed (and the secondary confirmed it).
    SyncComplete {
        /// Bytes copied.
        bytes: u64,
        /// How long it took.
        ms: u64,
    },
    /// The sync was interrupted (the link dropped).
    SyncInterrupted {
        /// Bytes copied so far.
        bytes: u64,
        /// How long it ran.
        ms: u64,
    },
    /// A sync chunk failed on a disk and is retried (or its extent left owed).
    SyncChunkFailed {
        /// Offset.
        offset: u64,
        /// What failed.
        what: String,
    },
    /// The secondary refused for split-brain (reported once per condition).
    SplitBrain,
    /// A request failed on the secondary; the link is dropped.
    PeerFailed {
        /// Offset (0 for flushes).
        offset: u64,
        /// Length (0 for flushes).
        len: u64,
        /// The errno.
        errno: u32,
    },
    /// A local write failed (answered with the error, extent owed).
    LocalFailed {
        /// Offset.
        offset: u64,
        /// Length.
        len: u64,
        /// The errno.
        errno: u32,
    },
    /// A write was refused: stale copy, no secondary.
    RefusedStale,
    /// The provider cannot discard: TRIM becomes a no-op.
    NoDiscard,
    /// No secondary: writes wait while the fence program runs.
    Fencing,
    /// The fence program succeeded: writes go on without the secondary.
    Fenced,
    /// The fence program failed (or timed out): writes fail until the secondary is back.
    FenceFailed {
        /// It did not end within `fence_timeout`.
        timed_out: bool,
    },
}

/// What `hastctl status` shows of a primary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// A session is up.
    pub connected: bool,
    /// Bytes in dirty extents.
    pub dirty: u64,
    /// Bytes owed to the peer.
    pub owed: u64,
    /// (resuid, localcnt, remotecnt) as wanted (persisted before anything relies on them).
    pub counters: (u64, u64, u64),
    /// keepdirty.
    pub keepdirty: u32,
    /// The copy is a sync target.
    pub stale: bool,
    /// The last connection attempt ended in split-brain.
    pub split_brain: bool,
    /// A sync pass runs: (bytes copied, ms since it started).
    pub sync: Option<(u64, u64)>,
    /// Local I/Os in flight.
    pub local_queue: u64,
    /// Requests waiting to be sent, and waiting for the secondary's final answer.
    pub peer_queues: (u64, u64),
    /// A local flush failed: this node serves nothing (see `local_flush_failed`).
    pub disk_failed: bool,
    /// Fencing.
    pub fence: super::FenceState,
}
