//! The two containers behind the activemap: a plain bitset with a population count and a
//! "next set bit" scan, and the keepdirty LRU.

use std::collections::BTreeMap;

/// A fixed-size set of extent numbers.
#[derive(Debug, Clone)]
pub(super) struct Bitset {
    words: Vec<u64>,
    len: u64,
    count: u64,
}

impl Bitset {
    /// An empty set of `len` bits, or `None` if it would not be addressable.
    pub(super) fn new(len: u64) -> Option<Bitset> {
        let words = usize::try_from(len.div_ceil(64)).ok()?;
        Some(Bitset {
            words: vec![0; words],
            len,
            count: 0,
        })
    }

    fn locate(&self, bit: u64) -> Option<(usize, u64)> {
        if bit >= self.len {
            return None;
        }
        Some((usize::try_from(bit / 64).ok()?, 1 << (bit % 64)))
    }

    pub(super) fn get(&self, bit: u64) -> bool {
        self.locate(bit)
            .and_then(|(i, mask)| self.words.get(i).map(|w| w & mask != 0))
            .unwrap_or(false)
    }

    /// Sets `bit`; out-of-range bits are ignored.
    pub(super) fn set(&mut self, bit: u64) {
        if let Some((i, mask)) = self.locate(bit) {
            if let Some(word) = self.words.get_mut(i) {
                if *word & mask == 0 {
                    *word |= mask;
                    self.count += 1;
                }
            }
        }
    }

    pub(super) fn clear(&mut self, bit: u64) {
        if let Some((i, mask)) = self.locate(bit) {
            if let Some(word) = self.words.get_mut(i) {
                if *word & mask != 0 {
                    *word &= !mask;
                    self.count -= 1;
                }
            }
        }
    }

    pub(super) fn count(&self) -> u64 {
        self.count
    }

    /// The first set bit at or after `from`.
    pub(super) fn next_set(&self, from: u64) -> Option<u64> {
        if from >= self.len || self.count == 0 {
            return None;
        }
        let first = usize::try_from(from / 64).ok()?;
        let mut mask = !0u64 << (from % 64);
        for (i, word) in self.words.iter().enumerate().skip(first) {
            let bits = word & mask;
            if bits != 0 {
                return Some(i as u64 * 64 + u64::from(bits.trailing_zeros()));
            }
            mask = !0;
        }
        None
    }
}

/// The keepdirty LRU: at most `capacity` extents, ordered by last write.
#[derive(Debug, Clone)]
pub(super) struct Lru {
    capacity: usize,
    clock: u64,
    by_extent: BTreeMap<u64, u64>,
    by_stamp: BTreeMap<u64, u64>,
}

impl Lru {
    pub(super) fn new(capacity: u32) -> Lru {
        Lru {
            capacity: usize::try_from(capacity).unwrap_or(usize::MAX),
            clock: 0,
            by_extent: BTreeMap::new(),
            by_stamp: BTreeMap::new(),
        }
    }

    pub(super) fn contains(&self, ext: u64) -> bool {
        self.by_extent.contains_key(&ext)
    }

    /// The extent that `touch(ext)` would evict.
    pub(super) fn victim_for(&self, ext: u64) -> Option<u64> {
        if self.capacity == 0 || self.contains(ext) || self.by_extent.len() < self.capacity {
            return None;
        }
        self.by_stamp.first_key_value().map(|(_, &victim)| victim)
    }

    /// Moves `ext` to the head, inserting it (and evicting the tail when full).
    pub(super) fn touch(&mut self, ext: u64) {
        if self.capacity == 0 {
            return;
        }
        if let Some(stamp) = self.by_extent.get(&ext) {
            self.by_stamp.remove(stamp);
        } else if self.by_extent.len() >= self.capacity {
            if let Some((_, victim)) = self.by_stamp.pop_first() {
                self.by_extent.remove(&victim);
            }
        }
        self.clock += 1;
        self.by_extent.insert(ext, self.clock);
        self.by_stamp.insert(self.clock, ext);
    }

    pub(super) fn members(&self) -> impl Iterator<Item = u64> + '_ {
        self.by_extent.keys().copied()
    }
}
