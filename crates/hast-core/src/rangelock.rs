//! Exclusion between sync chunks and application writes (hastd's `rangelock.c` and the
//! `range_regular`/`range_sync` lists in `primary.c`).
//!
//! A sync chunk is read from the source and then written to the target. An application
//! write landing on the same bytes between the two would be overwritten on the target with
//! the stale data the chunk read, and nothing would ever repair it (the write itself
//! completed, so its extent may be clean). Hence:
//!
//! * a [`LockKind::Sync`] range may not overlap any held [`LockKind::Regular`] range, and
//!   vice versa;
//! * regular ranges do not exclude each other (ordering overlapping application writes is
//!   the file system's business), nor do sync ranges (there is one sync chunk at a time);
//! * reads, trims and flushes take no lock.
//!
//! Ranges are half-open `[offset, offset + len)`; a zero-length range overlaps nothing.
//! This is bookkeeping only: [`RangeLocks::try_lock`] never blocks. The daemon keeps the
//! set under a mutex, and on `None` waits for a notification sent after every
//! [`RangeLocks::unlock`], then retries.
//!
//! # Fairness (a deviation from FreeBSD)
//!
//! In FreeBSD a steady stream of writes to one region can hold the sync loop off forever.
//! Here a failed sync `try_lock` leaves a *sync intent* on its range: new regular locks
//! overlapping it are refused until the sync chunk gets its lock (or the intents are
//! cancelled with [`RangeLocks::cancel_sync_wait`], e.g. when the connection drops). Every
//! waiting chunk keeps its own intent: the sync copies several extents at once, and with a
//! single intent slot the chunks would overwrite each other's reservation, leaving all but
//! the last open to starvation. The
//! writes already holding locks are unaffected and finish normally, so the wait is bounded.
//! This cannot deadlock as long as the sync loop takes its request slot *before* its range
//! lock: regular writes refused by the intent hold slots, but the sync chunk already has
//! its own and waits only for writes that are already under way.

use std::collections::{BTreeMap, BTreeSet};

/// Which list a range belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LockKind {
    /// An application write.
    Regular,
    /// A synchronisation chunk.
    Sync,
}

impl LockKind {
    fn other(self) -> LockKind {
        match self {
            LockKind::Regular => LockKind::Sync,
            LockKind::Sync => LockKind::Regular,
        }
    }
}

/// A held lock, returned by [`RangeLocks::try_lock`] and given back to
/// [`RangeLocks::unlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LockId(u64);

/// One kind's held ranges, ordered by start so overlap queries only scan nearby entries.
#[derive(Debug, Default)]
struct RangeSet {
    /// `(start, id) -> end`.
    by_start: BTreeMap<(u64, u64), u64>,
    /// The longest range ever held: no range starting before `start - max_len` can reach
    /// `start`. Never shrinks, which only widens the scan.
    max_len: u64,
}

impl RangeSet {
    fn overlaps(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return false;
        }
        let lowest = start.saturating_sub(self.max_len);
        self.by_start
            .range((lowest, 0)..(end, 0))
            .any(|(&(held_start, _), &held_end)| held_start < held_end && held_end > start)
    }

    fn insert(&mut self, start: u64, end: u64, id: u64) {
        self.max_len = self.max_len.max(end - start);
        self.by_start.insert((start, id), end);
    }

    fn remove(&mut self, start: u64, id: u64) -> bool {
        self.by_start.remove(&(start, id)).is_some()
    }

    fn len(&self) -> usize {
        self.by_start.len()
    }
}

/// The set of held range locks of one resource.
#[derive(Debug, Default)]
pub struct RangeLocks {
    next_id: u64,
    regular: RangeSet,
    sync: RangeSet,
    /// `id -> (kind, start)`, to find a lock from its id.
    held: BTreeMap<u64, (LockKind, u64)>,
    /// Ranges of sync chunks waiting for their lock; see "Fairness". Chunks never
    /// overlap each other, so a range identifies its chunk.
    sync_intents: BTreeSet<(u64, u64)>,
}

fn span(offset: u64, len: u64) -> (u64, u64) {
    (offset, offset.saturating_add(len))
}

impl RangeLocks {
    /// An empty set.
    pub fn new() -> RangeLocks {
        RangeLocks::default()
    }

    fn set(&self, kind: LockKind) -> &RangeSet {
        match kind {
            LockKind::Regular => &self.regular,
            LockKind::Sync => &self.sync,
        }
    }

    fn set_mut(&mut self, kind: LockKind) -> &mut RangeSet {
        match kind {
            LockKind::Regular => &mut self.regular,
            LockKind::Sync => &mut self.sync,
        }
    }

