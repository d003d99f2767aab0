//! The primary's state machine: every client request, local I/O, peer frame and timer
//! tick goes in as an [`Event`]; what to do comes out as [`Action`]s. One owner (the
//! daemon's event loop, or the simulator) feeds it; it never blocks and never does I/O.
//!
//! What lives here, once: the activemap and its bitmap writes, the range locks, the
//! counters and data state (through [`MetaWrites`]), the replication mode's ack point and
//! settlement ([`crate::replication::rules`]), FLUSH/FUA durability and the batched
//! durability flush, owed extents, the session with the secondary (sequence numbers, the
//! budget of unanswered bytes, the watchdog), and the sync scheduler.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | the machine's state, dispatch, status, stopping |
//! | `events.rs` | events, actions, notices, settings, status |
//! | `writes.rs` | a client write from admission to its answer |
//! | `reads.rs` | client reads and flushes, the durability flush |
//! | `link.rs` | handshake hand-over, sending, replies, loss, watchdog |
//! | `sync.rs` | copying owed extents, `SyncDone`, the counter mirror |
//! | `books.rs` | bitmap writes, metadata changes, I/O numbering |
//! | `fence.rs` | fencing: no write acknowledged without the secondary or a fenced peer |

mod books;
mod events;
mod fence;
mod link;
mod reads;
mod sync;
mod writes;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};

use crate::activemap::ActiveMap;
use crate::decision::PeerMemory;
use crate::metadata::Metadata;
use crate::rangelock::RangeLocks;
use crate::replication::meta::MetaWrites;
use crate::replication::{IoId, LocalOp, ReqId, SessionId};

pub use self::events::{Action, Event, Notice, Settings, Status};
pub use self::fence::FenceState;
use self::fence::Fencing;
use self::link::Link;
use self::reads::{FlushReq, ReadReq};
use self::sync::Syncer;
use self::writes::{HeldWrite, WriteReq};

/// How long replicated writes wait, batched, for the flush of both nodes that makes them
/// durable (and lets their extents become clean). It costs an fdatasync of this node's
/// provider: at 100 ms that halved 4 KiB random-write IOPS (bench, 2026-11-29); at 1 s
/// the pair writes as fast as before the local flush existed. Nothing waits for it but
/// the extents' cleaning (a client FLUSH or FUA flushes both at once).
pub const DURABILITY_DELAY_MS: u64 = 1000;
/// Delay that batches bitmap writes nobody waits for (extents that became clean).
pub const LAZY_MAP_DELAY_MS: u64 = 200;
/// Bytes of write data sent to the secondary and not yet answered, at most. This bounds
/// the memory an `async` backlog takes and how far `async` runs ahead of the secondary
/// (a single request larger than this is still sent, alone).
pub const UNANSWERED_BYTES: u64 = 64 << 20;
/// Extents the sync copies at once, so a link with latency stays busy.
pub const SYNC_WINDOW: usize = 4;
/// Attempts per sync chunk before its extent is left owed for the next round.
pub const SYNC_ATTEMPTS: u32 = 3;
/// Pause before another round when chunks failed on a disk.
pub const SYNC_RETRY_MS: u64 = 5000;
/// The application counts as busy (for `syncrate`) this long after its last request.
pub const BUSY_MS: u64 = 1000;

