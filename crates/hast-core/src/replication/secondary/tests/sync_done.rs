//! `SyncDone`: after everything before it, recorded before it is answered.

use super::*;

#[test]
fn sync_done_waits_for_earlier_flushes_then_records_consistency_before_answering() {
    let mut h = H::with(disk(
        5,
        1,
        1,
        DataState::CONSISTENT.with(DataState::SYNC_TARGET),
    ));
    let s = h.connect(1);
    h.req(s, 1, write(0, true, false));
    h.done(h.local().0, Ok(()));
    let (fua_flush, _) = h.local();
    h.req(s, 2, PeerRequest::SyncDone { localcnt: 1 });
    h.req(s, 3, write(0, false, false));
    assert!(
        h.locals().is_empty(),
        "SyncDone waits for the flush in flight"
    );
    h.done(fua_flush, Ok(()));
    assert_eq!(h.replies(), [(1, Ok(None))]);
    let (sd_flush, op) = h.local();
    assert_eq!(
        op,
        LocalOp::Flush,
        "its own flush, and nothing after it yet"
    );
    h.done(sd_flush, Ok(()));
    let (_, meta) = h.write_meta().unwrap();
    assert!(meta.datastate.is_consistent());
    assert!(h.replies().is_empty() && h.locals().is_empty());
    h.meta_done(true);
    assert!(h.has(|a| matches!(a, A::Notice(Notice::SyncConfirmed))));
    assert_eq!(h.replies(), [(2, Ok(None))]);
    assert!(
        matches!(h.local().1, LocalOp::Write { .. }),
        "then the next request"
    );
    assert!(h.m.status().datastate.is_consistent());
}

#[test]
fn sync_done_after_a_failure_on_its_session_keeps_the_copy_inconsistent() {
    let mut h = H::with(disk(
        5,
        1,
        1,
        DataState::CONSISTENT.with(DataState::SYNC_TARGET),
    ));
    let s = h.connect(1);
    h.req(s, 1, write(0, false, false));
    h.done(h.local().0, Err(5));
    h.meta_done(true);
    h.req(s, 2, PeerRequest::SyncDone { localcnt: 1 });
    h.done(h.local().0, Ok(()));
    assert_eq!(h.replies(), [(2, Ok(None))]);
    assert!(h.has(|a| matches!(a, A::Notice(Notice::SyncDoneAfterFailure))));
    assert!(h.write_meta().is_none());
    let state = h.m.status().datastate;
    assert!(state.write_failed() && state.is_sync_target());
}

#[test]
fn a_failed_sync_done_flush_is_a_write_failure() {
    let mut h = H::with(disk(
        5,
        1,
        1,
        DataState::CONSISTENT.with(DataState::SYNC_TARGET),
    ));
    let s = h.connect(1);
    h.req(s, 1, PeerRequest::SyncDone { localcnt: 1 });
    h.done(h.local().0, Err(5));
    assert!(h.has(failed_notice) && h.replies().is_empty());
    assert!(h.write_meta().unwrap().1.datastate.write_failed());
    h.meta_done(true);
    assert_eq!(h.replies(), [(1, Err(5))]);
    assert!(!h.m.status().datastate.is_consistent());
}

#[test]
fn sync_done_whose_record_cannot_be_written_fails_and_changes_nothing() {
    let target = DataState::CONSISTENT.with(DataState::SYNC_TARGET);
    let mut h = H::with(disk(5, 1, 1, target));
    let s = h.connect(1);
    h.req(s, 1, PeerRequest::SyncDone { localcnt: 1 });
    h.done(h.local().0, Ok(()));
    h.meta_done(false);
    h.meta_done(false);
    assert_eq!(h.replies(), [(1, Err(EIO))]);
    assert_eq!(h.m.metadata().datastate, target);
    assert_eq!(h.m.status().datastate, target);
}

#[test]
fn sync_done_on_a_consistent_copy_writes_nothing() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, PeerRequest::SyncDone { localcnt: 1 });
    h.done(h.local().0, Ok(()));
    assert_eq!(h.replies(), [(1, Ok(None))]);
    assert!(h.write_meta().is_none());
}

/// The secondary remembers the primary's counter from the `SyncDone` that made it whole,
/// in the same metadata write as its consistency: a primary that dies before recording
/// the sync on its side then still finds this node "not written since" (no false
/// split-brain after a correct failover).
#[test]
fn sync_done_records_the_primarys_counter_with_the_consistency() {
    let mut h = H::with(disk(
        5,
        1,
        1,
        DataState::CONSISTENT.with(DataState::SYNC_TARGET),
    ));
    let s = h.connect(1);
    h.req(s, 1, PeerRequest::SyncDone { localcnt: 7 });
    h.done(h.local().0, Ok(()));
    assert!(h.replies().is_empty(), "answered before the record");
    let (_, meta) = h.write_meta().expect("the record");
    assert_eq!(meta.remotecnt, 7);
    assert!(meta.datastate.is_consistent());
    h.meta_done(true);
    assert_eq!(h.replies(), [(1, Ok(None))]);
}
