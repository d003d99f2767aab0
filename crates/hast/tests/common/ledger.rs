//! The acknowledged-write ledger: a workload that writes self-describing blocks through
//! NBD and records, per slot, which writes the server acknowledged and which ones may or
//! may not have reached the disk; and a verifier that reads every slot back and says
//! whether an acknowledged write was lost or a block corrupted. The NBD client itself is
//! `nbd_client.rs` (re-exported here).
//!
//! Model. `slots` positions of `slot_size` bytes, spread over the whole device from the
//! seed (the first at offset 0, the last at the last whole aligned position). Each write
//! goes to a slot with no write in flight, so the expected contents are exact; its block
//! carries a header (magic, seed, slot, seq, offset) and a body derived from (seed, slot,
//! seq), so a verifier can regenerate it. Per slot, seq counts 1, 2, 3...; zeroes mean
//! "never written" (seq 0). A write counts as acked only when its successful reply
//! arrives; an error reply, or no reply (connection broken, workload stopped), makes it
//! "uncertain". An ack supersedes every older write of the slot, uncertain ones included.
//!
//! Layout: this file holds the model (placement, block format, per-slot state);
//! `ledger/workload.rs` drives the writes, `ledger/verify.rs` reads them back.
//!
//! Caveat: an uncertain write can still be executing on the server that lost its client;
//! hand the ledger to a new connection to the *same* server only once that cannot happen
//! (the server is dead, or it finishes in-flight requests before closing).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness: a failed setup should panic loudly

use std::fmt;

pub use super::nbd_client::{NbdConn, NbdError, Pipeline, Reply};

mod verify;
mod workload;

// Each test binary uses its own part of the harness.
#[allow(unused_imports)]
pub use verify::{verify, Offence, Problem, Verdict, MAX_DETAILS};
#[allow(unused_imports)]
pub use workload::{Workload, WorkloadStats, DRAIN_TIMEOUT};

pub const MAGIC: &[u8; 8] = b"HASTLDG1";
/// magic, seed, slot, slot_size, seq, offset.
pub const HEADER_LEN: usize = 40;

/// `seed`, `slot_size` and `slots` are read by [`Ledger::new`] (the ledger keeps them);
/// the rest by [`Workload::start`], so each workload of one ledger may differ there.
#[derive(Debug, Clone)]
pub struct LedgerConfig {
    pub seed: u64,
    /// Bytes per slot, a multiple of 512.
    pub slot_size: u32,
    pub slots: u32,
    /// Requests in flight at most (writes and flushes together).
    pub in_flight: usize,
    /// Stop once this many writes of this workload were acked.
    pub max_writes: Option<u64>,
    /// Send an NBD FLUSH after every N acked writes (0: never).
    pub flush_every: u32,
    /// Every Nth write carries FUA (0: never).
    pub fua_every: u32,
}

impl Default for LedgerConfig {
    fn default() -> LedgerConfig {
        LedgerConfig {
            seed: 1,
            slot_size: 4096,
            slots: 1024,
            in_flight: 32,
            max_writes: None,
            flush_every: 0,
            fua_every: 0,
        }
    }
}

/// splitmix64: tiny, good enough, and the same everywhere.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// What the ledger knows about one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SlotState {
    pub offset: u64,
    /// Highest seq ever issued (acked, uncertain or in flight).
    pub issued: u64,
    /// Highest acked seq; 0: never acked.
    pub acked: u64,
    /// Seqs newer than `acked` whose outcome is unknown, ascending.
    pub uncertain: Vec<u64>,
}

/// What a slot's bytes turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Zeroes,
    /// Exactly the block of this slot with this seq.
    Block(u64),
    /// Our header for this slot and seq, but the rest differs (torn or damaged).
    Torn(u64),
    /// A valid header of another slot or run (misplaced data).
    Foreign {
        seed: u64,
        slot: u32,
        seq: u64,
    },
    Garbage,
}

