//! `hastctl create [-e extentsize] [-k keepdirty] [-m mediasize] name...`: writes fresh
//! metadata and a zeroed activemap on the local component of each named resource
//! (hast-reference.md §3.1). User data is never touched.
//!
//! Exit code: the code of the first resource that failed, 0 if all succeeded; every
//! resource is attempted. Codes: unknown resource and invalid sizes ⇒ EX_DATAERR (65);
//! provider cannot be opened ⇒ EX_NOINPUT (66); provider locked by hastd or another
//! hastctl ⇒ EX_TEMPFAIL (75, FreeBSD does not lock); I/O error ⇒ EX_IOERR (74).

use std::io::{self, Write};

use hast_core::config::{Config, Resource};
use hast_core::metadata::{
    Layout, LayoutError, Metadata, MetadataError, DEFAULT_EXTENTSIZE, DEFAULT_KEEPDIRTY,
};
use hast_core::sysexits;
use thiserror::Error;

use crate::storage::{self, Access, Provider, StorageError};

/// Options of `hastctl create`.
#[derive(Debug, Clone, Default)]
pub struct CreateOptions {
    /// `-e`: extent size in bytes.
    pub extentsize: Option<u64>,
    /// `-k`: keepdirty.
    pub keepdirty: Option<u64>,
    /// `-m`: media size in bytes.
    pub mediasize: Option<u64>,
}

/// Why one resource could not be created.
#[derive(Debug, Error)]
pub enum CreateError {
    /// The name is not a configured resource.
    #[error("unknown resource")]
    UnknownResource,
    /// Opening, locking or writing the provider failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// `-m` exceeds the provider.
    #[error("mediasize {requested} is larger than provider {path} ({size} bytes)")]
    MediaSizeTooLarge {
        /// Provider path.
        path: String,
        /// `-m` value.
        requested: u64,
        /// Provider size.
        size: u64,
    },
    /// `-k` does not fit the header's 32-bit field.
    #[error("keepdirty {0} is too large (at most {max})", max = u32::MAX)]
    KeepDirtyTooLarge(u64),
    /// Sizes that do not make a layout.
    #[error("provider {path}: {source}")]
    Layout {
        /// Provider path.
        path: String,
        /// What is wrong.
        source: LayoutError,
    },
    /// The resource name cannot be stored (empty, over 255 bytes).
    #[error(transparent)]
    Metadata(#[from] MetadataError),
}

impl CreateError {
    /// The sysexits code for this failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            CreateError::Storage(err) => err.exit_code(),
            CreateError::UnknownResource
            | CreateError::MediaSizeTooLarge { .. }
            | CreateError::KeepDirtyTooLarge(_)
            | CreateError::Layout { .. }
            | CreateError::Metadata(_) => sysexits::EX_DATAERR,
        }
    }
}

/// Initialises the metadata of each named resource; returns the exit code. Messages go
/// to stderr as `hastctl: <resource>: <message>`.
pub fn run(config: &Config, names: &[String], opts: &CreateOptions) -> u8 {
    run_to(config, names, opts, &mut io::stderr().lock())
}

/// [`run`] with messages written to `err`.
pub fn run_to(config: &Config, names: &[String], opts: &CreateOptions, err: &mut dyn Write) -> u8 {
    let mut code = sysexits::EX_OK;
    for name in names {
        let result = match config.resource(name) {
            Some(resource) => create_one(resource, opts).map(|_| ()),
            None => Err(CreateError::UnknownResource),
        };
        if let Err(e) = result {
            // A closed stderr must not stop the other resources from being created.
            let _ = writeln!(err, "hastctl: {name}: {e}");
            if code == sysexits::EX_OK {
                code = e.exit_code();
            }
        }
    }
    code
}

/// Creates one resource and returns the metadata written.
///
/// Order on disk: the zeroed bitmap, a flush, then the header and a flush. A valid
/// header thus always sits in front of a zeroed map, even after a crash in between
/// (FreeBSD writes the header first and does not flush).
pub fn create_one(resource: &Resource, opts: &CreateOptions) -> Result<Metadata, CreateError> {
    let keepdirty = match opts.keepdirty {
        None | Some(0) => DEFAULT_KEEPDIRTY,
        Some(k) => u32::try_from(k).map_err(|_| CreateError::KeepDirtyTooLarge(k))?,
    };
    let provider = Provider::open(&resource.local, Access::ReadWrite)?;
    let path = provider.path().display().to_string();
    let mediasize = match opts.mediasize {
        None | Some(0) => provider.media_size(),
        Some(requested) if requested > provider.media_size() => {
            return Err(CreateError::MediaSizeTooLarge {
                path,
                requested,
                size: provider.media_size(),
            })
        }
        Some(requested) => requested,
    };
    let extentsize = match opts.extentsize {
        None | Some(0) => u64::from(DEFAULT_EXTENTSIZE),
        Some(e) => e,
    };
    let layout = Layout::compute(mediasize, extentsize, provider.sector_size())
        .map_err(|source| CreateError::Layout { path, source })?;
    let metadata = Metadata::new(&resource.name, layout, keepdirty)?;
    storage::write_bitmap(&provider, &layout, &[])?;
    provider.flush()?;
    storage::write_metadata(&provider, &metadata)?;
    provider.flush()?;
    Ok(metadata)
}
