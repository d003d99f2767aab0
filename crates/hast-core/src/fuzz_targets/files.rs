//! Fuzz targets for what files hold: hast.conf, sizes written in it, and the on-disk
//! metadata header.

use crate::config::{
    self, parse_address, parse_export_address, parse_source_address, Address, NodeIdentity,
};
use crate::metadata::{Layout, Metadata, METADATA_SIZE};
use crate::units;

/// Checks that the canonical form of an address parses back to the same address.
fn check_address(addr: &Address, parse: fn(&str) -> Result<Address, config::AddressError>) {
    let text = addr.to_string();
    match parse(&text) {
        Ok(back) => assert_eq!(&back, addr, "address {text:?} round trip"),
        Err(e) => panic!("canonical address {text:?} refused: {e}"),
    }
}

/// hast.conf(5): `config::parse` on any text, for a node named `alpha`.
///
/// Input: the file's bytes (not UTF-8: nothing to parse, as `hast::conf` refuses it).
/// Asserts: errors are reported, sorted by line, each on a line of the file; an accepted
/// configuration has unique, non-empty resource names and addresses whose canonical form
/// reads back as the same address.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let node = NodeIdentity::Named("alpha".into());
    let lines = text.split('\n').count() as u32;
    match config::parse(text, "fuzz.conf", &node) {
        Err(errors) => {
            assert!(!errors.diagnostics.is_empty());
            let mut last = 0;
            for d in &errors.diagnostics {
                assert!(d.line >= last, "diagnostics out of order");
                assert!(d.line >= 1 && d.line <= lines, "line {} of {lines}", d.line);
                assert_eq!(d.file, "fuzz.conf");
                last = d.line;
            }
        }
        Ok(config) => {
            check_address(&config.control, parse_address);
            for addr in &config.listen {
                check_address(addr, parse_address);
            }
            let mut names = Vec::new();
            for r in &config.resources {
                assert!(!r.name.is_empty());
                assert!(!names.contains(&&r.name), "resource {} twice", r.name);
                names.push(&r.name);
                if let Some(remote) = &r.remote {
                    check_address(remote, parse_address);
                }
                if let Some(source) = &r.source {
                    check_address(source, parse_source_address);
                }
                check_address(&r.export, parse_export_address);
            }
        }
    }
}

/// `units::parse_size` (hastctl's `-e`, `-k`, `-m` and hast.conf's sizes).
///
/// Input: the text. Asserts: an accepted size is digits times the power of 1024 its
/// suffix names, and the plain number reads back as itself.
pub fn units_size(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(n) = units::parse_size(text) else {
        return;
    };
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    assert!(digits > 0);
    let Ok(number) = text[..digits].parse::<u64>() else {
        panic!("{text:?} accepted with an unreadable number");
    };
    let suffix = text[digits..].to_ascii_lowercase();
    let unit = suffix
        .strip_suffix("ib")
        .or_else(|| suffix.strip_suffix('b'))
        .unwrap_or(&suffix);
    // The oracle, written differently from the parser: each letter of "kmgtpe" is one
    // more power of 1024.
    let shift = match unit.chars().collect::<Vec<_>>()[..] {
        [] => 0,
        [c] => match "kmgtpe".find(c) {
            Some(i) => 10 * (i as u32 + 1),
            None => panic!("{text:?} accepted with suffix {suffix:?}"),
        },
        _ => panic!("{text:?} accepted with suffix {suffix:?}"),
    };
    assert_eq!(number.checked_mul(1u64 << shift), Some(n));
    assert_eq!(units::parse_size(&n.to_string()), Ok(n));
    let _ = units::humanize(n);
}

/// Recomputes the CRC-32C of a metadata block, as `Metadata::encode` does.
fn reseal_metadata(block: &mut [u8; METADATA_SIZE]) {
    block[16..20].fill(0);
    let crc = crc32c::crc32c(block);
    block[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// The on-disk metadata header: `Metadata::decode` on any block.
///
/// Input: a mode byte (bit 0: recompute the CRC), then the block (at least 4096 bytes
/// are needed). Asserts: an accepted header re-encodes to the same block (up to the
/// version, which `encode` lowers to 1 when it can) and decodes equal; its layout is the
/// one `Layout::compute` gives for the provider size it implies, as the module promises.
pub fn metadata(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let Some(head) = rest.first_chunk::<METADATA_SIZE>() else {
        let _ = Metadata::decode(rest);
        return;
    };
    let mut block = *head;
    if mode & 1 != 0 {
        reseal_metadata(&mut block);
    }
    let Ok(md) = Metadata::decode(&block) else {
        return;
    };
    let encoded = md.encode();
    assert_eq!(
        Metadata::decode(&encoded).as_ref(),
        Ok(&md),
        "metadata round trip"
    );
    if u32::from_le_bytes([block[8], block[9], block[10], block[11]]) == md.version() {
        assert!(encoded == block, "re-encoded header differs");
    }
    let layout = *md.layout();
    assert_eq!(
        layout.offset(),
        layout.bitmap_offset() + layout.bitmap_size()
    );
    assert_eq!(
        Layout::compute(
            layout.end(),
            u64::from(layout.extentsize()),
            layout.sectorsize()
        ),
        Ok(layout),
        "decoded layout is not what create would write"
    );
}
