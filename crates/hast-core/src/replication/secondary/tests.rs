use super::*;
use crate::metadata::Layout;
use crate::proto::Header;
use crate::replication::handshake::PrimaryHandshake;

use SecondaryAction as A;
use SecondaryEvent as E;

const NONCE: [u8; auth::NONCE_LEN] = [3; auth::NONCE_LEN];

fn disk(resuid: u64, localcnt: u64, remotecnt: u64, datastate: DataState) -> Metadata {
    let mut m = Metadata::new("r0", Layout::compute(1 << 24, 1 << 21, 512).unwrap(), 64).unwrap();
    (m.resuid, m.localcnt, m.remotecnt, m.datastate) = (resuid, localcnt, remotecnt, datastate);
    m
}

fn state_for(m: &Metadata, resuid: u64, localcnt: u64, remotecnt: u64, virgin: bool) -> State {
    State {
        resuid,
        localcnt,
        remotecnt,
        virgin,
        datasize: m.datasize(),
        extentsize: m.extentsize(),
        proof: None,
        consistent: true,
    }
}

/// The machine with a clock and the last batch of actions.
struct H {
    m: Secondary,
    now: u64,
    out: Vec<SecondaryAction>,
    /// The metadata write in flight.
    writing: Option<u64>,
}

impl H {
    /// A secondary in sync with its primary (resuid 5, counters 1/1).
    fn new() -> H {
        H::with(disk(5, 1, 1, DataState::CONSISTENT))
    }

    fn with(meta: Metadata) -> H {
        H {
            m: Secondary::new(meta),
            now: 0,
            out: Vec::new(),
            writing: None,
        }
    }

    fn ev(&mut self, e: SecondaryEvent) -> &Vec<SecondaryAction> {
        self.now += 1;
        self.out = self.m.handle(self.now, e);
        if let Some((gen, _)) = self.write_meta() {
            assert!(self.writing.is_none(), "two metadata writes at once");
            self.writing = Some(gen);
        }
        &self.out
    }

    fn hello(&mut self, s: u64) -> &Vec<SecondaryAction> {
        let (_, hello) = PrimaryHandshake::start("r0", None, None);
        self.ev(E::Hello {
            session: SessionId(s),
            hello,
            key: Ok(None),
            nonce: NONCE,
        })
    }

    /// Hello + State from a primary at 1/1; returns the session once accepted.
    fn connect(&mut self, s: u64) -> SessionId {
        self.hello(s);
        let st = state_for(self.m.metadata(), 5, 1, 1, false);
        self.ev(E::State {
            session: SessionId(s),
            state: st,
        });
        assert!(
            self.out.iter().any(|a| matches!(a, A::Accept { .. })),
            "{:?}",
            self.out
        );
        SessionId(s)
    }

    fn req(&mut self, s: SessionId, seq: u64, req: PeerRequest) -> &Vec<SecondaryAction> {
        self.ev(E::Request {
            session: s,
            seq,
            req,
        })
    }

    fn done(&mut self, io: IoId, result: Result<(), u32>) -> &Vec<SecondaryAction> {
        self.ev(E::Local { io, result })
    }

    fn meta_done(&mut self, ok: bool) -> &Vec<SecondaryAction> {
        let gen = self.writing.take().expect("a metadata write");
        self.ev(E::MetaWritten { gen, ok })
    }

    fn locals(&self) -> Vec<(IoId, LocalOp)> {
        self.out
            .iter()
            .filter_map(|a| match a {
                A::Local { io, op } => Some((*io, *op)),
                _ => None,
            })
            .collect()
    }

    fn local(&self) -> (IoId, LocalOp) {
        let l = self.locals();
        assert_eq!(l.len(), 1, "{:?}", self.out);
        l[0]
    }

    fn replies(&self) -> Vec<(u64, Result<Option<DataRef>, u32>)> {
        self.out
            .iter()
            .filter_map(|a| match a {
                A::Reply { seq, result, .. } => Some((*seq, *result)),
                _ => None,
            })
            .collect()
    }

    fn write_meta(&self) -> Option<(u64, Metadata)> {
        self.out.iter().find_map(|a| match a {
            A::WriteMeta { gen, meta } => Some((*gen, meta.clone())),
            _ => None,
        })
    }

    fn has(&self, f: impl Fn(&SecondaryAction) -> bool) -> bool {
        self.out.iter().any(f)
    }

