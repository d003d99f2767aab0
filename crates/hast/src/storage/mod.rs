//! The local component of a resource: a regular file or a block device holding the
//! metadata block, the activemap bitmap and the user data (layout in
//! `hast_core::metadata` and `docs/on-disk-format.md`).
//!
//! * [`Provider`] is the opened file or device: exclusive `flock` for read-write opens,
//!   sizes, bounded positioned I/O, flush, discard.
//! * [`read_metadata`], [`write_metadata`], [`read_bitmap`], [`write_bitmap`] move the
//!   header and the bitmap between a provider and `hast_core::metadata` types.
//! * [`LocalStore`] is what the daemon uses: device offsets `0..datasize` mapped onto
//!   the data area, so no request can reach the header or the bitmap.
//!
//! Everything is synchronous; the daemon calls it from tokio's blocking pool.

mod local;
mod provider;
#[cfg(test)]
mod tests;

use std::fmt;
use std::io;
use std::path::PathBuf;

use hast_core::metadata::{Layout, Metadata, MetadataError, METADATA_SIZE};
use hast_core::sysexits;
use thiserror::Error;

pub use local::LocalStore;
pub use provider::{Access, Provider};

/// The kind of operation that failed, so callers can count errors per kind (the
/// `local errors: read, write, delete, flush` statistics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// pread.
    Read,
    /// pwrite.
    Write,
    /// fdatasync.
    Flush,
    /// Punch a hole / discard.
    Discard,
    /// Write zeroes (fallocate zero range or plain writes).
    WriteZeroes,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Flush => "flush",
            Op::Discard => "discard",
            Op::WriteZeroes => "write zeroes",
        })
    }
}

/// Why an operation on the local component failed. Every message names the provider.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The path cannot be opened (missing, permissions, …).
    #[error("cannot open provider {path}: {source}")]
    Open {
        /// Provider path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The path is a directory, a FIFO, a character device…
    #[error("provider {path} is neither a regular file nor a block device")]
    NotAProvider {
        /// Provider path.
        path: PathBuf,
    },
    /// Another hastd or hastctl holds the provider's lock.
    #[error("provider {path} is in use (locked by another hastd or hastctl)")]
    Busy {
        /// Provider path.
        path: PathBuf,
    },
    /// The kernel refused an exclusive open of the block device.
    #[error("provider {path} is in use by the system (mounted, or opened exclusively by another program)")]
    Claimed {
        /// Provider path.
        path: PathBuf,
    },
    /// flock failed for another reason than contention.
    #[error("cannot lock provider {path}: {source}")]
    Lock {
        /// Provider path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The media or sector size cannot be obtained.
    #[error("cannot get the size of provider {path}: {source}")]
    Size {
        /// Provider path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// A read, write, flush, discard or zeroing failed.
    #[error("provider {path}: {op} of {len} bytes at offset {offset} failed: {source}")]
    Io {
        /// Provider path.
        path: PathBuf,
        /// What was attempted.
        op: Op,
        /// Provider offset (device offset for [`LocalStore`] calls is translated).
        offset: u64,
        /// Bytes.
        len: u64,
        /// The OS error.
        source: io::Error,
    },
    /// The request reaches outside the area it may touch; nothing was done.
    #[error("provider {path}: {op} of {len} bytes at offset {offset} is outside the {area} ({limit} bytes)")]
    OutOfBounds {
        /// Provider path.
        path: PathBuf,
        /// What was attempted.
        op: Op,
        /// Offset as given by the caller.
        offset: u64,
        /// Bytes.
        len: u64,
        /// `"provider"` or `"data area"`.
        area: &'static str,
        /// Size of that area.
        limit: u64,
    },
    /// The file system or device does not support the operation (EOPNOTSUPP); callers
    /// may remember and stop asking.
    #[error("provider {path}: {op} is not supported")]
    Unsupported {
        /// Provider path.
        path: PathBuf,
        /// What was attempted.
        op: Op,
    },
    /// The metadata block is missing, corrupt, newer, or of another resource.
    #[error("provider {path}: {source}")]
    Metadata {
        /// Provider path.
        path: PathBuf,
        /// What is wrong with it.
        source: MetadataError,
    },
    /// The provider is smaller than the layout its metadata describes.
    #[error("provider {path} has {size} bytes, fewer than the {needed} its metadata describes")]
    TooSmall {
        /// Provider path.
        path: PathBuf,
        /// Its media size now.
        size: u64,
        /// offset + datasize from the metadata.
        needed: u64,
    },
    /// A bitmap larger than the on-disk area was given.
    #[error("provider {path}: bitmap of {len} bytes does not fit the {area}-byte bitmap area")]
    BitmapTooLarge {
        /// Provider path.
        path: PathBuf,
        /// Bytes given.
        len: usize,
        /// Bytes reserved on disk.
        area: u64,
    },
    /// A metadata write would change the name or layout fixed at create time.
    #[error(
        "provider {path}: refusing to write metadata that changes the resource name or layout"
    )]
    LayoutChanged {
        /// Provider path.
        path: PathBuf,
    },
}

