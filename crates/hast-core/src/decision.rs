//! The connect-time decision: are the two nodes in sync, which way must data flow, or have
//! they diverged (hastd's `init_remote` in `secondary.c`, and the counter rules of
//! `primary.c`).
//!
//! Each node keeps `resuid` (a random id shared by a pair of providers) and two generation
//! counters. `localcnt` counts "I wrote while my peer was not watching" epochs; `remotecnt`
//! is what I last knew of my peer's `localcnt`. After a completed sync the primary stores the
//! mirror of the secondary's pair, so a healthy pair reads A = (x, y), B = (y, x). When the
//! link is down, the primary bumps `localcnt` before acknowledging the first write of the
//! outage ([`must_bump_localcnt`]), and persists it, so on reconnect the secondary sees
//! `P.localcnt > S.remotecnt`: "the primary wrote without me". If the secondary's own
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
//! sync" copies everything. `docs/invariants.md` walks through the rows and scenarios.

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
}

impl Decision {
    /// The sync source (`syncsrc`) to use, or `None` if the connection is refused.
    pub fn syncsrc(&self) -> Option<Side> {
        match *self {
            Decision::Fresh { source, .. } | Decision::Inconsistent { source } => Some(source),
            Decision::InSync => Some(Side::Primary),
            Decision::SyncFrom(side) => Some(side),
            Decision::ResuidMismatch { .. } | Decision::SplitBrain => None,
        }
    }

    /// How much the sync must copy.
    pub fn sync_kind(&self) -> SyncKind {
        match *self {
            Decision::Fresh {
                full_sync: false, ..
            }
            | Decision::ResuidMismatch { .. }
            | Decision::SplitBrain => SyncKind::None,
            Decision::Fresh {
                full_sync: true, ..
            }
            | Decision::Inconsistent { .. } => SyncKind::Full,
            Decision::InSync | Decision::SyncFrom(_) => SyncKind::Regular,
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
            Decision::ResuidMismatch { .. } | Decision::SplitBrain => Some(self.to_string()),
            _ => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Decision::Fresh { full_sync, source } => {
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
            };
        }
        // The secondary wrote as a never-paired primary. Its data is all there is if the
        // primary never wrote; otherwise both wrote and neither may silently win.
        if p.virgin && p.localcnt == 0 {
            return Decision::Fresh {
                full_sync: true,
                source: Side::Secondary,
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

/// `localcnt` after a user write on the primary, in memory: the first write to a
/// never-connected provider (resuid 0, localcnt 0) sets it to 1.
pub fn localcnt_after_first_write(resuid: u64, localcnt: u64) -> u64 {
    if resuid == 0 && localcnt == 0 {
        1
    } else {
        localcnt
    }
}

/// Whether the primary must increment `localcnt`, and persist it, before acknowledging a
/// write: the peer is not connected and this is the first write since the counters were
/// last equal (`secondary_remotecnt` is the secondary's `remotecnt` learnt at the last
/// handshake, 0 if none). Later writes of the same outage find them different.
pub fn must_bump_localcnt(connected: bool, localcnt: u64, secondary_remotecnt: u64) -> bool {
    !connected && localcnt == secondary_remotecnt
}

/// The primary's `localcnt` after the secondary replied `virgin`: a primary that has never
/// counted a write (0) moves to 1 and persists it, so an interrupted initial sync is still
/// seen as "secondary out of date". `None`: unchanged.
pub fn localcnt_after_virgin_reply(reply_virgin: bool, localcnt: u64) -> Option<u64> {
    (reply_virgin && localcnt == 0).then_some(1)
}

/// The primary's `(localcnt, remotecnt)` at the end of a successful sync: the mirror of the
/// secondary's pair, so the next handshake finds them in sync.
pub fn counters_after_sync(secondary_localcnt: u64, secondary_remotecnt: u64) -> (u64, u64) {
    (secondary_remotecnt, secondary_localcnt)
}

#[cfg(test)]
mod tests;
