//! The connect-time decision: are the two nodes in sync, which way must data flow, or have
//! they diverged (hastd's `init_remote` in `secondary.c`, and the counter rules of
//! `primary.c`).
//!
//! Each node keeps `resuid` (a random id shared by a pair of providers) and two generation
//! counters. `localcnt` counts "I wrote while my peer was not watching" epochs; `remotecnt`
//! is what I last knew of my peer's `localcnt`. After a completed sync the primary stores the
//! mirror of the secondary's pair, so a healthy pair reads A = (x, y), B = (y, x). When the
//! primary acknowledges a write the secondary has not confirmed (the link is down, the
//! secondary failed it, the primary has not connected since it started, or an early
//! acknowledged write turned out to be lost there), it raises `localcnt` past the
//! secondary's memory ([`PeerMemory::raise`]) and persists it first, so on reconnect the
//! secondary sees `P.localcnt > S.remotecnt`: "the primary wrote without me". If the secondary's own
//! `localcnt` also moved past what the primary remembers (`S.localcnt > P.remotecnt`), both
//! wrote independently: split-brain. The comparison only ever pits *my local* against *your
//! memory of my local*, which is why exact values do not matter.
//!
//! # The table ([`decide`], evaluated for the secondary; first match wins)
//!
//! | # | condition | decision |
//! |---|---|---|
//! | 0 | primary resuid is 0 | [`Decision::ResuidMismatch`] (protocol violation; ours) |
//! | 1 | secondary resuid 0, `S.l == 0` | [`Decision::Fresh`]: adopt resuid; full sync from primary unless the primary sent `virgin` |
//! | 1b | secondary resuid 0, `S.l > 0` | ours (FreeBSD asserts): full sync from the secondary if the primary is virgin and never wrote, else [`Decision::SplitBrain`] |
//! | 2 | resuids differ | [`Decision::ResuidMismatch`] |
//! | 3 | `S.l > P.r` and `S.r == P.l` | primary out of date: [`Decision::SyncFrom`] secondary (regular sync) |
//! | 4 | `S.l == P.r` and `S.r == P.l` | [`Decision::InSync`]: regular sync of the merged maps "just in case" |
//! | 5 | `S.l == P.r` and `S.r < P.l` | secondary out of date: [`Decision::SyncFrom`] primary (regular sync) |
//! | 6 | `S.l > P.r` and `P.l > S.r` | [`Decision::SplitBrain`] |
//! | 7 | anything else (`S.l < P.r` or `P.l < S.r`) | [`Decision::Inconsistent`]: full sync, from the secondary if `S.l > P.r`, else from the primary |
//!
//! "Regular sync" copies the extents dirty in the union of both nodes' activemaps; "full
//! sync" copies everything. [`apply_data_states`] then refuses any decision whose sync
//! source knows its own copy is inconsistent, and [`Decision::sync_target`] names the node
//! that must record, before the copy starts, that its data is incomplete until it ends. `docs/invariants.md` walks through the rows and scenarios.

use std::fmt;

/// One of the two nodes of a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The node in the primary role for this connection.
    Primary,
    /// The node in the secondary role for this connection.
    Secondary,
}

/// What the primary sends in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryState {
    /// The primary's resource id (never 0 once it connects; see [`primary_resuid`]).
    pub resuid: u64,
    /// The primary's `localcnt`.
    pub localcnt: u64,
    /// The primary's `remotecnt`.
    pub remotecnt: u64,
    /// The primary generated its resuid in this very handshake (it has never been paired).
    pub virgin: bool,
}

/// The secondary's own on-disk metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SecondaryState {
    /// The secondary's resource id; 0 if freshly created.
    pub resuid: u64,
    /// The secondary's `localcnt`.
    pub localcnt: u64,
    /// The secondary's `remotecnt`.
    pub remotecnt: u64,
}

/// How much data a decision asks to copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncKind {
    /// Nothing, or the connection is refused.
    None,
    /// The extents dirty in either node's activemap.
    Regular,
    /// Every extent (the activemap sent is all ones).
    Full,
}

