//! The simulated application: writes, overwrites, flushes and reads through whichever
//! node is primary, with an acknowledged-write ledger. Every block holds the number of
//! the write that wrote it; a write is recorded as acknowledged only when its successful
//! answer arrives, and every read is checked against the ledger on the spot.

use std::collections::BTreeMap;

use crate::rng::Rng;

/// One acknowledged write of a block.
#[derive(Debug, Clone)]
struct Acked {
    version: u64,
    /// The node that acknowledged it.
    node: usize,
    /// When.
    at: u64,
    /// Its place in the order of answers (a FLUSH covers the writes answered before it).
    order: u64,
    /// A FLUSH issued after it completed (or it was FUA): the block-device contract
    /// promises it survives a power failure.
    durable: bool,
    /// The uncertain writes it superseded: possible again if it is taken back.
    superseded: Vec<u64>,
    /// Acknowledged by a primary without a secondary: its node's disk is the only one
    /// that has it.
    alone: bool,
}

/// One block's history as the client knows it.
#[derive(Debug, Clone, Default)]
pub struct BlockState {
    /// Acknowledged writes, oldest first.
    acked: Vec<Acked>,
    /// Writes that may or may not have landed (error answers, in flight at a crash,
    /// unflushed writes on a host that lost power, a discarded side's writes).
    uncertain: Vec<u64>,
}

impl BlockState {
    pub fn expected(&self) -> u64 {
        self.acked.last().map_or(0, |a| a.version)
    }

    /// Whether a read may return `v`. During a split (two primaries since `split.1`),
    /// each side's copy legitimately lacks some of the other's writes, and a write in
    /// flight at the split may be on either: any write of the block acknowledged since
    /// the split, or the last one before it, is allowed until the split is resolved.
    pub fn allows(&self, v: u64, split: Option<(usize, u64)>) -> bool {
        if v == self.expected() || self.uncertain.contains(&v) {
            return true;
        }
        let Some((_, since)) = split else {
            return false;
        };
        let before = self.acked.iter().rev().find(|a| a.at < since);
        // A write that failed or was in flight may be on either side, even after the
        // other side acknowledged a newer one (with fencing, the side that lost the
        // fence keeps serving reads of what its disk holds).
        before.map_or(0, |a| a.version) == v
            || self
                .acked
                .iter()
                .any(|a| a.at >= since && (a.version == v || a.superseded.contains(&v)))
    }
}

/// What a client request does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Write {
        first: usize,
        n: usize,
        version: u64,
        fua: bool,
        zeroes: bool,
    },
    Read {
        first: usize,
        n: usize,
    },
    Flush,
}

#[derive(Debug, Clone)]
pub struct Pending {
    pub op: Op,
    /// The node it was sent to.
    pub node: usize,
    /// Writes answered before it was issued (`Client::answered`).
    pub after: u64,
    /// The split in effect when it was issued: a read issued during a split may be
    /// answered after it was resolved, with what its side held then.
    pub split: Option<(usize, u64)>,
    /// Its node's side was discarded after a split-brain before it was answered: a
    /// write it acknowledges is as gone as the side's earlier ones.
    pub discarded: bool,
}

#[derive(Debug)]
pub struct Client {
    pub blocks: Vec<BlockState>,
    pub pending: BTreeMap<u64, Pending>,
    next_req: u64,
    next_version: u64,
    pub acked_writes: u64,
    pub reads_checked: u64,
    /// Answers so far (orders acknowledgements against FLUSHes).
    pub answered: u64,
}

impl Client {
    pub fn new(blocks: usize) -> Client {
        Client {
            blocks: vec![BlockState::default(); blocks],
            pending: BTreeMap::new(),
            next_req: 1,
            next_version: 1,
            acked_writes: 0,
            reads_checked: 0,
            answered: 0,
        }
    }

    fn busy(&self, first: usize, n: usize, writes_only: bool) -> bool {
        self.pending.values().any(|p| match p.op {
            Op::Write { first: f, n: m, .. } => f < first + n && first < f + m,
            Op::Read { first: f, n: m } => !writes_only && f < first + n && first < f + m,
            Op::Flush => false,
        })
    }

    /// Draws the next request (None if the drawn range is busy).
    pub fn draw(&mut self, rng: &mut Rng, blocks_per_extent: usize) -> Option<(u64, Op)> {
        let nblocks = self.blocks.len();
        let kind = rng.below(100);
        let op = if kind < 12 {
            Op::Flush
        } else {
            // Mostly small writes, some crossing an extent boundary.
            let n = if rng.chance(20) {
                rng.range(2, (blocks_per_extent as u64) + 2) as usize
            } else {
                rng.range(1, 2) as usize
            };
            let first = rng.below((nblocks - n + 1) as u64) as usize;
            if kind < 40 {
                if self.busy(first, n, true) {
                    return None;
                }
                Op::Read { first, n }
            } else {
                if self.busy(first, n, false) {
                    return None;
                }
                let zeroes = rng.chance(5);
                let version = if zeroes {
                    0
                } else {
                    let v = self.next_version;
                    self.next_version += 1;
                    v
                };
                Op::Write {
                    first,
                    n,
                    version,
                    fua: rng.chance(10),
                    zeroes,
                }
            }
        };
        let req = self.next_req;
        self.next_req += 1;
        Some((req, op))
    }

