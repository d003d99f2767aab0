//! `hastctl dump` (stub: being written).

use hast_core::config::Config;

/// Prints the metadata of each named resource (`all` or none: every one); returns the
/// exit code.
pub fn run(config: &Config, names: &[String], json: bool) -> u8 {
    let _ = (config, names, json);
    hast_core::sysexits::EX_SOFTWARE
}
