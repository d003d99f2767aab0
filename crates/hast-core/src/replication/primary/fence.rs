//! Fencing (`fence` in hast.conf, off by default as in FreeBSD): a primary without its
//! secondary accepts no write until the peer is known unable to become a second writer.
//!
//! Without it, a partition during which the failover manager promotes the other node
//! makes two primaries that both acknowledge writes: a split-brain, detected on the heal,
//! but every write of one side is lost to the other. With it (DRBD's
//! `fencing resource-only` with `fence-peer`):
//!
//! - when the session ends, or a write comes while none has been up since the role
//!   started, the shell runs `<fence> fence <resource>` ([`Action::Fence`]); until it
//!   answers, new writes wait (reads go on);
//! - a write that settles without the secondary's confirmation (not `Written` there),
//!   and a client FLUSH whose success would promise what the secondary did not confirm,
//!   is answered with success only if a fence succeeded since the last session ended.
//!   Else it waits for the running program's verdict, or fails if none runs. A session
//!   that comes up meanwhile does not vouch for them: the secondary gets their data
//!   only from the sync, and may be promoted before it completes;
//! - the program succeeded ([`Event::Fenced`] `ok`): the peer is fenced (a cluster
//!   constraint, the peer demoted, a quorum check passed...), writes go on degraded;
//! - it failed, or did not end within `fence_timeout`: every waiting write and flush
//!   and every later write fails with EIO, and none of them raises `localcnt` (nothing
//!   was acknowledged, and their extents stay owed in the bitmap, so the next sync, in
//!   whichever direction, makes both copies equal again). So a partition leaves the
//!   winner newer and the loser behind, never a split-brain. New writes fail until a
//!   session is up again; what waited also fails if a session made this copy a sync
//!   target (the secondary's data is about to be copied over it);
//! - `<fence> unfence <resource>` ([`Action::Unfence`]) runs once a sync pass that
//!   started after every fence run ended has completed (a fresh proof that the
//!   secondary is in step), after every fence run (even a failed one may have left
//!   something in force) and once after the role starts (an earlier run of hastd may
//!   have left the peer fenced).
//!
//! The invariant: with fencing on, no write (or FLUSH) is answered with success unless
//! the secondary confirmed it or the fence program succeeded after the last session
//! ended. The simulator checks that no split-brain ever follows (fencing seeds).

use super::link::Link;
use super::{Action, Notice, Primary};
use crate::replication::Mutation;

/// Where fencing stands, as `hastctl status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceState {
    /// Fencing is not configured.
    Off,
    /// Writes pass: a session is up, or the peer was fenced since the last one ended.
    Open,
    /// No session and no fence since: the next write starts the fence program.
    Closed,
    /// The fence program runs; writes wait.
    Fencing,
    /// The fence program failed or timed out: writes fail (EIO) until a session is up.
    Failed,
}

impl FenceState {
    /// The word `hastctl status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            FenceState::Off => "off",
            FenceState::Open => "open",
            FenceState::Closed => "closed",
            FenceState::Fencing => "fencing",
            FenceState::Failed => "failed",
        }
    }
}

/// The fencing bookkeeping of one primary.
#[derive(Debug)]
pub(super) struct Fencing {
    /// `fence_timeout` in ms; `None`: fencing is off.
    timeout_ms: Option<u64>,
    /// A fence succeeded since the last session ended.
    fenced: bool,
    /// The last fence run since the last session ended failed (or timed out).
    failed: bool,
    /// The fence program in flight: its number and when it counts as failed.
    running: Option<(u64, u64)>,
    next_gen: u64,
    /// A fence may be in force: unfence once the secondary is in step.
    unfence_owed: bool,
    /// A sync pass completed since every fence run ended (and in this session).
    in_step: bool,
    /// The session ended with acknowledged writes the secondary had not flushed: this
    /// copy is the newer one for them unless the fence says the peer is the writer.
    deferred_raise: bool,
}

impl Fencing {
    pub(super) fn new(timeout_ms: Option<u64>) -> Fencing {
        Fencing {
            timeout_ms,
            fenced: false,
            failed: false,
            running: None,
            next_gen: 1,
            unfence_owed: timeout_ms.is_some(),
            in_step: false,
            deferred_raise: false,
        }
    }

    fn on(&self) -> bool {
        self.timeout_ms.is_some()
    }

    /// When the running program counts as failed.
    pub(super) fn due(&self) -> Option<u64> {
        self.running.map(|(_, due)| due)
    }
}

/// The fence's verdict for the writes (and flushes) waiting on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FenceWait {
    /// The peer is fenced: answer as settled.
    Passed,
    /// Not fenced: EIO, and no counter raise (nothing was acknowledged).
    Refused,
}

/// What the gate says about a new write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Pass,
    Wait,
    Refuse,
}

impl Primary {
    /// Where fencing stands, for `hastctl status`.
    pub(super) fn fence_state(&self) -> FenceState {
        let f = &self.fencing;
        if !f.on() {
            FenceState::Off
        } else if self.link.up_id().is_some() || f.fenced {
            FenceState::Open
        } else if f.running.is_some() {
            FenceState::Fencing
        } else if f.failed {
            FenceState::Failed
        } else {
            FenceState::Closed
        }
    }

    /// The gate for a new write (a session always lets it pass).
    pub(super) fn fence_admit(&mut self) -> Admit {
        if self.mutated(Mutation::NoFenceGate) {
            return Admit::Pass;
        }
        match self.fence_state() {
            FenceState::Off | FenceState::Open => Admit::Pass,
            FenceState::Closed => {
                self.fence_start();
                Admit::Wait
            }
            FenceState::Fencing => Admit::Wait,
            FenceState::Failed => Admit::Refuse,
        }
    }

