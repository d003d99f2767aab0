//! Ordered metadata writes for a state machine that changes the header from many places
//! (counter raises, the mirror after a sync, the data state): the header it *wants*, the
//! header *on disk*, at most one write in flight, and generations so that whoever needs
//! a change on disk (a reply that must not go out before a counter raise) can wait for
//! exactly that.
//!
//! Writes are whole headers and are issued in order, so the disk holds, at any moment,
//! some header that was wanted at some point, never a mixture: the latest one written.

use crate::metadata::Metadata;

/// The metadata of one node as a state machine sees it.
#[derive(Debug, Clone)]
pub struct MetaWrites {
    written: Metadata,
    wanted: Metadata,
    gen_wanted: u64,
    gen_written: u64,
    writing: Option<(u64, Metadata)>,
}

impl MetaWrites {
    /// Starts from the header read from disk.
    pub fn new(on_disk: Metadata) -> MetaWrites {
        MetaWrites {
            written: on_disk.clone(),
            wanted: on_disk,
            gen_wanted: 0,
            gen_written: 0,
            writing: None,
        }
    }

    /// The header as it will be once every change is written: what the node acts on.
    pub fn current(&self) -> &Metadata {
        &self.wanted
    }

    /// The header known to be on disk.
    pub fn on_disk(&self) -> &Metadata {
        &self.written
    }

    /// Applies `f` to the wanted header; returns the generation that must be written
    /// before anything may rely on the change (the current written one if `f` changed
    /// nothing).
    pub fn change(&mut self, f: impl FnOnce(&mut Metadata)) -> u64 {
        let mut next = self.wanted.clone();
        f(&mut next);
        if next != self.wanted {
            self.wanted = next;
            self.gen_wanted += 1;
        }
        self.gen_wanted
    }

    /// The write to issue now, if the disk lags and none is in flight: `(generation,
    /// header)`; report it with [`MetaWrites::written`].
    pub fn next_write(&mut self) -> Option<(u64, Metadata)> {
        if self.writing.is_some() || self.gen_written >= self.gen_wanted {
            return None;
        }
        self.writing = Some((self.gen_wanted, self.wanted.clone()));
        Some((self.gen_wanted, self.wanted.clone()))
    }

    /// The write of `gen` ended. On success everything up to `gen` is on disk; on
    /// failure the disk keeps the previous header (the caller decides what a failed
    /// metadata write means; nothing waiting for it may proceed). A report for a write
    /// not in flight is ignored.
    pub fn written(&mut self, gen: u64, ok: bool) {
        let Some((writing, header)) = self.writing.take_if(|(g, _)| *g == gen) else {
            return;
        };
        if ok {
            self.gen_written = writing;
            self.written = header;
        }
    }

    /// Whether generation `gen` is on disk.
    pub fn is_written(&self, gen: u64) -> bool {
        self.gen_written >= gen
    }

    /// The generation of the wanted header: written once [`MetaWrites::is_written`] says so.
    pub fn generation(&self) -> u64 {
        self.gen_wanted
    }

    /// Whether a write is in flight.
    pub fn busy(&self) -> bool {
        self.writing.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::Layout;

    fn meta() -> Metadata {
        Metadata::new("r0", Layout::compute(1 << 24, 1 << 21, 512).unwrap(), 64).unwrap()
    }

    #[test]
    fn changes_are_written_in_order_one_at_a_time() {
        let mut m = MetaWrites::new(meta());
        assert_eq!(m.change(|_| {}), 0);
        assert!(m.next_write().is_none());
        let g1 = m.change(|h| h.localcnt = 1);
        let (w1, h1) = m.next_write().unwrap();
        assert_eq!((w1, h1.localcnt), (g1, 1));
        let g2 = m.change(|h| h.remotecnt = 5);
        assert!(m.next_write().is_none(), "one write at a time");
        assert!(!m.is_written(g1));
        m.written(w1, true);
        assert!(m.is_written(g1) && !m.is_written(g2));
        let (w2, h2) = m.next_write().unwrap();
        assert_eq!((h2.localcnt, h2.remotecnt), (1, 5));
        m.written(w2, false);
        assert!(!m.is_written(g2), "a failed write proves nothing");
        assert_eq!(m.on_disk().remotecnt, 0);
        let (w3, _) = m.next_write().unwrap();
        m.written(w3, true);
        assert!(m.is_written(g2));
        assert_eq!(m.on_disk(), m.current());
    }
}
