//! The primary's machine with events fed by hand: each test drives one rule through the
//! actions and checks their order.

use super::*;
use crate::activemap::ActiveMap;
use crate::config::ReplicationMode;
use crate::metadata::{Layout, Metadata};
use crate::proto::handshake::{StateReply, SyncSource};
#[cfg(feature = "mutations")]
use crate::replication::Mutation;
use crate::replication::{DataRef, LocalOp, PeerRequest, ReqId, SessionId, WriteOp};

mod durability;
mod fencing;
mod stopping_and_sync;

const MIB: u64 = 1 << 20;

fn machine(mode: ReplicationMode) -> Primary {
    let layout = Layout::compute(16 * MIB + 4096 + 512, 2 * MIB, 512).unwrap();
    let meta = Metadata::new("r0", layout, 64).unwrap();
    let map = ActiveMap::new(meta.datasize(), meta.extentsize(), 64, 512).unwrap();
    let settings = Settings {
        mode,
        timeout_ms: 2000,
        syncrate: 0,
        fence_timeout_ms: None,
    };
    Primary::new(settings, meta, map, 0)
}

/// Completes every bitmap and metadata write in `actions` (feeding the events back) and
/// returns all actions seen, flattened.
fn settle_books(p: &mut Primary, now: u64, mut actions: Vec<Action>) -> Vec<Action> {
    let mut all = Vec::new();
    while !actions.is_empty() {
        let mut next = Vec::new();
        for a in actions {
            match &a {
                Action::WriteMap { gen, .. } => next.extend(p.handle(
                    now,
                    Event::MapWritten {
                        gen: *gen,
                        ok: true,
                    },
                )),
                Action::WriteMeta { gen, .. } => next.extend(p.handle(
                    now,
                    Event::MetaWritten {
                        gen: *gen,
                        ok: true,
                    },
                )),
                _ => {}
            }
            all.push(a);
        }
        actions = next;
    }
    all
}

fn position(actions: &[Action], f: impl Fn(&Action) -> bool) -> Option<usize> {
    actions.iter().position(f)
}

fn connect(p: &mut Primary, session: SessionId) -> Vec<Action> {
    let a = p.handle(
        1,
        Event::HandshakeBegin {
            session,
            random: 77,
        },
    );
    let a = settle_books(p, 1, a);
    assert!(a.iter().any(|x| matches!(x, Action::HandshakeState { .. })));
    let reply = StateReply {
        localcnt: 0,
        remotecnt: 0,
        virgin: true,
        syncsrc: SyncSource::Primary,
        full_sync: false,
        mapsize: 0,
        consistent: true,
    };
    let a = p.handle(
        2,
        Event::HandshakeReply {
            session,
            reply,
            peer_map: None,
        },
    );
    let mut a = settle_books(p, 2, a);
    assert!(
        a.iter().any(|x| matches!(x, Action::SessionUp { .. })),
        "{a:?}"
    );
    // Nothing owed: the first pass ends at once with SyncDone; confirm it (the mirror).
    if let Some((seq, PeerRequest::SyncDone { .. })) = sends(&a).last().copied() {
        let done = p.handle(
            3,
            Event::Reply {
                session,
                seq,
                result: Ok(()),
            },
        );
        a.extend(settle_books(p, 3, done));
    }
    a
}

fn local_io(actions: &[Action]) -> Vec<(IoId, LocalOp)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Local { io, op } => Some((*io, *op)),
            _ => None,
        })
        .collect()
}

fn sends(actions: &[Action]) -> Vec<(u64, PeerRequest)> {
    actions
        .iter()
        .filter_map(|a| match a {
            Action::Send { seq, req, .. } => Some((*seq, *req)),
            _ => None,
        })
        .collect()
}

fn replied(actions: &[Action], req: ReqId) -> Option<Result<Option<DataRef>, u32>> {
    actions.iter().find_map(|a| match a {
        Action::Reply { req: r, result } if *r == req => Some(*result),
        _ => None,
    })
}

