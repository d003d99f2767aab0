//! The on-disk format of a local component: the metadata header, the layout of the
//! activemap area and of the user data. No I/O: `hast::storage` reads and writes the
//! bytes this module encodes and decodes. The format is specified byte by byte in
//! `docs/on-disk-format.md`; keep the two in step.
//!
//! ```text
//! offset 0            4096                    4096 + mapsize               mediasize
//! | metadata block    | activemap bitmap      | user data (datasize bytes) |
//! ```
//!
//! The header is a fixed little-endian structure, not FreeBSD's nv list: a magic number
//! so that a provider that never went through `hastctl create` is recognised as such, a
//! format version so that an older hast refuses a newer header instead of misreading it,
//! and a CRC-32C over the whole 4096-byte block so that a torn or corrupted header is
//! refused instead of trusted. Decoding validates every field before anything uses it:
//! a decoded [`Metadata`] always describes a layout that [`Layout::compute`] would
//! produce, so the storage layer can trust its offsets.

use thiserror::Error;

mod datastate;
mod role;

pub use datastate::DataState;
pub use role::{Role, RoleParseError};

/// Size of the metadata block at offset 0 (`METADATA_SIZE`).
pub const METADATA_SIZE: usize = 4096;
/// Magic number at offset 0 of every hast-for-Linux provider.
pub const MAGIC: [u8; 8] = *b"HASTLNX\0";
/// The newest format version this build reads and writes. Version 2 gives the two
/// reserved bytes at offset 74 a meaning (the [`DataState`] flags); a header whose flags
/// are all zero is still written as version 1, so that it stays readable by builds that
/// know only version 1 (such a build refuses a header that carries flags, as it should:
/// it would not honour them).
pub const VERSION: u32 = 2;
/// Default extent size (`HAST_EXTENTSIZE`, 2 MiB).
pub const DEFAULT_EXTENTSIZE: u32 = 2 * 1024 * 1024;
/// Default number of hot extents kept dirty (`HAST_KEEPDIRTY`).
pub const DEFAULT_KEEPDIRTY: u32 = 64;
/// Longest resource name the header can carry, in bytes.
pub const MAX_NAME_LEN: usize = 255;
/// Largest sector size a layout accepts: the metadata block must cover whole sectors, so
/// that the bitmap and the data start on sector boundaries.
pub const MAX_SECTOR_SIZE: u32 = METADATA_SIZE as u32;

// Byte offsets of the version-1 header fields (see docs/on-disk-format.md).
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_HEADER_LEN: usize = 12;
const OFF_CRC: usize = 16;
const OFF_SECTORSIZE: usize = 20;
const OFF_DATASIZE: usize = 24;
const OFF_OFFSET: usize = 32;
const OFF_EXTENTSIZE: usize = 40;
const OFF_KEEPDIRTY: usize = 44;
const OFF_RESUID: usize = 48;
const OFF_LOCALCNT: usize = 56;
const OFF_REMOTECNT: usize = 64;
const OFF_PREVROLE: usize = 72;
const OFF_NAME_LEN: usize = 73;
/// Version 1: reserved, zero. Version 2: the [`DataState`] flags (u16).
const OFF_RESERVED: usize = 74;
const OFF_NAME: usize = 76;
/// Length of the fixed part of a version-1 header; the name follows it.
pub const FIXED_HEADER_LEN: usize = OFF_NAME;

