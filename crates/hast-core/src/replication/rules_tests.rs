//! Every combination of facts, checked against the rules stated in the module doc.

use super::*;

const MODES: [ReplicationMode; 3] = [
    ReplicationMode::Async,
    ReplicationMode::Memsync,
    ReplicationMode::Fullsync,
];

fn peers() -> Vec<PeerResult> {
    vec![
        PeerResult::NotSent,
        PeerResult::Lost,
        PeerResult::Failed(errno::EIO),
        PeerResult::Failed(errno::EOPNOTSUPP),
        PeerResult::Written { durable: false },
        PeerResult::Written { durable: true },
    ]
}

fn all_facts() -> Vec<WriteFacts> {
    let mut out = Vec::new();
    for what in [Modify::Data, Modify::Trim] {
        for local in [Ok(()), Err(errno::EIO), Err(28)] {
            for peer in peers() {
                for stale in [false, true] {
                    for acked in [false, true] {
                        for received in [false, true] {
                            for async_ack in [false, true] {
                                for local_durable in [false, true] {
                                    // An early answer needs a good local write and, when
                                    // stale, is never given (plan_write says Final).
                                    if acked && (local.is_err() || stale) {
                                        continue;
                                    }
                                    out.push(WriteFacts {
                                        what,
                                        local,
                                        peer,
                                        stale,
                                        acked,
                                        received,
                                        async_ack,
                                        local_durable,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    out
}

#[test]
fn plans_follow_the_mode_and_fua() {
    for mode in MODES {
        for fua in [false, true] {
            for stale in [false, true] {
                let p = plan_write(mode, fua, stale);
                if fua || stale {
                    assert_eq!(
                        p,
                        WritePlan {
                            ack: AckPoint::Final,
                            peer_fua: true
                        }
                    );
                } else {
                    assert!(!p.peer_fua);
                    let want = match mode {
                        ReplicationMode::Async => AckPoint::Local,
                        ReplicationMode::Memsync => AckPoint::Received,
                        ReplicationMode::Fullsync => AckPoint::Final,
                    };
                    assert_eq!(p.ack, want, "{mode:?}");
                }
            }
        }
    }
}

#[test]
fn no_acknowledged_write_the_secondary_never_confirmed_ends_owed_without_a_raise() {
    for f in all_facts() {
        let s = settle_write(f);
        let told_success = f.acked || s.reply == Some(Ok(()));
        let trim_unsupported =
            f.what == Modify::Trim && f.peer == PeerResult::Failed(errno::EOPNOTSUPP);
        let confirmed_then_lost = (f.received || f.async_ack) && f.peer == PeerResult::Lost;
        if told_success && s.map == MapOutcome::Owed && !trim_unsupported && !confirmed_then_lost {
            assert!(s.raise_localcnt, "silent loss: {f:?} -> {s:?}");
        }
        // Raising without cause would report split-brains that are not there: a write
        // the secondary confirmed in memory is applied there whatever the link does.
        if s.raise_localcnt {
            assert!(told_success && s.map == MapOutcome::Owed, "{f:?} -> {s:?}");
            assert!(!confirmed_then_lost, "{f:?}");
        }
    }
}

#[test]
fn answers_are_given_once_and_errors_are_never_hidden() {
    for f in all_facts() {
        let s = settle_write(f);
        assert_eq!(s.reply.is_none(), f.acked, "{f:?}");
        if let Err(e) = f.local {
            assert_eq!(s.reply, Some(Err(e)), "local error is the client's: {f:?}");
        }
    }
}

#[test]
fn clean_only_when_durable_on_both() {
    for f in all_facts() {
        let s = settle_write(f);
        let durable_there = f.peer == PeerResult::Written { durable: true };
        assert_eq!(
            s.map == MapOutcome::Replicated,
            durable_there && f.local.is_ok() && f.local_durable,
            "{f:?}"
        );
        if s.map == MapOutcome::Undurable {
            assert!(matches!(f.peer, PeerResult::Written { .. }), "{f:?}");
            assert!(f.local.is_ok(), "{f:?}");
        }
    }
}

#[test]
fn a_stale_primary_never_confirms_what_the_secondary_did_not() {
    for f in all_facts().into_iter().filter(|f| f.stale) {
        let s = settle_write(f);
        let trim_unsupported =
            f.what == Modify::Trim && f.peer == PeerResult::Failed(errno::EOPNOTSUPP);
        if s.map == MapOutcome::Owed && !trim_unsupported {
            assert_ne!(s.reply, Some(Ok(())), "{f:?} -> {s:?}");
        }
        assert!(!s.raise_localcnt, "a sync target must not diverge: {f:?}");
    }
}

#[test]
fn secondary_failures_drop_the_link() {
    for f in all_facts() {
        let s = settle_write(f);
        let failed = matches!(f.peer, PeerResult::Failed(_));
        let trim_unsupported =
            f.what == Modify::Trim && f.peer == PeerResult::Failed(errno::EOPNOTSUPP);
        assert_eq!(s.drop_peer, failed && !trim_unsupported, "{f:?}");
    }
}

#[test]
fn admission_and_reads_of_a_stale_primary() {
    assert_eq!(admit_write(false, false), Ok(()));
    assert_eq!(admit_write(true, true), Ok(()));
    assert_eq!(admit_write(true, false), Err(errno::EIO));
    for connected in [false, true] {
        assert_eq!(read_source(false, false, connected), ReadSource::Local);
        assert_eq!(read_source(true, true, connected), ReadSource::Local);
    }
    assert_eq!(read_source(true, false, true), ReadSource::Peer);
    assert_eq!(read_source(true, false, false), ReadSource::Fail);
}

#[test]
fn flushes() {
    let all = [
        PeerFlush::NotSent,
        PeerFlush::Lost,
        PeerFlush::Failed(errno::EIO),
        PeerFlush::Done,
    ];
    for peer in all {
        for covered in [0, 3] {
            for stale in [false, true] {
                for local in [Ok(()), Err(errno::EIO)] {
                    for client in [false, true] {
                        for unflushed in [false, true] {
                            let s = settle_flush(local, peer, covered, stale, client, unflushed);
                            if let Err(e) = local {
                                assert_eq!(s.reply, Err(e));
                            }
                            let durable = peer == PeerFlush::Done;
                            let expected = match (local, durable) {
                                (Err(_), _) => MapOutcome::Undurable,
                                (Ok(()), true) => MapOutcome::Replicated,
                                (Ok(()), false) => MapOutcome::Owed,
                            };
                            assert_eq!(s.covered, expected);
                            // The secondary lost what it confirmed, or the client is told
                            // "durable" for writes the secondary never flushed.
                            let lost_there = matches!(peer, PeerFlush::Failed(_)) && covered > 0;
                            let promised = client && s.reply.is_ok() && unflushed;
                            assert_eq!(
                                s.raise_localcnt,
                                !durable && !stale && (lost_there || promised)
                            );
                            assert_eq!(s.drop_peer, matches!(peer, PeerFlush::Failed(_)));
                            if stale
                                && local.is_ok()
                                && matches!(peer, PeerFlush::Lost | PeerFlush::Failed(_))
                            {
                                assert_eq!(s.reply, Err(errno::EIO));
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn promotion_of_an_inconsistent_copy_needs_force() {
    use crate::metadata::DataState;
    assert_eq!(may_promote(DataState::CONSISTENT, false), Ok(false));
    assert_eq!(may_promote(DataState::CONSISTENT, true), Ok(false));
    for bit in [DataState::SYNC_TARGET, DataState::WRITE_FAILED] {
        let s = DataState::CONSISTENT.with(bit);
        assert_eq!(may_promote(s, false), Err(s));
        assert_eq!(may_promote(s, true), Ok(true));
    }
}