#[test]
fn without_a_peer_the_map_then_the_data_then_the_raise_then_the_answer() {
    let mut p = machine(ReplicationMode::Memsync);
    let req = ReqId(1);
    let a = p.handle(
        10,
        Event::Write {
            req,
            offset: 0,
            len: 4096,
            fua: false,
            op: WriteOp::Data,
        },
    );
    // Nothing leaves before the bitmap covers the extent.
    assert!(matches!(a.as_slice(), [Action::WriteMap { .. }]), "{a:?}");
    let a = settle_books(&mut p, 10, a);
    let ios = local_io(&a);
    assert_eq!(ios.len(), 1);
    let a = p.handle(
        11,
        Event::Local {
            io: ios[0].0,
            result: Ok(()),
        },
    );
    // Not connected since start: the counter is raised and written before the answer.
    assert!(replied(&a, req).is_none(), "{a:?}");
    let meta = position(&a, |x| matches!(x, Action::WriteMeta { .. })).unwrap();
    assert!(matches!(&a[meta], Action::WriteMeta { meta, .. } if meta.localcnt == 1));
    let a = settle_books(&mut p, 11, a);
    assert_eq!(replied(&a, req), Some(Ok(None)));
    assert!(p.status().owed > 0, "the write is owed to the peer");
    // A second write of the same epoch needs no second raise.
    let a = p.handle(
        12,
        Event::Write {
            req: ReqId(2),
            offset: 4096,
            len: 4096,
            fua: false,
            op: WriteOp::Data,
        },
    );
    let io = local_io(&a)[0].0;
    let a = p.handle(13, Event::Local { io, result: Ok(()) });
    assert_eq!(replied(&a, ReqId(2)), Some(Ok(None)));
    assert!(!a.iter().any(|x| matches!(x, Action::WriteMeta { .. })));
}

#[test]
fn memsync_answers_on_received_and_cleans_after_the_durability_flush() {
    let mut p = machine(ReplicationMode::Memsync);
    let s = SessionId(1);
    connect(&mut p, s);
    let req = ReqId(5);
    let a = p.handle(
        100,
        Event::Write {
            req,
            offset: 4 * MIB,
            len: 4096,
            fua: false,
            op: WriteOp::Data,
        },
    );
    let a = settle_books(&mut p, 100, a);
    let io = local_io(&a)[0].0;
    let (seq, sent) = sends(&a)[0];
    assert!(matches!(
        sent,
        PeerRequest::Write {
            memsync: true,
            fua: false,
            ..
        }
    ));
    let a = p.handle(101, Event::Local { io, result: Ok(()) });
    assert!(replied(&a, req).is_none(), "memsync waits for Received");
    let a = p.handle(102, Event::Received { session: s, seq });
    assert_eq!(replied(&a, req), Some(Ok(None)));
    let _ = p.handle(
        103,
        Event::Reply {
            session: s,
            seq,
            result: Ok(()),
        },
    );
    // Written there, not yet durable: still dirty until the batched flush.
    assert!(p.status().dirty > 0);
    let a = p.handle(100 + DURABILITY_DELAY_MS + 50, Event::Tick);
    let (fseq, f) = sends(&a)[0];
    assert_eq!(f, PeerRequest::Flush);
    // Both nodes flush: a write is clean only once durable on both.
    let (lio, lop) = local_io(&a)[0];
    assert_eq!(lop, LocalOp::Flush);
    let a = p.handle(
        251,
        Event::Reply {
            session: s,
            seq: fseq,
            result: Ok(()),
        },
    );
    let _ = settle_books(&mut p, 251, a);
    assert!(p.status().dirty > 0, "not before the local flush");
    let a = p.handle(
        252,
        Event::Local {
            io: lio,
            result: Ok(()),
        },
    );
    let _ = settle_books(&mut p, 252, a);
    assert_eq!(p.status().dirty, 0, "clean once durable on both");
}

#[test]
fn a_fullsync_write_failed_on_the_secondary_raises_first_and_drops_the_link() {
    let mut p = machine(ReplicationMode::Fullsync);
    let s = SessionId(1);
    connect(&mut p, s);
    let req = ReqId(9);
    let a = p.handle(
        100,
        Event::Write {
            req,
            offset: 0,
            len: 4096,
            fua: false,
            op: WriteOp::Data,
        },
    );
    let a = settle_books(&mut p, 100, a);
    let io = local_io(&a)[0].0;
    let (seq, _) = sends(&a)[0];
    let _ = p.handle(101, Event::Local { io, result: Ok(()) });
    let a = p.handle(
        102,
        Event::Reply {
            session: s,
            seq,
            result: Err(5),
        },
    );
    assert!(
        replied(&a, req).is_none(),
        "no answer before the raise is on disk"
    );
    assert!(a.iter().any(|x| matches!(x, Action::DropPeer { .. })));
    assert!(p.session().is_none());
    let a = settle_books(&mut p, 102, a);
    assert_eq!(replied(&a, req), Some(Ok(None)));
    let m = p.metadata_on_disk();
    assert!(m.localcnt > m.remotecnt);
}

