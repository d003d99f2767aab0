//! Random schedules of requests, completions (data operations in the order given, as the
//! disk thread applies them; flushes in any order), failures, lost connections, new
//! primaries and metadata failures, checked against the rules at every action.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Cmd {
    Req { kind: u8, fua: bool, memsync: bool },
    Complete { pick: usize, err: Option<u32> },
    Meta(bool),
    Lost,
    Reconnect,
    Tick,
}

fn cmd() -> impl Strategy<Value = Cmd> {
    prop_oneof![
        6 => (0u8..6, any::<bool>(), any::<bool>())
            .prop_map(|(kind, fua, memsync)| Cmd::Req { kind, fua, memsync }),
        8 => (any::<usize>(), prop_oneof![6 => Just(None), 1 => Just(Some(5)), 1 => Just(Some(95))])
            .prop_map(|(pick, err)| Cmd::Complete { pick, err }),
        3 => prop_oneof![4 => Just(true), 1 => Just(false)].prop_map(Cmd::Meta),
        1 => Just(Cmd::Lost),
        1 => Just(Cmd::Reconnect),
        1 => Just(Cmd::Tick),
    ]
}

struct Driver {
    m: Secondary,
    now: u64,
    session: u64,
    next_seq: u64,
    issued: Vec<(IoId, LocalOp)>,
    /// Data operations given to the disk, oldest first.
    data_in_flight: VecDeque<IoId>,
    /// The event being fed completes a FUA request's data operation: its flush may run
    /// beside later data operations.
    completing_fua: bool,
    last_started: Option<u64>,
    meta: Option<(u64, Metadata)>,
    on_disk: Metadata,
    last_attempt: Option<(bool, bool)>,
    meta_failed: bool,
    queued: BTreeMap<(SessionId, u64), PeerRequest>,
    replied: BTreeSet<(SessionId, u64)>,
    received: BTreeSet<(SessionId, u64)>,
    stopped: bool,
}

impl Driver {
    fn new() -> Driver {
        let meta = disk(5, 1, 1, DataState::CONSISTENT.with(DataState::SYNC_TARGET));
        Driver {
            m: Secondary::new(meta.clone()),
            now: 0,
            session: 0,
            next_seq: 1,
            issued: Vec::new(),
            data_in_flight: VecDeque::new(),
            completing_fua: false,
            last_started: None,
            meta: None,
            on_disk: meta,
            last_attempt: None,
            meta_failed: false,
            queued: BTreeMap::new(),
            replied: BTreeSet::new(),
            received: BTreeSet::new(),
            stopped: false,
        }
    }

    fn ev(&mut self, e: SecondaryEvent) {
        self.now += 7;
        let actions = self.m.handle(self.now, e);
        for a in actions {
            self.check(a);
        }
    }

    fn check(&mut self, a: SecondaryAction) {
        match a {
            A::Local { io, op } => {
                assert!(
                    op != LocalOp::Flush || self.completing_fua || self.data_in_flight.is_empty(),
                    "a flush beside an earlier data operation"
                );
                if op != LocalOp::Flush {
                    self.data_in_flight.push_back(io);
                    assert!(self.data_in_flight.len() <= DISK_PIPELINE);
                    let offset = match op {
                        LocalOp::Read { offset, .. }
                        | LocalOp::Write { offset, .. }
                        | LocalOp::Trim { offset, .. }
                        | LocalOp::Zeroes { offset, .. } => offset,
                        LocalOp::Flush => 0,
                    };
                    let seq = offset / 4096;
                    assert!(self.last_started < Some(seq), "out of arrival order");
                    self.last_started = Some(seq);
                }
                self.issued.push((io, op));
            }
            A::Received { session, seq } => {
                let req = self.queued.get(&(session, seq));
                assert!(matches!(
                    req,
                    Some(PeerRequest::Write { memsync: true, .. })
                ));
                assert!(!self.replied.contains(&(session, seq)));
                self.received.insert((session, seq));
            }
            A::Reply {
                session,
                seq,
                result,
            } => {
                let req = self.queued.get(&(session, seq)).copied();
                let Some(req) = req else {
                    panic!("reply to a request never queued: {seq}");
                };
                assert!(self.replied.insert((session, seq)), "two replies to {seq}");
                let recorded = matches!(result, Err(e) if e != EOPNOTSUPP)
                    && (req.modifies()
                        || req.needs_flush()
                        || matches!(req, PeerRequest::SyncDone { .. }));
                if recorded {
                    let on_disk = self.on_disk.datastate.write_failed();
                    let attempted = self.last_attempt == Some((false, true));
                    // Or SyncDone could not record consistency (nothing to mark).
                    let unrecordable = matches!(req, PeerRequest::SyncDone { .. })
                        && matches!(self.last_attempt, Some((false, _)));
                    assert!(
                        on_disk || attempted || unrecordable,
                        "{req:?} failure answered unrecorded"
                    );
                }
                if matches!(req, PeerRequest::SyncDone { .. })
                    && result.is_ok()
                    && !self.meta_failed
                {
                    let state = self.on_disk.datastate;
                    assert!(state.is_consistent() || state.write_failed(), "{state}");
                }
            }
            A::WriteMeta { gen, meta } => {
                assert!(self.meta.is_none(), "two metadata writes at once");
                self.meta = Some((gen, meta));
            }
            A::Stopped => self.stopped = true,
            _ => {}
        }
    }