/// The primary of one resource.
#[derive(Debug)]
pub struct Primary {
    settings: Settings,
    now: u64,
    map: ActiveMap,
    /// A bitmap write is in flight (one at a time).
    map_busy: bool,
    /// When the next lazy bitmap write is due.
    lazy_due: Option<u64>,
    locks: RangeLocks,
    meta: MetaWrites,
    memory: PeerMemory,
    /// The generation of the pending counter raise, if one is not yet on disk.
    raise_gen: Option<u64>,
    /// This copy is a sync target (`SYNC_TARGET`).
    stale: bool,
    link: Link,
    writes: BTreeMap<ReqId, WriteReq>,
    /// Writes waiting for their range lock, and sync chunks behind them, in order.
    lock_queue: VecDeque<ReqId>,
    /// Writes that arrived during a handshake, in order (see `hold_write`).
    held: VecDeque<HeldWrite>,
    reads: BTreeMap<ReqId, ReadReq>,
    flushes: BTreeMap<ReqId, FlushReq>,
    /// What each local I/O in flight belongs to.
    ios: BTreeMap<IoId, IoOwner>,
    next_io: u64,
    /// Writes the secondary has written but not flushed: pending until its next flush.
    undurable: Vec<(u64, u64)>,
    durability_due: Option<u64>,
    /// The durability flush in flight.
    durability: Option<reads::Durability>,
    /// Writes answered with success so far, and how many of the first ones a flush on
    /// the secondary is known to cover (a client FLUSH beyond it raises the counter if
    /// the secondary does not confirm it).
    acked_writes: u64,
    flushed_upto: u64,
    syncer: Syncer,
    /// The provider cannot discard.
    no_discard: bool,
    split_brain: bool,
    last_request: Option<u64>,
    stopping: Option<Stopping>,
    failed: bool,
    /// A local flush failed: the local copy may have lost acknowledged writes (Linux
    /// may drop the dirty pages). This node stops serving (EIO) and is marked
    /// `WRITE_FAILED`; the secondary has the data, and a sync repairs this copy.
    disk_failed: bool,
    fencing: Fencing,
    out: Vec<Action>,
    #[cfg(feature = "mutations")]
    mutation: Option<crate::replication::Mutation>,
}

/// Who a local I/O belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IoOwner {
    Write(ReqId),
    Read(ReqId),
    Flush(ReqId),
    Sync(u64),
    Durability,
    FinalFlush,
}

/// Where stopping stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stopping {
    /// Waiting for requests and background settles.
    Draining,
    /// The final local flush is in flight.
    Flushing,
    /// Waiting for metadata generation `.0` to reach the disk: what a failed final flush
    /// recorded (`WRITE_FAILED`) must be there before the role ends, because the next
    /// role (a secondary, a promotion) reads the header from the disk.
    Recording(u64),
    /// Done.
    Stopped,
}

impl Primary {
    /// A primary over a provider whose metadata is `meta` and whose on-disk bitmap was
    /// loaded into `map` (every set extent owed: a write to it may have been interrupted).
    pub fn new(settings: Settings, meta: Metadata, map: ActiveMap, now: u64) -> Primary {
        let stale = meta.datastate.is_sync_target();
        Primary {
            settings,
            now,
            map,
            map_busy: false,
            lazy_due: None,
            locks: RangeLocks::new(),
            meta: MetaWrites::new(meta),
            // Not connected since start: the secondary may have missed writes of an
            // earlier run, so the first unconfirmed write raises the counter.
            memory: PeerMemory::UNKNOWN,
            raise_gen: None,
            stale,
            link: Link::Down,
            writes: BTreeMap::new(),
            lock_queue: VecDeque::new(),
            held: VecDeque::new(),
            reads: BTreeMap::new(),
            flushes: BTreeMap::new(),
            ios: BTreeMap::new(),
            next_io: 1,
            undurable: Vec::new(),
            durability_due: None,
            durability: None,
            acked_writes: 0,
            flushed_upto: 0,
            syncer: Syncer::default(),
            no_discard: false,
            split_brain: false,
            last_request: None,
            stopping: None,
            failed: false,
            disk_failed: false,
            fencing: Fencing::new(settings.fence_timeout_ms),
            out: Vec::new(),
            #[cfg(feature = "mutations")]
            mutation: None,
        }
    }

    /// Turns one rule off (simulator only).
    #[cfg(feature = "mutations")]
    pub fn set_mutation(&mut self, mutation: Option<crate::replication::Mutation>) {
        self.mutation = mutation;
    }

    #[cfg(feature = "mutations")]
    fn mutated(&self, m: crate::replication::Mutation) -> bool {
        self.mutation == Some(m)
    }

