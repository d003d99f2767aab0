//! Dirty-extent bookkeeping for the primary: which extents may differ between the two
//! nodes, what the on-disk bitmap must say, and when it must say it (hastd's `activemap.c`).
//!
//! The device is cut into fixed-size *extents*. An extent is **dirty** while a write to it
//! is in flight or while it is **sync-owed** (the peer is known or suspected to lack its
//! latest contents). The on-disk bitmap is what survives a crash: after a restart every
//! extent set there is resynchronised, so it must be a superset of everything that might
//! differ between the nodes. This module decides; the daemon reads and writes the bitmap.
//!
//! # The invariant
//!
//! *Before the data of a write leaves the node (local pwrite or send to the peer), the
//! on-disk bitmap has the bit of every extent the write touches.* [`ActiveMap::write_start`]
//! answers [`MapUpdate::Write`] when that is not yet true; the caller must then get the
//! bitmap to that generation on disk (and flushed, with `metaflush`) before issuing data.
//!
//! The image written is `pending writes ∪ sync-owed ∪ keepdirty LRU`. The LRU holds the
//! `keepdirty` most recently written extents: they stay set on disk after their writes
//! complete, so a hot region costs no bitmap write per write (at the price of resyncing up
//! to `keepdirty` extra extents after a crash). An extent falling off the LRU tail becomes
//! clear in the image; that only *shrinks* the set, so it never forces a synchronous write
//! of its own — it rides along with the write that caused the eviction (which needs one
//! anyway, since the new extent was not in the LRU). Clearing bits when writes complete or
//! sync finishes an extent is reported as [`MapUpdate::Lazy`]: write the image when
//! convenient, nothing waits for it.
//!
//! # Fixes relative to FreeBSD
//!
//! * A write completes with a [`WriteOutcome`]. Unless the peer positively acknowledged it
//!   ([`WriteOutcome::Replicated`]) the extents become sync-owed instead of clean: writes
//!   made while the peer was absent, in flight when the connection dropped, or failed on
//!   the secondary are resynchronised. FreeBSD forgets the latter two.
//! * Every completion is counted exactly once, success or not, so a write failing on both
//!   legs does not leave an extent counted dirty forever.
//! * Pending writes and sync debt are kept apart (a per-extent counter plus a bit) instead
//!   of FreeBSD's single counter charged with "requests per extent" units for the sync
//!   debt. The guarantee is the same: an extent is clean only when no write is pending and
//!   no sync is owed. Sync walks the extent in chunks of at most [`SYNC_CHUNK`] bytes
//!   ([`ActiveMap::sync_chunks`]) and reports the extent done once, with
//!   [`ActiveMap::extent_synced`].
//!
//! # Writing the bitmap: generations
//!
//! Every change of the desired on-disk image bumps [`ActiveMap::generation`]. The daemon
//! keeps the `ActiveMap` behind a mutex but writes the bitmap outside it, from whichever
//! task needs it. The protocol, all steps but the I/O under the mutex:
//!
//! 1. `write_start` returns `MapUpdate::Write { generation: g }`.
//! 2. Loop: if [`ActiveMap::written_generation`] `>= g`, the data may go out. Otherwise
//!    [`ActiveMap::begin_map_write`]: `Some(MapWrite)` hands you a snapshot of the image
//!    and its generation; `None` means another task is writing one — wait for it (a notify)
//!    and loop.
//! 3. With the snapshot: release the mutex, pwrite the image (+ flush), retake the mutex,
//!    [`ActiveMap::mark_written`] (or [`ActiveMap::abandon_map_write`] if the I/O failed),
//!    wake the waiters.
//!
//! Only one bitmap write is in flight at a time, by construction. That is what makes this
//! race-free: two overlapping pwrites of different images would leave either one on disk,
//! so a later snapshot could be recorded as written while an older image is what stuck.
//! Serialising costs nothing in practice: a write of generation `n` covers every request
//! for generations `<= n`, so requests arriving while a write is in flight are batched
//! into the next one.
//!
//! An extent's bit is known to be on disk when it became set at a generation not newer
//! than the last one written: it was set in the snapshot and nothing cleared it since
//! (clearing and re-setting gives it a newer generation). A failed or torn bitmap write
//! keeps the old written generation; every bit needed then is set in both the old and the
//! new image, so any mixture of the two still covers it.

use std::collections::BTreeMap;
use std::ops::Range;

mod bits;
#[cfg(test)]
mod concurrent_tests;
mod error;
mod mapwrite;
#[cfg(test)]
mod tests;

use bits::{Bitset, Lru};
pub use error::ActiveMapError;
pub use mapwrite::MapWrite;

