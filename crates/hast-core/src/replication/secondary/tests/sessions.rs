//! Sessions: what survives a lost connection, a new primary, refusals.

use super::*;

#[test]
fn everything_queued_is_applied_after_the_connection_is_lost() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, write(0, false, true));
    let (io, _) = h.local();
    // Write 3 waits behind the flush, which waits for write 1: one on the disk, one
    // still queued when the connection goes.
    h.req(s, 2, PeerRequest::Flush);
    h.req(s, 3, write(8192, false, true));
    assert!(h.locals().is_empty());
    h.ev(E::Lost { session: s });
    assert_eq!(h.out, [A::Drop { session: s }]);
    assert!(!h.m.status().connected);
    h.req(s, 4, write(0, false, true));
    assert!(h.out.is_empty(), "nothing more is taken from it");
    h.done(io, Ok(()));
    assert_eq!(h.replies(), [(1, Ok(None))], "replies still emitted");
    let l = h.locals();
    assert_eq!(l[0].1, LocalOp::Flush);
    assert!(matches!(l[1].1, LocalOp::Write { offset: 8192, .. }));
    h.done(l[1].0, Ok(()));
    assert_eq!(h.replies(), [(3, Ok(None))]);
    h.done(l[0].0, Ok(()));
    assert_eq!(h.replies(), [(2, Ok(None))]);
    assert!(
        h.has(|a| *a == A::Close { session: s }),
        "closed after its last reply"
    );
}

#[cfg(feature = "mutations")]
#[test]
fn the_drop_queue_mutation_forgets_requests_it_reported_received() {
    let mut h = H::new();
    h.m.set_mutation(Some(Mutation::DropSecondaryQueue));
    let s = h.connect(1);
    h.req(s, 1, write(0, false, true));
    let (io, _) = h.local();
    h.req(s, 2, PeerRequest::Flush);
    h.req(s, 3, write(4096, false, true));
    assert!(h.has(|a| matches!(a, A::Received { seq: 3, .. })));
    h.ev(E::Lost { session: s });
    h.done(io, Ok(()));
    assert!(h.locals().is_empty(), "the flush and write 3 are gone");
    assert!(h.has(|a| *a == A::Close { session: s }));
}

#[test]
fn a_new_primary_waits_for_the_old_queue_and_sees_its_failures() {
    let mut h = H::new();
    let old = h.connect(1);
    h.req(old, 1, write(0, false, true));
    let (io, _) = h.local();
    h.req(old, 2, write(4096, false, true));
    let (io2, _) = h.local();
    h.hello(2);
    assert!(h.has(|a| *a
        == A::Notice(Notice::Replaced {
            old,
            new: SessionId(2)
        })));
    assert!(h.has(|a| *a == A::Drop { session: old }));
    assert!(h.has(|a| matches!(
        a,
        A::Welcome {
            session: SessionId(2),
            ..
        }
    )));
    let st = state_for(h.m.metadata(), 5, 1, 1, false);
    h.ev(E::State {
        session: SessionId(2),
        state: st,
    });
    assert!(
        !h.has(|a| matches!(a, A::Accept { .. })),
        "deferred: {:?}",
        h.out
    );
    h.done(io, Ok(()));
    h.done(io2, Err(5));
    h.meta_done(true);
    // The old session's last reply, its close, then the decision: with the failure on
    // record, this copy is no sync source and its state says so.
    let pos = |f: &dyn Fn(&SecondaryAction) -> bool| h.out.iter().position(f);
    let reply = pos(&|a| matches!(a, A::Reply { seq: 2, .. })).unwrap();
    let close = pos(&|a| *a == A::Close { session: old }).unwrap();
    let accept = h.out.iter().find_map(|a| match a {
        A::Accept { reply, .. } => Some(*reply),
        _ => None,
    });
    let accept_at = pos(&|a| matches!(a, A::Accept { .. })).unwrap();
    assert!(reply < close && close < accept_at, "{:?}", h.out);
    assert!(!accept.unwrap().consistent);
    // And the new session clears the map again before its first request.
    h.req(SessionId(2), 1, write(0, false, false));
    assert!(h.has(|a| *a
        == A::ClearBitmap {
            session: SessionId(2)
        }));
}

#[test]
fn split_brain_is_reported_once_until_a_handshake_succeeds() {
    fn split(h: &mut H, s: u64) -> bool {
        h.hello(s);
        let st = state_for(h.m.metadata(), 5, 3, 0, false);
        h.ev(E::State {
            session: SessionId(s),
            state: st,
        });
        assert!(h.has(|a| matches!(
            a,
            A::Refuse {
                message: ErrorMessage {
                    reason: Refusal::SplitBrain,
                    ..
                },
                ..
            }
        )));
        h.has(|a| *a == A::Notice(Notice::SplitBrain))
    }
    let mut h = H::new();
    assert!(split(&mut h, 1));
    assert!(h.m.status().split_brain);
    assert!(!split(&mut h, 2), "once per condition");
    h.connect(3);
    assert!(!h.m.status().split_brain);
    assert!(split(&mut h, 4), "a new condition");
}

