//! The role of a node for a resource, shared by the metadata, the daemon and hastctl.

use std::fmt;
use std::str::FromStr;

use thiserror::Error;

/// The role of a node for a resource. The numeric values are FreeBSD's `HAST_ROLE_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Neither serving nor replicating (`HAST_ROLE_INIT`).
    Init,
    /// Exports the device and replicates to the peer (`HAST_ROLE_PRIMARY`).
    Primary,
    /// Applies what the primary sends (`HAST_ROLE_SECONDARY`).
    Secondary,
}

impl Role {
    /// The word hastctl and hast.conf use: `init`, `primary` or `secondary`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Init => "init",
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }

    /// FreeBSD's numeric value (1, 2, 3), as stored in the header and on the wire.
    pub fn to_u8(self) -> u8 {
        match self {
            Role::Init => 1,
            Role::Primary => 2,
            Role::Secondary => 3,
        }
    }

    /// The role with FreeBSD's numeric value `value`; `None` for 0 (undefined) and others.
    pub fn from_u8(value: u8) -> Option<Role> {
        match value {
            1 => Some(Role::Init),
            2 => Some(Role::Primary),
            3 => Some(Role::Secondary),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A word that is not `init`, `primary` or `secondary`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown role '{0}': expected init, primary or secondary")]
pub struct RoleParseError(pub String);

impl FromStr for Role {
    type Err = RoleParseError;

    fn from_str(word: &str) -> Result<Role, RoleParseError> {
        match word {
            "init" => Ok(Role::Init),
            "primary" => Ok(Role::Primary),
            "secondary" => Ok(Role::Secondary),
            _ => Err(RoleParseError(word.to_string())),
        }
    }
}
