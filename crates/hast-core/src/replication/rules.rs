//! The primary's per-request rules, as plain functions: when a request may be answered,
//! what its outcome on each node means for the activemap, the counters and the link. The
//! daemon gathers the facts (the replication mode, the local result, what the secondary
//! said) and carries out the [`Settlement`]; nothing here does I/O.
//!
//! # The rules (docs/invariants.md §4, "Replication")
//!
//! 1. **Ack point.** A write is answered once it is written locally and the secondary has
//!    reached the mode's stage: `async` nothing, `memsync` *received* (in its memory; it
//!    applies every write it acknowledged, whatever happens to the connection), `fullsync`
//!    *written*. FUA waits for the secondary's disk in every mode. A primary whose own
//!    copy is stale (the target of an unfinished sync from the secondary) waits for the
//!    secondary's disk for every write: it has no copy of its own to fall back on.
//! 2. **Owed.** A write whose data is not confirmed *durable* on the secondary stays dirty
//!    (sync-owed); "written" without a flush is *undurable* and waits for the next flush
//!    on the secondary, which makes it clean or owed.
//! 3. **Counters.** `localcnt` is raised (persisted) whenever the primary has promised
//!    the client something the secondary may not have: a write answered with success
//!    that ends owed and that the secondary never confirmed at the mode's stage (not
//!    sent, or lost before its `Received`/final reply) —
//!    before the answer when the answer comes after the outcome, as soon as the loss is
//!    known otherwise; a write or flush the secondary reports *failed* (its copy lost what
//!    it had confirmed); and a client FLUSH answered without the secondary's flush while
//!    acknowledged writes were not yet flushed there. This is what turns a later
//!    divergence into a detected split-brain instead of a silent loss. A write confirmed
//!    at its stage whose connection then drops is *not* counted: the secondary applies
//!    what it confirmed, and its durability is what the client's own FLUSH asks for
//!    (counting it would report split-brains where nothing diverged); neither is an
//!    `async` write in flight at the drop, the loss `async` accepts on a failover. A TRIM the
//!    secondary cannot do is exempt: any content is a valid result of a TRIM.
//! 4. **Failures on the secondary** (an error reply to a write or flush) drop the link:
//!    its disk lost data it may already have confirmed, so the primary reconnects and the
//!    handshake and sync repair it. Debt that appears while the link stays up (a local
//!    failure, a TRIM the secondary cannot do) wakes the sync at once.
//! 5. **Stale primary.** While the primary is a sync target, a write the secondary does not
//!    confirm fails with EIO instead of raising the counters (raising them would turn the
//!    unfinished sync into a split-brain), writes are refused outright without the
//!    secondary, and reads of extents not yet synchronised come from the secondary or fail
//!    with EIO — never stale bytes.

use crate::activemap::WriteOutcome;
use crate::config::ReplicationMode;
use crate::metadata::DataState;

/// Linux errno values the rules produce or recognise.
pub mod errno {
    /// I/O error.
    pub const EIO: u32 = 5;
    /// Operation not supported (a provider that cannot discard).
    pub const EOPNOTSUPP: u32 = 95;
    /// The role is ending: no new requests.
    pub const ESHUTDOWN: u32 = 108;
}

/// When the client may be answered (rule 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckPoint {
    /// After the local write (`async`).
    Local,
    /// After the local write and the secondary's `Received` (`memsync`).
    Received,
    /// After the local write and the secondary's final reply.
    Final,
}

/// How the primary handles one write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WritePlan {
    /// When to answer the client.
    pub ack: AckPoint,
    /// Ask the secondary to make the write durable before its final reply.
    pub peer_fua: bool,
}

/// The plan for a write in `mode`; `fua` is the client's flag, `stale` says the primary is
/// the target of an unfinished sync.
pub fn plan_write(mode: ReplicationMode, fua: bool, stale: bool) -> WritePlan {
    if fua || stale {
        return WritePlan {
            ack: AckPoint::Final,
            peer_fua: true,
        };
    }
    let ack = match mode {
        ReplicationMode::Async => AckPoint::Local,
        ReplicationMode::Memsync => AckPoint::Received,
        ReplicationMode::Fullsync => AckPoint::Final,
    };
    WritePlan {
        ack,
        peer_fua: false,
    }
}

