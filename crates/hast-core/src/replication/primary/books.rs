//! Bookkeeping of the primary: local I/O numbers, bitmap writes (one at a time, by
//! generation; see `activemap`'s module doc) and metadata writes (counter raises, the
//! mirror after a sync, the data state).

use super::{Action, IoOwner, Notice, Primary, LAZY_MAP_DELAY_MS};
use crate::activemap::MapUpdate;
use crate::metadata::Metadata;
use crate::replication::{IoId, Mutation};

impl Primary {
    pub(super) fn new_io(&mut self, owner: IoOwner) -> IoId {
        let io = IoId(self.next_io);
        self.next_io += 1;
        self.ios.insert(io, owner);
        io
    }

    /// What an activemap change asks for: the generation a write must wait for, if any;
    /// a lazy write is scheduled.
    pub(super) fn follow(&mut self, update: MapUpdate) -> Option<u64> {
        match update {
            MapUpdate::None => None,
            MapUpdate::Write { generation } => {
                if self.mutated(Mutation::SkipMapWrite) {
                    return None;
                }
                self.want_map(generation);
                (!self.map_on_disk(generation)).then_some(generation)
            }
            MapUpdate::Lazy { .. } => {
                if self.lazy_due.is_none() {
                    self.lazy_due = Some(self.now + LAZY_MAP_DELAY_MS);
                }
                None
            }
        }
    }

    pub(super) fn map_on_disk(&self, generation: u64) -> bool {
        self.map.written_generation() >= generation
    }

    /// Gets a bitmap write going that reaches at least `generation` (the newest image:
    /// one write serves everybody waiting).
    pub(super) fn want_map(&mut self, generation: u64) {
        if self.map_busy || self.map_on_disk(generation) {
            return;
        }
        if let Some(write) = self.map.begin_map_write() {
            self.map_busy = true;
            self.out.push(Action::WriteMap {
                gen: write.generation,
                image: write.image,
            });
        }
    }

    pub(super) fn on_map_written(&mut self, gen: u64, ok: bool) {
        if !self.map_busy {
            return;
        }
        self.map_busy = false;
        if ok {
            let _ = self.map.mark_written(gen);
        } else {
            let _ = self.map.abandon_map_write(gen);
            self.fail("activemap write failed");
        }
        self.map_waiters_ready(ok);
        // Someone may need a newer generation than the one just written.
        let wanted = self.writes_waiting_for_map().max();
        if let Some(generation) = wanted {
            if ok {
                self.want_map(generation);
            }
        }
    }

    pub(super) fn lazy_map_tick(&mut self) {
        if self.lazy_due.is_some_and(|due| self.now >= due) && !self.map_busy {
            self.lazy_due = None;
            if self.map.map_write_needed() {
                self.want_map(self.map.generation());
            }
        }
    }

    /// A fatal error: recorded once, reported to the shell.
    pub(super) fn fail(&mut self, what: &str) {
        if !self.failed {
            self.failed = true;
            self.out.push(Action::Failed(what.to_string()));
        }
    }

    /// Changes the metadata; returns the generation that must be on disk before anything
    /// relies on it.
    pub(super) fn change_meta(&mut self, f: impl FnOnce(&mut Metadata)) -> u64 {
        let gen = self.meta.change(f);
        self.pump_meta();
        gen
    }

    pub(super) fn pump_meta(&mut self) {
        if let Some((gen, meta)) = self.meta.next_write() {
            self.out.push(Action::WriteMeta { gen, meta });
        }
    }

    /// Raises `localcnt` past the secondary's memory (if not already); returns the
    /// generation to wait for before answering a write that needed it.
    pub(super) fn raise_localcnt(&mut self) -> u64 {
        if self.mutated(Mutation::NoCounterRaise) {
            return 0;
        }
        let old = self.meta.current().localcnt;
        if let Some(raised) = self.memory.raise(old) {
            self.memory = self.memory.after_raise(old);
            let gen = self.change_meta(|m| m.localcnt = raised);
            self.raise_gen = Some(gen);
            self.out
                .push(Action::Notify(Notice::LocalcntRaised { to: raised }));
        }
        self.raise_gen.unwrap_or(0)
    }

    pub(super) fn meta_on_disk(&self, gen: u64) -> bool {
        self.meta.is_written(gen)
    }

    pub(super) fn on_meta_written(&mut self, gen: u64, ok: bool) {
        self.meta.written(gen, ok);
        if !ok {
            self.fail("metadata write failed");
            // The role ends all the same; the disk keeps the header before the change.
            if matches!(self.stopping, Some(super::Stopping::Recording(_))) {
                self.stopped();
                return;
            }
        }
        if self.raise_gen.is_some_and(|g| self.meta.is_written(g)) {
            self.raise_gen = None;
        }
        self.meta_waiters_ready(ok);
        self.pump_meta();
    }
}
