//! The data area of a provider as the daemon sees it: a device of `datasize` bytes.

use std::path::Path;

use hast_core::metadata::{Layout, Metadata};

use super::{Access, Op, Provider, StorageError};

/// A provider opened read-write with valid metadata, seen as a device of `datasize`
/// bytes. Device offset `x` is provider offset `x + offset`.
///
/// Every data method checks `offset + len <= datasize` before any I/O, so no request,
/// however malformed, reaches the metadata block, the bitmap, or beyond the data area.
/// The header and the bitmap are written only through [`LocalStore::write_metadata`]
/// and [`LocalStore::write_bitmap`], which keep the layout fixed at create time.
#[derive(Debug)]
pub struct LocalStore {
    provider: Provider,
    name: String,
    layout: Layout,
    metaflush: bool,
}

impl LocalStore {
    /// Opens `path` read-write (exclusive lock), reads and validates its metadata and
    /// checks that it belongs to `resource`. Returns the store and the metadata read.
    pub fn open(
        path: &Path,
        resource: &str,
        metaflush: bool,
    ) -> Result<(LocalStore, Metadata), StorageError> {
        let provider = Provider::open(path, Access::ReadWrite)?;
        let metadata = super::read_metadata(&provider)?;
        metadata
            .check_resource(resource)
            .map_err(|source| StorageError::Metadata {
                path: path.to_path_buf(),
                source,
            })?;
        let store = LocalStore::new(provider, &metadata, metaflush)?;
        Ok((store, metadata))
    }

    /// Wraps an opened provider whose metadata is `metadata`. Fails if the provider is
    /// smaller than the layout (it shrank, or the header came from another device).
    /// With `metaflush`, every bitmap write is followed by a flush.
    pub fn new(
        provider: Provider,
        metadata: &Metadata,
        metaflush: bool,
    ) -> Result<LocalStore, StorageError> {
        let layout = *metadata.layout();
        if provider.media_size() < layout.end() {
            return Err(StorageError::TooSmall {
                path: provider.path().to_path_buf(),
                size: provider.media_size(),
                needed: layout.end(),
            });
        }
        Ok(LocalStore {
            provider,
            name: metadata.name().to_string(),
            layout,
            metaflush,
        })
    }

    /// Bytes of user data: the size of the exported device.
    pub fn datasize(&self) -> u64 {
        self.layout.datasize()
    }

    /// Bytes per extent.
    pub fn extentsize(&self) -> u32 {
        self.layout.extentsize()
    }

    /// Block size to export: the sector size recorded at create time.
    pub fn sector_size(&self) -> u32 {
        self.layout.sectorsize()
    }

    /// The layout fixed at create time.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The underlying provider (path, sizes).
    pub fn provider(&self) -> &Provider {
        &self.provider
    }

    /// Reads `buf.len()` bytes at device offset `offset`.
    pub fn read(&self, offset: u64, buf: &mut [u8]) -> Result<(), StorageError> {
        let at = self.map(Op::Read, offset, buf.len() as u64)?;
        self.provider.read_exact_at(buf, at)
    }

    /// Writes `buf` at device offset `offset`.
    pub fn write(&self, offset: u64, buf: &[u8]) -> Result<(), StorageError> {
        let at = self.map(Op::Write, offset, buf.len() as u64)?;
        self.provider.write_all_at(buf, at)
    }

    /// Makes completed writes durable.
    pub fn flush(&self) -> Result<(), StorageError> {
        self.provider.flush()
    }

    /// Discards `len` bytes at device offset `offset` (see [`Provider::discard`]).
    pub fn discard(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        let at = self.map(Op::Discard, offset, len)?;
        self.provider.discard(at, len)
    }

    /// Makes `len` bytes at device offset `offset` read as zeroes.
    pub fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), StorageError> {
        let at = self.map(Op::WriteZeroes, offset, len)?;
        self.provider.zero_range(at, len)
    }

    /// Reads the on-disk activemap (the whole reserved area).
    pub fn read_bitmap(&self) -> Result<Vec<u8>, StorageError> {
        super::read_bitmap(&self.provider, &self.layout)
    }

    /// Writes the activemap (zero-padded to the reserved area), then flushes when
    /// `metaflush` is on, so the map is durable before the writes it covers go out.
    pub fn write_bitmap(&self, bitmap: &[u8]) -> Result<(), StorageError> {
        super::write_bitmap(&self.provider, &self.layout, bitmap)?;
        if self.metaflush {
            self.provider.flush()?;
        }
        Ok(())
    }

    /// Marks every extent in the on-disk activemap and flushes it, whatever `metaflush`
    /// says: the metadata of a full sync that follows relies on it being on disk.
    pub fn fill_bitmap(&self) -> Result<(), StorageError> {
        let extents = self
            .layout
            .datasize()
            .div_ceil(u64::from(self.layout.extentsize().max(1)));
        let mut image = vec![0xffu8; usize::try_from(extents.div_ceil(8)).unwrap_or(0)];
        // No bits past the last extent: the map's loader would refuse them.
        if extents % 8 != 0 {
            if let Some(last) = image.last_mut() {
                *last = (1u8 << (extents % 8)) - 1;
            }
        }
        super::write_bitmap(&self.provider, &self.layout, &image)?;
        self.provider.flush()
    }

    /// Writes the metadata block (counters, resuid, previous role) and flushes it: a
    /// counter change must be durable before the decision it records is acted on.
    /// Refuses metadata with another name or layout than the one opened.
    pub fn write_metadata(&self, metadata: &Metadata) -> Result<(), StorageError> {
        if metadata.name() != self.name || *metadata.layout() != self.layout {
            return Err(StorageError::LayoutChanged {
                path: self.provider.path().to_path_buf(),
            });
        }
        super::write_metadata(&self.provider, metadata)?;
        self.provider.flush()
    }

    /// Device range → provider offset, refusing anything outside the data area.
    fn map(&self, op: Op, offset: u64, len: u64) -> Result<u64, StorageError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.layout.datasize() => Ok(offset + self.layout.offset()),
            _ => Err(StorageError::OutOfBounds {
                path: self.provider.path().to_path_buf(),
                op,
                offset,
                len,
                area: "data area",
                limit: self.layout.datasize(),
            }),
        }
    }
}