/// The outcome of the connect-time comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Row 1: the secondary was never paired; it adopts the primary's resuid. Without
    /// `full_sync` nothing is copied (both are fresh).
    Fresh {
        /// Copy everything (false only when the primary is virgin too).
        full_sync: bool,
        /// Direction of the copy.
        source: Side,
        /// A virgin primary that wrote before this first connection: its owed extents
        /// are copied (a regular sync of its map), so the secondary is a sync target.
        primary_wrote: bool,
    },
    /// Row 2: the providers belong to different pairs. The connection is refused.
    ResuidMismatch {
        /// The primary's resuid.
        primary: u64,
        /// The secondary's resuid.
        secondary: u64,
    },
    /// Row 4: the counters agree; sync the merged maps just in case.
    InSync,
    /// Rows 3 and 5: one side is out of date; regular sync from `Side`.
    SyncFrom(Side),
    /// Row 6: both sides wrote independently. The connection is refused.
    SplitBrain,
    /// Row 7: counters that should be impossible; full sync from `source`.
    Inconsistent {
        /// Direction of the copy.
        source: Side,
    },
    /// Ours: the counters pick `source` as the sync source, but that node knows its own
    /// copy is inconsistent (an unfinished sync towards it, or a failed write). Copying
    /// from it would spread stale data; the connection is refused ([`apply_data_states`]).
    SourceInconsistent {
        /// The node the counters picked.
        source: Side,
    },
}

impl Side {
    /// The other node.
    pub fn other(self) -> Side {
        match self {
            Side::Primary => Side::Secondary,
            Side::Secondary => Side::Primary,
        }
    }
}

impl Decision {
    /// The sync source (`syncsrc`) to use, or `None` if the connection is refused.
    pub fn syncsrc(&self) -> Option<Side> {
        match *self {
            Decision::Fresh { source, .. } | Decision::Inconsistent { source } => Some(source),
            Decision::InSync => Some(Side::Primary),
            Decision::SyncFrom(side) => Some(side),
            Decision::ResuidMismatch { .. }
            | Decision::SplitBrain
            | Decision::SourceInconsistent { .. } => None,
        }
    }

    /// How much the sync must copy.
    pub fn sync_kind(&self) -> SyncKind {
        match *self {
            Decision::Fresh {
                full_sync: false, ..
            }
            | Decision::ResuidMismatch { .. }
            | Decision::SplitBrain
            | Decision::SourceInconsistent { .. } => SyncKind::None,
            Decision::Fresh {
                full_sync: true, ..
            }
            | Decision::Inconsistent { .. } => SyncKind::Full,
            Decision::InSync | Decision::SyncFrom(_) => SyncKind::Regular,
        }
    }

    /// The node whose copy a sync started by this decision overwrites: its data is
    /// inconsistent until the sync completes, so it records that on disk
    /// ([`crate::metadata::DataState::SYNC_TARGET`]) before the first byte can arrive.
    /// `InSync` targets nobody: its "just in case" copy only repairs writes that were in
    /// flight (never acknowledged) when the link or a node failed.
    pub fn sync_target(&self) -> Option<Side> {
        match *self {
            Decision::Fresh {
                full_sync: true,
                source,
                ..
            }
            | Decision::Fresh {
                primary_wrote: true,
                source,
                ..
            }
            | Decision::Inconsistent { source }
            | Decision::SyncFrom(source) => Some(source.other()),
            Decision::Fresh { .. }
            | Decision::InSync
            | Decision::ResuidMismatch { .. }
            | Decision::SplitBrain
            | Decision::SourceInconsistent { .. } => None,
        }
    }

    /// Whether the secondary must store the primary's resuid (and write its metadata)
    /// before replying.
    pub fn secondary_adopts_resuid(&self) -> bool {
        matches!(self, Decision::Fresh { .. })
    }

    /// Whether the secondary replies `virgin` (it was fresh).
    pub fn reply_virgin(&self) -> bool {
        matches!(self, Decision::Fresh { .. })
    }

