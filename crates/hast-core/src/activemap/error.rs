//! Errors of the activemap.

use thiserror::Error;

/// Invalid geometry or misuse of the map by its caller.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ActiveMapError {
    /// The sector size is zero or not a power of two.
    #[error("sector size {0} is not a power of two")]
    BadSectorSize(u32),
    /// The extent size is not a power of two, or smaller than the sector size.
    #[error(
        "extent size {extentsize} is not a power of two of at least the sector size {sectorsize}"
    )]
    BadExtentSize {
        /// The rejected extent size.
        extentsize: u32,
        /// The sector size it was checked against.
        sectorsize: u32,
    },
    /// The bitmap for this data size would not fit in memory on this platform.
    #[error("data size {0} needs more extents than this platform can address")]
    TooLarge(u64),
    /// A byte range reaches past the end of the data area.
    #[error("range offset {offset} length {len} exceeds the data size {datasize}")]
    OutOfRange {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// The data size it was checked against.
        datasize: u64,
    },
    /// An extent number past the last extent.
    #[error("extent {ext} does not exist (the map has {count} extents)")]
    NoSuchExtent {
        /// The rejected extent number.
        ext: u64,
        /// Number of extents in the map.
        count: u64,
    },
    /// `write_complete` for a range with no write started on one of its extents.
    #[error("write completion for offset {offset} length {len} without a matching write start")]
    NotPending {
        /// Start of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
    },
    /// A bitmap image shorter than this map's extents need.
    #[error("activemap image of {got} bytes is shorter than the {need} bytes needed")]
    MapTooShort {
        /// Bytes supplied.
        got: usize,
        /// Bytes needed to cover every extent.
        need: usize,
    },
    /// `mark_written`/`abandon_map_write` for a generation that is not being written.
    #[error("no activemap write of generation {0} is in progress")]
    NotWriting(u64),
}
