//! Parsers never panic, whatever the client sends.

use super::negotiate::{NamedExport, Negotiation, Then};
use super::validate::validate;
use super::wire::{RequestHeader, REQUEST_LEN};
use super::ExportInfo;
use proptest::prelude::*;

fn exports() -> Vec<NamedExport> {
    vec![NamedExport {
        name: "r0".into(),
        info: ExportInfo::new(1 << 30),
    }]
}

proptest! {
    #[test]
    fn negotiation_never_panics(stream in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let mut n = Negotiation::new(exports());
        let mut rest = &stream[..];
        loop {
            let want = n.expect();
            if want == 0 || rest.len() < want {
                break;
            }
            let (chunk, tail) = rest.split_at(want);
            rest = tail;
            match n.feed(chunk) {
                Ok(out) => match out.then {
                    Then::Continue => {}
                    Then::Discard(k) => {
                        let k = usize::try_from(k).unwrap_or(usize::MAX).min(rest.len());
                        rest = &rest[k..];
                    }
                    Then::Close | Then::Transmission(_) => break,
                },
                Err(_) => break,
            }
        }
    }

    #[test]
    fn negotiation_survives_valid_headers_with_random_payloads(
        option in 0u32..16,
        payload in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut n = Negotiation::new(exports());
        n.feed(&[0, 0, 0, 1]).unwrap();
        let mut h = super::wire::IHAVEOPT.to_be_bytes().to_vec();
        h.extend_from_slice(&option.to_be_bytes());
        h.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        let out = n.feed(&h);
        if !payload.is_empty() && out.is_ok() {
            let _ = n.feed(&payload);
        }
    }

    #[test]
    fn request_parse_and_validate_never_panic(
        bytes in proptest::array::uniform28(any::<u8>()),
        size in any::<u64>(),
        min_shift in 0u32..18,
        read_only in any::<bool>(),
    ) {
        let buf: [u8; REQUEST_LEN] = bytes;
        if let Ok(h) = RequestHeader::parse(&buf) {
            let mut info = ExportInfo::new(size);
            info.min_block = 1 << min_shift;
            info.read_only = read_only;
            let _ = validate(&h, &info);
        }
        let mut fixed = buf;
        fixed[..4].copy_from_slice(&super::wire::REQUEST_MAGIC.to_be_bytes());
        let h = RequestHeader::parse(&fixed).unwrap();
        let _ = validate(&h, &ExportInfo::new(size));
    }
}
