use proptest::prelude::*;

use super::*;

const TIB: u64 = 1 << 40;
const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn sample() -> Metadata {
    let layout = Layout::compute(GIB, 2 * MIB, 512).unwrap();
    let mut md = Metadata::new("shared", layout, 64).unwrap();
    md.resuid = 0x0123_4567_89ab_cdef;
    md.localcnt = 7;
    md.remotecnt = 5;
    md.prevrole = Role::Primary;
    md
}

/// Recomputes the CRC after a test edited a field, so that field checks are reached.
fn reseal(block: &mut [u8; METADATA_SIZE]) {
    let crc = block_crc(block);
    put_u32(block, OFF_CRC, crc);
}

fn edited(edit: impl FnOnce(&mut [u8; METADATA_SIZE])) -> Result<Metadata, MetadataError> {
    let mut block = sample().encode();
    edit(&mut block);
    reseal(&mut block);
    Metadata::decode(&block)
}

#[test]
fn bitmap_size_formula() {
    // ceil(ceil(size / extent) / 8) rounded up to the sector size.
    assert_eq!(bitmap_size(0, 2 << 20, 512), 0);
    assert_eq!(bitmap_size(1, 2 << 20, 512), 512);
    assert_eq!(bitmap_size(TIB - 4096, 2 << 20, 512), 65536);
    assert_eq!(bitmap_size(4096 * 8 * 4096, 4096, 4096), 4096);
    assert_eq!(bitmap_size(4096 * 8 * 4096 + 1, 4096, 4096), 8192);
    assert_eq!(bitmap_size(u64::MAX, 512, 512), (u64::MAX / 512 + 1) / 8);
}

#[test]
fn worked_example_one_tib_two_mib() {
    let layout = Layout::compute(TIB, 2 * MIB, 512).unwrap();
    assert_eq!(layout.bitmap_size(), 65536);
    assert_eq!(layout.offset(), 69632);
    assert_eq!(layout.datasize(), TIB - 69632);
    assert_eq!(layout.nextents(), 524288);
    assert_eq!(layout.end(), TIB);
}

#[test]
fn one_gib_file_layout() {
    let layout = Layout::compute(GIB, 2 * MIB, 512).unwrap();
    assert_eq!(layout.bitmap_size(), 512);
    assert_eq!(layout.offset(), 4608);
    assert_eq!(layout.datasize(), GIB - 4608);
}

#[test]
fn media_size_is_rounded_down_to_sectors() {
    let layout = Layout::compute(GIB + 100, 2 * MIB, 512).unwrap();
    assert_eq!(layout.end(), GIB);
}

#[test]
fn layout_validation_errors() {
    assert_eq!(
        Layout::compute(GIB, 3 * MIB, 512),
        Err(LayoutError::ExtentSizeNotPowerOfTwo(3 * MIB))
    );
    assert_eq!(
        Layout::compute(GIB, 0, 512),
        Err(LayoutError::ExtentSizeNotPowerOfTwo(0))
    );
    assert_eq!(
        Layout::compute(GIB, 256, 512),
        Err(LayoutError::ExtentSizeBelowSector {
            extentsize: 256,
            sectorsize: 512
        })
    );
    assert_eq!(
        Layout::compute(GIB, 1 << 32, 512),
        Err(LayoutError::ExtentSizeTooLarge(1 << 32))
    );
    assert_eq!(
        Layout::compute(GIB, 2 * MIB, 1000),
        Err(LayoutError::SectorSizeNotPowerOfTwo(1000))
    );
    assert_eq!(
        Layout::compute(GIB, 2 * MIB, 0),
        Err(LayoutError::SectorSizeNotPowerOfTwo(0))
    );
    assert_eq!(
        Layout::compute(GIB, 2 * MIB, 8192),
        Err(LayoutError::SectorSizeTooLarge(8192))
    );
    assert!(matches!(
        Layout::compute(4096 + 512, 2 * MIB, 512),
        Err(LayoutError::MediaTooSmall { .. })
    ));
    assert!(matches!(
        Layout::compute(100, 2 * MIB, 512),
        Err(LayoutError::MediaTooSmall { .. })
    ));
    // Smallest media that works: header, one bitmap sector, one data sector.
    let tiny = Layout::compute(4096 + 1024, 4096, 512).unwrap();
    assert_eq!((tiny.offset(), tiny.datasize()), (4608, 512));
}

#[test]
fn round_trip() {
    let md = sample();
    let block = md.encode();
    assert_eq!(&block[..8], b"HASTLNX\0");
    assert_eq!(Metadata::decode(&block), Ok(md.clone()));
    // A longer buffer (a whole sector) decodes the same.
    let mut longer = block.to_vec();
    longer.extend_from_slice(&[0xff; 512]);
    assert_eq!(Metadata::decode(&longer), Ok(md));
}

#[test]
fn round_trip_longest_name_and_every_role() {
    let layout = Layout::compute(TIB, 64 * 1024, 4096).unwrap();
    let name = "é".repeat(127); // 254 bytes
    for role in [Role::Init, Role::Primary, Role::Secondary] {
        let mut md = Metadata::new(&name, layout, u32::MAX).unwrap();
        md.prevrole = role;
        md.localcnt = u64::MAX;
        assert_eq!(Metadata::decode(&md.encode()), Ok(md));
    }
}