    /// Whether a `kind` lock on `[offset, offset + len)` would be refused now: it overlaps
    /// a held lock of the other kind, or (for a regular lock) a waiting sync chunk.
    pub fn conflicts(&self, kind: LockKind, offset: u64, len: u64) -> bool {
        let (start, end) = span(offset, len);
        if self.set(kind.other()).overlaps(start, end) {
            return true;
        }
        kind == LockKind::Regular
            && start < end
            && self
                .sync_intents
                .range(..(end, 0))
                .any(|&(s, e)| s < end && start < e)
    }

    /// Takes a `kind` lock on `[offset, offset + len)` unless it [conflicts]; `None` means
    /// wait for an unlock and retry. A refused sync lock records its intent (see the
    /// module doc); a granted one withdraws the intent it had recorded.
    ///
    /// [conflicts]: RangeLocks::conflicts
    pub fn try_lock(&mut self, kind: LockKind, offset: u64, len: u64) -> Option<LockId> {
        let (start, end) = span(offset, len);
        if self.conflicts(kind, offset, len) {
            if kind == LockKind::Sync {
                self.sync_intents.insert((start, end));
            }
            return None;
        }
        if kind == LockKind::Sync {
            self.sync_intents.remove(&(start, end));
        }
        let id = self.next_id;
        self.next_id += 1;
        self.set_mut(kind).insert(start, end, id);
        self.held.insert(id, (kind, start));
        Some(LockId(id))
    }

    /// Takes a regular lock that also excludes overlapping regular locks: a replicated
    /// write waits for an overlapping write still in flight, so both nodes apply
    /// overlapping writes in the same order (the local disk and the peer otherwise each
    /// pick their own). Non-overlapping writes still proceed in parallel.
    pub fn try_lock_ordered(&mut self, offset: u64, len: u64) -> Option<LockId> {
        let (start, end) = span(offset, len);
        if self.regular.overlaps(start, end) {
            return None;
        }
        self.try_lock(LockKind::Regular, offset, len)
    }

    /// Releases a lock. Returns false if `id` was not held (already released).
    pub fn unlock(&mut self, id: LockId) -> bool {
        match self.held.remove(&id.0) {
            Some((kind, start)) => self.set_mut(kind).remove(start, id.0),
            None => false,
        }
    }

    /// Drops the intents of sync chunks that will not retry (sync stopped).
    pub fn cancel_sync_wait(&mut self) {
        self.sync_intents.clear();
    }

    /// The ranges `(offset, end)` waiting sync chunks have reserved.
    pub fn sync_intents(&self) -> Vec<(u64, u64)> {
        self.sync_intents.iter().copied().collect()
    }

