//! Fuzz targets for what an NBD client sends: one transmission request, and the whole
//! option negotiation followed by requests.

use crate::nbd::negotiate::MAX_OPTION_LEN;
use crate::nbd::wire::{self, cmd, opt, rep, OPTION_REPLY_MAGIC, REQUEST_LEN};
use crate::nbd::{
    validate, Command, ExportInfo, NamedExport, Negotiation, RequestHeader, Then, Verdict,
};

/// The exports an NBD connection is offered in the NBD targets: a read-write disk with
/// a description and byte granularity, and a small read-only one with 512-byte blocks.
fn nbd_exports() -> Vec<NamedExport> {
    let mut rw = ExportInfo::new((1 << 30) - 4608);
    rw.description = "fuzz disk".into();
    let mut ro = ExportInfo::new(1 << 20);
    ro.read_only = true;
    ro.min_block = 512;
    ro.can_trim = false;
    ro.can_zero = false;
    vec![
        NamedExport {
            name: "r0".into(),
            info: rw,
        },
        NamedExport {
            name: "r1".into(),
            info: ro,
        },
    ]
}

/// One realistic export picked by `mode`: sizes from empty to the largest, both block
/// granularities, read-only or not, trim and zeroes offered or not.
fn nbd_export(mode: u8) -> ExportInfo {
    const SIZES: [u64; 4] = [0, 1 << 20, (1 << 40) - 69632, u64::MAX - 4095];
    let mut info = ExportInfo::new(SIZES[usize::from(mode & 3)]);
    info.min_block = if mode & 4 != 0 { 4096 } else { 1 };
    info.read_only = mode & 8 != 0;
    info.can_trim = mode & 16 == 0;
    info.can_zero = mode & 32 == 0;
    info.max_payload = if mode & 64 != 0 {
        1 << 20
    } else {
        info.max_payload
    };
    info
}

/// Checks the verdict on `req` against everything [`validate`] promises.
fn check_verdict(req: &RequestHeader, export: &ExportInfo, verdict: Verdict) {
    let (min_block, _, max_payload) = export.block_sizes();
    let in_range = |offset: u64, length: u32| {
        offset
            .checked_add(u64::from(length))
            .is_some_and(|end| end <= export.size)
    };
    let aligned = |offset: u64, length: u32| {
        let min = u64::from(min_block);
        offset.is_multiple_of(min) && u64::from(length).is_multiple_of(min)
    };
    match verdict {
        Verdict::Execute(command) => {
            let (offset, length) = match command {
                Command::Disconnect => {
                    assert_eq!(req.command, cmd::DISC);
                    return;
                }
                Command::Flush => {
                    assert_eq!(req.command, cmd::FLUSH);
                    assert_eq!((req.offset, req.length), (0, 0));
                    return;
                }
                Command::Read { offset, length } => {
                    assert_eq!(req.command, cmd::READ);
                    assert!(length <= max_payload, "READ above the advertised maximum");
                    (offset, length)
                }
                Command::Write {
                    offset,
                    length,
                    fua,
                } => {
                    assert_eq!(req.command, cmd::WRITE);
                    assert!(length <= max_payload, "WRITE above the advertised maximum");
                    assert!(!export.read_only, "WRITE to a read-only export");
                    assert_eq!(fua, req.flags & wire::cmd_flags::FUA != 0);
                    (offset, length)
                }
                Command::Trim { offset, length, .. } => {
                    assert_eq!(req.command, cmd::TRIM);
                    assert!(!export.read_only && export.can_trim);
                    (offset, length)
                }
                Command::WriteZeroes { offset, length, .. } => {
                    assert_eq!(req.command, cmd::WRITE_ZEROES);
                    assert!(!export.read_only && export.can_zero);
                    (offset, length)
                }
            };
            assert_eq!((offset, length), (req.offset, req.length));
            assert!(in_range(offset, length), "{command:?} outside the export");
            assert!(aligned(offset, length), "{command:?} misaligned");
        }
        Verdict::Reject { discard, .. } => {
            let expected = if req.command == cmd::WRITE {
                req.length
            } else {
                0
            };
            assert_eq!(discard, expected, "payload to discard");
            assert!(
                discard <= max_payload,
                "discarding more than we promised to read"
            );
        }
        Verdict::Close { length } => {
            assert_eq!(req.command, cmd::WRITE);
            assert_eq!(length, req.length);
            assert!(length > max_payload);
        }
    }
}

/// `RequestHeader::parse` and `validate` on one transmission request.
///
/// Input: a mode byte choosing the export ([`nbd_export`]), then the 28 header bytes.
/// Asserts: a parsed header re-encodes to the same bytes, a refused one had a bad magic,
/// and the verdict keeps every promise of `validate` (in range, aligned, within the
/// advertised payload, never a write to a read-only export, the right payload to discard).
pub fn nbd_request(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some(bytes) = rest.first_chunk::<REQUEST_LEN>() else {
        return;
    };
    let export = nbd_export(mode);
    let req = match RequestHeader::parse(bytes) {
        Ok(req) => req,
        Err(wire::BadRequestMagic(magic)) => {
            assert_ne!(magic, wire::REQUEST_MAGIC);
            assert_eq!(magic.to_be_bytes(), bytes[..4]);
            return;
        }
    };
    assert_eq!(&req.encode(), bytes, "request header round trip");
    check_verdict(&req, &export, validate(&req, &export));
}