#[test]
fn new_refuses_bad_names_and_keepdirty() {
    let layout = Layout::compute(GIB, 2 * MIB, 512).unwrap();
    assert_eq!(
        Metadata::new("", layout, 64),
        Err(MetadataError::Name("empty"))
    );
    assert!(Metadata::new(&"x".repeat(256), layout, 64).is_err());
    assert!(Metadata::new(&"x".repeat(255), layout, 64).is_ok());
    assert!(Metadata::new("a\0b", layout, 64).is_err());
    assert_eq!(Metadata::new("r", layout, 0), Err(MetadataError::KeepDirty));
}

#[test]
fn wrong_resource_is_refused() {
    let md = sample();
    assert_eq!(md.check_resource("shared"), Ok(()));
    let err = md.check_resource("other").unwrap_err();
    assert_eq!(
        err.to_string(),
        "provider belongs to resource 'shared', not 'other'"
    );
}

#[test]
fn decode_errors_in_order() {
    assert_eq!(
        Metadata::decode(&[0u8; 100]),
        Err(MetadataError::Truncated(100))
    );
    assert_eq!(
        Metadata::decode(&[0u8; METADATA_SIZE]),
        Err(MetadataError::NoMetadata)
    );
    assert_eq!(
        MetadataError::NoMetadata.to_string(),
        "not a hast provider (no metadata found)"
    );

    // A newer version is refused before its checksum is even looked at: its CRC may be
    // computed differently.
    let mut block = sample().encode();
    put_u32(&mut block, OFF_VERSION, 3);
    assert_eq!(Metadata::decode(&block), Err(MetadataError::TooNew(3)));
    assert_eq!(
        MetadataError::TooNew(3).to_string(),
        "metadata version 3 is newer than this hast supports (2); refusing to touch it"
    );
    assert_eq!(
        edited(|b| put_u32(b, OFF_VERSION, 0)),
        Err(MetadataError::BadVersion(0))
    );

    let mut block = sample().encode();
    block[OFF_RESUID] ^= 1;
    match Metadata::decode(&block) {
        Err(err @ MetadataError::Checksum { .. }) => {
            assert!(err
                .to_string()
                .starts_with("metadata checksum mismatch (stored 0x"));
            assert!(err.to_string().ends_with("): the header is corrupt"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn data_state_needs_version_2_and_known_bits() {
    // Consistent metadata is written as version 1, readable by version-1 builds.
    let md = sample();
    assert_eq!(get_u32(&md.encode(), OFF_VERSION), 1);
    let mut flagged = md.clone();
    flagged.datastate = DataState::CONSISTENT.with(DataState::SYNC_TARGET);
    let block = flagged.encode();
    assert_eq!(get_u32(&block, OFF_VERSION), 2);
    assert_eq!(block[OFF_RESERVED], 1);
    assert_eq!(Metadata::decode(&block), Ok(flagged.clone()));
    // Flags in a version 1 header are corruption, not a state.
    let mut v1 = block;
    put_u32(&mut v1, OFF_VERSION, 1);
    reseal(&mut v1);
    assert_eq!(
        Metadata::decode(&v1),
        Err(MetadataError::NonZeroPadding(OFF_RESERVED))
    );
    // A bit from the future is refused, never ignored.
    let mut future = block;
    future[OFF_RESERVED + 1] = 0x80;
    reseal(&mut future);
    assert_eq!(
        Metadata::decode(&future),
        Err(MetadataError::UnknownFlags(0x8001))
    );
    // Clearing the state goes back to version 1.
    flagged.datastate = DataState::CONSISTENT;
    assert_eq!(get_u32(&flagged.encode(), OFF_VERSION), 1);
}

#[test]
fn decode_field_errors() {
    assert_eq!(
        edited(|b| put_u32(b, OFF_HEADER_LEN, 4000)),
        Err(MetadataError::HeaderLength {
            found: 4000,
            expected: 82
        })
    );
    assert_eq!(
        edited(|b| b[OFF_RESERVED + 1] = 1),
        Err(MetadataError::NonZeroPadding(OFF_RESERVED + 1))
    );
    assert_eq!(
        edited(|b| b[4000] = 1),
        Err(MetadataError::NonZeroPadding(4000))
    );
    assert_eq!(
        edited(|b| b[OFF_NAME] = 0xff),
        Err(MetadataError::Name("not UTF-8"))
    );
    assert_eq!(
        edited(|b| {
            b[OFF_NAME_LEN] = 0;
            put_u32(b, OFF_HEADER_LEN, FIXED_HEADER_LEN as u32);
            b[OFF_NAME..OFF_NAME + 6].fill(0);
        }),
        Err(MetadataError::Name("empty"))
    );
    assert_eq!(edited(|b| b[OFF_PREVROLE] = 0), Err(MetadataError::Role(0)));
    assert_eq!(edited(|b| b[OFF_PREVROLE] = 4), Err(MetadataError::Role(4)));
    assert_eq!(
        edited(|b| put_u32(b, OFF_KEEPDIRTY, 0)),
        Err(MetadataError::KeepDirty)
    );
    assert_eq!(
        edited(|b| put_u32(b, OFF_EXTENTSIZE, 3 << 20)),
        Err(MetadataError::Layout(LayoutError::ExtentSizeNotPowerOfTwo(
            3 << 20
        )))
    );
    assert_eq!(
        edited(|b| put_u32(b, OFF_EXTENTSIZE, 256)),
        Err(MetadataError::Layout(LayoutError::ExtentSizeBelowSector {
            extentsize: 256,
            sectorsize: 512
        }))
    );
    assert_eq!(
        edited(|b| put_u32(b, OFF_SECTORSIZE, 1000)),
        Err(MetadataError::Layout(LayoutError::SectorSizeNotPowerOfTwo(
            1000
        )))
    );
    assert_eq!(
        edited(|b| put_u64(b, OFF_OFFSET, 8192)),
        Err(MetadataError::Offset {
            found: 8192,
            expected: 4608
        })
    );
    assert!(matches!(
        edited(|b| put_u64(b, OFF_OFFSET, 100)),
        Err(MetadataError::Offset { found: 100, .. })
    ));
    assert_eq!(
        edited(|b| put_u64(b, OFF_DATASIZE, u64::MAX - 511)),
        Err(MetadataError::DataSize(u64::MAX - 511))
    );
    assert_eq!(
        edited(|b| put_u64(b, OFF_DATASIZE, 1000)),
        Err(MetadataError::DataSize(1000))
    );
    assert_eq!(
        edited(|b| put_u64(b, OFF_DATASIZE, 0)),
        Err(MetadataError::DataSize(0))
    );
    // A datasize that calls for a larger bitmap than the offset leaves room for.
    assert_eq!(
        edited(|b| put_u64(b, OFF_DATASIZE, TIB)),
        Err(MetadataError::Offset {
            found: 4608,
            expected: 4096 + 66048
        })
    );
}

#[test]
fn role_words() {
    for role in [Role::Init, Role::Primary, Role::Secondary] {
        assert_eq!(role.as_str().parse::<Role>(), Ok(role));
        assert_eq!(Role::from_u8(role.to_u8()), Some(role));
        assert_eq!(role.to_string(), role.as_str());
    }
    assert!("master".parse::<Role>().is_err());
    assert_eq!(Role::from_u8(0), None);
}

proptest! {
    #[test]
    fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..5000)) {
        let _ = Metadata::decode(&bytes);
    }

    #[test]
    fn decode_never_panics_on_sealed_garbage(
        fields in proptest::collection::vec(any::<u8>(), FIXED_HEADER_LEN - 20),
        name in "[a-z]{1,20}",
    ) {
        // Valid magic, version and CRC around random fields: exercises the field checks.
        let mut block = [0u8; METADATA_SIZE];
        block[..8].copy_from_slice(&MAGIC);
        put_u32(&mut block, OFF_VERSION, VERSION);
        block[20..FIXED_HEADER_LEN].copy_from_slice(&fields);
        block[OFF_NAME_LEN] = name.len() as u8;
        block[OFF_NAME..OFF_NAME + name.len()].copy_from_slice(name.as_bytes());
        put_u32(&mut block, OFF_HEADER_LEN, (FIXED_HEADER_LEN + name.len()) as u32);
        reseal(&mut block);
        if let Ok(md) = Metadata::decode(&block) {
            // Anything accepted is a layout `compute` would produce, and re-encodes.
            let layout = md.layout();
            let again = Layout::compute(layout.end(), u64::from(layout.extentsize()), layout.sectorsize());
            prop_assert_eq!(again.as_ref(), Ok(layout));
            prop_assert_eq!(Metadata::decode(&md.encode()), Ok(md));
        }
    }

    #[test]
    fn any_flipped_byte_is_detected(
        pos in 0usize..METADATA_SIZE,
        flip in 1u8..=255,
        name in "[a-zA-Z0-9_.-]{1,255}",
    ) {
        let layout = Layout::compute(TIB, 2 * MIB, 512).unwrap();
        let md = Metadata::new(&name, layout, 64).unwrap();
        let mut block = md.encode();
        block[pos] ^= flip;
        prop_assert!(Metadata::decode(&block).is_err());
    }

    #[test]
    fn compute_is_consistent(
        mediasize in 0u64..(1 << 50),
        extent_shift in 9u32..=31,
        sector_shift in 9u32..=12,
    ) {
        if let Ok(layout) = Layout::compute(mediasize, 1 << extent_shift, 1 << sector_shift) {
            prop_assert!(layout.end() <= mediasize);
            prop_assert!(layout.datasize() >= 1 << sector_shift);
            prop_assert_eq!(layout.offset() % (1 << sector_shift), 0);
            prop_assert!(layout.bitmap_size() * 8 >= layout.nextents());
            let md = Metadata::new("r", layout, 1).unwrap();
            prop_assert_eq!(Metadata::decode(&md.encode()), Ok(md));
        }
    }
}
