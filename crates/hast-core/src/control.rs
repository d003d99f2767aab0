//! Messages between hastctl and hastd, and the status record that `hastctl status --json`
//! and `hastctl list --json` print.
//!
//! The field names of [`ResourceStatus`] and everything under it are a public interface:
//! scripts parse them. They are documented in `docs/hastctl.8.md`; add fields freely, never
//! rename or remove one.
//!
//! Framing (done by the daemon and hastctl, not here): one request, one reply, each a single
//! line of JSON terminated by `\n`, at most [`MAX_MESSAGE`] bytes, over the control socket.

use serde::{Deserialize, Serialize};

use crate::config::{Checksum, Compression, ReplicationMode};
use crate::metadata::Role;

/// Largest control message either side accepts, newline included.
pub const MAX_MESSAGE: usize = 4 << 20;

/// What hastctl asks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Change the role of resources (`all` as the only name means every resource).
    SetRole {
        /// The new role.
        role: Role,
        /// Resource names, or `["all"]`.
        resources: Vec<String>,
        /// Take role primary even though this node knows its copy is inconsistent (the
        /// operator accepts the data as it is; `hastctl role -f`).
        #[serde(default)]
        force: bool,
    },
    /// Report the status of resources (`all` or an empty list means every resource).
    Status {
        /// Resource names, or `["all"]`, or empty.
        resources: Vec<String>,
    },
}

/// Error codes of the control protocol (FreeBSD's EHAST_* values, then ours).
/// hastctl exits with the first non-zero code of a reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `EHAST_NOENTRY` (1): no such resource.
    NoEntry,
    /// `EHAST_INVALID` (2): malformed request.
    Invalid,
    /// `EHAST_UNIMPLEMENTED` (4): unknown command.
    Unimplemented,
    /// 5: the role change did not finish within its time limit; the message says what it
    /// is waiting for. The change goes on in the background.
    Busy,
    /// 6: the resource could not take the role (disk missing, metadata refused, …).
    Failed,
}

impl ErrorCode {
    /// The numeric value, also hastctl's exit status for it.
    pub fn value(self) -> u8 {
        match self {
            ErrorCode::NoEntry => 1,
            ErrorCode::Invalid => 2,
            ErrorCode::Unimplemented => 4,
            ErrorCode::Busy => 5,
            ErrorCode::Failed => 6,
        }
    }
}

/// An error with its code and a sentence for the operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ControlError {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// What went wrong and, where it helps, what to do.
    pub message: String,
}

/// The daemon's answer to one request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Reply {
    /// A request-level failure (nothing was done).
    pub error: Option<ControlError>,
    /// One entry per resource the request named, in order.
    pub resources: Vec<ResourceReply>,
}

/// The answer for one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceReply {
    /// Resource name.
    pub name: String,
    /// Failure for this resource.
    pub error: Option<ControlError>,
    /// For `SetRole`: the role before the change.
    pub previous_role: Option<Role>,
    /// For `Status`: the resource's state.
    pub status: Option<ResourceStatus>,
}

/// Replication health as `hastctl status` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Both nodes connected.
    Complete,
    /// The peer is not connected; the primary serves alone and keeps written extents dirty.
    Degraded,
    /// The resource hit a fatal error in this role (see `error`); other resources go on.
    Failed,
}

impl LinkState {
    /// The word in `hastctl status` output.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkState::Complete => "complete",
            LinkState::Degraded => "degraded",
            LinkState::Failed => "failed",
        }
    }
}

/// Per-resource counters since the role was last taken (not persisted, as FreeBSD).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Statistics {
    /// READ requests served.
    pub reads: u64,
    /// WRITE and WRITE_ZEROES requests.
    pub writes: u64,
    /// TRIM requests.
    pub deletes: u64,
    /// FLUSH requests (and FUA writes' flushes are not counted here).
    pub flushes: u64,
    /// On-disk activemap writes.
    pub activemap_updates: u64,
    /// Failed local reads.
    pub read_errors: u64,
    /// Failed local writes (including activemap writes).
    pub write_errors: u64,
    /// Failed local discards.
    pub delete_errors: u64,
    /// Failed local flushes (including activemap flushes).
    pub flush_errors: u64,
}

/// Requests in flight, by where they wait (FreeBSD's `queues:` line).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Queues {
    /// Requests at the local disk.
    pub local: u64,
    /// Requests being sent to the peer.
    pub send: u64,
    /// Requests waiting for the peer's reply.
    pub recv: u64,
}

/// Synchronisation progress, present while a sync runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncProgress {
    /// Bytes copied so far in this synchronisation.
    pub synced_bytes: u64,
    /// Bytes still to copy.
    pub remaining_bytes: u64,
    /// Average copy rate in bytes per second since the synchronisation started.
    pub rate_bytes_per_sec: u64,
    /// Estimated seconds to completion, if the rate is known.
    pub eta_seconds: Option<u64>,
}

/// Everything `hastctl status`/`list` know about one resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Resource name.
    pub name: String,
    /// Current role.
    pub role: Role,
    /// `name` keyword (provider name).
    pub provname: String,
    /// Local component path.
    pub localpath: String,
    /// `remote` as configured (`none` if none).
    pub remoteaddr: String,
    /// `source` as configured.
    pub sourceaddr: Option<String>,
    /// NBD endpoint, served only while primary.
    pub export: String,
    /// Configured replication mode.
    pub replication: ReplicationMode,
    /// Configured payload checksum.
    pub checksum: Checksum,
    /// Configured payload compression.
    pub compression: Compression,
    /// Health; `None` in role init (nothing running), printed as `-`.
    pub status: Option<LinkState>,
    /// The last fatal error of this resource, if any.
    pub error: Option<String>,
    /// Bytes per extent (0 while nothing is open, as FreeBSD).
    pub extentsize: u32,
    /// keepdirty (0 while nothing is open).
    pub keepdirty: u32,
    /// Size of the exported device in bytes (0 while nothing is open).
    pub datasize: u64,
    /// Bytes in dirty extents: written but not known to be on the peer.
    pub dirty: u64,
    /// Resource unique id from the metadata.
    pub resuid: u64,
    /// localcnt from the metadata.
    pub localcnt: u64,
    /// remotecnt from the metadata.
    pub remotecnt: u64,
    /// Present while synchronising.
    pub sync: Option<SyncProgress>,
    /// What this node knows is missing from its own copy: `None` when nothing is (or in
    /// role init), else why the copy is inconsistent (unfinished sync towards it, failed
    /// write). Such a node refuses `role primary` unless forced.
    #[serde(default)]
    pub inconsistent: Option<String>,
    /// Fencing, on a primary whose resource has a `fence` program: `open` (writes pass),
    /// `closed` (no secondary, no fence yet), `fencing` (writes wait), `failed` (writes
    /// fail until the secondary is back). Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fence: Option<String>,
    /// Requests in flight.
    pub queues: Queues,
    /// Counters.
    pub statistics: Statistics,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_keep_freebsd_values() {
        assert_eq!(ErrorCode::NoEntry.value(), 1);
        assert_eq!(ErrorCode::Invalid.value(), 2);
        assert_eq!(ErrorCode::Unimplemented.value(), 4);
    }
}