/// The largest chunk the sync loop copies at once (FreeBSD's `MAXPHYS` on 64-bit systems).
pub const SYNC_CHUNK: u64 = 1 << 20;

/// What the caller must do about the on-disk bitmap after an operation.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MapUpdate {
    /// The on-disk bitmap already says what this operation needs.
    None,
    /// The on-disk bitmap must reach at least `generation` (see the module doc) before the
    /// data of this write goes out, or before the sync debt recorded here is relied upon.
    Write {
        /// The generation that must be on disk.
        generation: u64,
    },
    /// Bits were cleared: the image at `generation` should be written eventually, but no
    /// data waits for it.
    Lazy {
        /// The generation that would bring the disk up to date.
        generation: u64,
    },
}

/// How a write ended, as far as the peer is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The peer positively acknowledged the write: its extents may become clean.
    Replicated,
    /// The peer did not get it (absent, disconnected while in flight, or it failed there):
    /// its extents become sync-owed.
    NotReplicated,
}

impl WriteOutcome {
    /// `Replicated` if the peer acknowledged the write, `NotReplicated` otherwise.
    pub fn from_replicated(replicated: bool) -> WriteOutcome {
        if replicated {
            WriteOutcome::Replicated
        } else {
            WriteOutcome::NotReplicated
        }
    }
}

/// Bytes of the on-disk bitmap for `datasize` bytes in `extentsize` extents: one bit per
/// extent, rounded up to whole bytes, then to whole sectors. `hastctl create` calls it
/// with `mediasize - 4096`. A zero `extentsize` or `sectorsize` is treated as 1.
pub fn ondisk_size(datasize: u64, extentsize: u32, sectorsize: u32) -> u64 {
    let extents = datasize.div_ceil(u64::from(extentsize.max(1)));
    let sector = u64::from(sectorsize.max(1));
    extents.div_ceil(8).div_ceil(sector) * sector
}

/// Per-extent facts the bookkeeping compares before and after each change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ExtState {
    dirty: bool,
    on_disk: bool,
}

/// Collects what one operation changed, to bump the generation once.
#[derive(Debug, Default)]
struct Op {
    changed: bool,
    needed: Option<u64>,
}

/// The activemap of one resource. See the module documentation for the invariants.
#[derive(Debug, Clone)]
pub struct ActiveMap {
    datasize: u64,
    extentsize: u32,
    shift: u32,
    sectorsize: u32,
    keepdirty: u32,
    nextents: u64,
    /// Writes started and not completed, per extent (absent = 0).
    pending: BTreeMap<u64, u32>,
    /// Extents the peer must receive before the nodes are in sync.
    owed: Bitset,
    /// The keepdirty LRU: recently written extents kept set on disk.
    lru: Lru,
    /// Number of extents with a pending write or owed sync.
    ndirty: u64,
    /// Extents whose on-disk bit is needed but may not be written yet, with the
    /// generation at which it became needed. Pruned by `mark_written`.
    unwritten: BTreeMap<u64, u64>,
    generation: u64,
    written: u64,
    writing: Option<u64>,
}

impl ActiveMap {
    /// Creates an empty (all clean) map for `datasize` bytes. `sectorsize` must be a power
    /// of two, and `extentsize` a power of two no smaller than it.
    pub fn new(
        datasize: u64,
        extentsize: u32,
        keepdirty: u32,
        sectorsize: u32,
    ) -> Result<ActiveMap, ActiveMapError> {
        if !sectorsize.is_power_of_two() {
            return Err(ActiveMapError::BadSectorSize(sectorsize));
        }
        if !extentsize.is_power_of_two() || extentsize < sectorsize {
            return Err(ActiveMapError::BadExtentSize {
                extentsize,
                sectorsize,
            });
        }
        let nextents = datasize.div_ceil(u64::from(extentsize));
        let owed = Bitset::new(nextents).ok_or(ActiveMapError::TooLarge(datasize))?;
        // The image is built in memory, so its byte count must be addressable too.
        usize::try_from(ondisk_size(datasize, extentsize, sectorsize))
            .map_err(|_| ActiveMapError::TooLarge(datasize))?;
        Ok(ActiveMap {
            datasize,
            extentsize,
            shift: extentsize.trailing_zeros(),
            sectorsize,
            keepdirty,
            nextents,
            pending: BTreeMap::new(),
            owed,
            lru: Lru::new(keepdirty),
            ndirty: 0,
            unwritten: BTreeMap::new(),
            generation: 0,
            written: 0,
            writing: None,
        })
    }