    /// A request that will never be answered (its node died): writes become uncertain.
    pub fn abandon(&mut self, req: u64) {
        if let Some(p) = self.pending.remove(&req) {
            if let Op::Write {
                first, n, version, ..
            } = p.op
            {
                for b in first..first + n {
                    self.blocks[b].uncertain.push(version);
                }
            }
        }
    }

    /// The answer to `req`; `data` for reads. Returns a violation, if any.
    pub fn answer(
        &mut self,
        req: u64,
        result: Result<Option<Vec<u64>>, u32>,
        now: u64,
        split: Option<(usize, u64)>,
        alone: bool,
    ) -> Option<String> {
        let p = self.pending.remove(&req)?;
        let acked_by = p.node;
        let split = split.or(p.split);
        if p.discarded {
            if let Op::Write {
                first, n, version, ..
            } = p.op
            {
                for b in first..first + n {
                    self.blocks[b].uncertain.push(version);
                }
                return None;
            }
        }
        match (p.op, result) {
            (
                Op::Write {
                    first,
                    n,
                    version,
                    fua,
                    ..
                },
                Ok(_),
            ) => {
                self.acked_writes += 1;
                self.answered += 1;
                let order = self.answered;
                for b in first..first + n {
                    let s = &mut self.blocks[b];
                    let superseded = std::mem::take(&mut s.uncertain);
                    s.acked.push(Acked {
                        version,
                        node: acked_by,
                        at: now,
                        order,
                        durable: fua,
                        superseded,
                        alone,
                    });
                }
                None
            }
            (Op::Flush, Ok(_)) => {
                // Everything acknowledged before the FLUSH was issued is durable.
                for s in &mut self.blocks {
                    for a in s.acked.iter_mut().filter(|a| a.order <= p.after) {
                        a.durable = true;
                    }
                }
                None
            }
            (
                Op::Write {
                    first, n, version, ..
                },
                Err(_),
            ) => {
                for b in first..first + n {
                    self.blocks[b].uncertain.push(version);
                }
                None
            }
            (Op::Read { first, n }, Ok(Some(data))) => {
                self.reads_checked += 1;
                if data.len() != n {
                    return Some(format!("read of {n} blocks returned {}", data.len()));
                }
                for (i, v) in data.iter().enumerate() {
                    let s = &self.blocks[first + i];
                    if !s.allows(*v, split) {
                        return Some(format!(
                            "read of block {} from node {acked_by} returned version {v}; the last acknowledged is {} (uncertain {:?})",
                            first + i,
                            s.expected(),
                            s.uncertain
                        ));
                    }
                }
                None
            }
            (Op::Read { .. }, Ok(None)) => Some("read answered without data".into()),
            // EIO on a read is allowed (a stale primary without its good copy); the
            // final verification demands every block readable.
            (Op::Read { .. }, Err(_)) | (Op::Flush, _) => None,
        }
    }

    /// The operator discarded `node`'s side after a split-brain: what it acknowledged
    /// since `since` (its promotion) is gone legitimately, or may have reached the
    /// survivor before the split: no longer required, still allowed.
    pub fn discard(&mut self, node: usize, since: u64) {
        for p in self.pending.values_mut().filter(|p| p.node == node) {
            p.discarded = true;
        }
        for s in &mut self.blocks {
            let (gone, kept): (Vec<Acked>, Vec<Acked>) = std::mem::take(&mut s.acked)
                .into_iter()
                .partition(|a| a.node == node && a.at >= since);
            s.acked = kept;
            for a in gone {
                s.uncertain.push(a.version);
                s.uncertain.extend(a.superseded);
            }
        }
    }

    /// The operator forced a copy that lacks some acknowledged writes (a double failure
    /// left no complete copy): what it holds in `block` is the truth from now on.
    pub fn concede(&mut self, block: usize, value: u64, now: u64, node: usize) {
        let s = &mut self.blocks[block];
        if !s.allows(value, None) {
            s.uncertain.extend(s.acked.iter().map(|a| a.version));
            s.acked = vec![Acked {
                version: value,
                node,
                at: now,
                order: 0,
                durable: true,
                superseded: Vec::new(),
                alone: false,
            }];
        }
    }

    /// The client's host (the primary's) lost power: writes acknowledged but never
    /// flushed carry no promise any more (the block-device contract).
    pub fn lose_unflushed(&mut self) {
        self.lose_unflushed_where(|_| true);
    }

    /// `node` lost power (in any role): the unflushed writes it acknowledged alone, as
    /// a primary without a secondary, were on its disk only (with fencing, such a node
    /// is the legitimate writer, and may be demoted before it flushes them).
    pub fn lose_unflushed_of(&mut self, node: usize) {
        self.lose_unflushed_where(|a| a.node == node && a.alone);
    }

    fn lose_unflushed_where(&mut self, lost: impl Fn(&Acked) -> bool) {
        for s in &mut self.blocks {
            while s.acked.last().is_some_and(|a| !a.durable && lost(a)) {
                if let Some(a) = s.acked.pop() {
                    s.uncertain.push(a.version);
                    s.uncertain.extend(a.superseded);
                }
            }
        }
    }
}
