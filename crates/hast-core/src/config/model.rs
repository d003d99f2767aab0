//! The validated configuration of one node, as the daemon and hastctl use it.
//!
//! Everything here is already resolved: globals are inherited, the `on <node>` block
//! that matches this node is applied, defaults are filled in. Nothing in this file
//! parses text; see `parser.rs` for that.

use std::fmt;
use std::path::PathBuf;

/// TCP port used when an address does not name one (`PROTO_TCP_DEFAULT_PORT`).
pub const DEFAULT_PORT: u16 = 8457;
/// Default `timeout` in seconds (`HAST_TIMEOUT`).
pub const DEFAULT_TIMEOUT_SECS: u32 = 20;
/// Default `fence_timeout` in seconds: how long writes wait for the fence program before
/// they fail (a Pacemaker constraint takes a few seconds; a hung program must not hang
/// the application for ever).
pub const DEFAULT_FENCE_TIMEOUT_SECS: u32 = 60;
/// Default control socket (FreeBSD: `/var/run/hastctl`; Linux keeps runtime state in `/run`).
pub const DEFAULT_CONTROL: &str = "/run/hast/hastctl.sock";
/// Default pidfile of the daemon.
pub const DEFAULT_PIDFILE: &str = "/run/hast/hastd.pid";
/// Directory of the default NBD export sockets: `unix:///run/hast/<name>.sock`.
pub const DEFAULT_EXPORT_DIR: &str = "/run/hast";
/// Default configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/hast.conf";

/// Address family restriction of a TCP address (`tcp4://`, `tcp6://`, or any).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `tcp://` or a bare `host[:port]`: whatever the name resolves to first.
    Any,
    /// `tcp4://`
    V4,
    /// `tcp6://`
    V6,
}

/// A network or local endpoint as written in hast.conf (`listen`, `remote`, `source`,
/// `control`, `export`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Address {
    /// A TCP endpoint. `host` is a literal IP address or a host name still to be
    /// resolved (IPv6 literals are stored without brackets).
    Tcp {
        /// Family restriction from the scheme.
        family: Family,
        /// Host name or literal address, without brackets.
        host: String,
        /// Port, [`DEFAULT_PORT`] when not written.
        port: u16,
    },
    /// A UNIX domain socket path (`uds://`, `unix://` or an absolute path).
    Unix(PathBuf),
}

impl fmt::Display for Address {
    /// Canonical URI form: `tcp://host:port`, `tcp4://…`, `tcp6://[v6]:port`, `unix:///path`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Tcp { family, host, port } => {
                let scheme = match family {
                    Family::Any => "tcp",
                    Family::V4 => "tcp4",
                    Family::V6 => "tcp6",
                };
                if host.contains(':') {
                    write!(f, "{scheme}://[{host}]:{port}")
                } else {
                    write!(f, "{scheme}://{host}:{port}")
                }
            }
            Address::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

/// When the primary acknowledges a write (hast.conf `replication`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// Written locally and written by the secondary.
    Fullsync,
    /// Written locally and received (not yet written) by the secondary. The default.
    Memsync,
    /// Written locally; the secondary gets it in the background.
    Async,
}

/// Checksum of data payloads on the peer link (hast.conf `checksum`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Checksum {
    /// No checksum (the default).
    None,
    /// CRC-32 (IEEE, zlib's), as FreeBSD.
    Crc32,
    /// CRC-32C (Castagnoli), hardware accelerated; a Linux addition.
    Crc32c,
    /// SHA-256.
    Sha256,
}

/// Compression of data payloads on the peer link (hast.conf `compression`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Send payloads as they are.
    None,
    /// Send an all-zero payload as its length only. The default.
    Hole,
    /// `hole` first, then LZF for payloads over 1 KiB.
    Lzf,
    /// `hole` first, then LZ4; a Linux addition.
    Lz4,
}