impl StorageError {
    /// The Linux errno this failure is reported with (to an NBD client, to the peer):
    /// the operating system's own for I/O errors, EINVAL for a range outside the data
    /// area, EOPNOTSUPP for what the provider cannot do, EIO otherwise.
    pub fn errno(&self) -> u32 {
        match self {
            StorageError::Io { source, .. } => source
                .raw_os_error()
                .and_then(|e| u32::try_from(e).ok())
                .unwrap_or(hast_core::replication::errno::EIO),
            StorageError::OutOfBounds { .. } => 22,
            StorageError::Unsupported { .. } => hast_core::replication::errno::EOPNOTSUPP,
            _ => hast_core::replication::errno::EIO,
        }
    }

    /// hastctl's exit code for this failure (sysexits, hast-reference.md §3.6): cannot
    /// open ⇒ EX_NOINPUT, in use ⇒ EX_TEMPFAIL, bad metadata or sizes ⇒ EX_DATAERR,
    /// everything else ⇒ EX_IOERR.
    pub fn exit_code(&self) -> u8 {
        match self {
            StorageError::Open { .. } | StorageError::NotAProvider { .. } => sysexits::EX_NOINPUT,
            StorageError::Busy { .. } | StorageError::Claimed { .. } => sysexits::EX_TEMPFAIL,
            StorageError::Metadata { .. }
            | StorageError::TooSmall { .. }
            | StorageError::BitmapTooLarge { .. }
            | StorageError::LayoutChanged { .. } => sysexits::EX_DATAERR,
            StorageError::Lock { .. }
            | StorageError::Size { .. }
            | StorageError::Io { .. }
            | StorageError::OutOfBounds { .. }
            | StorageError::Unsupported { .. } => sysexits::EX_IOERR,
        }
    }
}

/// Reads and validates the metadata block. The resource name is not checked here; use
/// [`Metadata::check_resource`].
pub fn read_metadata(provider: &Provider) -> Result<Metadata, StorageError> {
    let mut block = [0u8; METADATA_SIZE];
    if provider.media_size() < METADATA_SIZE as u64 {
        return Err(StorageError::Metadata {
            path: provider.path().to_path_buf(),
            source: MetadataError::NoMetadata,
        });
    }
    provider.read_exact_at(&mut block, 0)?;
    Metadata::decode(&block).map_err(|source| StorageError::Metadata {
        path: provider.path().to_path_buf(),
        source,
    })
}

/// Writes the metadata block at offset 0 with one pwrite. Does not flush.
pub fn write_metadata(provider: &Provider, metadata: &Metadata) -> Result<(), StorageError> {
    provider.write_all_at(&metadata.encode(), 0)
}

/// Reads the whole on-disk bitmap area (`layout.bitmap_size()` bytes).
pub fn read_bitmap(provider: &Provider, layout: &Layout) -> Result<Vec<u8>, StorageError> {
    // Checked before allocating, so a header describing a larger device than this one
    // cannot make us allocate its bitmap.
    provider.check_range(Op::Read, layout.bitmap_offset(), layout.bitmap_size())?;
    let len = usize::try_from(layout.bitmap_size()).map_err(|_| StorageError::TooSmall {
        path: provider.path().to_path_buf(),
        size: provider.media_size(),
        needed: layout.end(),
    })?;
    let mut map = vec![0u8; len];
    provider.read_exact_at(&mut map, layout.bitmap_offset())?;
    Ok(map)
}

/// Writes `bitmap` over the on-disk bitmap area with one pwrite, zero-padded to the
/// whole area: the in-memory map (sized from datasize) may be a few bytes shorter than
/// the area reserved at create time. Does not flush.
pub fn write_bitmap(
    provider: &Provider,
    layout: &Layout,
    bitmap: &[u8],
) -> Result<(), StorageError> {
    let area = layout.bitmap_size();
    if bitmap.len() as u64 > area {
        return Err(StorageError::BitmapTooLarge {
            path: provider.path().to_path_buf(),
            len: bitmap.len(),
            area,
        });
    }
    provider.check_range(Op::Write, layout.bitmap_offset(), area)?;
    if bitmap.len() as u64 == area {
        return provider.write_all_at(bitmap, layout.bitmap_offset());
    }
    // The range check above proved `area` fits this provider, hence memory is the limit.
    let mut padded = vec![0u8; area as usize];
    padded[..bitmap.len()].copy_from_slice(bitmap);
    provider.write_all_at(&padded, layout.bitmap_offset())
}
