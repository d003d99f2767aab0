//! Replication as plain state machines: the primary's and the secondary's rules with no
//! I/O, no clock (time is an input) and no tokio. Each machine takes *events* (a client
//! request, a local I/O finished, a frame from the peer, a timer tick, a role change) and
//! answers with *actions* (write the bitmap, write locally, send to the peer, answer the
//! client, persist the counters, drop the peer) that the daemon carries out and reports
//! back as further events. The same machines run in the deterministic simulator
//! (`crates/hast-core/tests/sim`), which checks them over many thousands of seeded fault
//! schedules.
//!
//! | module | job |
//! |---|---|
//! | [`rules`] | per-request rules: ack point, owed, counter raise, link, stale primary |
//! | [`request`] | the typed peer request, validated once; every frame header built in one place |
//! | [`meta`] | ordered metadata writes with generations |
//! | [`primary`] | the primary's machine: writes, reads, flushes, durability, sync, link |
//! | [`secondary`] | the secondary's machine: in-order apply, failures, `SyncDone` |
//! | [`handshake`] | both sides of the connect-time handshake, with the decision table |
//!
//! # Conventions shared by both machines
//!
//! - Identifiers are assigned by whoever creates the thing: [`ReqId`] by the shell (one per
//!   client request), [`IoId`] by the machine (one per local I/O), sequence numbers by the
//!   primary machine (unique per session), [`SessionId`] by the shell (one per connection).
//! - Data never passes through a machine. Actions name it with a [`DataRef`]: the shell
//!   keeps client payloads, local read buffers and peer read replies under those names.
//! - Actions are carried out in the order given. A machine never waits: it records what it
//!   waits for and continues when the matching event arrives.

pub mod handshake;
pub mod meta;
pub mod primary;
pub mod request;
pub mod rules;
pub mod secondary;

pub use request::{PeerRequest, RequestError};
pub use rules::{
    admit_write, errno, may_promote, plan_write, read_source, settle_flush, settle_write, AckPoint,
    FlushSettlement, MapOutcome, Modify, PeerFlush, PeerResult, ReadSource, Settlement, WriteFacts,
    WritePlan,
};

/// A client request, numbered by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReqId(pub u64);

/// A local I/O operation, numbered by the machine that asks for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IoId(pub u64);

/// One connection between the nodes, numbered by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

/// Where the bytes of an action are, in the shell's keeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DataRef {
    /// A client WRITE's payload.
    Client(ReqId),
    /// What a local READ returned.
    Local(IoId),
    /// What the peer's reply to request `seq` of `session` carried.
    Peer(SessionId, u64),
}

/// A local disk operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LocalOp {
    /// Write `len` bytes of `data` at `offset`; `fua`: fdatasync before completing.
    Write {
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// The bytes.
        data: DataRef,
        /// Durable before completing.
        fua: bool,
    },
    /// Discard.
    Trim {
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// Durable before completing.
        fua: bool,
    },
    /// Make the range read as zeroes.
    Zeroes {
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u64,
        /// The range may be deallocated.
        may_trim: bool,
        /// Durable before completing.
        fua: bool,
    },
    /// Read into a buffer the shell keeps as [`DataRef::Local`] of this I/O.
    Read {
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// fdatasync: everything completed before is durable.
    Flush,
}

/// What a client write request does to the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOp {
    /// WRITE with the request's payload.
    Data,
    /// TRIM.
    Trim,
    /// WRITE_ZEROES.
    Zeroes {
        /// The range may be deallocated.
        may_trim: bool,
    },
}

impl WriteOp {
    /// The rules' view of it.
    pub fn modify(self) -> Modify {
        match self {
            WriteOp::Trim => Modify::Trim,
            WriteOp::Data | WriteOp::Zeroes { .. } => Modify::Data,
        }
    }
}

/// A rule switched off on purpose, to show that the simulator notices. Only builds with
/// the `mutations` feature can switch one on (`Primary::set_mutation`); hastd cannot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mutation {
    /// Never raise `localcnt` for an acknowledged write that ends owed.
    NoCounterRaise,
    /// Let a write's extents become clean once the secondary has it in memory or in its
    /// page cache, without waiting for its disk.
    EarlyClean,
    /// Let data go out before the bitmap that covers it is on disk.
    SkipMapWrite,
    /// The secondary forgets the requests still queued when its connection drops.
    DropSecondaryQueue,
    /// Serve reads from the local copy even where it is stale.
    StaleReads,
    /// The secondary answers a flush that succeeded after an earlier failure with success.
    FlushAfterFailureOk,
    /// The secondary adopts a full sync's resuid without marking every extent first.
    NoFullSyncBitmap,
    /// The primary sends `SyncDone` while writes from before the session are unsettled.
    EarlySyncDone,
    /// The primary acknowledges writes during a handshake as if none were under way
    /// (the secondary decides on counters that no longer hold).
    NoHandshakeGuard,
    /// A synced extent's range lock is released before the extent is marked synced.
    SyncUnlocksEarly,
    /// The primary trusts its disk again after a failed flush.
    TrustDiskAfterFailedFlush,
    /// A failed local read is served from the secondary even where it is behind.
    PeerReadsOwedExtents,
    /// The primary forgets that a `SyncDone` in flight may be recorded there.
    ForgetSyncDoneInFlight,
    /// Syncing from the secondary, an extent is paid without flushing the source.
    SyncSourceUnflushed,
    /// A primary whose final flush failed ends its role before the `WRITE_FAILED` mark
    /// is on disk (the next role reads a header that vouches for lost writes).
    StopBeforeRecorded,
    /// The secondary answers READs with what its disk returns after a failed flush (or
    /// while one that fails is in flight).
    SecondaryReadsAfterFailure,
    /// With `fence`, writes pass without the secondary whatever the fence program says.
    NoFenceGate,
    /// Writes that waited for the fence are acknowledged when a session comes up even
    /// if it made this copy a sync target (whose sync overwrites them).
    FenceWaitersOnStaleSession,
    /// A handshake raises `localcnt` for writes that wait for the fence's verdict, as if
    /// they could be acknowledged without the secondary meanwhile.
    RaiseForFenceWaiters,
}

impl Mutation {
    /// Every mutation, for the simulator's check that each one is caught.
    pub const ALL: [Mutation; 19] = [
        Mutation::NoCounterRaise,
        Mutation::EarlyClean,
        Mutation::SkipMapWrite,
        Mutation::DropSecondaryQueue,
        Mutation::StaleReads,
        Mutation::FlushAfterFailureOk,
        Mutation::NoFullSyncBitmap,
        Mutation::EarlySyncDone,
        Mutation::NoHandshakeGuard,
        Mutation::SyncUnlocksEarly,
        Mutation::TrustDiskAfterFailedFlush,
        Mutation::PeerReadsOwedExtents,
        Mutation::ForgetSyncDoneInFlight,
        Mutation::SyncSourceUnflushed,
        Mutation::StopBeforeRecorded,
        Mutation::SecondaryReadsAfterFailure,
        Mutation::NoFenceGate,
        Mutation::FenceWaitersOnStaleSession,
        Mutation::RaiseForFenceWaiters,
    ];
}