#[derive(Debug, Clone)]
pub struct Ledger {
    seed: u64,
    slot_size: u32,
    device_size: u64,
    slots: Vec<SlotState>,
    /// State of the slot chooser, so a continued workload continues the same sequence.
    chooser: u64,
    acked_writes: u64,
    uncertain_writes: u64,
}

impl Ledger {
    /// Places `cfg.slots` slots on a device of `device_size` bytes: one random position
    /// in each of `slots` equal strata (so they are distinct and spread), pinned to the
    /// very first and the last whole aligned position at the ends.
    pub fn new(device_size: u64, cfg: &LedgerConfig) -> Ledger {
        assert!(
            cfg.slot_size >= 512 && cfg.slot_size.is_multiple_of(512),
            "slot_size {} is not a multiple of 512",
            cfg.slot_size
        );
        let positions = device_size / u64::from(cfg.slot_size);
        let n = u64::from(cfg.slots);
        assert!(
            n >= 1 && n <= positions,
            "{n} slots of {} bytes do not fit in {device_size} bytes",
            cfg.slot_size
        );
        let mut rng = mix(cfg.seed ^ 0x5107_5107);
        let slots = (0..n)
            .map(|i| {
                let lo = (u128::from(i) * u128::from(positions) / u128::from(n)) as u64;
                let hi = (u128::from(i + 1) * u128::from(positions) / u128::from(n)) as u64;
                rng = rng.wrapping_add(GOLDEN);
                let pos = match i {
                    0 => 0,
                    _ if i == n - 1 => positions - 1,
                    _ => lo + mix(rng) % (hi - lo),
                };
                SlotState {
                    offset: pos * u64::from(cfg.slot_size),
                    ..SlotState::default()
                }
            })
            .collect();
        Ledger {
            seed: cfg.seed,
            slot_size: cfg.slot_size,
            device_size,
            slots,
            chooser: mix(cfg.seed ^ 0x00c4_005e),
            acked_writes: 0,
            uncertain_writes: 0,
        }
    }

    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn slot_size(&self) -> u32 {
        self.slot_size
    }

    pub fn device_size(&self) -> u64 {
        self.device_size
    }

    pub fn slot_count(&self) -> u32 {
        self.slots.len() as u32
    }

    pub fn slot(&self, slot: u32) -> &SlotState {
        &self.slots[slot as usize]
    }

    /// Writes acked over the ledger's life (all workloads).
    pub fn acked_writes(&self) -> u64 {
        self.acked_writes
    }

    /// Writes recorded uncertain over the ledger's life.
    pub fn uncertain_writes(&self) -> u64 {
        self.uncertain_writes
    }

    /// The exact block of write `seq` of `slot` (zeroes for seq 0).
    pub fn block(&self, slot: u32, seq: u64) -> Vec<u8> {
        let mut b = vec![0u8; self.slot_size as usize];
        if seq == 0 {
            return b;
        }
        b[0..8].copy_from_slice(MAGIC);
        b[8..16].copy_from_slice(&self.seed.to_le_bytes());
        b[16..20].copy_from_slice(&slot.to_le_bytes());
        b[20..24].copy_from_slice(&self.slot_size.to_le_bytes());
        b[24..32].copy_from_slice(&seq.to_le_bytes());
        b[32..40].copy_from_slice(&self.slot(slot).offset.to_le_bytes());
        let mut state = mix(self.seed ^ mix(u64::from(slot) ^ mix(seq)));
        for chunk in b[HEADER_LEN..].chunks_mut(8) {
            state = state.wrapping_add(GOLDEN);
            chunk.copy_from_slice(&mix(state).to_le_bytes()[..chunk.len()]);
        }
        b
    }