    /// A full sync is being accepted: its all-ones bitmap comes first (and nothing
    /// else); report it written (`ok`) or not.
    fn fill(&mut self, s: SessionId, ok: bool) -> &Vec<SecondaryAction> {
        assert!(
            self.has(|a| matches!(a, A::FillBitmap { session } if *session == s)),
            "{:?}",
            self.out
        );
        assert!(self.write_meta().is_none(), "metadata before the bitmap");
        self.ev(E::BitmapFilled { session: s, ok })
    }
}

fn write(offset: u64, fua: bool, memsync: bool) -> PeerRequest {
    PeerRequest::Write {
        offset,
        len: 4096,
        fua,
        memsync,
        sync: false,
    }
}

fn failed_notice(a: &SecondaryAction) -> bool {
    matches!(a, A::Notice(Notice::WriteFailed { .. }))
}

#[test]
fn requests_go_to_the_disk_in_arrival_order_without_waiting_for_each_other() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, write(0, false, false));
    let l = h.locals();
    assert!(
        matches!(h.out[0], A::ClearBitmap { .. }),
        "map cleared first: {:?}",
        h.out
    );
    assert_eq!(l.len(), 1);
    let (io1, op1) = l[0];
    assert_eq!(
        op1,
        LocalOp::Write {
            offset: 0,
            len: 4096,
            data: DataRef::Peer(s, 1),
            fua: false
        }
    );
    h.req(s, 2, write(4096, false, false));
    let (io2, op2) = h.local();
    assert!(matches!(op2, LocalOp::Write { offset: 4096, .. }));
    h.req(
        s,
        3,
        PeerRequest::Trim {
            offset: 0,
            len: 512,
            fua: false,
        },
    );
    let (io3, op3) = h.local();
    assert!(matches!(op3, LocalOp::Trim { .. }));
    assert_eq!(h.m.status().queue, 3);
    for (io, seq) in [(io1, 1), (io2, 2), (io3, 3)] {
        h.done(io, Ok(()));
        assert_eq!(h.replies(), [(seq, Ok(None))]);
        assert!(h.locals().is_empty());
    }
    assert!(
        !h.has(|a| matches!(a, A::ClearBitmap { .. })),
        "once per session"
    );
    let st = h.m.status();
    assert_eq!((st.queue, st.stats.writes, st.stats.deletes), (0, 2, 1));
}

#[test]
fn at_most_a_pipeline_of_data_operations_is_on_the_disk() {
    let mut h = H::new();
    let s = h.connect(1);
    let mut given = Vec::new();
    for seq in 1..=DISK_PIPELINE as u64 + 2 {
        h.req(s, seq, write(seq * 4096, false, false));
        given.extend(h.locals());
    }
    assert_eq!(given.len(), DISK_PIPELINE);
    h.done(given[0].0, Ok(()));
    let next = h.locals();
    assert_eq!(next.len(), 1, "one ended, one more given: {:?}", h.out);
    let want = (DISK_PIPELINE as u64 + 1) * 4096;
    assert!(matches!(next[0].1, LocalOp::Write { offset, .. } if offset == want));
}

#[test]
fn memsync_writes_are_received_once_queued_and_reads_return_their_buffer() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(
        s,
        1,
        PeerRequest::Read {
            offset: 0,
            len: 512,
            sync: false,
        },
    );
    let (io, _) = h.local();
    h.req(s, 2, write(0, false, true));
    assert_eq!(h.out[0], A::Received { session: s, seq: 2 }, "on arrival");
    h.req(s, 3, write(0, false, false));
    assert!(
        !h.has(|a| matches!(a, A::Received { .. })),
        "no Received without memsync"
    );
    h.done(io, Ok(()));
    assert_eq!(h.replies(), [(1, Ok(Some(DataRef::Local(io))))]);
    assert_eq!(h.m.status().stats.reads, 1);
}

#[test]
fn flushes_run_beside_the_operations_after_them() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, write(0, false, false));
    let (w1, _) = h.local();
    h.req(s, 2, PeerRequest::Flush);
    h.req(s, 3, write(4096, false, false));
    assert!(
        h.locals().is_empty(),
        "the flush waits for the write before it"
    );
    h.done(w1, Ok(()));
    let l = h.locals();
    assert_eq!(l.len(), 2, "{:?}", h.out);
    assert_eq!(l[0].1, LocalOp::Flush);
    assert!(matches!(l[1].1, LocalOp::Write { offset: 4096, .. }));
    let (flush, w3) = (l[0].0, l[1].0);
    h.done(w3, Ok(()));
    assert_eq!(h.replies(), [(3, Ok(None))], "answered before the flush");
    h.done(flush, Ok(()));
    assert_eq!(h.replies(), [(2, Ok(None))]);
    assert_eq!(h.m.status().stats.flushes, 1);
}

