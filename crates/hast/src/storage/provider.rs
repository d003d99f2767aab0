//! Opening a local component and doing bounded positioned I/O on it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{FallocateFlags, FlockOperation, SeekFrom};

use super::{Op, StorageError};

/// Sector size assumed for regular files, as FreeBSD does.
const FILE_SECTOR_SIZE: u32 = 512;
/// Size of the zero buffer used when the kernel cannot zero a range for us.
const ZERO_CHUNK: usize = 1 << 20;

/// How a provider is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// For `hastctl dump`: no lock, so it works while hastd runs.
    ReadOnly,
    /// For hastd and `hastctl create`: an exclusive, non-blocking `flock` (and `O_EXCL`
    /// on block devices) so two writers never share a provider.
    ReadWrite,
}

/// An opened local component (regular file or block device).
///
/// Every I/O method checks that the range lies within the media, so a regular file is
/// never extended by a stray write. Methods take `&self`: positioned I/O needs no
/// shared cursor, and the type is `Send + Sync`.
#[derive(Debug)]
pub struct Provider {
    file: File,
    path: PathBuf,
    media_size: u64,
    sector_size: u32,
    block_device: bool,
}

impl Provider {
    /// Opens `path`. Read-write opens take a non-blocking exclusive `flock` (released
    /// when the provider is dropped): a lock held elsewhere gives [`StorageError::Busy`].
    /// A block device is also opened with `O_EXCL`, so the kernel refuses it while
    /// mounted or claimed ([`StorageError::Claimed`]).
    pub fn open(path: &Path, access: Access) -> Result<Provider, StorageError> {
        let open_err = |source| StorageError::Open {
            path: path.to_path_buf(),
            source,
        };
        // Look before opening: opening a FIFO would block, and O_EXCL is only meaningful
        // (and only wanted) for block devices.
        let kind = std::fs::metadata(path).map_err(open_err)?.file_type();
        let block_device = kind.is_block_device();
        if !block_device && !kind.is_file() {
            return Err(StorageError::NotAProvider {
                path: path.to_path_buf(),
            });
        }
        let mut options = OpenOptions::new();
        options.read(true);
        if access == Access::ReadWrite {
            options.write(true);
            if block_device {
                options.custom_flags(rustix::fs::OFlags::EXCL.bits() as i32);
            }
        }
        let file = match options.open(path) {
            Ok(file) => file,
            Err(err)
                if block_device
                    && err.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) =>
            {
                return Err(StorageError::Claimed {
                    path: path.to_path_buf(),
                })
            }
            Err(err) => return Err(open_err(err)),
        };
        // The path may have been replaced between stat and open.
        let kind = file.metadata().map_err(open_err)?.file_type();
        if kind.is_block_device() != block_device || !(block_device || kind.is_file()) {
            return Err(StorageError::NotAProvider {
                path: path.to_path_buf(),
            });
        }
        if access == Access::ReadWrite {
            lock(&file, path)?;
        }
        let (media_size, sector_size) =
            sizes(&file, block_device).map_err(|source| StorageError::Size {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(Provider {
            file,
            path: path.to_path_buf(),
            media_size,
            sector_size,
            block_device,
        })
    }

    /// The path it was opened by.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Size in bytes at open time.
    pub fn media_size(&self) -> u64 {
        self.media_size
    }

    /// Logical sector size: BLKSSZGET for block devices, 512 for regular files.
    pub fn sector_size(&self) -> u32 {
        self.sector_size
    }

    /// True for a block device, false for a regular file.
    pub fn is_block_device(&self) -> bool {
        self.block_device
    }

    /// Fails with [`StorageError::OutOfBounds`] unless `offset..offset + len` lies
    /// within the media.
    pub fn check_range(&self, op: Op, offset: u64, len: u64) -> Result<(), StorageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.media_size => Ok(()),
            _ => Err(StorageError::OutOfBounds {
                path: self.path.clone(),
                op,
                offset,
                len,
                area: "provider",
                limit: self.media_size,
            }),
        }
    }

    /// Fills `buf` from `offset`.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), StorageError> {
        self.check_range(Op::Read, offset, buf.len() as u64)?;
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io_error(Op::Read, offset, buf.len() as u64, e))
    }

    /// Writes all of `buf` at `offset`.
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> Result<(), StorageError> {
        self.check_range(Op::Write, offset, buf.len() as u64)?;
        self.file
            .write_all_at(buf, offset)
            .map_err(|e| self.io_error(Op::Write, offset, buf.len() as u64, e))
    }

    /// Makes completed writes durable (fdatasync; on a block device this also flushes
    /// the disk's write cache).
    pub fn flush(&self) -> Result<(), StorageError> {
        rustix::fs::fdatasync(&self.file).map_err(|e| self.io_error(Op::Flush, 0, 0, e.into()))
    }

    /// Discards `len` bytes at `offset` (fallocate PUNCH_HOLE|KEEP_SIZE): a hole in a
    /// file, a discard/zero-out on a block device (Linux ≥ 4.9). Reads of the range then
    /// return zeroes. EOPNOTSUPP gives [`StorageError::Unsupported`].
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        self.check_range(Op::Discard, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
        rustix::fs::fallocate(&self.file, mode, offset, len).map_err(|e| {
            if is_unsupported(e) {
                self.unsupported(Op::Discard)
            } else {
                self.io_error(Op::Discard, offset, len, e.into())
            }
        })
    }

    /// Makes `len` bytes at `offset` read as zeroes: fallocate ZERO_RANGE where the file
    /// system or device supports it, plain writes of zeroes otherwise.
    pub fn zero_range(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        self.check_range(Op::WriteZeroes, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let sector = u64::from(self.sector_size().max(1));
        if self.is_block_device() && (!offset.is_multiple_of(sector) || !len.is_multiple_of(sector))
        {
            // Block devices zero whole sectors only; NBD clients may ask for less.
            return self.write_zeroes_slowly(offset, len);
        }
        let mode = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
        match rustix::fs::fallocate(&self.file, mode, offset, len) {
            Ok(()) => Ok(()),
            Err(e) if is_unsupported(e) => self.write_zeroes_slowly(offset, len),
            Err(e) => Err(self.io_error(Op::WriteZeroes, offset, len, e.into())),
        }
    }

    pub(super) fn write_zeroes_slowly(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        let zeroes = vec![0u8; ZERO_CHUNK.min(usize::try_from(len).unwrap_or(ZERO_CHUNK))];
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(zeroes.len() as u64) as usize;
            let at = offset + done;
            self.file
                .write_all_at(&zeroes[..chunk], at)
                .map_err(|e| self.io_error(Op::WriteZeroes, at, chunk as u64, e))?;
            done += chunk as u64;
        }
        Ok(())
    }

    fn io_error(&self, op: Op, offset: u64, len: u64, source: io::Error) -> StorageError {
        StorageError::Io {
            path: self.path.clone(),
            op,
            offset,
            len,
            source,
        }
    }

    fn unsupported(&self, op: Op) -> StorageError {
        StorageError::Unsupported {
            path: self.path.clone(),
            op,
        }
    }
}

fn is_unsupported(e: rustix::io::Errno) -> bool {
    e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::NOSYS
}

/// Takes the exclusive lock. A file system without flock support (EOPNOTSUPP, some
/// network file systems) is tolerated with a warning, as FreeBSD's hastd does.
fn lock(file: &File, path: &Path) -> Result<(), StorageError> {
    match rustix::fs::flock(file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(()),
        Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(StorageError::Busy {
            path: path.to_path_buf(),
        }),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP => {
            tracing::warn!(
                "provider {}: locking not supported, continuing without a lock",
                path.display()
            );
            Ok(())
        }
        Err(e) => Err(StorageError::Lock {
            path: path.to_path_buf(),
            source: e.into(),
        }),
    }
}

fn sizes(file: &File, block_device: bool) -> io::Result<(u64, u32)> {
    if block_device {
        // Seeking to the end gives the device size without a size ioctl; the cursor
        // is never used since all I/O is positioned.
        let size = rustix::fs::seek(file, SeekFrom::End(0))?;
        let sector = rustix::fs::ioctl_blksszget(file)?;
        Ok((size, sector))
    } else {
        Ok((file.metadata()?.len(), FILE_SECTOR_SIZE))
    }
}