    /// Bytes per extent.
    pub fn extentsize(&self) -> u32 {
        self.extentsize
    }

    /// Number of extents (the last one may be shorter than `extentsize`).
    pub fn extent_count(&self) -> u64 {
        self.nextents
    }

    /// Size of the data area this map covers.
    pub fn datasize(&self) -> u64 {
        self.datasize
    }

    /// Capacity of the keepdirty LRU.
    pub fn keepdirty(&self) -> u32 {
        self.keepdirty
    }

    /// Bytes of the on-disk image this map produces ([`ondisk_size`] of its datasize).
    pub fn ondisk_size(&self) -> u64 {
        ondisk_size(self.datasize, self.extentsize, self.sectorsize)
    }

    /// A write of `[offset, offset + len)` is about to be issued: its extents become dirty
    /// and move to the head of the keepdirty LRU. The answer says whether the on-disk
    /// bitmap must be written before the data goes out.
    pub fn write_start(&mut self, offset: u64, len: u64) -> Result<MapUpdate, ActiveMapError> {
        let range = self.extents(offset, len)?;
        let mut op = Op::default();
        for ext in range.clone() {
            let victim = self.lru.victim_for(ext);
            let victim_before = victim.map(|v| (v, self.state(v)));
            let before = self.state(ext);
            let count = self.pending.entry(ext).or_insert(0);
            *count = count.saturating_add(1);
            self.lru.touch(ext);
            self.account(ext, before, &mut op);
            if let Some((v, v_before)) = victim_before {
                self.account(v, v_before, &mut op);
            }
        }
        for ext in range {
            self.require(ext, &mut op);
        }
        Ok(self.finish(op))
    }

    /// The write started with `write_start(offset, len)` has finished on every leg it will
    /// finish on. Unless `outcome` is [`WriteOutcome::Replicated`] its extents become
    /// sync-owed. Nothing is changed if some extent has no pending write.
    pub fn write_complete(
        &mut self,
        offset: u64,
        len: u64,
        outcome: WriteOutcome,
    ) -> Result<MapUpdate, ActiveMapError> {
        let range = self.extents(offset, len)?;
        if range.clone().any(|ext| self.pending_writes(ext) == 0) {
            return Err(ActiveMapError::NotPending { offset, len });
        }
        let mut op = Op::default();
        for ext in range {
            let before = self.state(ext);
            if let Some(count) = self.pending.get_mut(&ext) {
                *count -= 1;
                if *count == 0 {
                    self.pending.remove(&ext);
                }
            }
            if outcome == WriteOutcome::NotReplicated {
                self.owed.set(ext);
            }
            self.account(ext, before, &mut op);
        }
        Ok(self.finish(op))
    }

    /// Records that the peer lacks `[offset, offset + len)` (FreeBSD's
    /// `activemap_need_sync`, e.g. a write that found the peer gone). Usually the extents
    /// are already set on disk by their pending write; if not, a map write is required.
    pub fn need_sync(&mut self, offset: u64, len: u64) -> Result<MapUpdate, ActiveMapError> {
        let range = self.extents(offset, len)?;
        let mut op = Op::default();
        for ext in range {
            let before = self.state(ext);
            self.owed.set(ext);
            self.account(ext, before, &mut op);
            self.require(ext, &mut op);
        }
        Ok(self.finish(op))
    }

    /// Startup copy-in of the on-disk bitmap: every extent set there becomes sync-owed,
    /// because a write to it may have been interrupted by the crash. `image` must cover
    /// every extent; bits past the last extent are ignored.
    ///
    /// The answer asks for a map write (rewriting the same bits) rather than assuming the
    /// bytes came from disk; one extra bitmap write at startup buys not trusting that.
    pub fn load(&mut self, image: &[u8]) -> Result<MapUpdate, ActiveMapError> {
        self.union_owed(image)
    }

    /// Merges the peer's bitmap received in the handshake: its set extents become
    /// sync-owed here. An empty image (a fresh peer, nothing to sync) is a no-op; otherwise
    /// it must cover every extent. The merged map must be on disk before any request is sent
    /// to the peer, because the peer clears its own bitmap on the first request.
    pub fn merge(&mut self, image: &[u8]) -> Result<MapUpdate, ActiveMapError> {
        if image.is_empty() {
            return Ok(MapUpdate::None);
        }
        self.union_owed(image)
    }

    /// Marks every extent sync-owed (full synchronisation).
    pub fn set_all(&mut self) -> MapUpdate {
        let mut op = Op::default();
        for ext in 0..self.nextents {
            let before = self.state(ext);
            self.owed.set(ext);
            self.account(ext, before, &mut op);
            self.require(ext, &mut op);
        }
        self.finish(op)
    }