#[test]
fn a_fua_write_is_flushed_beside_and_answered_after_its_flush() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, write(0, true, false));
    let (w1, op) = h.local();
    h.req(s, 2, write(4096, false, false));
    assert!(
        matches!(op, LocalOp::Write { fua: false, .. }),
        "the shell never flushes in line"
    );
    let (w2, op2) = h.local();
    assert!(matches!(op2, LocalOp::Write { offset: 4096, .. }));
    h.done(w1, Ok(()));
    assert!(h.replies().is_empty());
    let (flush, op) = h.local();
    assert_eq!(op, LocalOp::Flush, "beside the write after it");
    h.done(w2, Ok(()));
    assert_eq!(h.replies(), [(2, Ok(None))]);
    h.done(flush, Ok(()));
    assert_eq!(h.replies(), [(1, Ok(None))]);
}

#[test]
fn a_failed_write_is_on_disk_before_its_error_is_answered() {
    for req in [
        write(0, false, false),
        write(0, true, true),
        PeerRequest::Trim {
            offset: 0,
            len: 512,
            fua: false,
        },
        PeerRequest::WriteZeroes {
            offset: 0,
            len: 512,
            fua: false,
            may_trim: true,
        },
    ] {
        let mut h = H::new();
        let s = h.connect(1);
        h.req(s, 1, req);
        let (io, _) = h.local();
        h.done(io, Err(5));
        assert!(h.has(failed_notice), "{req:?}: {:?}", h.out);
        assert!(h.replies().is_empty(), "{req:?}: not before the metadata");
        let (_, meta) = h.write_meta().unwrap();
        assert!(meta.datastate.write_failed());
        h.meta_done(true);
        assert_eq!(h.replies(), [(1, Err(5))]);
        // The next failure finds the state on disk: answered at once, not logged again.
        h.req(s, 2, req);
        let (io, _) = h.local();
        h.done(io, Err(5));
        assert_eq!(h.replies(), [(2, Err(5))]);
        assert!(!h.has(failed_notice) && h.write_meta().is_none());
        let st = h.m.status();
        assert!(st.datastate.write_failed());
        assert_eq!(st.stats.write_errors + st.stats.delete_errors, 2);
    }
}

#[test]
fn a_failure_is_answered_after_the_metadata_attempt_even_if_it_fails() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, write(0, false, false));
    let (io, _) = h.local();
    h.done(io, Err(5));
    h.meta_done(false);
    assert!(
        h.replies().is_empty() && h.write_meta().is_some(),
        "one retry at once"
    );
    h.meta_done(false);
    assert_eq!(h.replies(), [(1, Err(5))]);
    assert!(h.has(|a| matches!(a, A::Notice(Notice::MetaWriteFailed))));
    assert!(h.write_meta().is_none(), "no retry in a loop");
    assert!(
        h.m.status().datastate.write_failed(),
        "status shows it at once"
    );
    // Another failure after that attempt is answered at once, as the first one was.
    h.req(s, 9, PeerRequest::Flush);
    h.done(h.local().0, Err(5));
    assert_eq!(h.replies(), [(9, Err(5))]);
    // Events soon after do not retry; a tick, or an event later, does.
    h.req(
        s,
        2,
        PeerRequest::Read {
            offset: 0,
            len: 512,
            sync: false,
        },
    );
    assert!(h.write_meta().is_none());
    h.now += META_RETRY_MS;
    h.done(h.local().0, Ok(()));
    assert!(h.write_meta().is_some());
    h.meta_done(false);
    h.meta_done(false);
    assert!(
        !h.has(|a| matches!(a, A::Notice(Notice::MetaWriteFailed))),
        "once per run"
    );
    h.ev(E::Tick);
    assert!(h.write_meta().is_some());
    h.meta_done(true);
    assert!(h.m.meta.on_disk().datastate.write_failed());
}

#[test]
fn a_trim_the_disk_cannot_do_and_a_failed_read_are_answered_without_a_mark() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(
        s,
        1,
        PeerRequest::Trim {
            offset: 0,
            len: 512,
            fua: true,
        },
    );
    h.done(h.local().0, Err(EOPNOTSUPP));
    assert_eq!(h.replies(), [(1, Err(EOPNOTSUPP))]);
    h.req(
        s,
        2,
        PeerRequest::Read {
            offset: 0,
            len: 512,
            sync: true,
        },
    );
    h.done(h.local().0, Err(5));
    assert_eq!(h.replies(), [(2, Err(5))]);
    assert!(h.write_meta().is_none());
    let st = h.m.status();
    assert!(st.datastate.is_consistent());
    assert_eq!((st.stats.delete_errors, st.stats.read_errors), (0, 1));
}

