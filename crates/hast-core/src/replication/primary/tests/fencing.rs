//! Fencing (`fence.rs`): with it on, no write is answered with success unless the
//! secondary confirmed it or the fence program succeeded after the last session ended.

use super::*;
use crate::replication::errno;
#[cfg(feature = "mutations")]
use crate::replication::Mutation;

const FENCE_MS: u64 = 5000;

fn fenced_machine(mode: ReplicationMode) -> Primary {
    let mut p = machine(mode);
    p.settings.fence_timeout_ms = Some(FENCE_MS);
    p.fencing = super::super::fence::Fencing::new(Some(FENCE_MS));
    p
}

fn write(p: &mut Primary, now: u64, req: u64, offset: u64) -> Vec<Action> {
    p.handle(
        now,
        Event::Write {
            req: ReqId(req),
            offset,
            len: 4096,
            fua: false,
            op: WriteOp::Data,
        },
    )
}

fn fence_gen(actions: &[Action]) -> Option<u64> {
    actions.iter().find_map(|a| match a {
        Action::Fence { gen } => Some(*gen),
        _ => None,
    })
}

/// Carries a write's bitmap, local I/O and counter raise through; returns every action.
fn run_local(p: &mut Primary, now: u64, a: Vec<Action>) -> Vec<Action> {
    let mut all = settle_books(p, now, a);
    for (io, _) in local_io(&all.clone()) {
        let done = p.handle(now, Event::Local { io, result: Ok(()) });
        all.extend(settle_books(p, now, done));
    }
    all
}

#[test]
fn without_a_secondary_a_write_waits_for_the_fence_then_goes_on() {
    let mut p = fenced_machine(ReplicationMode::Memsync);
    let a = write(&mut p, 10, 1, 0);
    let gen = fence_gen(&a).expect("the first write starts the fence program");
    assert!(
        !a.iter()
            .any(|x| matches!(x, Action::WriteMap { .. } | Action::Local { .. })),
        "nothing of the write happens before the verdict: {a:?}"
    );
    assert_eq!(p.status().fence, FenceState::Fencing);
    // A second write waits too, and starts no second program.
    let a = write(&mut p, 11, 2, 4096);
    assert_eq!(fence_gen(&a), None);
    assert!(replied(&a, ReqId(2)).is_none());
    let a = p.handle(20, Event::Fenced { gen, ok: true });
    assert_eq!(p.status().fence, FenceState::Open);
    let a = run_local(&mut p, 20, a);
    assert_eq!(replied(&a, ReqId(1)), Some(Ok(None)));
    assert_eq!(replied(&a, ReqId(2)), Some(Ok(None)));
    assert_eq!(
        p.metadata_on_disk().localcnt,
        1,
        "degraded writes raise as always"
    );
}

#[test]
fn a_failed_fence_fails_writes_without_raising_the_counter_and_reads_go_on() {
    let mut p = fenced_machine(ReplicationMode::Memsync);
    let a = write(&mut p, 10, 1, 0);
    let gen = fence_gen(&a).unwrap();
    let a = p.handle(20, Event::Fenced { gen, ok: false });
    assert_eq!(replied(&a, ReqId(1)), Some(Err(errno::EIO)));
    assert_eq!(p.status().fence, FenceState::Failed);
    // Later writes fail at once; no program runs again until a session was up.
    let a = write(&mut p, 21, 2, 0);
    assert_eq!(replied(&a, ReqId(2)), Some(Err(errno::EIO)));
    assert_eq!(fence_gen(&a), None);
    let a = p.handle(
        22,
        Event::Read {
            req: ReqId(3),
            offset: 0,
            len: 4096,
        },
    );
    assert!(
        local_io(&a)
            .iter()
            .any(|(_, op)| matches!(op, LocalOp::Read { .. })),
        "reads are served: {a:?}"
    );
    assert_eq!(p.metadata().localcnt, 0, "nothing was acknowledged");
}

#[test]
fn a_fence_program_that_does_not_end_in_time_fails() {
    let mut p = fenced_machine(ReplicationMode::Fullsync);
    let a = write(&mut p, 10, 1, 0);
    let gen = fence_gen(&a).unwrap();
    assert_eq!(p.next_deadline(), Some(10 + FENCE_MS));
    let a = p.handle(10 + FENCE_MS - 1, Event::Tick);
    assert!(replied(&a, ReqId(1)).is_none());
    let a = p.handle(10 + FENCE_MS, Event::Tick);
    assert_eq!(replied(&a, ReqId(1)), Some(Err(errno::EIO)));
    assert!(a.contains(&Action::Notify(Notice::FenceFailed { timed_out: true })));
    // Its late success changes nothing.
    let _ = p.handle(10 + FENCE_MS + 5, Event::Fenced { gen, ok: true });
    assert_eq!(p.status().fence, FenceState::Failed);
}