    /// Forgets every sync debt (pending writes stay dirty). Only for when the caller knows
    /// the nodes are identical, e.g. both were just created.
    pub fn clear_all(&mut self) -> MapUpdate {
        let mut op = Op::default();
        let mut next = self.owed.next_set(0);
        while let Some(ext) = next {
            let before = self.state(ext);
            self.owed.clear(ext);
            self.account(ext, before, &mut op);
            next = self.owed.next_set(ext + 1);
        }
        self.finish(op)
    }

    /// The sync loop has copied extent `ext` to the peer: its sync debt is paid. It stays
    /// dirty while writes to it are pending (each of those settles itself on completion).
    pub fn extent_synced(&mut self, ext: u64) -> Result<MapUpdate, ActiveMapError> {
        self.check_extent(ext)?;
        let mut op = Op::default();
        let before = self.state(ext);
        self.owed.clear(ext);
        self.account(ext, before, &mut op);
        Ok(self.finish(op))
    }

    /// The first sync-owed extent at or after `from`. The sync loop is done when
    /// `next_sync_extent(0)` is `None` (a write failing meanwhile can re-owe an extent
    /// behind the cursor, so rewind before declaring completion).
    pub fn next_sync_extent(&self, from: u64) -> Option<u64> {
        self.owed.next_set(from)
    }

    /// Byte range `(offset, len)` of extent `ext`, clamped to the data size.
    pub fn extent_range(&self, ext: u64) -> Option<(u64, u64)> {
        if ext >= self.nextents {
            return None;
        }
        let start = ext << self.shift;
        let end = self.datasize.min(start + u64::from(self.extentsize));
        Some((start, end - start))
    }

    /// The chunks `(offset, len)` in which to copy extent `ext`: at most [`SYNC_CHUNK`]
    /// bytes each, never past the extent or the data size. Empty for a nonexistent extent.
    pub fn sync_chunks(&self, ext: u64) -> SyncChunks {
        let (next, end) = match self.extent_range(ext) {
            Some((offset, len)) => (offset, offset + len),
            None => (0, 0),
        };
        SyncChunks { next, end }
    }

    /// Whether extent `ext` has a pending write or owes a sync (false if out of range).
    pub fn is_dirty(&self, ext: u64) -> bool {
        self.pending_writes(ext) > 0 || self.owed.get(ext)
    }

    /// Whether extent `ext` owes a sync.
    pub fn is_sync_owed(&self, ext: u64) -> bool {
        self.owed.get(ext)
    }

    /// Whether no extent of `[offset, offset + len)` owes a sync: while syncing from the
    /// secondary, reads of a range for which this is false must go to the peer.
    pub fn is_synced(&self, offset: u64, len: u64) -> Result<bool, ActiveMapError> {
        let range = self.extents(offset, len)?;
        Ok(match self.owed.next_set(range.start) {
            Some(ext) => ext >= range.end,
            None => true,
        })
    }

    /// Writes started and not yet completed on extent `ext`.
    pub fn pending_writes(&self, ext: u64) -> u32 {
        self.pending.get(&ext).copied().unwrap_or(0)
    }

    /// Number of dirty extents (pending write or sync owed).
    pub fn dirty_extents(&self) -> u64 {
        self.ndirty
    }

    /// Number of sync-owed extents.
    pub fn sync_owed_extents(&self) -> u64 {
        self.owed.count()
    }

    /// Bytes in sync-owed extents, the last extent counted at its real size: what a
    /// synchronisation still has to copy.
    pub fn sync_owed_bytes(&self) -> u64 {
        let mut bytes = self.owed.count() * u64::from(self.extentsize);
        if let Some(last) = self.nextents.checked_sub(1) {
            if self.is_sync_owed(last) {
                let (_, len) = self.extent_range(last).unwrap_or((0, 0));
                bytes -= u64::from(self.extentsize) - len;
            }
        }
        bytes
    }

    /// Bytes in dirty extents, the last extent counted at its real (possibly short) size.
    /// This is hastctl's `dirty` figure.
    pub fn dirty_bytes(&self) -> u64 {
        let mut bytes = self.ndirty * u64::from(self.extentsize);
        if let Some(last) = self.nextents.checked_sub(1) {
            if self.is_dirty(last) {
                let (_, len) = self.extent_range(last).unwrap_or((0, 0));
                bytes -= u64::from(self.extentsize) - len;
            }
        }
        bytes
    }

