use super::*;
use crate::metadata::Layout;

const KEY: &[u8] = b"0123456789abcdef-shared";
const NP: [u8; auth::NONCE_LEN] = [7; auth::NONCE_LEN];
const NS: [u8; auth::NONCE_LEN] = [9; auth::NONCE_LEN];

fn meta() -> Metadata {
    Metadata::new("r0", Layout::compute(1 << 24, 1 << 21, 512).unwrap(), 64).unwrap()
}

fn secondary(resuid: u64, localcnt: u64, remotecnt: u64, datastate: DataState) -> Metadata {
    let mut m = meta();
    (m.resuid, m.localcnt, m.remotecnt, m.datastate) = (resuid, localcnt, remotecnt, datastate);
    m
}

fn state(resuid: u64, localcnt: u64, remotecnt: u64, virgin: bool, consistent: bool) -> State {
    let m = meta();
    State {
        resuid,
        localcnt,
        remotecnt,
        virgin,
        datasize: m.datasize(),
        extentsize: m.extentsize(),
        proof: None,
        consistent,
    }
}

/// Runs both sides up to the secondary's decision.
fn exchange(
    primary_key: Option<&[u8]>,
    secondary_key: Option<&[u8]>,
    st: State,
    m: &Metadata,
) -> Result<Result<Accepted, Refused>, String> {
    let (mut p, hello) = PrimaryHandshake::start("r0", primary_key, Some(NP));
    let (s, welcome) =
        SecondaryHandshake::on_hello(&hello, secondary_key, NS).map_err(|e| e.message)?;
    let proof = p.on_welcome(&welcome).map_err(|e| e.to_string())?;
    Ok(s.on_state(&State { proof, ..st }, m))
}

