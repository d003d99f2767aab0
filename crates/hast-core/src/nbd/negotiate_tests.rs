use super::*;
use crate::nbd::wire::{handshake_flags, tflags, OPTION_REPLY_MAGIC};

fn exports() -> Vec<NamedExport> {
    let mut info = ExportInfo::new(0x10_0000);
    info.description = "disk".into();
    let mut second = ExportInfo::new(512);
    second.read_only = true;
    vec![
        NamedExport {
            name: "r0".into(),
            info,
        },
        NamedExport {
            name: "r1".into(),
            info: second,
        },
    ]
}

fn started(flags: u32) -> Negotiation {
    let mut n = Negotiation::new(exports());
    assert_eq!(n.expect(), 4);
    let out = n.feed(&flags.to_be_bytes()).unwrap();
    assert_eq!(
        out,
        Outcome {
            reply: vec![],
            then: Then::Continue
        }
    );
    n
}

fn header(option: u32, len: u32) -> Vec<u8> {
    let mut h = IHAVEOPT.to_be_bytes().to_vec();
    h.extend_from_slice(&option.to_be_bytes());
    h.extend_from_slice(&len.to_be_bytes());
    h
}

/// Sends one option (header, then payload if any) and returns the last outcome.
fn send(n: &mut Negotiation, option: u32, payload: &[u8]) -> Result<Outcome, NegotiationError> {
    let out = n.feed(&header(option, payload.len() as u32))?;
    if payload.is_empty() {
        return Ok(out);
    }
    assert_eq!(
        out,
        Outcome {
            reply: vec![],
            then: Then::Continue
        }
    );
    assert_eq!(n.expect(), payload.len());
    n.feed(payload)
}

