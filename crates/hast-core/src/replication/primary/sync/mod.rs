//! The sync scheduler: for as long as a session lives, copy the owed extents (ours ∪ the
//! secondary's, merged at the handshake, and debt that appears later) in the direction
//! the counters decided, [`SYNC_WINDOW`] extents at a time, chunk by chunk under a sync
//! range lock (an application write to the same bytes waits, and a waiting chunk keeps
//! new writes off its range; `chunks.rs`). A pass ends when nothing is owed and no write
//! from before the session is unsettled; the secondary confirms it (`SyncDone`:
//! everything it applied is durable, and it records its copy as consistent and our
//! `localcnt` as its `remotecnt`), then the primary records the secondary's `localcnt`
//! and clears its own `SYNC_TARGET`, in one metadata write. Debt that appears later
//! wakes the next pass.

mod chunks;

use std::collections::BTreeMap;

use super::link::Owner;
use super::{Action, Notice, Primary, SYNC_RETRY_MS, SYNC_WINDOW};
use crate::decision::{self, PeerMemory};
use crate::metadata::DataState;
use crate::proto::handshake::SyncSource;
use crate::rangelock::LockId;
use crate::replication::{IoId, Mutation, PeerRequest};

/// Where the sync stands.
#[derive(Debug, Default)]
pub(super) struct Syncer {
    state: SyncState,
    /// Debt appeared while a pass was not running.
    wake: bool,
    /// Pacing for `syncrate`: when the next chunk may start.
    pace_next: u64,
}

#[derive(Debug, Default)]
enum SyncState {
    /// No session.
    #[default]
    Off,
    /// Copying.
    Pass(Pass),
    /// `SyncDone` sent, waiting for the secondary.
    Confirming {
        copied: u64,
        ms: u64,
        /// The `localcnt` sent in `SyncDone`.
        localcnt: u64,
    },
    /// The mirror of the counters is being written.
    Mirroring { gen: u64, copied: u64, ms: u64 },
    /// Nothing owed; waiting for debt.
    Idle,
}

#[derive(Debug)]
struct Pass {
    total: u64,
    copied: u64,
    started: u64,
    cursor: u64,
    failed: u32,
    retry_at: Option<u64>,
    copies: BTreeMap<u64, Copy>,
}

#[derive(Debug)]
struct Copy {
    chunks: Vec<(u64, u64)>,
    index: usize,
    attempts: u32,
    stage: Stage,
    lock: Option<LockId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Waiting for its sync range lock (or for the pacer).
    Waiting,
    ReadLocal(IoId),
    SendWrite(u64),
    ReadPeer(u64),
    WriteLocal(IoId),
    /// Syncing from the secondary: its copy of the extent may still be in its page
    /// cache (written through a stale primary, or by a secondary that was killed before
    /// its flush): flushed there before the extent is paid.
    FlushPeer(u64),
    FlushLocal(IoId),
}

impl Syncer {
    pub(super) fn due(&self) -> Option<u64> {
        match &self.state {
            SyncState::Pass(p) => {
                let pacing = p
                    .copies
                    .values()
                    .any(|c| c.stage == Stage::Waiting)
                    .then_some(self.pace_next);
                [p.retry_at, pacing].into_iter().flatten().min()
            }
            _ => None,
        }
    }

    pub(super) fn progress(&self, now: u64) -> Option<(u64, u64)> {
        match &self.state {
            SyncState::Pass(p) if p.total > 0 => Some((p.copied, now.saturating_sub(p.started))),
            _ => None,
        }
    }
}

impl Primary {
    pub(super) fn syncer_start(&mut self) {
        self.syncer.wake = false;
        self.new_pass(true);
    }

    pub(super) fn syncer_wake(&mut self) {
        match self.syncer.state {
            SyncState::Idle => self.new_pass(false),
            SyncState::Off => {}
            _ => self.syncer.wake = true,
        }
    }

    fn new_pass(&mut self, first: bool) {
        let total = self.map.sync_owed_bytes();
        let source = self
            .session_facts()
            .map(|(_, src, _)| src)
            .unwrap_or(SyncSource::Primary);
        if total > 0 {
            self.out.push(Action::Notify(Notice::SyncStarted {
                bytes: total,
                source,
            }));
        } else if first && !self.writes_outside_session() {
            // (With writes from before the session still settling, they become the
            // debt of this pass instead, and its end is reported.)
            self.out.push(Action::Notify(Notice::InSync));
        }
        self.syncer.state = SyncState::Pass(Pass {
            total,
            copied: 0,
            started: self.now,
            cursor: 0,
            failed: 0,
            retry_at: None,
            copies: BTreeMap::new(),
        });
    }

    /// Moves the sync along (after every event).
    pub(super) fn sync_tick(&mut self) {
        if self.stopping.is_some() {
            return;
        }
        if matches!(self.syncer.state, SyncState::Idle) && self.syncer.wake {
            self.syncer.wake = false;
            self.new_pass(false);
        }
        let SyncState::Pass(p) = &mut self.syncer.state else {
            return;
        };
        if p.retry_at.is_some_and(|t| self.now < t) {
            return;
        }
        p.retry_at = None;
        // Fill the window.
        while p.copies.len() < SYNC_WINDOW {
            let Some(ext) = self.map.next_sync_extent(p.cursor) else {
                break;
            };
            p.cursor = ext + 1;
            if p.copies.contains_key(&ext) {
                continue;
            }
            let chunks: Vec<(u64, u64)> = self.map.sync_chunks(ext).collect();
            p.copies.insert(
                ext,
                Copy {
                    chunks,
                    index: 0,
                    attempts: 0,
                    stage: Stage::Waiting,
                    lock: None,
                },
            );
        }
        self.sync_locks_freed();
        self.pass_end_check();
    }

