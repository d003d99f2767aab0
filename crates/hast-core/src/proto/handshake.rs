//! Handshake messages (JSON payloads of the `Hello`, `Welcome`, `State`, `StateReply` and
//! `Error` frames). JSON because the handshake is rare and small, and because unknown
//! fields are ignored: a newer node can add fields and capabilities without a protocol
//! version bump. Every message is bounded by `MAX_CONTROL_PAYLOAD` before it is parsed.
//!
//! ```text
//! primary                                  secondary
//!   Hello {versions, resource, capabilities} ──►   (peer address and resource checked)
//!   ◄── Welcome {version, capabilities}  |  Error
//!   State {resuid, counters, sizes}      ──►   (decision table, hast_core::decision)
//!   ◄── StateReply {…, mapsize} + Bitmap |  Error (split-brain, resuid mismatch, …)
//!   then I/O frames
//! ```
//! Capabilities are words both sides list; a feature is used only if both list it (the
//! shared-secret challenge and TLS will be negotiated this way).

use serde::{Deserialize, Serialize};

use super::frame::MAX_CONTROL_PAYLOAD;

/// Protocol versions this code speaks. Version 2 added the `SyncDone` frame and the
/// `consistent` fields, which the data-state rules depend on, so version 1 is no longer
/// spoken: a version-1 peer is refused with "no common protocol version".
pub const VERSIONS: &[u16] = &[2];

/// First frame of a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Versions the primary speaks.
    pub versions: Vec<u16>,
    /// The resource this connection is for.
    pub resource: String,
    /// Optional features the primary supports.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// Fresh random nonce (hex), present when the primary has an `authkey`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
}

/// The secondary accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// The version both will speak.
    pub version: u16,
    /// Features both support.
    #[serde(default)]
    pub capabilities: Vec<String>,
    /// The secondary's fresh nonce (hex), when authenticating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nonce: Option<String>,
    /// The secondary's proof of the key (hex), see `auth.rs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
}

/// The primary's metadata, for the decision table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// Resource unique id (never 0 here: the primary generates one first).
    pub resuid: u64,
    /// Primary's localcnt.
    pub localcnt: u64,
    /// Primary's remotecnt.
    pub remotecnt: u64,
    /// The primary generated its resuid in this very handshake (never written).
    pub virgin: bool,
    /// Exported size; must equal the secondary's.
    pub datasize: u64,
    /// Extent size; must equal the secondary's.
    pub extentsize: u32,
    /// The primary's proof of the key (hex), when authenticating.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    /// The primary's copy has nothing known to be missing (metadata `DataState`).
    pub consistent: bool,
}

/// Which side has the good data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SyncSource {
    /// Copy primary → secondary.
    Primary,
    /// Copy secondary → primary (the primary's copy is stale; reads go to the secondary).
    Secondary,
}

/// The secondary's answer to [`State`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateReply {
    /// Secondary's localcnt.
    pub localcnt: u64,
    /// Secondary's remotecnt.
    pub remotecnt: u64,
    /// The secondary was fresh (resuid 0) and adopted the primary's resuid.
    pub virgin: bool,
    /// Direction of synchronisation.
    pub syncsrc: SyncSource,
    /// Every extent must be copied (fresh secondary, or counters that make no sense).
    pub full_sync: bool,
    /// Bytes of the secondary's activemap that follow in a `Bitmap` frame (0: none).
    pub mapsize: u32,
    /// The secondary's copy has nothing known to be missing (before this sync starts).
    pub consistent: bool,
}

/// Why a handshake was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Refusal {
    /// The resource is not configured on the secondary.
    UnknownResource,
    /// The connection does not come from the resource's `remote` address.
    NoAccess,
    /// The secondary node is not in role secondary (`wait`: it is primary, retry soon).
    NotSecondary,
    /// No common protocol version.
    Version,
    /// Sizes differ between the nodes.
    SizeMismatch,
    /// The providers were never paired (different resuid).
    ResuidMismatch,
    /// Both nodes were written while apart.
    SplitBrain,
    /// The secondary cannot open its provider or metadata.
    LocalFailure,
    /// A malformed handshake message.
    Malformed,
    /// The shared-secret authentication failed or is missing on one side.
    Auth,
    /// The node the counters pick as sync source knows its copy is inconsistent.
    SourceInconsistent,
}

/// Payload of an `Error` frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMessage {
    /// Machine-readable reason.
    pub reason: Refusal,
    /// Sentence for the log.
    pub message: String,
}

/// A handshake payload that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Larger than the limit.
    #[error("handshake message of {0} bytes exceeds the limit")]
    TooLarge(usize),
    /// Not the expected JSON.
    #[error("malformed handshake message: {0}")]
    Json(#[from] serde_json::Error),
}

/// Encodes a handshake message.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, HandshakeError> {
    let bytes = serde_json::to_vec(msg)?;
    if bytes.len() > MAX_CONTROL_PAYLOAD as usize {
        return Err(HandshakeError::TooLarge(bytes.len()));
    }
    Ok(bytes)
}

/// Decodes a handshake message.
pub fn decode<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> Result<T, HandshakeError> {
    if bytes.len() > MAX_CONTROL_PAYLOAD as usize {
        return Err(HandshakeError::TooLarge(bytes.len()));
    }
    Ok(serde_json::from_slice(bytes)?)
}

/// The highest version both lists contain.
pub fn choose_version(theirs: &[u16]) -> Option<u16> {
    VERSIONS
        .iter()
        .copied()
        .filter(|v| theirs.contains(v))
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip_and_ignore_unknown_fields() {
        let hello = Hello {
            versions: vec![1, 2],
            resource: "r0".into(),
            capabilities: vec![],
            nonce: None,
        };
        let back: Hello = decode(&encode(&hello).unwrap()).unwrap();
        assert_eq!(back, hello);
        let newer = br#"{"versions":[1],"resource":"r0","capabilities":["x"],"future":7}"#;
        let parsed: Hello = decode(newer).unwrap();
        assert_eq!(parsed.capabilities, ["x"]);
        let err = ErrorMessage {
            reason: Refusal::SplitBrain,
            message: "Split-brain".into(),
        };
        let text = String::from_utf8(encode(&err).unwrap()).unwrap();
        assert!(text.contains("\"split-brain\""), "{text}");
    }

    #[test]
    fn garbage_and_oversize_are_refused() {
        assert!(decode::<Hello>(b"{not json").is_err());
        assert!(decode::<Hello>(br#"{"versions":"x","resource":"r"}"#).is_err());
        let big = vec![b' '; MAX_CONTROL_PAYLOAD as usize + 1];
        assert!(matches!(
            decode::<Hello>(&big),
            Err(HandshakeError::TooLarge(_))
        ));
    }

    #[test]
    fn version_choice() {
        assert_eq!(choose_version(&[2]), Some(2));
        assert_eq!(choose_version(&[1, 2, 9]), Some(2));
        assert_eq!(choose_version(&[1]), None);
        assert_eq!(choose_version(&[9]), None);
    }
}