    #[cfg(not(feature = "mutations"))]
    fn mutated(&self, _: crate::replication::Mutation) -> bool {
        false
    }

    /// Applies a configuration reload (the mode takes effect for new requests; a change
    /// of fencing takes effect at the next role change).
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = Settings {
            fence_timeout_ms: self.settings.fence_timeout_ms,
            ..settings
        };
    }

    /// Feeds one event at time `now` (milliseconds, monotonic); returns what to do.
    pub fn handle(&mut self, now: u64, event: Event) -> Vec<Action> {
        self.now = self.now.max(now);
        match event {
            Event::Write {
                req,
                offset,
                len,
                fua,
                op,
            } => self.on_write(req, offset, len, fua, op),
            Event::Flush { req } => self.on_flush(req),
            Event::Read { req, offset, len } => self.on_read(req, offset, len),
            Event::Local { io, result } => self.on_local(io, result),
            Event::MapWritten { gen, ok } => self.on_map_written(gen, ok),
            Event::MetaWritten { gen, ok } => self.on_meta_written(gen, ok),
            Event::HandshakeBegin { session, random } => self.on_handshake_begin(session, random),
            Event::HandshakeReply {
                session,
                reply,
                peer_map,
            } => self.on_handshake_reply(session, reply, peer_map),
            Event::HandshakeFailed {
                session,
                split_brain,
            } => self.on_handshake_failed(session, split_brain),
            Event::Received { session, seq } => self.on_received(session, seq),
            Event::Reply {
                session,
                seq,
                result,
            } => self.on_reply(session, seq, result),
            Event::Lost { session } => self.on_lost(session),
            Event::Fenced { gen, ok } => self.on_fenced(gen, ok),
            Event::Tick => {}
            Event::Stop => {
                if self.stopping.is_none() {
                    self.stopping = Some(Stopping::Draining);
                }
            }
        }
        self.on_tick();
        std::mem::take(&mut self.out)
    }

    /// The earliest time at which a [`Event::Tick`] has something to do.
    pub fn next_deadline(&self) -> Option<u64> {
        [
            self.durability_due,
            self.lazy_due,
            self.link.watchdog_due(self.settings.timeout_ms),
            self.syncer.due(),
            self.fencing.due(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Whether [`Action::Stopped`] was given.
    pub fn is_stopped(&self) -> bool {
        self.stopping == Some(Stopping::Stopped)
    }

    /// The session that may carry requests, if any.
    pub fn session(&self) -> Option<SessionId> {
        self.link.up_id()
    }

    /// The metadata as the node acts on it.
    pub fn metadata(&self) -> &Metadata {
        self.meta.current()
    }

    /// The metadata known to be on disk.
    pub fn metadata_on_disk(&self) -> &Metadata {
        self.meta.on_disk()
    }

    /// The activemap (for tests and the simulator's invariant checks).
    pub fn activemap(&self) -> &ActiveMap {
        &self.map
    }

    /// A snapshot for `hastctl status`.
    pub fn status(&self) -> Status {
        let m = self.meta.current();
        Status {
            connected: self.link.up_id().is_some(),
            dirty: self.map.dirty_bytes(),
            owed: self.map.sync_owed_bytes(),
            counters: (m.resuid, m.localcnt, m.remotecnt),
            keepdirty: self.map.keepdirty(),
            stale: self.stale,
            split_brain: self.split_brain,
            sync: self.syncer.progress(self.now),
            local_queue: self.ios.len() as u64,
            peer_queues: self.link.queue_sizes(),
            disk_failed: self.disk_failed,
            fence: self.fence_state(),
        }
    }

    fn on_local(&mut self, io: IoId, result: Result<(), u32>) {
        let Some(owner) = self.ios.remove(&io) else {
            return;
        };
        // After a failed flush nothing this disk reports proves anything: a later flush
        // "succeeds" over pages the kernel dropped, a read may return what lies under
        // them. Every I/O counts as failed from then on.
        let result = if self.disk_failed
            && !self.mutated(crate::replication::Mutation::TrustDiskAfterFailedFlush)
        {
            result.and(Err(crate::replication::errno::EIO))
        } else {
            result
        };
        match owner {
            IoOwner::Write(req) => self.write_local_done(req, result),
            IoOwner::Read(req) => self.read_local_done(req, io, result),
            IoOwner::Flush(req) => self.flush_local_done(req, result),
            IoOwner::Sync(ext) => self.sync_local_done(ext, io, result),
            IoOwner::Durability => self.durability_local_done(result),
            IoOwner::FinalFlush => {
                if let Err(e) = result {
                    self.local_flush_failed(e);
                }
                self.stopping = Some(Stopping::Recording(self.meta.generation()));
            }
        }
    }

    /// A local fdatasync failed: what was written since the last successful one may be
    /// gone from this disk (the kernel may drop the dirty pages), so this copy can no
    /// longer be trusted for reads nor vouch for writes. Fail-stop: every later request
    /// gets EIO, the copy is recorded inconsistent (it refuses promotion and is never a
    /// sync source), and the failover manager moves the role to the secondary, which has
    /// every acknowledged write; a sync from it repairs this copy (its dirty extents are
    /// all still marked: nothing becomes clean before a successful local flush).
    fn local_flush_failed(&mut self, errno: u32) {
        if self.disk_failed {
            return;
        }
        self.disk_failed = true;
        let _ = self.change_meta(|m| {
            m.datastate = m.datastate.with(crate::metadata::DataState::WRITE_FAILED);
        });
        // Nothing more may flow from this copy to the secondary (a sync from it would
        // spread what it lost), and no new session starts (see `on_handshake_begin`).
        self.drop_session("the local disk failed a flush: this copy is no longer a source");
        self.fail(&format!(
            "a local flush failed (errno {errno}): this copy may have lost written data; \
             serving stops, make the other node primary"
        ));
    }

    /// Metadata reached the disk (or failed to): everything waiting on it goes on.
    fn meta_waiters_ready(&mut self, ok: bool) {
        self.write_meta_ready(ok);
        self.flush_meta_ready(ok);
        self.sync_meta_ready();
        self.link_meta_ready();
    }

    /// Everything time-driven, after every event.
    fn on_tick(&mut self) {
        self.fence_tick();
        self.release_held();
        self.durability_tick();
        self.lazy_map_tick();
        self.watchdog_tick();
        self.sync_tick();
        self.stop_tick();
    }

    fn stopped(&mut self) {
        self.stopping = Some(Stopping::Stopped);
        self.out.push(Action::Stopped);
    }

    /// Finishing a role: once nothing is in flight, the last durability flush, the last
    /// bitmap write, a local flush, then [`Action::Stopped`].
    fn stop_tick(&mut self) {
        if let Some(Stopping::Recording(gen)) = self.stopping {
            if self.meta.is_written(gen)
                || self.mutated(crate::replication::Mutation::StopBeforeRecorded)
            {
                self.stopped();
            }
            return;
        }
        if self.stopping != Some(Stopping::Draining) {
            return;
        }
        self.syncer_stop();
        let busy = !self.writes.is_empty()
            || !self.held.is_empty()
            || !self.reads.is_empty()
            || !self.flushes.is_empty()
            || self.ios.values().any(|o| *o != IoOwner::FinalFlush)
            || self.durability_in_flight()
            || self.map_busy
            || self.meta.busy();
        if busy {
            return;
        }
        if !self.undurable.is_empty() && !self.disk_failed {
            // With the session still up, the last writes get their flush there, so a
            // clean switchover leaves nothing owed.
            self.durability_due = Some(self.now);
            self.durability_tick();
            return;
        }
        if self.map.map_write_needed() {
            self.want_map(self.map.generation());
            return;
        }
        let io = self.new_io(IoOwner::FinalFlush);
        self.out.push(Action::Local {
            io,
            op: LocalOp::Flush,
        });
        self.stopping = Some(Stopping::Flushing);
    }
}
