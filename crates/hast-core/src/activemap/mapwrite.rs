//! The bitmap-write protocol: generations, and one writer at a time (see the module doc of
//! [`super`] for why).

use super::{ActiveMap, ActiveMapError};

/// A snapshot of the bitmap to write, handed out by [`ActiveMap::begin_map_write`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapWrite {
    /// The generation this image represents; pass it to [`ActiveMap::mark_written`].
    pub generation: u64,
    /// The bitmap bytes, [`ondisk_size`](super::ondisk_size) long, to be written at the bitmap's offset.
    pub image: Vec<u8>,
}

impl ActiveMap {
    /// Generation of the desired on-disk image; bumps whenever the image changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The newest generation known to be on disk.
    pub fn written_generation(&self) -> u64 {
        self.written
    }

    /// Whether the disk lags behind the desired image (a lazy write would do something).
    pub fn map_write_needed(&self) -> bool {
        self.written < self.generation
    }

    /// The generation of the bitmap write in progress, if any.
    pub fn map_write_in_progress(&self) -> Option<u64> {
        self.writing
    }

    /// Starts a bitmap write: returns the current image and its generation, or `None` if
    /// the disk is already up to date or another write is in progress (wait for its
    /// `mark_written` and ask again). See the module doc for the protocol.
    pub fn begin_map_write(&mut self) -> Option<MapWrite> {
        if self.writing.is_some() || self.written >= self.generation {
            return None;
        }
        self.writing = Some(self.generation);
        Some(MapWrite {
            generation: self.generation,
            image: self.ondisk_image(),
        })
    }

    /// The image of `generation` from `begin_map_write` is on disk (written and flushed).
    pub fn mark_written(&mut self, generation: u64) -> Result<(), ActiveMapError> {
        if self.writing != Some(generation) {
            return Err(ActiveMapError::NotWriting(generation));
        }
        self.writing = None;
        self.written = self.written.max(generation);
        let written = self.written;
        self.unwritten.retain(|_, needed| *needed > written);
        Ok(())
    }

    /// The bitmap write of `generation` failed; the disk is considered to hold the
    /// previously written generation, and another write may be started.
    pub fn abandon_map_write(&mut self, generation: u64) -> Result<(), ActiveMapError> {
        if self.writing != Some(generation) {
            return Err(ActiveMapError::NotWriting(generation));
        }
        self.writing = None;
        Ok(())
    }
}