/// Checks that `reply` is a sequence of well-formed option replies to `option` and
/// returns their types.
fn option_replies(reply: &[u8], option: u32) -> Vec<u32> {
    let mut types = Vec::new();
    let mut rest = reply;
    while !rest.is_empty() {
        assert!(rest.len() >= 20, "truncated option reply");
        assert_eq!(wire::be_u64(rest, 0), OPTION_REPLY_MAGIC);
        assert_eq!(wire::be_u32(rest, 8), option, "reply to another option");
        let len = wire::be_u32(rest, 16) as usize;
        assert!(rest.len() >= 20 + len, "option reply longer than sent");
        types.push(wire::be_u32(rest, 12));
        rest = &rest[20 + len..];
    }
    types
}

/// The fixed-newstyle negotiation (`nbd::negotiate`) fed a stranger's byte stream, then
/// the transmission requests that follow it, as `hast::nbd` drives them.
///
/// Input: the bytes a client sends after the server greeting. Asserts: the server never
/// asks for more than an option's bounded size, every reply is a well-formed sequence of
/// option replies to the option asked (or the EXPORT_NAME reply), an oversized option is
/// refused with `ERR_TOO_BIG` and discarded, a finished negotiation takes nothing more,
/// and entering transmission names an offered export with its own flags; then each request
/// as in [`nbd_request`].
pub fn nbd_negotiate(data: &[u8]) {
    #[derive(Clone, Copy, PartialEq)]
    enum Phase {
        Flags,
        Header,
        Payload,
    }
    let exports = nbd_exports();
    let mut n = Negotiation::new(exports.clone());
    let mut input = data;
    let mut phase = Phase::Flags;
    let mut option = 0u32;
    let negotiated = loop {
        let want = n.expect();
        assert!(want <= MAX_OPTION_LEN as usize, "asks for {want} bytes");
        if want == 0 {
            return;
        }
        let Some((chunk, rest)) = input.split_at_checked(want) else {
            return; // The client stopped sending; the I/O layer would time out.
        };
        input = rest;
        let announced = match phase {
            Phase::Flags => {
                assert_eq!(want, wire::CLIENT_FLAGS_LEN);
                None
            }
            Phase::Header => {
                assert_eq!(want, wire::OPTION_HEADER_LEN);
                option = wire::be_u32(chunk, 8);
                Some(wire::be_u32(chunk, 12))
            }
            Phase::Payload => None,
        };
        let outcome = match n.feed(chunk) {
            Ok(outcome) => outcome,
            Err(_) => {
                assert_eq!(n.expect(), 0, "an error ends the negotiation");
                assert!(n.feed(&[]).is_err());
                return;
            }
        };
        let answered = match (phase, announced) {
            (Phase::Flags, _) => false,
            (Phase::Header, Some(len)) if len > 0 && len <= MAX_OPTION_LEN => {
                assert_eq!(n.expect(), len as usize, "payload length");
                false
            }
            _ => true,
        };
        phase = match (phase, answered) {
            (Phase::Header, false) => Phase::Payload,
            _ => Phase::Header,
        };
        match outcome.then {
            Then::Continue if !answered => {
                assert!(
                    outcome.reply.is_empty(),
                    "a reply before the option was read"
                );
            }
            Then::Continue => {
                let types = option_replies(&outcome.reply, option);
                assert!(!types.is_empty(), "option {option} not answered");
            }
            Then::Discard(len) => {
                assert_eq!(Some(len), announced.map(u64::from));
                assert!(len > u64::from(MAX_OPTION_LEN));
                assert_eq!(option_replies(&outcome.reply, option), [rep::ERR_TOO_BIG]);
                let skip = usize::try_from(len).unwrap_or(usize::MAX).min(input.len());
                input = &input[skip..];
            }
            Then::Close => {
                assert_eq!(option, opt::ABORT);
                assert_eq!(option_replies(&outcome.reply, option), [rep::ACK]);
                assert_eq!(n.expect(), 0);
                return;
            }
            Then::Transmission(negotiated) => {
                let export = &exports[negotiated.export];
                assert_eq!(negotiated.name, export.name);
                assert_eq!(negotiated.flags, export.info.transmission_flags());
                if option == opt::EXPORT_NAME {
                    assert!(matches!(outcome.reply.len(), 10 | 134));
                    assert_eq!(wire::be_u64(&outcome.reply, 0), export.info.size);
                } else {
                    assert_eq!(option, opt::GO);
                    let types = option_replies(&outcome.reply, opt::GO);
                    assert_eq!(types.last(), Some(&rep::ACK));
                }
                assert_eq!(n.expect(), 0);
                break export.info.clone();
            }
        }
    };
    // Transmission: headers, each followed by what the connection reads after it.
    while let Some((bytes, rest)) = input.split_first_chunk::<REQUEST_LEN>() {
        input = rest;
        let Ok(req) = RequestHeader::parse(bytes) else {
            return; // Out of step: the connection closes.
        };
        let verdict = validate(&req, &negotiated);
        check_verdict(&req, &negotiated, verdict);
        let skip = match verdict {
            Verdict::Execute(Command::Write { length, .. }) => length,
            Verdict::Reject { discard, .. } => discard,
            Verdict::Execute(Command::Disconnect) | Verdict::Close { .. } => return,
            Verdict::Execute(_) => 0,
        };
        let skip = (skip as usize).min(input.len());
        input = &input[skip..];
    }
}