/// A handshake (at times 1 and 2) where the secondary is newer: a full sync from it.
/// Returns the actions of its reply, not yet carried out.
fn handshake_with_a_newer_secondary(p: &mut Primary, s: SessionId) -> Vec<Action> {
    let a = p.handle(
        1,
        Event::HandshakeBegin {
            session: s,
            random: 5,
        },
    );
    let _ = settle_books(p, 1, a);
    let reply = StateReply {
        localcnt: 1,
        remotecnt: 0,
        virgin: false,
        syncsrc: SyncSource::Secondary,
        full_sync: true,
        mapsize: 0,
        consistent: true,
    };
    p.handle(
        2,
        Event::HandshakeReply {
            session: s,
            reply,
            peer_map: None,
        },
    )
}

/// A primary that became a sync target; returns whether a read of an unsynchronised
/// extent went to the secondary (`false` shows the `StaleReads` mutation).
fn stale_read_goes_to_the_secondary(p: &mut Primary, s: SessionId) -> bool {
    let a = handshake_with_a_newer_secondary(p, s);
    // The stale mark is on disk before the session (and the sync) starts.
    let meta = position(
        &a,
        |x| matches!(x, Action::WriteMeta { meta, .. } if meta.datastate.is_sync_target()),
    );
    assert!(meta.is_some(), "{a:?}");
    let _ = settle_books(p, 2, a);
    assert!(p.status().stale);
    let a = p.handle(
        3,
        Event::Read {
            req: ReqId(1),
            offset: 8 * MIB,
            len: 4096,
        },
    );
    matches!(
        sends(&a).as_slice(),
        [(_, PeerRequest::Read { sync: false, .. })]
    )
}

#[cfg(feature = "mutations")]
#[test]
fn the_stale_reads_mutation_breaks_it() {
    let mut p = machine(ReplicationMode::Memsync);
    p.set_mutation(Some(Mutation::StaleReads));
    assert!(!stale_read_goes_to_the_secondary(&mut p, SessionId(3)));
}

#[test]
fn a_stale_primary_reads_from_the_secondary_or_fails() {
    let mut p = machine(ReplicationMode::Memsync);
    let s = SessionId(3);
    assert!(stale_read_goes_to_the_secondary(&mut p, s));
    let _ = p.handle(4, Event::Lost { session: s });
    let a = p.handle(
        5,
        Event::Read {
            req: ReqId(2),
            offset: 8 * MIB,
            len: 4096,
        },
    );
    assert_eq!(replied(&a, ReqId(2)), Some(Err(5)), "never stale bytes");
    let a = p.handle(
        6,
        Event::Write {
            req: ReqId(3),
            offset: 0,
            len: 4096,
            fua: false,
            op: WriteOp::Data,
        },
    );
    assert_eq!(
        replied(&a, ReqId(3)),
        Some(Err(5)),
        "no writes without the good copy"
    );
}