#[test]
fn a_failed_flush_is_recorded_before_it_is_answered() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, PeerRequest::Flush);
    let (io, op) = h.local();
    assert_eq!(op, LocalOp::Flush);
    h.done(io, Err(5));
    assert!(h.replies().is_empty() && h.has(failed_notice));
    h.meta_done(true);
    assert_eq!(h.replies(), [(1, Err(5))]);
    assert_eq!(h.m.status().stats.flush_errors, 1);
}

/// After a failed fdatasync Linux may have dropped written pages, and a later fdatasync
/// succeeds over the hole: no later flush of that connection may vouch for its writes.
#[test]
fn a_flush_that_succeeds_after_a_failed_one_is_still_an_error() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, PeerRequest::Flush);
    let first = h.local().0;
    h.req(s, 2, PeerRequest::Flush);
    let second = h.local().0;
    h.done(first, Err(5));
    h.meta_done(true);
    assert_eq!(h.replies(), [(1, Err(5))]);
    h.done(second, Ok(()));
    assert_eq!(
        h.replies(),
        [(2, Err(5))],
        "the second flush vouches for nothing"
    );
}

mod schedules;

#[test]
fn keys_never_show_in_debug_prints() {
    let key = b"a-secret-key-0123456789".to_vec();
    let (_, hello) = PrimaryHandshake::start("r0", Some(&key), Some(NONCE));
    let (p, _) = PrimaryHandshake::start("r0", Some(&key), Some(NONCE));
    let (s, _) = SecondaryHandshake::on_hello(&hello, Some(&key), NONCE).unwrap();
    let event = E::Hello {
        session: SessionId(1),
        hello,
        key: Ok(Some(key.clone())),
        nonce: NONCE,
    };
    let secret = format!("{key:?}");
    let secret = secret.trim_start_matches('[').trim_end_matches(']');
    for text in [format!("{p:?}"), format!("{s:?}"), format!("{event:?}")] {
        assert!(
            text.contains("<redacted>") && !text.contains(secret),
            "{text}"
        );
    }
}

mod handshake;
mod sessions;
mod sync_done;

fn read(offset: u64) -> PeerRequest {
    PeerRequest::Read {
        offset,
        len: 512,
        sync: false,
    }
}

#[test]
fn a_read_that_ends_beside_a_flush_waits_for_it_and_fails_if_it_fails() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, write(0, true, false));
    let (w1, _) = h.local();
    h.done(w1, Ok(()));
    let (flush, op) = h.local();
    assert_eq!(op, LocalOp::Flush);
    h.req(s, 2, read(0));
    let (r, _) = h.local();
    h.done(r, Ok(()));
    assert!(h.replies().is_empty(), "waits for the flush in flight");
    h.done(flush, Err(5));
    assert!(h.has(|a| *a == A::Release(DataRef::Local(r))));
    assert!(h.replies().contains(&(2, Err(EIO))), "{:?}", h.out);
    h.meta_done(true);
    // With the failure on record, every later read is refused.
    h.req(s, 3, read(4096));
    let (r3, _) = h.local();
    h.done(r3, Ok(()));
    assert_eq!(h.replies(), [(3, Err(EIO))]);
}

#[test]
fn a_read_beside_a_flush_that_succeeds_gets_its_data_after_it() {
    let mut h = H::new();
    let s = h.connect(1);
    h.req(s, 1, PeerRequest::Flush);
    let (flush, _) = h.local();
    h.req(s, 2, read(0));
    let (r, _) = h.local();
    h.done(r, Ok(()));
    assert!(h.replies().is_empty());
    h.done(flush, Ok(()));
    assert_eq!(
        h.replies(),
        [(1, Ok(None)), (2, Ok(Some(DataRef::Local(r))))]
    );
}

#[cfg(feature = "mutations")]
#[test]
fn the_reads_after_failure_mutation_serves_what_a_failed_disk_returns() {
    let mut h = H::new();
    h.m.set_mutation(Some(Mutation::SecondaryReadsAfterFailure));
    let s = h.connect(1);
    h.req(s, 1, PeerRequest::Flush);
    h.done(h.local().0, Err(5));
    h.meta_done(true);
    h.req(s, 2, read(0));
    let (r, _) = h.local();
    h.done(r, Ok(()));
    assert_eq!(h.replies(), [(2, Ok(Some(DataRef::Local(r))))]);
}