/// Whether a write may start at all: a stale primary without its secondary has no good
/// copy to write into (rule 5). `Err` carries the errno for the client.
pub fn admit_write(stale: bool, connected: bool) -> Result<(), u32> {
    if stale && !connected {
        Err(errno::EIO)
    } else {
        Ok(())
    }
}

/// Where a read of a range is served from (rule 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadSource {
    /// The local copy is good for this range.
    Local,
    /// The local copy may be stale here; the secondary has the good data.
    Peer,
    /// The local copy may be stale here and the secondary is gone: EIO.
    Fail,
}

/// Where to read: `synced` says no extent of the range is owed.
pub fn read_source(stale: bool, synced: bool, connected: bool) -> ReadSource {
    match (stale && !synced, connected) {
        (false, _) => ReadSource::Local,
        (true, true) => ReadSource::Peer,
        (true, false) => ReadSource::Fail,
    }
}

/// Whether a node may take role primary over its copy (docs/invariants.md §5): a copy
/// known to be inconsistent would serve old data for acknowledged writes, so it is refused
/// unless the operator forces it. `Ok(true)`: forced over an inconsistent copy (the
/// caller records it as consistent and says so in the log).
pub fn may_promote(state: DataState, force: bool) -> Result<bool, DataState> {
    match (state.is_consistent(), force) {
        (true, _) => Ok(false),
        (false, true) => Ok(true),
        (false, false) => Err(state),
    }
}

/// What the secondary made of a request, as far as the primary learnt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerResult {
    /// Not sent: no link.
    NotSent,
    /// The link ended before the final reply.
    Lost,
    /// The secondary answered with this errno.
    Failed(u32),
    /// Written there; `durable` if it was flushed before the reply (FUA).
    Written {
        /// Flushed before the reply.
        durable: bool,
    },
}

/// What a modifying request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modify {
    /// WRITE or WRITE_ZEROES: data the client will read back.
    Data,
    /// TRIM: advisory, any content is a valid result.
    Trim,
}

/// The activemap's part of a settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapOutcome {
    /// Durable on both nodes: may become clean.
    Replicated,
    /// Written on both, not yet flushed on one or both: stays pending until a flush of
    /// both covers it.
    Undurable,
    /// Not on the secondary for sure: sync-owed.
    Owed,
}

impl MapOutcome {
    /// The activemap completion for a settled (not undurable) write.
    pub fn write_outcome(self) -> WriteOutcome {
        WriteOutcome::from_replicated(self == MapOutcome::Replicated)
    }
}

/// Everything the daemon must do once a write's outcome is known, in this order: the
/// counter raise (persisted), then the activemap, then the answer, then the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settlement {
    /// The answer for the client, unless it was answered already: `Err(errno)`.
    pub reply: Option<Result<(), u32>>,
    /// How the write's extents settle.
    pub map: MapOutcome,
    /// Raise `localcnt` past the secondary's memory (if not already), persisted before
    /// `reply` goes out.
    pub raise_localcnt: bool,
    /// End the session with the secondary (its disk failed).
    pub drop_peer: bool,
}

/// The facts of one finished modifying request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WriteFacts {
    /// WRITE/WRITE_ZEROES or TRIM.
    pub what: Modify,
    /// The local leg: `Err(errno)` if it failed.
    pub local: Result<(), u32>,
    /// The secondary's leg.
    pub peer: PeerResult,
    /// The primary is the target of an unfinished sync.
    pub stale: bool,
    /// The client was already answered (early ack: async, or memsync after `Received`).
    pub acked: bool,
    /// The secondary confirmed the write at the mode's stage: memsync's `Received`.
    pub received: bool,
    /// The mode answers before the secondary confirms anything (`async`): a write in
    /// flight when the link drops is the loss `async` accepts on a failover.
    pub async_ack: bool,
    /// The local leg ended with a flush (the client's FUA): the data is on this disk,
    /// not only in its page cache.
    pub local_durable: bool,
}