    /// The bitmap as it should be on disk now: pending writes ∪ sync-owed ∪ keepdirty LRU,
    /// in FreeBSD bitstring layout (extent `n` is bit `n % 8` of byte `n / 8`, 1 = dirty),
    /// zero-padded to [`ActiveMap::ondisk_size`]. For writing it, use
    /// [`ActiveMap::begin_map_write`], which also records the generation.
    pub fn ondisk_image(&self) -> Vec<u8> {
        let size = usize::try_from(self.ondisk_size()).unwrap_or(0);
        let mut image = vec![0u8; size];
        let mut set = |ext: u64| {
            if let Some(byte) = usize::try_from(ext / 8).ok().and_then(|i| image.get_mut(i)) {
                *byte |= 1 << (ext % 8);
            }
        };
        self.pending.keys().copied().for_each(&mut set);
        self.lru.members().for_each(&mut set);
        let mut next = self.owed.next_set(0);
        while let Some(ext) = next {
            set(ext);
            next = self.owed.next_set(ext + 1);
        }
        image
    }

    /// The extents covering `[offset, offset + len)`, or an error past the data size.
    fn extents(&self, offset: u64, len: u64) -> Result<Range<u64>, ActiveMapError> {
        let end = offset
            .checked_add(len)
            .filter(|end| *end <= self.datasize)
            .ok_or(ActiveMapError::OutOfRange {
                offset,
                len,
                datasize: self.datasize,
            })?;
        if len == 0 {
            return Ok(0..0);
        }
        Ok((offset >> self.shift)..((end - 1) >> self.shift) + 1)
    }

    fn check_extent(&self, ext: u64) -> Result<(), ActiveMapError> {
        if ext < self.nextents {
            Ok(())
        } else {
            Err(ActiveMapError::NoSuchExtent {
                ext,
                count: self.nextents,
            })
        }
    }

    fn state(&self, ext: u64) -> ExtState {
        let dirty = self.is_dirty(ext);
        ExtState {
            dirty,
            on_disk: dirty || self.lru.contains(ext),
        }
    }

    /// Compares `ext`'s state with `before` and updates the dirty count and the record of
    /// bits that must reach the disk.
    fn account(&mut self, ext: u64, before: ExtState, op: &mut Op) {
        let after = self.state(ext);
        match (before.dirty, after.dirty) {
            (false, true) => self.ndirty += 1,
            (true, false) => self.ndirty -= 1,
            _ => {}
        }
        match (before.on_disk, after.on_disk) {
            (false, true) => {
                self.unwritten.insert(ext, self.generation + 1);
                op.changed = true;
            }
            (true, false) => {
                self.unwritten.remove(&ext);
                op.changed = true;
            }
            _ => {}
        }
    }

    /// Notes that this operation needs `ext`'s bit on disk.
    fn require(&self, ext: u64, op: &mut Op) {
        if let Some(&generation) = self.unwritten.get(&ext) {
            op.needed = op.needed.max(Some(generation));
        }
    }

    fn finish(&mut self, op: Op) -> MapUpdate {
        if op.changed {
            self.generation += 1;
        }
        match op.needed {
            Some(generation) => MapUpdate::Write { generation },
            None if op.changed => MapUpdate::Lazy {
                generation: self.generation,
            },
            None => MapUpdate::None,
        }
    }

    fn union_owed(&mut self, image: &[u8]) -> Result<MapUpdate, ActiveMapError> {
        let need = usize::try_from(self.nextents.div_ceil(8)).unwrap_or(usize::MAX);
        if image.len() < need {
            return Err(ActiveMapError::MapTooShort {
                got: image.len(),
                need,
            });
        }
        let mut op = Op::default();
        for (index, &byte) in image.iter().take(need).enumerate() {
            for bit in (0..8u64).filter(|bit| byte & (1 << bit) != 0) {
                let ext = index as u64 * 8 + bit;
                if ext >= self.nextents {
                    break;
                }
                let before = self.state(ext);
                self.owed.set(ext);
                self.account(ext, before, &mut op);
                self.require(ext, &mut op);
            }
        }
        Ok(self.finish(op))
    }
}

/// Iterator over the sync chunks of one extent, from [`ActiveMap::sync_chunks`].
#[derive(Debug, Clone)]
pub struct SyncChunks {
    next: u64,
    end: u64,
}

impl Iterator for SyncChunks {
    type Item = (u64, u64);

    fn next(&mut self) -> Option<(u64, u64)> {
        if self.next >= self.end {
            return None;
        }
        let offset = self.next;
        let len = SYNC_CHUNK.min(self.end - offset);
        self.next += len;
        Some((offset, len))
    }
}