/// Why sizes given to `hastctl create` (or found in a header) do not make a layout.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LayoutError {
    /// The sector size is zero or not a power of two.
    #[error("sector size {0} is not a power of 2")]
    SectorSizeNotPowerOfTwo(u32),
    /// The sector size exceeds the metadata block.
    #[error(
        "sector size {0} is larger than the {METADATA_SIZE}-byte metadata block; not supported"
    )]
    SectorSizeTooLarge(u32),
    /// The extent size is zero or not a power of two.
    #[error("extent size {0} is not a power of 2")]
    ExtentSizeNotPowerOfTwo(u64),
    /// The extent size does not fit the header's 32-bit field.
    #[error("extent size {0} is too large (at most 2G)")]
    ExtentSizeTooLarge(u64),
    /// The extent size is below the sector size.
    #[error("extent size {extentsize} is less than the sector size {sectorsize}")]
    ExtentSizeBelowSector {
        /// Requested extent size.
        extentsize: u64,
        /// Sector size of the provider.
        sectorsize: u32,
    },
    /// The extent size is not a multiple of the sector size.
    #[error("extent size {extentsize} is not a multiple of the sector size {sectorsize}")]
    ExtentSizeNotSectorMultiple {
        /// Requested extent size.
        extentsize: u64,
        /// Sector size of the provider.
        sectorsize: u32,
    },
    /// Not even one sector of user data is left after the header and the bitmap.
    #[error(
        "media size {mediasize} is too small: the metadata and a {mapsize}-byte bitmap \
         leave no room for data (at least {sectorsize} bytes needed)"
    )]
    MediaTooSmall {
        /// Media size asked for.
        mediasize: u64,
        /// Bitmap size it would need.
        mapsize: u64,
        /// Sector size: the minimum amount of data.
        sectorsize: u32,
    },
}

/// Where the bitmap and the user data live on a provider, and their sizes.
///
/// Only [`Layout::compute`] and [`Metadata::decode`] make one, so every `Layout` is
/// consistent: `offset == 4096 + bitmap size`, the bitmap covers `datasize`, and the
/// data ends within 64 bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Layout {
    datasize: u64,
    offset: u64,
    extentsize: u32,
    sectorsize: u32,
}

impl Layout {
    /// The layout `hastctl create` writes on `mediasize` bytes with extents of
    /// `extentsize` bytes and sectors of `sectorsize` bytes.
    ///
    /// The bitmap is sized for `mediasize − 4096` bytes, as FreeBSD does, so it covers
    /// its own area too. The media size is first rounded down to whole sectors: the
    /// exposed device has the provider's sector size, and a partial last sector could
    /// not be addressed by block I/O.
    pub fn compute(
        mediasize: u64,
        extentsize: u64,
        sectorsize: u32,
    ) -> Result<Layout, LayoutError> {
        check_sector_size(sectorsize)?;
        check_extent_size(extentsize, sectorsize)?;
        let extentsize =
            u32::try_from(extentsize).map_err(|_| LayoutError::ExtentSizeTooLarge(extentsize))?;
        let mediasize = mediasize - mediasize % u64::from(sectorsize);
        let header = METADATA_SIZE as u64;
        let mapsize = bitmap_size(mediasize.saturating_sub(header), extentsize, sectorsize);
        let datasize = mediasize.saturating_sub(header).saturating_sub(mapsize);
        if datasize < u64::from(sectorsize) {
            return Err(LayoutError::MediaTooSmall {
                mediasize,
                mapsize,
                sectorsize,
            });
        }
        Ok(Layout {
            datasize,
            offset: header + mapsize,
            extentsize,
            sectorsize,
        })
    }

    /// Bytes of user data: the size of the exposed device.
    pub fn datasize(&self) -> u64 {
        self.datasize
    }

    /// Provider offset of the first byte of user data (`localoff`).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Bytes per extent, the unit of dirty tracking.
    pub fn extentsize(&self) -> u32 {
        self.extentsize
    }

    /// Sector size of the provider at create time; the exposed device's block size.
    pub fn sectorsize(&self) -> u32 {
        self.sectorsize
    }

    /// Provider offset of the bitmap.
    pub fn bitmap_offset(&self) -> u64 {
        METADATA_SIZE as u64
    }

    /// Bytes reserved for the bitmap on disk (a multiple of the sector size).
    pub fn bitmap_size(&self) -> u64 {
        self.offset - METADATA_SIZE as u64
    }