    /// Whether a settled write's (or flush's) success the secondary did not confirm
    /// must wait for, or be refused by, the fence: no fence succeeded since the last
    /// session ended.
    pub(super) fn fence_holds_answer(&self) -> bool {
        self.fencing.on() && !self.fencing.fenced && !self.mutated(Mutation::NoFenceGate)
    }

    /// New writes wait for the verdict.
    pub(super) fn fence_holds_writes(&self) -> bool {
        self.fence_state() == FenceState::Fencing
    }

    /// The session ended: fence at once (not at the next write), so that a cluster
    /// constraint is in place before the failover manager decides.
    pub(super) fn fence_session_lost(&mut self) {
        self.fencing.in_step = false;
        if !self.fencing.on() {
            return;
        }
        self.fencing.fenced = false;
        self.fencing.failed = false;
        self.fence_start();
    }

    /// A session is up: new writes are mirrored again (what waited for a verdict still
    /// waits for it).
    pub(super) fn fence_session_up(&mut self) {
        self.fencing.in_step = false;
    }

    /// A sync pass completed: the secondary has everything; lift a fence in force.
    pub(super) fn fence_in_step(&mut self) {
        self.fencing.in_step = true;
        self.unfence_if_due();
    }

    /// Unfence only on a fresh proof that the secondary is in step: a completed sync
    /// pass after every fence run ended.
    fn unfence_if_due(&mut self) {
        let f = &mut self.fencing;
        if f.in_step && f.unfence_owed && f.running.is_none() && self.link.up_id().is_some() {
            f.unfence_owed = false;
            self.out.push(Action::Unfence);
        }
    }

    fn fence_start(&mut self) {
        let Some(timeout) = self.fencing.timeout_ms else {
            return;
        };
        if self.fencing.running.is_none() {
            let gen = self.fencing.next_gen;
            self.fencing.next_gen += 1;
            self.fencing.running = Some((gen, self.now + timeout));
            // Even a failed or killed run may have left something in force.
            self.fencing.unfence_owed = true;
            self.out.push(Action::Fence { gen });
            self.out.push(Action::Notify(Notice::Fencing));
        }
        // A program still running from an earlier loss decides for this one too: it
        // was started after the last session it could have fenced against had ended.
    }

    /// The fence program `gen` ended.
    pub(super) fn on_fenced(&mut self, gen: u64, ok: bool) {
        if self.fencing.running.map(|(g, _)| g) != Some(gen) {
            return;
        }
        self.fence_ended(ok, false);
    }

    fn fence_ended(&mut self, ok: bool, timed_out: bool) {
        self.fencing.running = None;
        self.fencing.fenced = ok;
        self.fencing.failed = !ok;
        self.out.push(Action::Notify(if ok {
            Notice::Fenced
        } else {
            Notice::FenceFailed { timed_out }
        }));
        if self.link.up_id().is_some() {
            // It ended while a session is up: what it put in force is lifted only
            // after a sync pass that starts now completes, which proves the secondary
            // in step *now*. A pass completed earlier proves nothing: the session may
            // have been cut silently since (found by the simulator: fencing seed 3528
            // lifted the other node's fence mid-partition).
            self.fencing.in_step = false;
            self.syncer_wake();
        }
        self.unfence_if_due();
    }

    /// Time-driven: the timeout, and what waits for a verdict (let go only outside a
    /// handshake: a counter raise during one would make the secondary decide on stale
    /// counters).
    pub(super) fn fence_tick(&mut self) {
        if let Some(due) = self.fencing.due() {
            if self.now >= due {
                // The shell kills the program at the same timeout; a late verdict is
                // ignored.
                self.fence_ended(false, true);
            }
        }
        if self.fencing.deferred_raise
            && (self.fencing.running.is_none() || self.stopping.is_some())
        {
            // The peer lost the fence to us, or we step down without a verdict (the
            // writes are ours): raise. We lost it (failed, timed out, or a session made
            // this copy a sync target): the winner is the writer, not us.
            self.fencing.deferred_raise = false;
            // A copy whose disk failed a flush promises nothing and must not look newer.
            let ours = self.stopping.is_some() || (self.fencing.fenced && !self.stale);
            if ours && !self.disk_failed {
                let _ = self.raise_localcnt();
            }
        }
        let verdict = if self.stopping.is_some() {
            FenceWait::Refused
        } else if self.fencing.running.is_some() || self.handshaking() {
            return;
        } else if self.stale && !self.mutated(Mutation::FenceWaitersOnStaleSession) {
            // A session made this copy a sync target: the secondary's data is about to
            // be copied over what those writes put here (found by the simulator,
            // fencing seed 282).
            FenceWait::Refused
        } else if self.fencing.fenced || !self.fence_holds_answer() {
            FenceWait::Passed
        } else {
            FenceWait::Refused
        };
        self.fence_waiters_ready(verdict);
        self.flush_fence_ready(verdict == FenceWait::Passed);
    }

    /// The session ended with acknowledged writes the secondary had not flushed (it
    /// may lose them in a power failure): this copy is the newer one for them, so the
    /// counter rises (docs/invariants.md, "Durable before clean"; before, nothing rose
    /// until the next write the secondary missed, and a secondary that lost power could
    /// become the sync source over them in a failback). With fencing the raise waits for
    /// the verdict (`fence_tick`): the node that lost the fence is not the newer one, so
    /// a partition is no split-brain (found by the simulator: fencing seed 22304).
    pub(super) fn fence_undurable_at_loss(&mut self) {
        if self.fencing.on() {
            self.fencing.deferred_raise = true;
        } else if !self.disk_failed && !self.stale {
            let _ = self.raise_localcnt();
        }
    }

    fn handshaking(&self) -> bool {
        matches!(self.link, Link::Handshaking(..))
    }
}
