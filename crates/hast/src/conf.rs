//! Loading hast.conf from disk for this node (stub: being written).

use std::path::Path;

use hast_core::config::Config;
use hast_core::sysexits;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfError(String);

impl ConfError {
    /// Exit code for this failure.
    pub fn exit_code(&self) -> u8 {
        sysexits::EX_CONFIG
    }
}

/// Reads and validates `path` for the node `node` (or this host's identity).
pub fn load(path: &Path, node: Option<&str>) -> Result<Config, ConfError> {
    let _ = node;
    Err(ConfError(format!(
        "{}: config parser not written yet",
        path.display()
    )))
}
