//! When writes become durable on both nodes, and what the end of a session does to the
//! ones that were not yet.

use super::*;

/// On session 1 (connected here), memsync write #7 at 0 that the secondary received
/// and wrote but did not flush (answered at `Received`), at times 100 to 103.
pub(super) fn undurable_write(p: &mut Primary) {
    let s = SessionId(1);
    connect(p, s);
    let a = p.handle(
        100,
        Event::Write {
            req: ReqId(7),
            offset: 0,
            len: 4096,
            fua: false,
            op: WriteOp::Data,
        },
    );
    let a = settle_books(p, 100, a);
    let io = local_io(&a)[0].0;
    let (seq, _) = sends(&a)[0];
    let _ = p.handle(101, Event::Local { io, result: Ok(()) });
    let a = p.handle(102, Event::Received { session: s, seq });
    assert_eq!(replied(&a, ReqId(7)), Some(Ok(None)));
    let _ = p.handle(
        103,
        Event::Reply {
            session: s,
            seq,
            result: Ok(()),
        },
    );
}

/// docs/invariants.md, "Durable before clean": acknowledged writes the secondary had
/// written but not flushed are owed when the session ends, *and the counter rises*: the
/// secondary may have lost them (power), so it must not become the sync source over
/// this copy (a planned failback to it before any further write used to do just that).
#[test]
fn writes_the_secondary_had_not_flushed_raise_the_counter_when_the_session_ends() {
    let mut p = machine(ReplicationMode::Memsync);
    undurable_write(&mut p);
    let before = p.metadata().localcnt;
    let a = p.handle(
        104,
        Event::Lost {
            session: SessionId(1),
        },
    );
    let _ = settle_books(&mut p, 104, a);
    assert!(p.metadata_on_disk().localcnt > before, "not raised");
    assert!(p.status().owed > 0);
}
