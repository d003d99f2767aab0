//! The handshake: what is persisted before the reply, and in which order.

use super::*;

#[test]
fn the_handshake_persists_what_it_decides_before_accepting() {
    // Fresh secondary, primary paired already: adopt its resuid, full sync towards us.
    let mut h = H::with(disk(0, 0, 0, DataState::CONSISTENT));
    h.hello(1);
    assert!(h.has(|a| matches!(a, A::Welcome { .. })));
    let st = state_for(h.m.metadata(), 9, 3, 0, false);
    h.ev(E::State {
        session: SessionId(1),
        state: st,
    });
    assert!(!h.has(|a| matches!(a, A::Accept { .. })), "{:?}", h.out);
    h.fill(SessionId(1), true);
    let (_, meta) = h.write_meta().unwrap();
    assert_eq!(meta.resuid, 9);
    assert!(meta.datastate.is_sync_target());
    h.meta_done(true);
    let accept = h.out.iter().find_map(|a| match a {
        A::Accept {
            reply, send_bitmap, ..
        } => Some((*reply, *send_bitmap)),
        _ => None,
    });
    let (reply, send_bitmap) = accept.unwrap();
    assert!(reply.full_sync && reply.virgin && !send_bitmap);
    assert_eq!(reply.mapsize, 0);
    assert!(h.m.status().connected);
    assert!(!h.m.status().datastate.is_consistent());
}

#[test]
fn a_handshake_whose_metadata_cannot_be_written_is_refused_and_forgotten() {
    let mut h = H::with(disk(0, 0, 0, DataState::CONSISTENT));
    h.hello(1);
    let st = state_for(h.m.metadata(), 9, 3, 0, false);
    h.ev(E::State {
        session: SessionId(1),
        state: st,
    });
    h.fill(SessionId(1), true);
    h.meta_done(false);
    assert!(h.write_meta().is_some(), "retried at once");
    h.meta_done(false);
    let refused = h.out.iter().find_map(|a| match a {
        A::Refuse { message, .. } => Some(message.reason),
        _ => None,
    });
    assert_eq!(refused, Some(Refusal::LocalFailure));
    assert!(h.has(|a| matches!(a, A::Close { .. })));
    assert_eq!(h.m.metadata().resuid, 0);
    assert!(h.m.metadata().datastate.is_consistent());
    assert!(!h.m.status().connected);
}

/// Adopting a full sync's resuid makes the next handshake trust the bitmaps, while this
/// copy differs everywhere until the sync has run: every extent is marked first, and a
/// failure to mark them refuses the session with nothing adopted.
#[test]
fn a_full_sync_marks_every_extent_before_adopting_the_resuid() {
    let mut h = H::with(disk(0, 0, 0, DataState::CONSISTENT));
    h.hello(1);
    let st = state_for(h.m.metadata(), 9, 3, 0, false);
    h.ev(E::State {
        session: SessionId(1),
        state: st,
    });
    h.fill(SessionId(1), false);
    let refused = h.out.iter().find_map(|a| match a {
        A::Refuse { message, .. } => Some(message.reason),
        _ => None,
    });
    assert_eq!(refused, Some(Refusal::LocalFailure));
    assert!(h.write_meta().is_none());
    assert_eq!(h.m.metadata().resuid, 0);
}
