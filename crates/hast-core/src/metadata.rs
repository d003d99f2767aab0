//! (placeholder until the on-disk format lands)

/// Role of a resource on this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Not serving, not replicating.
    Init,
    /// Serves the device and replicates to the peer.
    Primary,
    /// Receives the primary's writes.
    Secondary,
}

impl Role {
    /// The name hastctl uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Init => "init",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}
