//! A simulated provider: user data as one version number per block, a page cache that a
//! power failure loses (each unflushed block independently, as writeback would have it),
//! the metadata header and the bitmap (written durably: hastd flushes them), and faults
//! on demand (EIO on the next writes or flushes, extra latency).

use std::collections::BTreeMap;

use hast_core::metadata::Metadata;

use crate::rng::Rng;

/// Bytes per simulated block (the unit of a version).
pub const BLOCK: u64 = 4096;

#[derive(Debug, Clone)]
pub struct Disk {
    durable: Vec<u64>,
    cache: BTreeMap<usize, u64>,
    pub meta: Metadata,
    pub bitmap: Vec<u8>,
    /// The next data writes that fail with EIO.
    pub fail_writes: u32,
    /// The next flushes that fail with EIO.
    pub fail_flushes: u32,
    /// The next reads that fail with EIO.
    pub fail_reads: u32,
    /// Extra latency per I/O, in ms.
    pub slow: u64,
    /// The provider cannot discard.
    pub no_discard: bool,
}

impl Disk {
    pub fn new(blocks: usize, meta: Metadata, bitmap_len: usize) -> Disk {
        Disk {
            durable: vec![0; blocks],
            cache: BTreeMap::new(),
            meta,
            bitmap: vec![0; bitmap_len],
            fail_writes: 0,
            fail_flushes: 0,
            fail_reads: 0,
            slow: 0,
            no_discard: false,
        }
    }

    pub fn blocks(&self) -> usize {
        self.durable.len()
    }

    /// What a read sees now (cache over durable).
    pub fn get(&self, block: usize) -> u64 {
        self.cache
            .get(&block)
            .copied()
            .unwrap_or_else(|| self.durable.get(block).copied().unwrap_or(0))
    }

    /// What survives a power failure right now if nothing is written back.
    pub fn durable(&self, block: usize) -> u64 {
        self.durable.get(block).copied().unwrap_or(0)
    }

    pub fn write(&mut self, first: usize, values: &[u64]) {
        for (i, v) in values.iter().enumerate() {
            self.cache.insert(first + i, *v);
        }
    }

    pub fn read(&self, first: usize, n: usize) -> Vec<u64> {
        (first..first + n).map(|b| self.get(b)).collect()
    }

    pub fn flush(&mut self) {
        for (b, v) in std::mem::take(&mut self.cache) {
            if let Some(slot) = self.durable.get_mut(b) {
                *slot = v;
            }
        }
    }

    /// A power failure: each unflushed block was or was not written back.
    pub fn power_loss(&mut self, rng: &mut Rng) {
        for (b, v) in std::mem::take(&mut self.cache) {
            if rng.chance(50) {
                if let Some(slot) = self.durable.get_mut(b) {
                    *slot = v;
                }
            }
        }
    }

    /// Consumes one injected failure of a data write.
    pub fn take_write_fault(&mut self) -> bool {
        take(&mut self.fail_writes)
    }

    pub fn take_flush_fault(&mut self) -> bool {
        take(&mut self.fail_flushes)
    }

    pub fn take_read_fault(&mut self) -> bool {
        take(&mut self.fail_reads)
    }
}

fn take(n: &mut u32) -> bool {
    if *n > 0 {
        *n -= 1;
        true
    } else {
        false
    }
}
