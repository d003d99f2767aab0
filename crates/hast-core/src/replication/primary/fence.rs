//! Fencing (`fence` in hast.conf, off by default as in FreeBSD): a primary without its
//! secondary accepts no write until the peer is known unable to become a second writer.
//!
//! Without it, a partition during which the failover manager promotes the other node
//! makes two primaries that both acknowledge writes: a split-brain, detected on the heal,
//! but every write of one side is lost to the other. With it (DRBD's
//! `fencing resource-only` with `fence-peer`):
//!
//! - when the session ends, or a write comes while none has been up since the role
//!   started, the gate closes and the shell runs `<fence> fence <resource>`
//!   ([`Action::Fence`]); new writes wait, reads go on;
//! - writes that were under way and that the secondary did not confirm wait too: their
//!   answer (and the counter raise it needs) comes after the verdict; so does a client
//!   FLUSH the secondary did not confirm (its success promises the secondary's copy of
//!   the writes before it, else it raises the counter);
//! - the program succeeded ([`Event::Fenced`] `ok`): the peer is fenced (a cluster
//!   constraint, the peer demoted, a quorum check passed...), writes go on degraded;
//! - it failed, or did not end within `fence_timeout`: every waiting write and flush
//!   and every later write fails with EIO, and none of them raises `localcnt` (nothing
//!   was acknowledged, and their extents stay owed in the bitmap, so the next sync, in
//!   whichever direction, makes both copies equal again). So a partition leaves the
//!   winner newer and the loser behind, never a split-brain. This lasts until a session
//!   is up again or the role ends;
//! - once a session is up and a sync pass has made the secondary whole again, the shell
//!   runs `<fence> unfence <resource>` ([`Action::Unfence`]): after every fence run
//!   (even a failed one may have left something in force), and once after the role
//!   starts (an earlier run of hastd may have left the peer fenced).
//!
//! The invariant: with fencing on, no write is answered with success unless the
//! secondary confirmed it or the fence program succeeded after the last session ended.

use super::link::Link;
use super::writes::FenceWait;
use super::{Action, Notice, Primary};

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
    gate: FenceState,
    /// The fence program in flight: its number and when it counts as failed. It may
    /// outlive the gate it was started for (a session came up meanwhile).
    running: Option<(u64, u64)>,
    next_gen: u64,
    /// A fence may be in force: unfence once the secondary is in step.
    unfence_owed: bool,
    /// A sync pass completed in the current session.
    in_step: bool,
}

impl Fencing {
    pub(super) fn new(timeout_ms: Option<u64>) -> Fencing {
        Fencing {
            timeout_ms,
            gate: if timeout_ms.is_some() {
                FenceState::Closed
            } else {
                FenceState::Off
            },
            running: None,
            next_gen: 1,
            unfence_owed: timeout_ms.is_some(),
            in_step: false,
        }
    }

    pub(super) fn state(&self) -> FenceState {
        self.gate
    }

    /// When the running program counts as failed.
    pub(super) fn due(&self) -> Option<u64> {
        match self.gate {
            FenceState::Fencing => self.running.map(|(_, due)| due),
            _ => None,
        }
    }
}

/// What the gate says about a new write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Admit {
    Pass,
    Wait,
    Refuse,
}

impl Primary {
    /// The gate for a new write with no session up (a session always lets it pass).
    pub(super) fn fence_admit(&mut self) -> Admit {
        if self.link.up_id().is_some() {
            return Admit::Pass;
        }
        match self.fencing.gate {
            FenceState::Off | FenceState::Open => Admit::Pass,
            FenceState::Closed => {
                self.fence_start();
                Admit::Wait
            }
            FenceState::Fencing => Admit::Wait,
            FenceState::Failed => Admit::Refuse,
        }
    }

    /// Whether a settled write's success must wait for the fence's verdict: the
    /// secondary did not confirm it and the peer is not fenced.
    pub(super) fn fence_holds_answer(&self) -> bool {
        !matches!(self.fencing.gate, FenceState::Off | FenceState::Open)
    }

    /// New writes wait for the verdict.
    pub(super) fn fence_holds_writes(&self) -> bool {
        self.fencing.gate == FenceState::Fencing && self.link.up_id().is_none()
    }

    /// The session ended: close the gate and fence at once (not at the next write), so
    /// that a cluster constraint is in place before the failover manager decides.
    pub(super) fn fence_session_lost(&mut self) {
        self.fencing.in_step = false;
        if matches!(self.fencing.gate, FenceState::Off) {
            return;
        }
        self.fencing.gate = FenceState::Closed;
        self.fence_start();
    }

    /// A session is up: writes are mirrored again, whatever the fence says.
    pub(super) fn fence_session_up(&mut self) {
        self.fencing.in_step = false;
        if !matches!(self.fencing.gate, FenceState::Off) {
            self.fencing.gate = FenceState::Open;
        }
    }

    /// A sync pass completed: the secondary has everything; lift a fence in force.
    pub(super) fn fence_in_step(&mut self) {
        self.fencing.in_step = true;
        self.unfence_if_due();
    }

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
        self.fencing.gate = FenceState::Fencing;
    }

    /// The fence program `gen` ended.
    pub(super) fn on_fenced(&mut self, gen: u64, ok: bool) {
        if self.fencing.running.map(|(g, _)| g) != Some(gen) {
            return;
        }
        self.fencing.running = None;
        if self.fencing.gate == FenceState::Fencing {
            if ok {
                self.fencing.gate = FenceState::Open;
                self.out.push(Action::Notify(Notice::Fenced));
            } else {
                self.fence_failed(false);
            }
        }
        self.unfence_if_due();
    }

    fn fence_failed(&mut self, timed_out: bool) {
        self.fencing.gate = FenceState::Failed;
        self.out
            .push(Action::Notify(Notice::FenceFailed { timed_out }));
    }

    /// Time-driven: the timeout, and the writes waiting for a verdict that came (they
    /// are let go only outside a handshake: a counter raise during one would make the
    /// secondary decide on stale counters).
    pub(super) fn fence_tick(&mut self) {
        if let Some(due) = self.fencing.due() {
            if self.now >= due {
                // The shell kills the program at the same timeout; a late verdict is
                // ignored.
                self.fencing.running = None;
                self.fence_failed(true);
            }
        }
        let verdict = match self.fencing.gate {
            FenceState::Failed => FenceWait::Refused,
            _ if self.stopping.is_some() && self.fence_holds_answer() => FenceWait::Refused,
            FenceState::Off | FenceState::Open if !self.handshaking() => FenceWait::Passed,
            _ => return,
        };
        self.fence_waiters_ready(verdict);
        self.flush_fence_ready(verdict == FenceWait::Passed);
    }

    fn handshaking(&self) -> bool {
        matches!(self.link, Link::Handshaking(..))
    }
}