#[test]
fn a_sync_pass_ends_with_syncdone_then_the_record() {
    let mut p = machine(ReplicationMode::Memsync);
    // One owed extent from before the connection.
    let a = p.handle(
        1,
        Event::Write {
            req: ReqId(1),
            offset: 0,
            len: 4096,
            fua: false,
            op: WriteOp::Data,
        },
    );
    let a = settle_books(&mut p, 1, a);
    let io = local_io(&a)[0].0;
    let a = p.handle(2, Event::Local { io, result: Ok(()) });
    let _ = settle_books(&mut p, 2, a);
    let s = SessionId(1);
    let a = connect(&mut p, s);
    // The sync reads the extent locally (two 1 MiB chunks).
    let reads = local_io(&a);
    assert_eq!(reads.len(), 1, "{a:?}");
    let mut now = 10;
    let mut pending = reads;
    let mut syncdone = None;
    while let Some((io, op)) = pending.pop() {
        now += 1;
        let a = p.handle(now, Event::Local { io, result: Ok(()) });
        let mut a = settle_books(&mut p, now, a);
        if matches!(op, LocalOp::Read { .. }) {
            let (seq, w) = sends(&a)[0];
            assert!(matches!(w, PeerRequest::Write { sync: true, .. }));
            let r = p.handle(
                now,
                Event::Reply {
                    session: s,
                    seq,
                    result: Ok(()),
                },
            );
            a = settle_books(&mut p, now, r);
        } else {
            // The extent's last step: our own copy flushed before the debt is paid.
            assert_eq!(op, LocalOp::Flush);
        }
        pending.extend(local_io(&a));
        if let Some((seq, PeerRequest::SyncDone { .. })) = sends(&a).first().copied() {
            syncdone = Some(seq);
        }
    }
    let seq = syncdone.expect("SyncDone after the last chunk");
    let raised = p.status().counters.1;
    assert!(raised > 0, "raised before the sync");
    let a = p.handle(
        now + 1,
        Event::Reply {
            session: s,
            seq,
            result: Ok(()),
        },
    );
    let a = settle_books(&mut p, now + 1, a);
    assert!(a
        .iter()
        .any(|x| matches!(x, Action::Notify(Notice::SyncComplete { .. }))));
    let m = p.metadata_on_disk();
    assert_eq!(
        (m.localcnt, m.remotecnt),
        (raised, 0),
        "localcnt kept (the secondary remembers it now), remotecnt the secondary's"
    );
    assert_eq!(p.status().owed, 0);
}

/// A write still in flight when a handshake starts, and one arriving during it: the
/// first raises `localcnt` before `State` is built (the secondary learns it is behind),
/// the second waits for the session; `SyncDone` waits until the first has settled (it
/// becomes the sync's debt). Returns whether every rule held (`false` shows the
/// `NoHandshakeGuard` and `EarlySyncDone` mutations).
fn handshake_with_writes_in_flight(p: &mut Primary) -> bool {
    let s = SessionId(9);
    let write = |req, offset| Event::Write {
        req: ReqId(req),
        offset,
        len: 4096,
        fua: false,
        op: WriteOp::Data,
    };
    let a = p.handle(1, write(1, 0));
    let a = settle_books(p, 1, a);
    let Some((first_io, _)) = local_io(&a).first().copied() else {
        return false;
    };
    let a = p.handle(
        2,
        Event::HandshakeBegin {
            session: s,
            random: 7,
        },
    );
    let a = settle_books(p, 2, a);
    let state_localcnt = a.iter().find_map(|x| match x {
        Action::HandshakeState { state, .. } => Some(state.localcnt),
        _ => None,
    });
    let raised_first = state_localcnt.is_some_and(|l| l > 0);
    // A write during the handshake: held, nothing of it happens yet.
    let a = p.handle(3, write(2, 4 * MIB));
    let held = local_io(&a).is_empty() && !a.iter().any(|x| matches!(x, Action::WriteMap { .. }));
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
        4,
        Event::HandshakeReply {
            session: s,
            reply,
            peer_map: None,
        },
    );
    let a = settle_books(p, 4, a);
    let early_syncdone = sends(&a)
        .iter()
        .any(|(_, r)| matches!(r, PeerRequest::SyncDone { .. }));
    // The held write goes out on the session now.
    let sent_second = sends(&a)
        .iter()
        .any(|(_, r)| matches!(r, PeerRequest::Write { offset, .. } if *offset == 4 * MIB));
    // The first write's local leg ends: it was never sent, so it is owed and copied.
    let a = p.handle(
        5,
        Event::Local {
            io: first_io,
            result: Ok(()),
        },
    );
    let a = settle_books(p, 5, a);
    let owed_now = p.status().owed > 0
        || local_io(&a)
            .iter()
            .any(|(_, op)| matches!(op, LocalOp::Read { .. }));
    raised_first && held && sent_second && !early_syncdone && owed_now
}

#[test]
fn writes_around_a_handshake_are_never_hidden_from_the_secondary() {
    let mut p = machine(ReplicationMode::Memsync);
    assert!(handshake_with_writes_in_flight(&mut p));
}

#[cfg(feature = "mutations")]
#[test]
fn the_handshake_mutations_break_it() {
    for m in [Mutation::NoHandshakeGuard, Mutation::EarlySyncDone] {
        let mut p = machine(ReplicationMode::Memsync);
        p.set_mutation(Some(m));
        assert!(
            !handshake_with_writes_in_flight(&mut p),
            "{m:?} not noticed"
        );
    }
}
