//! The end of a role after a failed final flush, and a sync from the secondary: rules
//! the simulator's seeds reach only rarely, each checked with its mutation on too.

use super::*;

/// A primary stepping down whose final flush fails: returns whether `Stopped` waited for
/// the `WRITE_FAILED` header to be on disk (`false` shows the `StopBeforeRecorded`
/// mutation).
fn stop_waits_for_the_failure_record(p: &mut Primary) -> bool {
    let a = p.handle(1, Event::Stop);
    let (io, op) = local_io(&a)[0];
    assert_eq!(op, LocalOp::Flush, "{a:?}");
    let a = p.handle(2, Event::Local { io, result: Err(5) });
    let Some(Action::WriteMeta { gen, meta }) = a
        .iter()
        .find(|x| matches!(x, Action::WriteMeta { .. }))
        .cloned()
    else {
        panic!("no WRITE_FAILED record: {a:?}");
    };
    assert!(meta.datastate.write_failed());
    if a.contains(&Action::Stopped) {
        return false;
    }
    let a = p.handle(3, Event::MetaWritten { gen, ok: true });
    assert!(a.contains(&Action::Stopped), "{a:?}");
    true
}

#[test]
fn a_failed_final_flush_is_on_disk_before_the_role_ends() {
    let mut p = machine(ReplicationMode::Memsync);
    assert!(stop_waits_for_the_failure_record(&mut p));
}

#[cfg(feature = "mutations")]
#[test]
fn the_stop_before_recorded_mutation_breaks_it() {
    let mut p = machine(ReplicationMode::Memsync);
    p.set_mutation(Some(Mutation::StopBeforeRecorded));
    assert!(!stop_waits_for_the_failure_record(&mut p));
}

/// A full sync from the secondary, every step answered with success; returns whether the
/// first extent is paid only after a FLUSH of the source (`false` shows the
/// `SyncSourceUnflushed` mutation: the extent's own local flush comes first).
fn sync_from_secondary_flushes_the_source(p: &mut Primary) -> bool {
    let s = SessionId(4);
    let a = handshake_with_a_newer_secondary(p, s);
    let mut pending = settle_books(p, 2, a);
    pending.extend(p.handle(3, Event::Tick));
    for now in 4..10_000 {
        let actions = settle_books(p, now, std::mem::take(&mut pending));
        for a in actions {
            match a {
                Action::Send {
                    req: PeerRequest::Flush,
                    ..
                } => return true,
                Action::Send {
                    session, seq, req, ..
                } => pending.extend(p.handle(
                    now,
                    if matches!(req, PeerRequest::Read { .. }) {
                        Event::Reply {
                            session,
                            seq,
                            result: Ok(()),
                        }
                    } else {
                        Event::Received { session, seq }
                    },
                )),
                Action::Local {
                    op: LocalOp::Flush, ..
                } => return false,
                Action::Local { io, .. } => {
                    pending.extend(p.handle(now, Event::Local { io, result: Ok(()) }))
                }
                _ => {}
            }
        }
        if pending.is_empty() {
            pending = p.handle(now, Event::Tick);
        }
    }
    panic!("the sync never finished an extent");
}

#[test]
fn a_sync_from_the_secondary_flushes_the_source_before_an_extent_is_paid() {
    let mut p = machine(ReplicationMode::Memsync);
    assert!(sync_from_secondary_flushes_the_source(&mut p));
}

#[cfg(feature = "mutations")]
#[test]
fn the_sync_source_unflushed_mutation_breaks_it() {
    let mut p = machine(ReplicationMode::Memsync);
    p.set_mutation(Some(Mutation::SyncSourceUnflushed));
    assert!(!sync_from_secondary_flushes_the_source(&mut p));
}