#[test]
fn the_same_key_on_both_sides_authenticates_both_ways() {
    let m = secondary(5, 1, 1, DataState::CONSISTENT);
    let (mut p, hello) = PrimaryHandshake::start("r0", Some(KEY), Some(NP));
    assert_eq!(hello.capabilities, [auth::CAPABILITY]);
    assert_eq!(hello.nonce.as_deref(), Some(auth::to_hex(&NP).as_str()));
    let (s, welcome) = SecondaryHandshake::on_hello(&hello, Some(KEY), NS).unwrap();
    assert_eq!(welcome.nonce.as_deref(), Some(auth::to_hex(&NS).as_str()));
    let proof = p.on_welcome(&welcome).unwrap();
    assert!(proof.is_some());
    let ok = s.on_state(
        &State {
            proof,
            ..state(5, 1, 1, false, true)
        },
        &m,
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn no_key_on_either_side_skips_the_exchange() {
    let m = secondary(5, 1, 1, DataState::CONSISTENT);
    let (mut p, hello) = PrimaryHandshake::start("r0", None, Some(NP));
    assert!(hello.capabilities.is_empty() && hello.nonce.is_none());
    let (s, welcome) = SecondaryHandshake::on_hello(&hello, None, NS).unwrap();
    assert!(welcome.nonce.is_none() && welcome.proof.is_none());
    assert_eq!(p.on_welcome(&welcome), Ok(None));
    assert!(s.on_state(&state(5, 1, 1, false, true), &m).is_ok());
}

#[test]
fn a_wrong_key_is_refused_by_whichever_side_checks_first() {
    let m = secondary(5, 1, 1, DataState::CONSISTENT);
    // The primary checks the secondary's proof first.
    let err = exchange(
        Some(KEY),
        Some(b"another-key-of-16+"),
        state(5, 1, 1, false, true),
        &m,
    );
    assert!(
        err.as_ref()
            .is_err_and(|e| e.contains("does not know our authkey")),
        "{err:?}"
    );
    // A primary that skipped that check (or forged its proof) is refused by the secondary.
    let (_, hello) = PrimaryHandshake::start("r0", Some(KEY), Some(NP));
    let (s, _) = SecondaryHandshake::on_hello(&hello, Some(KEY), NS).unwrap();
    let forged = auth::prove(b"another-key-of-16+", auth::Prover::Primary, "r0", &NP, &NS);
    for proof in [None, Some(auth::to_hex(&forged)), Some("zz".into())] {
        let refused = s.on_state(
            &State {
                proof,
                ..state(5, 1, 1, false, true)
            },
            &m,
        );
        let refused = refused.unwrap_err();
        assert_eq!(refused.message.reason, Refusal::Auth);
        assert!(!refused.split_brain);
    }
    // Nor can the secondary's own proof be replayed as the primary's.
    let mirrored = auth::prove(KEY, auth::Prover::Secondary, "r0", &NP, &NS);
    let refused = s.on_state(
        &State {
            proof: Some(auth::to_hex(&mirrored)),
            ..state(5, 1, 1, false, true)
        },
        &m,
    );
    assert_eq!(refused.unwrap_err().message.reason, Refusal::Auth);
}

#[test]
fn a_key_on_one_side_only_is_refused() {
    let m = secondary(5, 1, 1, DataState::CONSISTENT);
    // Only the secondary has a key: it refuses the Hello.
    let (_, hello) = PrimaryHandshake::start("r0", None, Some(NP));
    let refused = SecondaryHandshake::on_hello(&hello, Some(KEY), NS).unwrap_err();
    assert_eq!(refused.reason, Refusal::Auth);
    assert!(
        refused.message.contains("authentication required"),
        "{refused:?}"
    );
    // Only the primary has a key: the Welcome proves nothing, the primary gives up.
    let err = exchange(Some(KEY), None, state(5, 1, 1, false, true), &m).unwrap_err();
    assert!(err.contains("did not authenticate"), "{err}");
    // A key but no nonce cannot authenticate either.
    let (mut p, hello) = PrimaryHandshake::start("r0", Some(KEY), None);
    assert!(hello.nonce.is_none());
    let welcome = Welcome {
        version: 2,
        capabilities: vec![],
        nonce: None,
        proof: None,
    };
    assert!(matches!(
        p.on_welcome(&welcome),
        Err(HandshakeFailure::Auth(_))
    ));
}

#[test]
fn versions_without_a_common_one_are_refused() {
    let hello = Hello {
        versions: vec![1],
        resource: "r0".into(),
        capabilities: vec![],
        nonce: None,
    };
    let refused = SecondaryHandshake::on_hello(&hello, None, NS).unwrap_err();
    assert_eq!(refused.reason, Refusal::Version);
    assert_eq!(
        refused.message,
        "no common protocol version (primary speaks [1], we speak [2])"
    );
    // The version check comes before the key check.
    assert_eq!(
        SecondaryHandshake::on_hello(&hello, Some(KEY), NS)
            .unwrap_err()
            .reason,
        Refusal::Version
    );
    let (s, welcome) = SecondaryHandshake::on_hello(
        &Hello {
            versions: vec![1, 2, 7],
            ..hello
        },
        None,
        NS,
    )
    .unwrap();
    assert_eq!((welcome.version, s.agreed_version()), (2, 2));
    // The primary refuses a version it did not offer.
    let (mut p, _) = PrimaryHandshake::start("r0", None, None);
    let odd = Welcome {
        version: 7,
        ..welcome
    };
    assert!(matches!(
        p.on_welcome(&odd),
        Err(HandshakeFailure::Protocol(_))
    ));
}

#[test]
fn different_sizes_are_refused_with_both_sizes() {
    let m = secondary(5, 1, 1, DataState::CONSISTENT);
    let (datasize, extentsize) = (m.datasize(), m.extentsize());
    let (s, _) =
        SecondaryHandshake::on_hello(&PrimaryHandshake::start("r0", None, None).1, None, NS)
            .unwrap();
    for st in [
        State {
            datasize: datasize + 512,
            ..state(5, 1, 1, false, true)
        },
        State {
            extentsize: extentsize * 2,
            ..state(5, 1, 1, false, true)
        },
    ] {
        let refused = s.on_state(&st, &m).unwrap_err();
        assert_eq!(refused.message.reason, Refusal::SizeMismatch);
        assert_eq!(
            refused.message.message,
            format!(
                "data size or extent size differs (primary {}/{}, secondary {datasize}/{extentsize}): \
                 create both with the same -m and -e",
                st.datasize, st.extentsize
            )
        );
    }
}

/// One row: the primary's state, the secondary's metadata, and what must come out.
struct Row {
    name: &'static str,
    p: State,
    s: Metadata,
    /// `Ok((syncsrc, full, bitmap, virgin, adopted resuid, sync target))` or the refusal.
    want: Result<(SyncSource, bool, bool, bool, bool, bool), Refusal>,
}

#[test]
fn every_decision_outcome() {
    use DataState as D;
    use SyncSource::{Primary as P, Secondary as S};
    let c = D::CONSISTENT;
    let target = D::CONSISTENT.with(D::SYNC_TARGET);
    let rows = [
        Row {
            name: "fresh pair",
            p: state(9, 0, 0, true, true),
            s: secondary(0, 0, 0, c),
            want: Ok((P, false, false, true, true, false)),
        },
        Row {
            name: "fresh secondary",
            p: state(9, 3, 0, false, true),
            s: secondary(0, 0, 0, c),
            want: Ok((P, true, false, true, true, true)),
        },
        Row {
            name: "fresh from secondary",
            p: state(9, 0, 0, true, true),
            s: secondary(0, 2, 0, c),
            want: Ok((S, true, false, true, true, false)),
        },
        Row {
            name: "1b split",
            p: state(9, 1, 0, false, true),
            s: secondary(0, 2, 0, c),
            want: Err(Refusal::SplitBrain),
        },
        Row {
            name: "resuid 0",
            p: state(0, 0, 0, false, true),
            s: secondary(5, 0, 0, c),
            want: Err(Refusal::ResuidMismatch),
        },
        Row {
            name: "resuid",
            p: state(9, 1, 1, false, true),
            s: secondary(5, 1, 1, c),
            want: Err(Refusal::ResuidMismatch),
        },
        Row {
            name: "primary out of date",
            p: state(5, 3, 2, false, true),
            s: secondary(5, 4, 3, c),
            want: Ok((S, false, true, false, false, false)),
        },
        Row {
            name: "in sync",
            p: state(5, 3, 4, false, true),
            s: secondary(5, 4, 3, c),
            want: Ok((P, false, true, false, false, false)),
        },
        Row {
            name: "in sync, secondary inconsistent",
            p: state(5, 3, 4, false, true),
            s: secondary(5, 4, 3, target),
            want: Ok((P, false, true, false, false, false)),
        },
        Row {
            name: "secondary out of date",
            p: state(5, 5, 4, false, true),
            s: secondary(5, 4, 3, c),
            want: Ok((P, false, true, false, false, true)),
        },
        Row {
            name: "split-brain",
            p: state(5, 5, 3, false, true),
            s: secondary(5, 4, 3, c),
            want: Err(Refusal::SplitBrain),
        },
        Row {
            name: "inconsistent from primary",
            p: state(5, 2, 4, false, true),
            s: secondary(5, 4, 3, c),
            want: Ok((P, true, false, false, false, true)),
        },
        Row {
            name: "inconsistent from secondary",
            p: state(5, 2, 3, false, true),
            s: secondary(5, 4, 3, c),
            want: Ok((S, true, false, false, false, false)),
        },
        Row {
            name: "primary source inconsistent",
            p: state(5, 5, 4, false, false),
            s: secondary(5, 4, 3, c),
            want: Err(Refusal::SourceInconsistent),
        },
        Row {
            name: "secondary source inconsistent",
            p: state(5, 3, 2, false, true),
            s: secondary(5, 4, 3, c.with(D::WRITE_FAILED)),
            want: Err(Refusal::SourceInconsistent),
        },
    ];
    for row in rows {
        let got = exchange(None, None, row.p.clone(), &row.s).unwrap();
        match (got, row.want) {
            (Ok(acc), Ok((syncsrc, full, bitmap, virgin, adopted, sync_target))) => {
                let r = acc.reply;
                assert_eq!(
                    (r.syncsrc, r.full_sync, acc.send_bitmap, r.virgin, r.mapsize),
                    (syncsrc, full, bitmap, virgin, 0),
                    "{}",
                    row.name
                );
                assert_eq!((r.localcnt, r.remotecnt), (row.s.localcnt, row.s.remotecnt));
                assert_eq!(
                    r.consistent,
                    row.s.datastate.is_consistent(),
                    "{}",
                    row.name
                );
                let next = acc.next_meta.clone().unwrap_or_else(|| row.s.clone());
                assert_eq!(
                    next.resuid == row.p.resuid,
                    adopted || row.s.resuid == row.p.resuid
                );
                assert_eq!(next.resuid != row.s.resuid, adopted, "{}", row.name);
                assert_eq!(
                    next.datastate.is_sync_target(),
                    sync_target || row.s.datastate.is_sync_target(),
                    "{}",
                    row.name
                );
                assert_eq!(
                    acc.decision.sync_target() == Some(Side::Secondary),
                    sync_target
                );
                // Only what the decision changes; nothing when nothing changes.
                assert_eq!(
                    acc.next_meta.is_some(),
                    adopted || (sync_target && !row.s.datastate.is_sync_target())
                );
                let mut expected = row.s.clone();
                expected.resuid = next.resuid;
                expected.datastate = next.datastate;
                assert_eq!(next, expected, "{}", row.name);
            }
            (Err(refused), Err(reason)) => {
                assert_eq!(refused.message.reason, reason, "{}", row.name);
                assert_eq!(
                    refused.split_brain,
                    reason == Refusal::SplitBrain,
                    "{}",
                    row.name
                );
                match reason {
                    Refusal::SplitBrain => {
                        assert_eq!(refused.message.message, "Split-brain condition!")
                    }
                    Refusal::ResuidMismatch => {
                        assert!(refused
                            .message
                            .message
                            .starts_with("Resource unique ID mismatch (primary="));
                        assert_eq!(
                            refused.detail.as_deref(),
                            Some(refused.message.message.as_str())
                        );
                    }
                    Refusal::SourceInconsistent => {
                        let detail = refused.detail.clone().unwrap_or_default();
                        assert!(detail.starts_with(&refused.message.message), "{detail}");
                        assert!(detail.contains(" Counters: ") && detail.contains("this node is"));
                    }
                    _ => {}
                }
            }
            (got, want) => panic!("{}: got {got:?}, want {want:?}", row.name),
        }
    }
}

#[test]
fn the_primary_checks_the_reply_and_the_bitmap_frame() {
    let (mut p, _) = PrimaryHandshake::start("r0", None, None);
    let reply = StateReply {
        localcnt: 1,
        remotecnt: 2,
        virgin: false,
        syncsrc: SyncSource::Secondary,
        full_sync: false,
        mapsize: 4096,
        consistent: true,
    };
    assert!(
        matches!(
            p.on_state_reply(&reply, 4096),
            Err(HandshakeFailure::Protocol(_))
        ),
        "a StateReply before the Welcome"
    );
    let welcome = Welcome {
        version: 2,
        capabilities: vec![],
        nonce: None,
        proof: None,
    };
    p.on_welcome(&welcome).unwrap();
    let mut again = p.clone();
    assert!(matches!(
        p.on_state_reply(&reply, 8192),
        Err(HandshakeFailure::Protocol(_))
    ));
    let est = again.on_state_reply(&reply, 4096).unwrap();
    assert_eq!(
        (est.version, est.syncsrc, est.mapsize),
        (2, Side::Secondary, 4096)
    );
    let bitmap = Header {
        length: 4096,
        ..Header::new(Kind::Bitmap, 0)
    };
    assert_eq!(PrimaryHandshake::check_bitmap(&est, &bitmap), Ok(()));
    let short = Header {
        length: 512,
        ..bitmap
    };
    assert!(PrimaryHandshake::check_bitmap(&est, &short).is_err());
    let other = Header::new(Kind::Reply, 0);
    assert!(PrimaryHandshake::check_bitmap(&est, &other).is_err());
    // No bitmap announced: any own size is fine.
    let (mut q, _) = PrimaryHandshake::start("r0", None, None);
    q.on_welcome(&welcome).unwrap();
    assert!(q
        .on_state_reply(
            &StateReply {
                mapsize: 0,
                ..reply
            },
            123
        )
        .is_ok());
    // A refusal names split-brain.
    let refused = q.on_error(ErrorMessage {
        reason: Refusal::SplitBrain,
        message: "Split-brain condition!".into(),
    });
    assert!(matches!(
        refused,
        HandshakeFailure::Refused {
            split_brain: true,
            ..
        }
    ));
}
