//! `hastctl create` (stub: being written).

use hast_core::config::Config;

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

/// Initialises the metadata of each named resource; returns the exit code.
pub fn run(config: &Config, names: &[String], opts: &CreateOptions) -> u8 {
    let _ = (config, names, opts);
    hast_core::sysexits::EX_SOFTWARE
}