    /// Extents covering the user data: ceil(datasize / extentsize). The bitmap may
    /// hold a few more bits than this (it was sized for the whole media).
    pub fn nextents(&self) -> u64 {
        self.datasize.div_ceil(u64::from(self.extentsize))
    }

    /// The provider size this layout needs: `offset + datasize`.
    pub fn end(&self) -> u64 {
        self.offset + self.datasize
    }
}

fn check_sector_size(sectorsize: u32) -> Result<(), LayoutError> {
    if !sectorsize.is_power_of_two() {
        return Err(LayoutError::SectorSizeNotPowerOfTwo(sectorsize));
    }
    if sectorsize > MAX_SECTOR_SIZE {
        return Err(LayoutError::SectorSizeTooLarge(sectorsize));
    }
    Ok(())
}

/// Checks an extent size against a (valid) sector size. FreeBSD only checks the last two
/// conditions and aborts on a non-power-of-two deep inside the activemap; we refuse it
/// up front.
fn check_extent_size(extentsize: u64, sectorsize: u32) -> Result<(), LayoutError> {
    if !extentsize.is_power_of_two() {
        return Err(LayoutError::ExtentSizeNotPowerOfTwo(extentsize));
    }
    if extentsize < u64::from(sectorsize) {
        return Err(LayoutError::ExtentSizeBelowSector {
            extentsize,
            sectorsize,
        });
    }
    if !extentsize.is_multiple_of(u64::from(sectorsize)) {
        return Err(LayoutError::ExtentSizeNotSectorMultiple {
            extentsize,
            sectorsize,
        });
    }
    if extentsize > 1 << 31 {
        return Err(LayoutError::ExtentSizeTooLarge(extentsize));
    }
    Ok(())
}

/// On-disk bitmap bytes for `size` bytes of extents of `extentsize` bytes: one bit per
/// extent, rounded up to whole sectors. Same formula as
/// `hast_core::activemap::ondisk_size`; kept private here so the format does not depend
/// on the activemap's code.
fn bitmap_size(size: u64, extentsize: u32, sectorsize: u32) -> u64 {
    let nextents = size.div_ceil(u64::from(extentsize));
    let bytes = nextents.div_ceil(8);
    bytes.div_ceil(u64::from(sectorsize)) * u64::from(sectorsize)
}

/// Why a metadata block was refused. Checked in this order: length, magic, version,
/// checksum, then the fields.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MetadataError {
    /// Fewer than 4096 bytes were given.
    #[error("metadata block is truncated ({0} bytes, {METADATA_SIZE} needed)")]
    Truncated(usize),
    /// No hast magic at offset 0 (all zeroes, another format, or FreeBSD's nv header).
    #[error("not a hast provider (no metadata found)")]
    NoMetadata,
    /// Written by a newer hast; never touch it.
    #[error(
        "metadata version {0} is newer than this hast supports ({VERSION}); refusing to touch it"
    )]
    TooNew(u32),
    /// Version 0 never existed.
    #[error("metadata version {0} is invalid: the header is corrupt")]
    BadVersion(u32),
    /// The CRC-32C does not match the block.
    #[error("metadata checksum mismatch (stored {stored:#010x}, computed {computed:#010x}): the header is corrupt")]
    Checksum {
        /// CRC found in the header.
        stored: u32,
        /// CRC of the block as read.
        computed: u32,
    },
    /// The header length field does not match the fixed part plus the name.
    #[error("metadata header length {found} is inconsistent (expected {expected})")]
    HeaderLength {
        /// Value in the header.
        found: u32,
        /// Fixed part plus the name length.
        expected: u32,
    },
    /// Reserved bytes, or bytes after the header, are not zero.
    #[error("metadata has non-zero bytes at offset {0}, which version {VERSION} keeps zero")]
    NonZeroPadding(usize),
    /// The resource name is empty, too long or not UTF-8.
    #[error("invalid resource name in metadata: {0}")]
    Name(&'static str),
    /// The data-state flags have a bit this version does not know.
    #[error("metadata flags {0:#06x} have bits this hast does not know; refusing to touch it")]
    UnknownFlags(u16),
    /// The previous role is not init, primary or secondary.
    #[error("invalid previous role {0} in metadata")]
    Role(u8),
    /// keepdirty is zero.
    #[error("invalid keepdirty 0 in metadata")]
    KeepDirty,
    /// Sector or extent size invalid.
    #[error("invalid sizes in metadata: {0}")]
    Layout(LayoutError),
    /// The data offset is not 4096 + the bitmap size the sizes call for.
    #[error("data offset {found} in metadata is inconsistent (expected {expected})")]
    Offset {
        /// Offset in the header.
        found: u64,
        /// 4096 + bitmap size for the recorded sizes.
        expected: u64,
    },
    /// datasize is not a whole number of sectors, or offset + datasize overflows.
    #[error("data size {0} in metadata is invalid")]
    DataSize(u64),
    /// The provider belongs to another resource.
    #[error("provider belongs to resource '{found}', not '{expected}'")]
    WrongResource {
        /// Name in the header.
        found: String,
        /// Name in the configuration.
        expected: String,
    },
}