    /// Locks were released (or the window has room): waiting chunks try again.
    pub(super) fn sync_locks_freed(&mut self) {
        let SyncState::Pass(p) = &self.syncer.state else {
            return;
        };
        let waiting: Vec<u64> = p
            .copies
            .iter()
            .filter(|(_, c)| c.stage == Stage::Waiting)
            .map(|(e, _)| *e)
            .collect();
        for ext in waiting {
            self.start_chunk(ext);
        }
    }

    /// A pass with nothing left in flight: retry later if extents failed, rewind if
    /// debt appeared behind the cursor, else ask the secondary to confirm.
    fn pass_end_check(&mut self) {
        let outside = self.writes_outside_session() && !self.mutated(Mutation::EarlySyncDone);
        let SyncState::Pass(p) = &mut self.syncer.state else {
            return;
        };
        if !p.copies.is_empty() || self.map.next_sync_extent(p.cursor).is_some() {
            return;
        }
        if p.failed > 0 {
            p.failed = 0;
            p.cursor = 0;
            p.retry_at = Some(self.now + SYNC_RETRY_MS);
            return;
        }
        if self.map.next_sync_extent(0).is_some() {
            p.cursor = 0;
            return self.sync_tick();
        }
        // `SyncDone` tells the secondary that it has everything: not while writes from
        // before the session may still become its debt (checked again after each event).
        if outside {
            return;
        }
        let (copied, ms) = (p.copied, self.now.saturating_sub(p.started));
        let localcnt = self.meta.current().localcnt;
        // From now on the secondary may remember `localcnt` (it records it when it
        // applies this, before answering): a write it does not confirm must raise past
        // it even if the answer never comes.
        if !self.mutated(Mutation::ForgetSyncDoneInFlight) {
            self.memory = self.memory.may_remember(localcnt);
        }
        match self.send(Owner::SyncDone, PeerRequest::SyncDone { localcnt }, None) {
            Some(_) => {
                self.syncer.state = SyncState::Confirming {
                    copied,
                    ms,
                    localcnt,
                }
            }
            None => self.syncer.state = SyncState::Off,
        }
    }

    /// The secondary's answer to `SyncDone`.
    pub(super) fn sync_done_reply(&mut self, result: Result<(), u32>) {
        let SyncState::Confirming {
            copied,
            ms,
            localcnt: synced,
        } = self.syncer.state
        else {
            return;
        };
        if let Err(errno) = result {
            self.out.push(Action::Notify(Notice::PeerFailed {
                offset: 0,
                len: 0,
                errno,
            }));
            self.drop_session("the secondary could not make the synchronized data durable");
            return;
        }
        if self.map.sync_owed_bytes() > 0 {
            // Debt appeared meanwhile: nothing is recorded, another pass copies it.
            self.new_pass(false);
            return;
        }
        let Some((_, _, peer)) = self.session_facts() else {
            return;
        };
        // The secondary recorded `synced` as its memory of us before it confirmed.
        let ((_, remotecnt), _) = decision::counters_after_sync(synced, peer.0);
        let gen = self.change_meta(|m| {
            m.remotecnt = remotecnt;
            m.datastate = DataState::CONSISTENT;
        });
        self.memory = PeerMemory::learned(synced);
        self.raise_gen = None;
        if self.stale {
            self.stale = false;
            self.out.push(Action::Notify(Notice::UpToDate));
        }
        self.syncer.state = SyncState::Mirroring { gen, copied, ms };
        self.sync_meta_ready();
    }

    pub(super) fn sync_meta_ready(&mut self) {
        let SyncState::Mirroring { gen, copied, ms } = self.syncer.state else {
            return;
        };
        if !self.meta_on_disk(gen) {
            return;
        }
        if copied > 0 {
            self.out
                .push(Action::Notify(Notice::SyncComplete { bytes: copied, ms }));
        }
        self.syncer.state = SyncState::Idle;
        self.fence_in_step();
        if std::mem::take(&mut self.syncer.wake) || self.map.sync_owed_bytes() > 0 {
            self.new_pass(false);
        }
    }

    /// The session is gone: the pass is interrupted, its locks and intents released.
    pub(super) fn syncer_lost(&mut self) {
        let state = std::mem::take(&mut self.syncer.state);
        if let SyncState::Pass(p) = state {
            for c in p.copies.into_values() {
                if let Some(id) = c.lock {
                    self.locks.unlock(id);
                }
            }
            self.locks.cancel_sync_wait();
            if p.total > 0 {
                self.out.push(Action::Notify(Notice::SyncInterrupted {
                    bytes: p.copied,
                    ms: self.now.saturating_sub(p.started),
                }));
            }
            self.pump_locks();
        }
        self.syncer.wake = false;
    }

    /// The role is ending: the sync stops where it is (the extents stay owed).
    pub(super) fn syncer_stop(&mut self) {
        if matches!(self.syncer.state, SyncState::Pass(_)) {
            self.syncer_lost();
        }
    }
}