    /// The `errmsg` the secondary replies with when it refuses the connection, exactly as
    /// FreeBSD words it (the primary recognises split-brain by this text).
    pub fn errmsg(&self) -> Option<String> {
        match *self {
            Decision::ResuidMismatch { .. }
            | Decision::SplitBrain
            | Decision::SourceInconsistent { .. } => Some(self.to_string()),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Decision::Fresh {
                full_sync, source, ..
            } => {
                let what = if full_sync { "full sync" } else { "no sync" };
                write!(f, "Fresh secondary: {what} from {source:?}.")
            }
            Decision::ResuidMismatch { primary, secondary } => write!(
                f,
                "Resource unique ID mismatch (primary={primary}, secondary={secondary})."
            ),
            Decision::InSync => f.write_str("Nodes are in sync."),
            Decision::SyncFrom(side) => write!(f, "Regular sync from {side:?}."),
            Decision::SplitBrain => f.write_str("Split-brain condition!"),
            Decision::Inconsistent { source } => {
                write!(f, "Inconsistent counters: full sync from {source:?}.")
            }
            Decision::SourceInconsistent { source } => write!(
                f,
                "The {} has the newer data by its counters, but its copy is inconsistent \
                 (an unfinished synchronization or a failed write): refusing to synchronize from it.",
                match source {
                    Side::Primary => "primary",
                    Side::Secondary => "secondary",
                }
            ),
        }
    }
}

/// The connect-time decision table (see the module doc for the rows).
pub fn decide(p: &PrimaryState, s: &SecondaryState) -> Decision {
    if p.resuid == 0 {
        return Decision::ResuidMismatch {
            primary: p.resuid,
            secondary: s.resuid,
        };
    }
    if s.resuid == 0 {
        if s.localcnt == 0 {
            return Decision::Fresh {
                full_sync: !p.virgin,
                source: Side::Primary,
                primary_wrote: p.localcnt > 0,
            };
        }
        // The secondary wrote as a never-paired primary. Its data is all there is if the
        // primary never wrote; otherwise both wrote and neither may silently win.
        if p.virgin && p.localcnt == 0 {
            return Decision::Fresh {
                full_sync: true,
                source: Side::Secondary,
                primary_wrote: false,
            };
        }
        return Decision::SplitBrain;
    }
    if s.resuid != p.resuid {
        return Decision::ResuidMismatch {
            primary: p.resuid,
            secondary: s.resuid,
        };
    }
    use std::cmp::Ordering::{Equal, Greater, Less};
    match (s.localcnt.cmp(&p.remotecnt), s.remotecnt.cmp(&p.localcnt)) {
        (Greater, Equal) => Decision::SyncFrom(Side::Secondary),
        (Equal, Equal) => Decision::InSync,
        (Equal, Less) => Decision::SyncFrom(Side::Primary),
        (Greater, Less) => Decision::SplitBrain,
        (Greater, Greater) => Decision::Inconsistent {
            source: Side::Secondary,
        },
        (Less, _) | (Equal, Greater) => Decision::Inconsistent {
            source: Side::Primary,
        },
    }
}

/// The counter decision checked against what each node knows of its own data: a node
/// whose copy is inconsistent ([`crate::metadata::DataState`]) is never the source of a
/// synchronisation. Neither node can make the other's copy whole then, so the connection
/// is refused with [`Decision::SourceInconsistent`] and the operator decides.
pub fn apply_data_states(
    decision: Decision,
    primary_consistent: bool,
    secondary_consistent: bool,
) -> Decision {
    let source_consistent = |side| match side {
        Side::Primary => primary_consistent,
        Side::Secondary => secondary_consistent,
    };
    match decision.syncsrc() {
        Some(source) if !source_consistent(source) => Decision::SourceInconsistent { source },
        _ => decision,
    }
}

/// The resuid a primary presents in the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResuidInit {
    /// The resuid to send (and to persist first if `virgin`).
    pub resuid: u64,
    /// It was generated now: persist it before sending, and send `virgin`.
    pub virgin: bool,
}

