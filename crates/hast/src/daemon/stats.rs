//! Per-resource counters (hast-reference.md §11), updated lock-free on the I/O path.

use std::sync::atomic::{AtomicU64, Ordering};

use hast_core::control::Statistics;

/// Counters since the role was taken.
#[derive(Debug, Default)]
pub struct Stats {
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub deletes: AtomicU64,
    pub flushes: AtomicU64,
    pub activemap_updates: AtomicU64,
    pub read_errors: AtomicU64,
    pub write_errors: AtomicU64,
    pub delete_errors: AtomicU64,
    pub flush_errors: AtomicU64,
    /// Requests currently at the local disk.
    pub local_queue: AtomicU64,
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// A copy for hastctl.
    pub fn snapshot(&self) -> Statistics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Statistics {
            reads: get(&self.reads),
            writes: get(&self.writes),
            deletes: get(&self.deletes),
            flushes: get(&self.flushes),
            activemap_updates: get(&self.activemap_updates),
            read_errors: get(&self.read_errors),
            write_errors: get(&self.write_errors),
            delete_errors: get(&self.delete_errors),
            flush_errors: get(&self.flush_errors),
        }
    }
}