/// A memsync write under way when the link drops, the secondary's `Received` never
/// came: its answer waits for the verdict of the fence started at the loss.
fn write_caught_by_the_loss(p: &mut Primary) -> (u64, Vec<Action>) {
    let s = SessionId(1);
    connect(p, s);
    assert_eq!(p.status().fence, FenceState::Open);
    let a = write(p, 100, 7, 0);
    let a = settle_books(p, 100, a);
    let io = local_io(&a)[0].0;
    let _ = p.handle(101, Event::Local { io, result: Ok(()) });
    let a = p.handle(102, Event::Lost { session: s });
    let gen = fence_gen(&a).expect("the loss starts the fence program at once");
    let a = settle_books(p, 102, a);
    assert!(replied(&a, ReqId(7)).is_none(), "{a:?}");
    (gen, a)
}

#[test]
fn a_write_the_secondary_did_not_confirm_is_answered_after_the_fence() {
    let mut p = fenced_machine(ReplicationMode::Memsync);
    let (gen, _) = write_caught_by_the_loss(&mut p);
    let a = p.handle(103, Event::Fenced { gen, ok: true });
    let a = settle_books(&mut p, 103, a);
    assert_eq!(replied(&a, ReqId(7)), Some(Ok(None)));
    let m = p.metadata_on_disk();
    assert!(
        m.localcnt > m.remotecnt,
        "acknowledged without the secondary: raised"
    );
}

#[test]
fn a_write_the_secondary_did_not_confirm_fails_if_the_fence_fails() {
    let mut p = fenced_machine(ReplicationMode::Memsync);
    let (gen, _) = write_caught_by_the_loss(&mut p);
    let before = p.metadata().localcnt;
    let a = p.handle(103, Event::Fenced { gen, ok: false });
    assert_eq!(replied(&a, ReqId(7)), Some(Err(errno::EIO)));
    assert_eq!(
        p.metadata().localcnt,
        before,
        "no raise: the other side stays newer"
    );
    assert!(
        p.status().owed > 0,
        "its extent stays owed to the next sync"
    );
}

#[test]
fn the_secondary_back_opens_the_gate_and_a_completed_sync_unfences_once() {
    let mut p = fenced_machine(ReplicationMode::Memsync);
    let (gen, _) = write_caught_by_the_loss(&mut p);
    let _ = p.handle(103, Event::Fenced { gen, ok: false });
    assert_eq!(p.status().fence, FenceState::Failed);
    let s2 = SessionId(2);
    let a = p.handle(
        200,
        Event::HandshakeBegin {
            session: s2,
            random: 9,
        },
    );
    let _ = settle_books(&mut p, 200, a);
    let reply = StateReply {
        localcnt: 0,
        remotecnt: 0,
        virgin: false,
        syncsrc: SyncSource::Primary,
        full_sync: false,
        mapsize: 0,
        consistent: true,
    };
    let a = p.handle(
        201,
        Event::HandshakeReply {
            session: s2,
            reply,
            peer_map: None,
        },
    );
    let mut all = settle_books(&mut p, 201, a);
    assert_eq!(p.status().fence, FenceState::Open);
    assert!(!all.contains(&Action::Unfence), "not before the sync");
    // Carry the sync (the owed extent) through until the SyncDone is confirmed.
    for _ in 0..10 {
        let mut next = Vec::new();
        for x in &all {
            match x {
                Action::Local { io, .. } => next.extend(p.handle(
                    202,
                    Event::Local {
                        io: *io,
                        result: Ok(()),
                    },
                )),
                Action::Send { seq, .. } => next.extend(p.handle(
                    202,
                    Event::Reply {
                        session: s2,
                        seq: *seq,
                        result: Ok(()),
                    },
                )),
                _ => {}
            }
        }
        all = settle_books(&mut p, 202, next);
        if all.contains(&Action::Unfence) {
            break;
        }
    }
    assert!(all.contains(&Action::Unfence), "{all:?} {:?}", p.status());
    // A write now goes to the secondary, with no fence.
    let a = write(&mut p, 300, 8, 8192);
    assert_eq!(fence_gen(&a), None);
}

#[test]
fn stopping_ends_the_wait() {
    let mut p = fenced_machine(ReplicationMode::Memsync);
    let (_gen, _) = write_caught_by_the_loss(&mut p);
    let a = write(&mut p, 104, 8, 4096);
    assert!(replied(&a, ReqId(8)).is_none());
    let a = p.handle(105, Event::Stop);
    assert_eq!(replied(&a, ReqId(7)), Some(Err(errno::EIO)));
    assert_eq!(replied(&a, ReqId(8)), Some(Err(errno::ESHUTDOWN)));
    let a = run_local(&mut p, 106, a);
    assert!(a.contains(&Action::Stopped) || p.is_stopped(), "{a:?}");
}