macro_rules! keyword_names {
    ($ty:ty { $($variant:ident => $text:literal),* $(,)? }) => {
        impl $ty {
            /// The hast.conf keyword for this value.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),* }
            }
            /// Parses the hast.conf keyword; `None` if it is not one of the values.
            pub fn from_keyword(word: &str) -> Option<Self> {
                match word { $($text => Some(Self::$variant),)* _ => None }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

keyword_names!(ReplicationMode { Fullsync => "fullsync", Memsync => "memsync", Async => "async" });
keyword_names!(Checksum { None => "none", Crc32 => "crc32", Crc32c => "crc32c", Sha256 => "sha256" });
keyword_names!(Compression { None => "none", Hole => "hole", Lzf => "lzf", Lz4 => "lz4" });

/// Who this node is, for matching `on <node>` blocks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeIdentity {
    /// `--node NAME` or `HAST_NODE`: only this exact name matches.
    Named(String),
    /// The host's own identity (hast-reference.md §1.5).
    Host {
        /// Full host name from gethostname(2); matched exactly.
        hostname: String,
        /// `/etc/machine-id` (or DMI product UUID); matched case-insensitively.
        machine_id: Option<String>,
        /// gethostid(3); matches the word `hostid<decimal>`.
        hostid: Option<u32>,
    },
}

impl NodeIdentity {
    /// True if the word after `on` designates this node.
    pub fn matches(&self, word: &str) -> bool {
        match self {
            NodeIdentity::Named(name) => name == word,
            NodeIdentity::Host {
                hostname,
                machine_id,
                hostid,
            } => {
                if word == hostname || word == short_name(hostname) {
                    return true;
                }
                if machine_id
                    .as_deref()
                    .is_some_and(|id| id.eq_ignore_ascii_case(word))
                {
                    return true;
                }
                hostid.is_some_and(|id| word == format!("hostid{id}"))
            }
        }
    }

    /// The names this node answers to, for error messages.
    pub fn names(&self) -> Vec<String> {
        match self {
            NodeIdentity::Named(name) => vec![name.clone()],
            NodeIdentity::Host {
                hostname,
                machine_id,
                hostid,
            } => {
                let mut names = vec![hostname.clone()];
                let short = short_name(hostname);
                if short != hostname {
                    names.push(short.to_string());
                }
                names.extend(machine_id.iter().cloned());
                names.extend(hostid.map(|id| format!("hostid{id}")));
                names
            }
        }
    }
}

fn short_name(hostname: &str) -> &str {
    hostname.split('.').next().unwrap_or(hostname)
}

/// One resource (a replicated block device) as seen from this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resource {
    /// The resource name (`resource <name> { … }`); also the NBD export name.
    pub name: String,
    /// `name` keyword: provider name (FreeBSD: `/dev/hast/<provname>`); defaults to `name`.
    pub provname: String,
    /// Path of the local component (block device or regular file).
    pub local: PathBuf,
    /// The peer, or `None` for `remote none` (standalone: primary stays degraded).
    pub remote: Option<Address>,
    /// The `remote` value as written in the file, for `hastctl status`/`list`.
    pub remote_text: String,
    /// Local address to bind before connecting to the peer.
    pub source: Option<Address>,
    /// The `source` value as written in the file.
    pub source_text: Option<String>,
    /// Replication mode.
    pub replication: ReplicationMode,
    /// Checksum of data payloads.
    pub checksum: Checksum,
    /// Compression of data payloads.
    pub compression: Compression,
    /// Peer I/O timeout in seconds (> 0).
    pub timeout: u32,
    /// Synchronisation rate limit in bytes per second while the application uses the
    /// device (0: none); an idle device syncs at full speed. A Linux addition.
    pub syncrate: u64,
    /// Key file for the shared-secret authentication of the peer (HMAC-SHA256), if any.
    /// A Linux addition; both nodes must have the same key.
    pub authkey: Option<PathBuf>,
    /// Program run on events (`exec`), if any.
    pub exec: Option<PathBuf>,
    /// Fencing program (`fence`, a Linux addition): with it, a primary without its
    /// secondary accepts writes only after `<fence> fence <resource>` exited 0.
    pub fence: Option<PathBuf>,
    /// Seconds the fence program may run before it counts as failed.
    pub fence_timeout: u32,
    /// Flush the disk cache after every activemap write.
    pub metaflush: bool,
    /// The NBD endpoint of this resource on this node (Linux addition `export`).
    pub export: Address,
    /// Line of the `resource` keyword, for messages that concern the whole resource.
    pub line: u32,
}

/// The configuration of one node: global settings and every resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Control socket that hastctl talks to.
    pub control: Address,
    /// Daemon pidfile.
    pub pidfile: PathBuf,
    /// Addresses the daemon accepts peer connections on (never empty after resolution).
    pub listen: Vec<Address>,
    /// Resources, in file order.
    pub resources: Vec<Resource>,
}

impl Config {
    /// The resource called `name`, if configured.
    pub fn resource(&self, name: &str) -> Option<&Resource> {
        self.resources.iter().find(|r| r.name == name)
    }
}