    /// Whether `data` is a sector-wise mix of the slot's last acknowledged block and its
    /// uncertain ones: what a crash in the middle of an *unacknowledged* write may leave.
    /// Block devices promise no atomicity beyond a sector, and hastd really does leave
    /// this: a 4 KiB write whose provider range spans two pages (the data area starts
    /// at 4096 + the bitmap, a multiple of the sector size) is cut between the pages when
    /// the daemon is SIGKILLed in the middle of its pwrite. An acknowledged write is
    /// never allowed to be torn (it is the only candidate then, and must match whole).
    pub fn is_torn_uncertain(&self, slot: u32, data: &[u8]) -> bool {
        const SECTOR: usize = 512;
        let s = self.slot(slot);
        if s.uncertain.is_empty() || data.len() != self.slot_size as usize {
            return false;
        }
        let candidates: Vec<Vec<u8>> = std::iter::once(s.acked)
            .chain(s.uncertain.iter().copied())
            .map(|seq| self.block(slot, seq))
            .collect();
        data.chunks(SECTOR).enumerate().all(|(i, sector)| {
            let at = i * SECTOR;
            candidates
                .iter()
                .any(|c| &c[at..at + sector.len()] == sector)
        })
    }

    /// What `data`, read from `slot`, is.
    pub fn identify(&self, slot: u32, data: &[u8]) -> Found {
        if data.iter().all(|&b| b == 0) {
            return Found::Zeroes;
        }
        if data.len() < HEADER_LEN || &data[0..8] != MAGIC {
            return Found::Garbage;
        }
        let le64 = |at: usize| u64::from_le_bytes(data[at..at + 8].try_into().unwrap());
        let (seed, seq) = (le64(8), le64(24));
        let found_slot = u32::from_le_bytes(data[16..20].try_into().unwrap());
        if seed != self.seed || found_slot != slot || le64(32) != self.slot(slot).offset {
            return Found::Foreign {
                seed,
                slot: found_slot,
                seq,
            };
        }
        if seq != 0 && data == self.block(slot, seq).as_slice() {
            Found::Block(seq)
        } else {
            Found::Torn(seq)
        }
    }

    /// The next slot the workload writes (without taking it).
    fn peek_slot(&self) -> u32 {
        (mix(self.chooser.wrapping_add(GOLDEN)) % self.slots.len() as u64) as u32
    }

    /// The slots the next `n` writes will go to, in order (nothing is taken).
    pub fn planned_slots(&self, n: usize) -> Vec<u32> {
        let mut ahead = self.clone();
        (0..n).map(|_| ahead.issue().0).collect()
    }

    /// Takes the next slot and issues its next seq.
    fn issue(&mut self) -> (u32, u64) {
        let slot = self.peek_slot();
        self.chooser = self.chooser.wrapping_add(GOLDEN);
        let s = &mut self.slots[slot as usize];
        s.issued += 1;
        (slot, s.issued)
    }

    fn record_acked(&mut self, slot: u32, seq: u64) {
        let s = &mut self.slots[slot as usize];
        if seq > s.acked {
            s.acked = seq;
            s.uncertain.retain(|&u| u > seq);
        }
        self.acked_writes += 1;
    }

    /// Issues the next seq of `slot` as a write whose outcome is unknown (one in flight
    /// at a crash); for the verifier's own tests.
    pub fn issue_uncertain(&mut self, slot: u32) -> u64 {
        let s = &mut self.slots[slot as usize];
        s.issued += 1;
        let seq = s.issued;
        self.record_uncertain(slot, seq);
        seq
    }

    fn record_uncertain(&mut self, slot: u32, seq: u64) {
        let s = &mut self.slots[slot as usize];
        if seq > s.acked {
            s.uncertain.push(seq);
            s.uncertain.sort_unstable();
        }
        self.uncertain_writes += 1;
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let never = self.slots.iter().filter(|s| s.acked == 0).count();
        let open = self
            .slots
            .iter()
            .filter(|s| !s.uncertain.is_empty())
            .count();
        write!(
            f,
            "ledger seed {}: {} slots of {} bytes on {} bytes, {} acked writes, {} uncertain \
             ({} slots with an open uncertain write), {} slots never acked",
            self.seed,
            self.slots.len(),
            self.slot_size,
            self.device_size,
            self.acked_writes,
            self.uncertain_writes,
            open,
            never
        )
    }
}