#[test]
fn without_fence_nothing_waits() {
    let mut p = machine(ReplicationMode::Memsync);
    let a = write(&mut p, 10, 1, 0);
    assert_eq!(fence_gen(&a), None);
    assert!(a.iter().any(|x| matches!(x, Action::WriteMap { .. })));
    assert_eq!(p.status().fence, FenceState::Off);
}

/// A memsync write the secondary received and wrote but had not flushed when the link
/// dropped: returns the fence run started by the loss.
fn undurable_write_then_loss(p: &mut Primary) -> u64 {
    super::durability::undurable_write(p);
    let a = p.handle(
        104,
        Event::Lost {
            session: SessionId(1),
        },
    );
    let gen = fence_gen(&a).unwrap();
    let _ = settle_books(p, 104, a);
    gen
}

#[test]
fn a_flush_the_secondary_did_not_confirm_waits_for_the_fence() {
    for ok in [false, true] {
        let mut p = fenced_machine(ReplicationMode::Memsync);
        let gen = undurable_write_then_loss(&mut p);
        let a = p.handle(106, Event::Flush { req: ReqId(9) });
        let (io, op) = local_io(&a)[0];
        assert_eq!(op, LocalOp::Flush);
        let a = p.handle(107, Event::Local { io, result: Ok(()) });
        let a = settle_books(&mut p, 107, a);
        assert!(replied(&a, ReqId(9)).is_none(), "{a:?}");
        let before = p.metadata().localcnt;
        let a = p.handle(108, Event::Fenced { gen, ok });
        let a = settle_books(&mut p, 108, a);
        let want = if ok { Ok(None) } else { Err(errno::EIO) };
        assert_eq!(replied(&a, ReqId(9)), Some(want), "fence ok: {ok}");
        // Its success promised durability the secondary did not confirm: raised. Its
        // failure promised nothing: the winner of the fence stays the newer copy.
        assert_eq!(p.metadata_on_disk().localcnt > before, ok, "fence ok: {ok}");
    }
}

/// A write waits for the fence when a handshake begins: returns whether the handshake
/// left `localcnt` alone (`false` shows the `RaiseForFenceWaiters` mutation).
fn handshake_leaves_the_counter_of_fence_waiters(p: &mut Primary) -> bool {
    let _ = write_caught_by_the_loss(p);
    let before = p.metadata().localcnt;
    let a = p.handle(
        110,
        Event::HandshakeBegin {
            session: SessionId(2),
            random: 9,
        },
    );
    let _ = settle_books(p, 110, a);
    p.metadata().localcnt == before
}

#[test]
fn a_handshake_does_not_raise_for_writes_waiting_for_the_fence() {
    let mut p = fenced_machine(ReplicationMode::Memsync);
    assert!(handshake_leaves_the_counter_of_fence_waiters(&mut p));
    #[cfg(feature = "mutations")]
    {
        let mut p = fenced_machine(ReplicationMode::Memsync);
        p.set_mutation(Some(Mutation::RaiseForFenceWaiters));
        assert!(!handshake_leaves_the_counter_of_fence_waiters(&mut p));
    }
}

/// A write waits for the fence; a session comes up that makes this copy a sync target,
/// then the fence succeeds: returns whether the write failed (`false` shows the
/// `FenceWaitersOnStaleSession` mutation: the sync would copy the secondary's data over
/// an acknowledged write).
fn waiters_fail_on_a_session_that_makes_this_copy_stale(p: &mut Primary) -> bool {
    let (gen, _) = write_caught_by_the_loss(p);
    let a = handshake_with_a_newer_secondary(p, SessionId(2));
    let a = settle_books(p, 110, a);
    assert!(p.status().stale && p.session().is_some(), "{a:?}");
    assert!(
        replied(&a, ReqId(7)).is_none(),
        "the verdict is still to come"
    );
    let a = p.handle(120, Event::Fenced { gen, ok: true });
    let a = settle_books(p, 120, a);
    replied(&a, ReqId(7)) == Some(Err(errno::EIO))
}

#[test]
fn writes_waiting_for_the_fence_fail_when_this_copy_becomes_a_sync_target() {
    let mut p = fenced_machine(ReplicationMode::Memsync);
    assert!(waiters_fail_on_a_session_that_makes_this_copy_stale(&mut p));
    #[cfg(feature = "mutations")]
    {
        let mut p = fenced_machine(ReplicationMode::Memsync);
        p.set_mutation(Some(Mutation::FenceWaitersOnStaleSession));
        assert!(!waiters_fail_on_a_session_that_makes_this_copy_stale(
            &mut p
        ));
    }
}