fn reply(option: u32, reply_type: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
    v.extend_from_slice(&option.to_be_bytes());
    v.extend_from_slice(&reply_type.to_be_bytes());
    v.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn go_payload(name: &str, infos: &[u16]) -> Vec<u8> {
    let mut p = (name.len() as u32).to_be_bytes().to_vec();
    p.extend_from_slice(name.as_bytes());
    p.extend_from_slice(&(infos.len() as u16).to_be_bytes());
    for i in infos {
        p.extend_from_slice(&i.to_be_bytes());
    }
    p
}

const RW_FLAGS: u16 = tflags::HAS_FLAGS
    | tflags::SEND_FLUSH
    | tflags::SEND_FUA
    | tflags::SEND_TRIM
    | tflags::SEND_WRITE_ZEROES;

#[test]
fn unknown_client_flags_drop_the_connection() {
    let mut n = Negotiation::new(exports());
    assert_eq!(
        n.feed(&4u32.to_be_bytes()),
        Err(NegotiationError::UnknownClientFlags(4))
    );
    assert_eq!(n.feed(&[0; 4]), Err(NegotiationError::Finished));
}

#[test]
fn export_name_with_and_without_zeroes() {
    let mut n = started(client_flags::FIXED_NEWSTYLE);
    let out = send(&mut n, opt::EXPORT_NAME, b"r0").unwrap();
    let mut expected = vec![0, 0, 0, 0, 0, 0x10, 0, 0];
    expected.extend_from_slice(&RW_FLAGS.to_be_bytes());
    expected.extend_from_slice(&[0; 124]);
    assert_eq!(out.reply, expected);
    assert_eq!(
        out.then,
        Then::Transmission(Negotiated {
            export: 0,
            name: "r0".into(),
            flags: RW_FLAGS,
            block_size_agreed: false
        })
    );
    assert_eq!(n.expect(), 0);

    let mut n = started(client_flags::FIXED_NEWSTYLE | client_flags::NO_ZEROES);
    let out = send(&mut n, opt::EXPORT_NAME, b"r1").unwrap();
    let ro = tflags::HAS_FLAGS | tflags::READ_ONLY | tflags::SEND_FLUSH | tflags::SEND_FUA;
    let mut expected = vec![0, 0, 0, 0, 0, 0, 2, 0];
    expected.extend_from_slice(&ro.to_be_bytes());
    assert_eq!(out.reply, expected);
}

#[test]
fn export_name_empty_is_the_default_and_unknown_closes() {
    let mut n = started(0);
    let out = send(&mut n, opt::EXPORT_NAME, b"").unwrap();
    assert!(matches!(
        out.then,
        Then::Transmission(Negotiated { export: 0, .. })
    ));
    let mut n = started(0);
    assert_eq!(
        send(&mut n, opt::EXPORT_NAME, b"nope"),
        Err(NegotiationError::UnknownExport("nope".into()))
    );
}

#[test]
fn abort_acks_then_closes() {
    let mut n = started(1);
    let out = send(&mut n, opt::ABORT, b"").unwrap();
    assert_eq!(
        out,
        Outcome {
            reply: reply(opt::ABORT, rep::ACK, &[]),
            then: Then::Close
        }
    );
}

#[test]
fn list_sends_one_server_reply_per_export_then_ack() {
    let mut n = started(1);
    let out = send(&mut n, opt::LIST, b"").unwrap();
    let mut expected = reply(opt::LIST, rep::SERVER, &[0, 0, 0, 2, b'r', b'0']);
    expected.extend(reply(opt::LIST, rep::SERVER, &[0, 0, 0, 2, b'r', b'1']));
    expected.extend(reply(opt::LIST, rep::ACK, &[]));
    assert_eq!(
        out,
        Outcome {
            reply: expected,
            then: Then::Continue
        }
    );
    let out = send(&mut n, opt::LIST, b"x").unwrap();
    assert_eq!(
        out.reply,
        reply(opt::LIST, rep::ERR_INVALID, b"LIST takes no data")
    );
}

#[test]
fn info_then_go() {
    let mut n = started(1);
    let out = send(
        &mut n,
        opt::INFO,
        &go_payload("r0", &[info::NAME, info::DESCRIPTION]),
    )
    .unwrap();
    let mut expected = reply(
        opt::INFO,
        rep::INFO,
        &[0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x6d],
    );
    expected.extend(reply(
        opt::INFO,
        rep::INFO,
        &[0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0],
    ));
    expected.extend(reply(opt::INFO, rep::INFO, &[0, 1, b'r', b'0']));
    expected.extend(reply(opt::INFO, rep::INFO, &[0, 2, b'd', b'i', b's', b'k']));
    expected.extend(reply(opt::INFO, rep::ACK, &[]));
    assert_eq!(
        out,
        Outcome {
            reply: expected,
            then: Then::Continue
        }
    );

    let out = send(&mut n, opt::GO, &go_payload("", &[info::BLOCK_SIZE])).unwrap();
    let mut expected = reply(
        opt::GO,
        rep::INFO,
        &[0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x6d],
    );
    expected.extend(reply(
        opt::GO,
        rep::INFO,
        &[0, 3, 0, 0, 0, 1, 0, 0, 0x10, 0, 0x02, 0, 0, 0],
    ));
    expected.extend(reply(opt::GO, rep::ACK, &[]));
    assert_eq!(out.reply, expected);
    assert_eq!(
        out.then,
        Then::Transmission(Negotiated {
            export: 0,
            name: "r0".into(),
            flags: RW_FLAGS,
            block_size_agreed: true
        })
    );
}

#[test]
fn go_errors_keep_negotiating() {
    let mut n = started(1);
    let out = send(&mut n, opt::GO, &go_payload("zz", &[])).unwrap();
    assert_eq!(
        out.reply,
        reply(opt::GO, rep::ERR_UNKNOWN, b"unknown export \"zz\"")
    );
    assert_eq!(out.then, Then::Continue);
    let mut bad = go_payload("r0", &[1]);
    bad.push(0);
    let out = send(&mut n, opt::GO, &bad).unwrap();
    assert_eq!(
        out.reply,
        reply(opt::GO, rep::ERR_INVALID, b"malformed INFO/GO data")
    );
    let out = send(&mut n, opt::INFO, &[0, 0, 0, 9, b'a']).unwrap();
    assert_eq!(
        out.reply,
        reply(opt::INFO, rep::ERR_INVALID, b"malformed INFO/GO data")
    );
    assert_eq!(n.expect(), 16);
}

#[test]
fn unsupported_options_get_err_unsup() {
    let mut n = started(1);
    for option in [
        opt::STARTTLS,
        opt::STRUCTURED_REPLY,
        opt::SET_META_CONTEXT,
        4,
        0x7fff_ffff,
    ] {
        let out = send(&mut n, option, b"").unwrap();
        assert_eq!(
            out,
            Outcome {
                reply: reply(option, rep::ERR_UNSUP, &[]),
                then: Then::Continue
            }
        );
    }
    let out = send(&mut n, opt::LIST_META_CONTEXT, b"abc").unwrap();
    assert_eq!(
        out.reply,
        reply(opt::LIST_META_CONTEXT, rep::ERR_UNSUP, &[])
    );
}

#[test]
fn oversized_options_are_refused_and_discarded() {
    let mut n = started(1);
    let out = n.feed(&header(opt::GO, MAX_OPTION_LEN + 1)).unwrap();
    assert_eq!(
        out.reply,
        reply(opt::GO, rep::ERR_TOO_BIG, b"option too large")
    );
    assert_eq!(out.then, Then::Discard(u64::from(MAX_OPTION_LEN) + 1));
    assert_eq!(n.expect(), 16);
    assert_eq!(
        n.feed(&header(opt::EXPORT_NAME, u32::MAX)),
        Err(NegotiationError::ExportNameTooLong(u32::MAX))
    );
}

#[test]
fn bad_option_magic_and_wrong_feed_length() {
    let mut n = started(1);
    assert_eq!(
        n.feed(&[0; 3]),
        Err(NegotiationError::WrongLength {
            expected: 16,
            got: 3
        })
    );
    let mut n = started(1);
    assert_eq!(n.feed(&[0; 16]), Err(NegotiationError::BadOptionMagic(0)));
}

#[test]
fn greeting_advertises_what_we_accept() {
    let g = crate::nbd::wire::greeting();
    let flags = u16::from_be_bytes([g[16], g[17]]);
    assert_eq!(
        flags,
        handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES
    );
}