/// Rules 2–5 for one write (see the module doc).
pub fn settle_write(f: WriteFacts) -> Settlement {
    let trim_unsupported =
        f.what == Modify::Trim && f.peer == PeerResult::Failed(errno::EOPNOTSUPP);
    let map = match f.peer {
        // Clean only once durable on *both* disks: a local copy still in the page cache
        // is lost by a power failure or a failed flush, and then only the bitmap can
        // say which extents differ.
        PeerResult::Written { durable: true } if f.local.is_ok() && f.local_durable => {
            MapOutcome::Replicated
        }
        PeerResult::Written { .. } if f.local.is_ok() => MapOutcome::Undurable,
        _ => MapOutcome::Owed,
    };
    let drop_peer = matches!(f.peer, PeerResult::Failed(_)) && !trim_unsupported;
    let answer = match f.local {
        Err(e) => Err(e),
        Ok(()) if map == MapOutcome::Owed && f.stale && !trim_unsupported => Err(errno::EIO),
        Ok(()) => Ok(()),
    };
    let succeeded = f.acked || answer.is_ok();
    // Confirmed in memory there, then the link dropped: it applies what it confirmed.
    // (`async` in flight at a drop: what the mode accepts to lose on a failover.)
    let confirmed_then_lost = (f.received || f.async_ack) && f.peer == PeerResult::Lost;
    Settlement {
        reply: (!f.acked).then_some(answer),
        map,
        // A stale primary never acknowledges early, so `acked` there is only defensive.
        raise_localcnt: succeeded
            && map == MapOutcome::Owed
            && !trim_unsupported
            && !confirmed_then_lost
            && (!f.stale || f.acked),
        drop_peer,
    }
}

/// What happened to a flush on the secondary (a client FLUSH, or the durability flush
/// that settles undurable writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerFlush {
    /// No link: nothing was sent.
    NotSent,
    /// The link ended before the reply.
    Lost,
    /// The secondary's fdatasync failed with this errno.
    Failed(u32),
    /// Durable there.
    Done,
}

/// What the daemon does after a flush on the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlushSettlement {
    /// The answer to a client FLUSH: `Err(errno)` for a failure.
    pub reply: Result<(), u32>,
    /// How the undurable writes the flush covered settle: `Replicated` (durable on both),
    /// `Owed` (not durable on the secondary), or `Undurable` again when the local flush
    /// failed (this copy's durability is unknown: they stay pending, neither clean nor a
    /// debt this node could pay from its own copy).
    pub covered: MapOutcome,
    /// Raise `localcnt` (persisted) before the answer: acknowledged writes it covered may
    /// be missing on the secondary.
    pub raise_localcnt: bool,
    /// End the session (the secondary's disk failed).
    pub drop_peer: bool,
}

/// A flush covering `covered` undurable writes (acknowledged already) ended with `peer`
/// on the secondary and `local` on this node. `client`: a client FLUSH (answered) rather
/// than the background durability flush; `unflushed`: writes were acknowledged that no
/// flush on the secondary has covered yet. Both the client's FLUSH and the batched
/// durability flush flush both nodes: a write becomes clean only when durable on *both*,
/// so that neither node can lose, in a power failure, a write the other has and whose
/// extent no bitmap marks any more.
pub fn settle_flush(
    local: Result<(), u32>,
    peer: PeerFlush,
    covered: usize,
    stale: bool,
    client: bool,
    unflushed: bool,
) -> FlushSettlement {
    let durable = peer == PeerFlush::Done;
    let reply = match local {
        Err(e) => Err(e),
        // A stale primary has no durable copy of its own to offer instead.
        Ok(()) if stale && !durable && peer != PeerFlush::NotSent => Err(errno::EIO),
        Ok(()) => Ok(()),
    };
    FlushSettlement {
        reply,
        covered: match (local, durable) {
            (Err(_), _) => MapOutcome::Undurable,
            (Ok(()), true) => MapOutcome::Replicated,
            (Ok(()), false) => MapOutcome::Owed,
        },
        // Its copy lost what it had confirmed; or the client is promised durability the
        // secondary did not confirm.
        raise_localcnt: !durable
            && !stale
            && ((matches!(peer, PeerFlush::Failed(_)) && covered > 0)
                || (client && reply.is_ok() && unflushed)),
        drop_peer: matches!(peer, PeerFlush::Failed(_)),
    }
}

#[cfg(test)]
#[path = "rules_tests.rs"]
mod tests;