/// The contents of the metadata block of one provider.
///
/// The name, layout and keepdirty are fixed at create time and only readable; the
/// counters and previous role change while the resource runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    name: String,
    layout: Layout,
    keepdirty: u32,
    /// Random resource id shared by both nodes; 0 = fresh, never connected.
    pub resuid: u64,
    /// This node's write generation (hast-reference.md §7).
    pub localcnt: u64,
    /// The peer's write generation as last seen by this node.
    pub remotecnt: u64,
    /// Role at the last metadata write; informational.
    pub prevrole: Role,
    /// What this node knows to be missing from its copy (version 2 `flags`).
    pub datastate: DataState,
}

impl Metadata {
    /// Metadata of a freshly created provider: counters and resuid 0, previous role init.
    pub fn new(name: &str, layout: Layout, keepdirty: u32) -> Result<Metadata, MetadataError> {
        check_name(name.as_bytes())?;
        if keepdirty == 0 {
            return Err(MetadataError::KeepDirty);
        }
        Ok(Metadata {
            name: name.to_string(),
            layout,
            keepdirty,
            resuid: 0,
            localcnt: 0,
            remotecnt: 0,
            prevrole: Role::Init,
            datastate: DataState::CONSISTENT,
        })
    }

    /// The resource this provider belongs to.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where the bitmap and data live.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// Bytes of user data.
    pub fn datasize(&self) -> u64 {
        self.layout.datasize
    }

    /// Provider offset of the user data.
    pub fn offset(&self) -> u64 {
        self.layout.offset
    }

    /// Bytes per extent.
    pub fn extentsize(&self) -> u32 {
        self.layout.extentsize
    }

    /// Sector size recorded at create time.
    pub fn sectorsize(&self) -> u32 {
        self.layout.sectorsize
    }

    /// Number of hot extents kept dirty.
    pub fn keepdirty(&self) -> u32 {
        self.keepdirty
    }

    /// Refuses metadata of another resource: renaming a resource needs a new create,
    /// as in FreeBSD ("Provider X is not part of resource Y").
    pub fn check_resource(&self, expected: &str) -> Result<(), MetadataError> {
        if self.name == expected {
            Ok(())
        } else {
            Err(MetadataError::WrongResource {
                found: self.name.clone(),
                expected: expected.to_string(),
            })
        }
    }

    /// The format version [`Metadata::encode`] writes: the lowest that can hold the header
    /// (1 unless the data state has flags, see [`VERSION`]).
    pub fn version(&self) -> u32 {
        if self.datastate.is_consistent() {
            1
        } else {
            2
        }
    }