#[test]
fn refusals_carry_the_operator_detail() {
    let mut h = H::new();
    h.hello(1);
    let st = state_for(h.m.metadata(), 77, 1, 1, false);
    h.ev(E::State {
        session: SessionId(1),
        state: st,
    });
    let detail = h.out.iter().find_map(|a| match a {
        A::Notice(Notice::Refused { detail, .. }) => Some(detail.clone()),
        _ => None,
    });
    assert!(detail
        .unwrap()
        .starts_with("Resource unique ID mismatch (primary=77"));
    assert!(h.has(|a| *a
        == A::Close {
            session: SessionId(1)
        }));
    // A Hello with no common version is refused at once.
    let mut hello = PrimaryHandshake::start("r0", None, None).1;
    hello.versions = vec![1];
    h.ev(E::Hello {
        session: SessionId(2),
        hello,
        key: Ok(None),
        nonce: NONCE,
    });
    assert!(h.has(|a| matches!(
        a,
        A::Refuse {
            message: ErrorMessage {
                reason: Refusal::Version,
                ..
            },
            ..
        }
    )));
    // An unreadable key refuses the primary, after the version check.
    for (versions, reason) in [
        (vec![1], Refusal::Version),
        (vec![2], Refusal::LocalFailure),
    ] {
        let mut hello = PrimaryHandshake::start("r0", None, None).1;
        hello.versions = versions;
        h.ev(E::Hello {
            session: SessionId(3 + u64::from(reason == Refusal::Version)),
            hello,
            key: Err("cannot read authkey /x".into()),
            nonce: NONCE,
        });
        let got = h.out.iter().find_map(|a| match a {
            A::Refuse { message, .. } => Some(message.reason),
            _ => None,
        });
        assert_eq!(got, Some(reason));
    }
}

#[test]
fn protocol_violations_drop_the_session() {
    let mut h = H::new();
    h.hello(1);
    h.req(SessionId(1), 1, write(0, false, false));
    assert!(h.has(|a| matches!(a, A::Notice(Notice::Violation { .. }))));
    assert!(h.has(|a| *a
        == A::Drop {
            session: SessionId(1)
        }));
    let s = h.connect(2);
    h.req(s, 7, write(0, false, false));
    let (io, _) = h.local();
    h.req(s, 7, write(0, false, false));
    assert!(
        h.has(|a| *a == A::Drop { session: s }),
        "a sequence number used twice"
    );
    h.done(io, Ok(()));
    assert_eq!(h.replies(), [(7, Ok(None))]);
    assert!(h.has(|a| *a == A::Close { session: s }));
}

#[test]
fn stop_applies_the_queue_and_settles_the_metadata_first() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, write(0, false, false));
    let (io, _) = h.local();
    h.req(s, 2, write(4096, false, false));
    let (io2, _) = h.local();
    h.ev(E::Stop);
    assert!(h.has(|a| *a == A::Drop { session: s }));
    assert!(!h.has(|a| *a == A::Stopped));
    h.done(io, Ok(()));
    assert!(!h.has(|a| *a == A::Stopped), "write 2 is still on the disk");
    h.done(io2, Err(5));
    assert!(
        !h.has(|a| *a == A::Stopped),
        "the failure is not on disk yet"
    );
    h.meta_done(true);
    assert!(h.has(|a| *a == A::Stopped), "{:?}", h.out);
    let close = h.out.iter().position(|a| *a == A::Close { session: s });
    let stopped = h.out.iter().position(|a| *a == A::Stopped);
    assert!(close < stopped);
    // A primary connecting meanwhile is refused.
    h.hello(2);
    assert!(h.has(|a| matches!(a, A::Refuse { .. })));
}

#[test]
fn stop_with_a_failing_metadata_disk_still_ends() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, PeerRequest::Flush);
    h.done(h.local().0, Err(5));
    h.ev(E::Stop);
    h.meta_done(false);
    h.meta_done(false);
    assert!(h.has(|a| *a == A::Stopped), "{:?}", h.out);
}

#[test]
fn frame_headers_for_answers() {
    let h = reply_header(9, 5);
    assert_eq!((h.kind, h.seq, h.status, h.flags), (Kind::Reply, 9, 5, 0));
    let r = received_header(4);
    assert_eq!((r.kind, r.seq), (Kind::Received, 4));
    assert!(Header::decode(&h.encode()).is_ok() && Header::decode(&r.encode()).is_ok());
}