    fn connect(&mut self) {
        self.session += 1;
        let session = SessionId(self.session);
        let (_, hello) = PrimaryHandshake::start("r0", None, None);
        self.ev(E::Hello {
            session,
            hello,
            key: Ok(None),
            nonce: NONCE,
        });
        let m = self.m.metadata().clone();
        let state = state_for(&m, 5, m.remotecnt, m.localcnt, false);
        self.ev(E::State { session, state });
    }

    fn run(&mut self, c: Cmd) {
        match c {
            Cmd::Req { kind, fua, memsync } => {
                let session = SessionId(self.session);
                let seq = self.next_seq;
                self.next_seq += 1;
                let (offset, len) = (seq * 4096, 512);
                let req = match kind {
                    0 => PeerRequest::Read {
                        offset,
                        len,
                        sync: fua,
                    },
                    1 => PeerRequest::Write {
                        offset,
                        len,
                        fua,
                        memsync,
                        sync: false,
                    },
                    2 => PeerRequest::Trim { offset, len, fua },
                    3 => PeerRequest::WriteZeroes {
                        offset,
                        len,
                        fua,
                        may_trim: memsync,
                    },
                    4 => PeerRequest::Flush,
                    _ => PeerRequest::SyncDone { localcnt: 1 },
                };
                // A primary sends requests only once accepted.
                if self.m.takes_requests(session) {
                    self.queued.insert((session, seq), req);
                    self.ev(E::Request { session, seq, req });
                }
            }
            Cmd::Complete { pick, err } => {
                if self.issued.is_empty() {
                    return;
                }
                let (mut io, op) = self.issued[pick % self.issued.len()];
                // The disk applies data operations in order: the oldest ends first.
                if op != LocalOp::Flush {
                    if let Some(&first) = self.data_in_flight.front() {
                        io = first;
                    }
                    self.data_in_flight.retain(|&i| i != io);
                }
                let (_, op) = self
                    .issued
                    .remove(self.issued.iter().position(|&(i, _)| i == io).unwrap_or(0));
                let seq = match op {
                    LocalOp::Read { offset, .. }
                    | LocalOp::Write { offset, .. }
                    | LocalOp::Trim { offset, .. }
                    | LocalOp::Zeroes { offset, .. } => Some(offset / 4096),
                    LocalOp::Flush => None,
                };
                self.completing_fua = seq.is_some_and(|seq| {
                    self.queued
                        .iter()
                        .any(|((_, q), r)| *q == seq && r.needs_flush())
                });
                self.ev(E::Local {
                    io,
                    result: err.map_or(Ok(()), Err),
                });
                self.completing_fua = false;
            }
            Cmd::Meta(ok) => {
                let Some((gen, meta)) = self.meta.take() else {
                    return;
                };
                self.last_attempt = Some((ok, meta.datastate.write_failed()));
                if ok {
                    self.on_disk = meta;
                } else {
                    self.meta_failed = true;
                }
                self.ev(E::MetaWritten { gen, ok });
            }
            Cmd::Lost => self.ev(E::Lost {
                session: SessionId(self.session),
            }),
            Cmd::Reconnect => self.connect(),
            Cmd::Tick => self.ev(E::Tick),
        }
    }
}

proptest! {
    #[test]
    fn every_schedule_keeps_the_rules(cmds in prop::collection::vec(cmd(), 1..150)) {
        let mut d = Driver::new();
        d.connect();
        for c in cmds {
            d.run(c);
        }
        d.ev(E::Stop);
        // Drain: every operation succeeds, every metadata write too.
        for _ in 0..10_000 {
            if d.stopped {
                break;
            }
            if d.meta.is_some() {
                d.run(Cmd::Meta(true));
            } else if !d.issued.is_empty() {
                d.run(Cmd::Complete { pick: 0, err: None });
            } else {
                d.run(Cmd::Tick);
            }
        }
        prop_assert!(d.stopped, "never stopped");
        for key in d.queued.keys() {
            prop_assert!(d.replied.contains(key), "request {key:?} never answered");
        }
        prop_assert!(d.received.iter().all(|k| d.replied.contains(k)));
        prop_assert_eq!(d.m.status().queue, 0);
        prop_assert_eq!(d.m.metadata(), &d.on_disk);
    }
}