/// The primary's resuid for a handshake: its current one, or `random` (supplied by the
/// daemon) if it has none yet. `None` if one must be generated and `random` is 0, the value
/// reserved for "fresh": draw again.
pub fn primary_resuid(current: u64, random: u64) -> Option<ResuidInit> {
    match (current, random) {
        (0, 0) => None,
        (0, random) => Some(ResuidInit {
            resuid: random,
            virgin: true,
        }),
        (current, _) => Some(ResuidInit {
            resuid: current,
            virgin: false,
        }),
    }
}

/// What the primary knows of the secondary's `remotecnt`, i.e. of the secondary's memory of
/// the primary's `localcnt`. It decides whether `localcnt` must be raised before a write is
/// acknowledged without the secondary's confirmation ([`PeerMemory::raise`]).
///
/// It is *unknown* until the first handshake of this primary's run: a primary that has not
/// connected since it started cannot assume the secondary is current (the secondary may
/// have missed writes of an earlier run), so its first unconfirmed write raises the
/// counter. It is learnt at every handshake, and after a complete synchronisation it equals
/// the primary's `localcnt` (the primary took the mirror of the secondary's counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerMemory(Option<u64>);

impl PeerMemory {
    /// Not connected since start: nothing is known.
    pub const UNKNOWN: PeerMemory = PeerMemory(None);

    /// The secondary's `remotecnt` as read in a handshake or implied by a sync.
    pub fn learned(secondary_remotecnt: u64) -> PeerMemory {
        PeerMemory(Some(secondary_remotecnt))
    }

    /// The `localcnt` to persist *before* acknowledging a write the secondary has not
    /// confirmed (or as soon as an acknowledged write turns out to be missing there), or
    /// `None` when `localcnt` already exceeds what the secondary remembers. Raising past
    /// the secondary's memory is what makes a later divergence show as split-brain
    /// (hast-reference.md §7.1); later writes of the same epoch need no second raise.
    pub fn raise(self, localcnt: u64) -> Option<u64> {
        match self.0 {
            None => Some(localcnt.saturating_add(1)),
            Some(remembered) if localcnt <= remembered => Some(remembered.saturating_add(1)),
            Some(_) => None,
        }
    }

    /// The memory once the secondary *may* have recorded `localcnt` (a `SyncDone`
    /// carrying it was sent; whether it was applied is unknown until its answer): the
    /// larger of the two, so that the next unconfirmed write raises past it.
    pub fn may_remember(self, localcnt: u64) -> PeerMemory {
        PeerMemory(self.0.map(|r| r.max(localcnt)))
    }

    /// The memory after `localcnt` was raised from `old`: unchanged if it was known; if it
    /// was unknown, the raise assumed the secondary remembers at most `old`.
    pub fn after_raise(self, old: u64) -> PeerMemory {
        PeerMemory(Some(self.0.unwrap_or(old)))
    }
}

/// The primary's `localcnt` after the secondary replied `virgin`: a primary that has never
/// counted a write (0) moves to 1 and persists it, so an interrupted initial sync is still
/// seen as "secondary out of date". `None`: unchanged.
pub fn localcnt_after_virgin_reply(reply_virgin: bool, localcnt: u64) -> Option<u64> {
    (reply_virgin && localcnt == 0).then_some(1)
}

/// The counters at the end of a complete sync, `((primary localcnt, remotecnt),
/// (secondary localcnt, remotecnt))`, from the primary's `localcnt` that the sync covered
/// (sent in `SyncDone`) and the secondary's `localcnt`. The secondary records the first
/// with its consistency, before it confirms; the primary then records the second. No
/// `localcnt` ever goes down: if the primary crashes before its record, the secondary
/// already remembers the primary's counter, so promoting it and writing there is not
/// mistaken for a split-brain later (it was, while the primary lowered its own counter
/// to mirror the secondary instead).
pub fn counters_after_sync(
    primary_localcnt: u64,
    secondary_localcnt: u64,
) -> ((u64, u64), (u64, u64)) {
    (
        (primary_localcnt, secondary_localcnt),
        (secondary_localcnt, primary_localcnt),
    )
}

#[cfg(test)]
mod tests;