    /// The 4096-byte block to write at offset 0.
    pub fn encode(&self) -> [u8; METADATA_SIZE] {
        let mut block = [0u8; METADATA_SIZE];
        let name = self.name.as_bytes();
        let header_len = FIXED_HEADER_LEN + name.len();
        block[OFF_MAGIC..OFF_MAGIC + 8].copy_from_slice(&MAGIC);
        put_u32(&mut block, OFF_VERSION, self.version());
        put_u32(&mut block, OFF_HEADER_LEN, header_len as u32);
        put_u32(&mut block, OFF_SECTORSIZE, self.layout.sectorsize);
        put_u64(&mut block, OFF_DATASIZE, self.layout.datasize);
        put_u64(&mut block, OFF_OFFSET, self.layout.offset);
        put_u32(&mut block, OFF_EXTENTSIZE, self.layout.extentsize);
        put_u32(&mut block, OFF_KEEPDIRTY, self.keepdirty);
        put_u64(&mut block, OFF_RESUID, self.resuid);
        put_u64(&mut block, OFF_LOCALCNT, self.localcnt);
        put_u64(&mut block, OFF_REMOTECNT, self.remotecnt);
        block[OFF_PREVROLE] = self.prevrole.to_u8();
        block[OFF_RESERVED..OFF_RESERVED + 2].copy_from_slice(&self.datastate.bits().to_le_bytes());
        // `new` and `decode` keep the name within MAX_NAME_LEN, so it fits one byte.
        block[OFF_NAME_LEN] = name.len() as u8;
        block[OFF_NAME..header_len].copy_from_slice(name);
        let crc = block_crc(&block);
        put_u32(&mut block, OFF_CRC, crc);
        block
    }

    /// Parses and validates a metadata block (only its first 4096 bytes are looked at).
    pub fn decode(bytes: &[u8]) -> Result<Metadata, MetadataError> {
        let block: &[u8; METADATA_SIZE] = bytes
            .get(..METADATA_SIZE)
            .and_then(|b| b.try_into().ok())
            .ok_or(MetadataError::Truncated(bytes.len()))?;
        if block[OFF_MAGIC..OFF_MAGIC + 8] != MAGIC {
            return Err(MetadataError::NoMetadata);
        }
        let version = get_u32(block, OFF_VERSION);
        if version > VERSION {
            return Err(MetadataError::TooNew(version));
        }
        if version == 0 {
            return Err(MetadataError::BadVersion(version));
        }
        // Versions 1 and 2 differ only in the two bytes at OFF_RESERVED (zero in 1, the
        // flags in 2); a future version 3 reader dispatches on `version` here.
        let stored = get_u32(block, OFF_CRC);
        let computed = block_crc(block);
        if stored != computed {
            return Err(MetadataError::Checksum { stored, computed });
        }
        decode_fields(block, version)
    }
}

/// Field checks of a version 1 or 2 block whose checksum matched.
fn decode_fields(block: &[u8; METADATA_SIZE], version: u32) -> Result<Metadata, MetadataError> {
    let name_len = usize::from(block[OFF_NAME_LEN]);
    let header_len = get_u32(block, OFF_HEADER_LEN);
    let expected = (FIXED_HEADER_LEN + name_len) as u32;
    if header_len != expected {
        return Err(MetadataError::HeaderLength {
            found: header_len,
            expected,
        });
    }
    let end = FIXED_HEADER_LEN + name_len;
    let flags = u16::from_le_bytes([block[OFF_RESERVED], block[OFF_RESERVED + 1]]);
    if version == 1 {
        if let Some(pos) = block[OFF_RESERVED..OFF_NAME].iter().position(|&b| b != 0) {
            return Err(MetadataError::NonZeroPadding(OFF_RESERVED + pos));
        }
    }
    let datastate = DataState::from_bits(flags).ok_or(MetadataError::UnknownFlags(flags))?;
    if let Some(pos) = block[end..].iter().position(|&b| b != 0) {
        return Err(MetadataError::NonZeroPadding(end + pos));
    }
    let name_bytes = &block[OFF_NAME..end];
    check_name(name_bytes)?;
    let name = std::str::from_utf8(name_bytes)
        .map_err(|_| MetadataError::Name("not UTF-8"))?
        .to_string();
    let prevrole =
        Role::from_u8(block[OFF_PREVROLE]).ok_or(MetadataError::Role(block[OFF_PREVROLE]))?;
    let keepdirty = get_u32(block, OFF_KEEPDIRTY);
    if keepdirty == 0 {
        return Err(MetadataError::KeepDirty);
    }
    let layout = decode_layout(block)?;
    Ok(Metadata {
        name,
        layout,
        keepdirty,
        resuid: get_u64(block, OFF_RESUID),
        localcnt: get_u64(block, OFF_LOCALCNT),
        remotecnt: get_u64(block, OFF_REMOTECNT),
        prevrole,
        datastate,
    })
}