    /// Number of held locks of `kind`.
    pub fn held(&self, kind: LockKind) -> usize {
        self.set(kind).len()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn ordered_writes_exclude_overlapping_writes_only() {
        let mut locks = RangeLocks::new();
        let a = locks.try_lock_ordered(0, 100).unwrap();
        assert!(locks.try_lock_ordered(50, 100).is_none());
        let b = locks.try_lock_ordered(100, 50).unwrap();
        assert!(locks.try_lock(LockKind::Sync, 120, 10).is_none());
        assert!(locks.unlock(a));
        assert!(locks.try_lock_ordered(50, 40).is_some());
        assert!(locks.unlock(b));
    }

    #[test]
    fn regular_writes_share_sync_excludes() {
        let mut locks = RangeLocks::new();
        let a = locks.try_lock(LockKind::Regular, 0, 100).unwrap();
        let b = locks.try_lock(LockKind::Regular, 50, 100).unwrap();
        assert!(locks.try_lock(LockKind::Sync, 99, 10).is_none());
        // Adjacent ranges do not overlap.
        let s = locks.try_lock(LockKind::Sync, 150, 10).unwrap();
        assert!(locks.try_lock(LockKind::Regular, 155, 1).is_none());
        assert!(locks.try_lock(LockKind::Regular, 160, 1).is_some());
        assert!(locks.unlock(a));
        assert!(!locks.unlock(a), "double unlock is reported");
        assert!(locks.unlock(b));
        assert!(locks.unlock(s));
        assert_eq!(locks.held(LockKind::Sync), 0);
    }

    #[test]
    fn zero_length_and_huge_ranges() {
        let mut locks = RangeLocks::new();
        // A held zero-length range excludes nothing (found by the property test).
        let empty = locks.try_lock(LockKind::Regular, 32, 0).unwrap();
        let s = locks.try_lock(LockKind::Sync, 20, 13).unwrap();
        assert!(locks.unlock(s) && locks.unlock(empty));
        let _ = locks.try_lock(LockKind::Sync, 0, u64::MAX).unwrap();
        assert!(locks.try_lock(LockKind::Regular, 10, 0).is_some());
        assert!(locks.try_lock(LockKind::Regular, u64::MAX - 1, 5).is_none());
    }

    #[test]
    fn waiting_sync_holds_off_new_writes() {
        let mut locks = RangeLocks::new();
        let w = locks.try_lock(LockKind::Regular, 0, 4096).unwrap();
        assert!(locks.try_lock(LockKind::Sync, 0, 1 << 20).is_none());
        assert_eq!(locks.sync_intents(), [(0, 1 << 20)]);
        // A new write inside the waiting chunk must wait; one outside need not.
        assert!(locks.try_lock(LockKind::Regular, 8192, 512).is_none());
        assert!(locks.try_lock(LockKind::Regular, 1 << 20, 512).is_some());
        assert!(locks.unlock(w));
        assert!(locks.try_lock(LockKind::Sync, 0, 1 << 20).is_some());
        assert_eq!(locks.sync_intents(), []);
        locks.cancel_sync_wait();
    }

    /// Several chunks wait at once (the sync copies a window of extents): each keeps its
    /// own reservation, so writes cannot starve any of them.
    #[test]
    fn every_waiting_chunk_keeps_its_intent() {
        let mut locks = RangeLocks::new();
        let a = locks.try_lock(LockKind::Regular, 0, 4096).unwrap();
        let b = locks.try_lock(LockKind::Regular, 4 << 20, 4096).unwrap();
        assert!(locks.try_lock(LockKind::Sync, 0, 1 << 20).is_none());
        assert!(locks.try_lock(LockKind::Sync, 4 << 20, 1 << 20).is_none());
        // A retry of the first chunk does not replace the second's reservation.
        assert!(locks.try_lock(LockKind::Sync, 0, 1 << 20).is_none());
        assert!(locks.try_lock(LockKind::Regular, 8192, 512).is_none());
        assert!(locks
            .try_lock(LockKind::Regular, (4 << 20) + 8192, 512)
            .is_none());
        assert!(locks.unlock(a));
        assert!(locks.try_lock(LockKind::Sync, 0, 1 << 20).is_some());
        // The second chunk still holds writes off its range.
        assert!(locks
            .try_lock(LockKind::Regular, (4 << 20) + 8192, 512)
            .is_none());
        assert!(locks.unlock(b));
        assert!(locks.try_lock(LockKind::Sync, 4 << 20, 1 << 20).is_some());
        assert_eq!(locks.sync_intents(), []);
    }

    #[test]
    fn cancelled_intent_frees_writes() {
        let mut locks = RangeLocks::new();
        let _w = locks.try_lock(LockKind::Regular, 0, 10).unwrap();
        assert!(locks.try_lock(LockKind::Sync, 0, 100).is_none());
        assert!(locks.try_lock(LockKind::Regular, 50, 10).is_none());
        locks.cancel_sync_wait();
        assert!(locks.try_lock(LockKind::Regular, 50, 10).is_some());
    }

    fn overlap(a: (u64, u64), b: (u64, u64)) -> bool {
        a.0 < a.1 && b.0 < b.1 && a.0 < b.1 && b.0 < a.1
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Against a brute-force list: every grant and refusal, and the exclusion invariant.
        #[test]
        fn matches_brute_force(
            steps in proptest::collection::vec(
                (any::<bool>(), any::<bool>(), 0u64..64, 0u64..16, any::<usize>()),
                1..100,
            )
        ) {
            let mut locks = RangeLocks::new();
            let mut held: Vec<(LockId, LockKind, (u64, u64))> = Vec::new();
            let mut intents: Vec<(u64, u64)> = Vec::new();
            for (lock, sync, off, len, pick) in steps {
                if !lock && !held.is_empty() {
                    let (id, ..) = held.swap_remove(pick % held.len());
                    prop_assert!(locks.unlock(id));
                    continue;
                }
                let kind = if sync { LockKind::Sync } else { LockKind::Regular };
                let range = (off, off + len);
                let expect_refused = held
                    .iter()
                    .any(|&(_, k, r)| k != kind && overlap(r, range))
                    || (kind == LockKind::Regular && intents.iter().any(|&i| overlap(i, range)));
                prop_assert_eq!(locks.conflicts(kind, off, len), expect_refused);
                match locks.try_lock(kind, off, len) {
                    Some(id) => {
                        prop_assert!(!expect_refused);
                        held.push((id, kind, range));
                        if sync {
                            intents.retain(|&i| i != range);
                        }
                    }
                    None => {
                        prop_assert!(expect_refused);
                        if sync && !intents.contains(&range) {
                            intents.push(range);
                        }
                    }
                }
                for (i, a) in held.iter().enumerate() {
                    for b in &held[i + 1..] {
                        prop_assert!(a.1 == b.1 || !overlap(a.2, b.2));
                    }
                }
            }
        }
    }
}
