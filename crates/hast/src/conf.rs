//! Loading hast.conf from disk for this node: the I/O half of `hast_core::config`
//! (reading the file, learning who this host is).

use std::io;
use std::path::{Path, PathBuf};

use hast_core::config::{self, Config, ConfigErrors, NodeIdentity};
use hast_core::sysexits;

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    /// The file could not be opened or read.
    #[error("{}: cannot read the configuration file: {source}", path.display())]
    Read {
        /// The file as given.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The file was read but is not a valid configuration for this node; every error
    /// is printed as `FILE:LINE: message`, one per line.
    #[error(transparent)]
    Invalid(#[from] ConfigErrors),
}

impl ConfError {
    /// Exit code for this failure: EX_OSFILE when the file cannot be read, as FreeBSD's
    /// hastd; EX_CONFIG when its content is wrong.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfError::Read { .. } => sysexits::EX_OSFILE,
            ConfError::Invalid(_) => sysexits::EX_CONFIG,
        }
    }
}

/// Reads and validates `path` for the node `node` (or this host's identity).
pub fn load(path: &Path, node: Option<&str>) -> Result<Config, ConfError> {
    let read_error = |source| ConfError::Read {
        path: path.to_path_buf(),
        source,
    };
    let bytes = std::fs::read(path).map_err(read_error)?;
    // Invalid UTF-8 is a content error: the lexer reports the replacement character at
    // its line, which says more than "stream did not contain valid UTF-8".
    let text = String::from_utf8_lossy(&bytes);
    let identity = node_identity(node).map_err(read_error)?;
    Ok(config::parse(
        &text,
        &path.display().to_string(),
        &identity,
    )?)
}

/// Who this node is for `on <node>` blocks: `--node NAME` if given, else the host name,
/// the machine id and the host id (hast-reference.md §1.5, Linux equivalents).
pub fn node_identity(node: Option<&str>) -> Result<NodeIdentity, io::Error> {
    if let Some(name) = node {
        return Ok(NodeIdentity::Named(name.to_string()));
    }
    Ok(NodeIdentity::Host {
        hostname: hostname(),
        machine_id: first_line("/etc/machine-id")
            .or_else(|| first_line("/sys/class/dmi/id/product_uuid")),
        hostid: hostid(),
    })
}

fn hostname() -> String {
    let uname = rustix::system::uname();
    let name = uname.nodename().to_string_lossy().into_owned();
    if !name.is_empty() {
        return name;
    }
    first_line("/proc/sys/kernel/hostname").unwrap_or_default()
}

/// The trimmed content of a small file, if it exists, is readable and is not empty.
fn first_line(path: &str) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

/// glibc's gethostid(3) reads `/etc/hostid` as a native-endian 32-bit number. Without
/// that file glibc derives a value from the host's IPv4 address, which FreeBSD's
/// `hostid<N>` names would not match anyway, so no host id is reported then.
fn hostid() -> Option<u32> {
    let bytes = std::fs::read("/etc/hostid").ok()?;
    let word: [u8; 4] = bytes.get(..4)?.try_into().ok()?;
    Some(u32::from_ne_bytes(word))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn named_node_is_only_that_name() {
        assert_eq!(
            node_identity(Some("a")).unwrap(),
            NodeIdentity::Named("a".into())
        );
    }

    #[test]
    fn host_identity_has_a_hostname() {
        let NodeIdentity::Host { hostname, .. } = node_identity(None).unwrap() else {
            panic!("host identity expected");
        };
        assert!(!hostname.is_empty());
    }

    #[test]
    fn exit_codes() {
        let missing = load(Path::new("/nonexistent/hast.conf"), Some("a")).unwrap_err();
        assert_eq!(missing.exit_code(), sysexits::EX_OSFILE);
        assert!(missing
            .to_string()
            .starts_with("/nonexistent/hast.conf: cannot read the configuration file:"));
    }
}