/// Rebuilds the layout from the header and checks it is the one `Layout::compute`
/// gives: the bitmap was sized for `datasize + mapsize` bytes at create time.
fn decode_layout(block: &[u8; METADATA_SIZE]) -> Result<Layout, MetadataError> {
    let sectorsize = get_u32(block, OFF_SECTORSIZE);
    let extentsize = get_u32(block, OFF_EXTENTSIZE);
    let datasize = get_u64(block, OFF_DATASIZE);
    let offset = get_u64(block, OFF_OFFSET);
    check_sector_size(sectorsize).map_err(MetadataError::Layout)?;
    check_extent_size(u64::from(extentsize), sectorsize).map_err(MetadataError::Layout)?;
    if datasize == 0
        || !datasize.is_multiple_of(u64::from(sectorsize))
        || offset.checked_add(datasize).is_none()
    {
        return Err(MetadataError::DataSize(datasize));
    }
    let header = METADATA_SIZE as u64;
    let mapsize = offset.checked_sub(header).ok_or(MetadataError::Offset {
        found: offset,
        expected: header + bitmap_size(datasize, extentsize, sectorsize),
    })?;
    // offset + datasize did not overflow, so neither does mapsize + datasize.
    let expected = header + bitmap_size(datasize + mapsize, extentsize, sectorsize);
    if offset != expected {
        return Err(MetadataError::Offset {
            found: offset,
            expected,
        });
    }
    Ok(Layout {
        datasize,
        offset,
        extentsize,
        sectorsize,
    })
}

fn check_name(name: &[u8]) -> Result<(), MetadataError> {
    if name.is_empty() {
        return Err(MetadataError::Name("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(MetadataError::Name("longer than 255 bytes"));
    }
    if name.contains(&0) {
        return Err(MetadataError::Name("contains a NUL byte"));
    }
    if std::str::from_utf8(name).is_err() {
        return Err(MetadataError::Name("not UTF-8"));
    }
    Ok(())
}

/// CRC-32C of the whole block with the CRC field taken as zero.
fn block_crc(block: &[u8; METADATA_SIZE]) -> u32 {
    let crc = crc32c::crc32c(&block[..OFF_CRC]);
    let crc = crc32c::crc32c_append(crc, &[0u8; 4]);
    crc32c::crc32c_append(crc, &block[OFF_CRC + 4..])
}

fn put_u32(block: &mut [u8; METADATA_SIZE], at: usize, value: u32) {
    block[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn put_u64(block: &mut [u8; METADATA_SIZE], at: usize, value: u64) {
    block[at..at + 8].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(block: &[u8; METADATA_SIZE], at: usize) -> u32 {
    let mut bytes = [0u8; 4];
    bytes.copy_from_slice(&block[at..at + 4]);
    u32::from_le_bytes(bytes)
}

fn get_u64(block: &[u8; METADATA_SIZE], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&block[at..at + 8]);
    u64::from_le_bytes(bytes)
}

#[cfg(test)]
mod tests;
