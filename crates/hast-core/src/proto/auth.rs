//! Peer authentication with a shared secret (`authkey`, a Linux addition): each side
//! proves, with HMAC-SHA256 over both sides' fresh nonces, that it knows the key, before
//! anything about the resource is exchanged. FreeBSD's HAST trusts the peer's IP address
//! alone; the address check stays, this comes on top.
//!
//! ```text
//! primary                                   secondary
//!   Hello {capabilities: [hmac-sha256], nonce: Np} ──►
//!   ◄── Welcome {nonce: Ns, proof: HMAC(K, "hast-v1 secondary" ‖ res ‖ Np ‖ Ns)}
//!   State {…, proof: HMAC(K, "hast-v1 primary" ‖ res ‖ Np ‖ Ns)} ──►
//! ```
//! The labels differ per side, so one side's proof can never be replayed as the other's,
//! and each nonce is fresh, so no proof can be replayed into another connection. Proofs
//! are compared in constant time. The key never crosses the wire.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The capability word both sides list when they have a key.
pub const CAPABILITY: &str = "hmac-sha256";
/// Bytes of a nonce.
pub const NONCE_LEN: usize = 32;
/// Shortest key accepted.
pub const MIN_KEY_LEN: usize = 16;

/// Which side is proving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prover {
    /// The node in role primary.
    Primary,
    /// The node in role secondary.
    Secondary,
}

fn mac(
    key: &[u8],
    who: Prover,
    resource: &str,
    primary_nonce: &[u8],
    secondary_nonce: &[u8],
) -> Option<Hmac<Sha256>> {
    // HMAC takes keys of any length, so this never fails; if it did, no proof would be
    // produced or accepted (never a MAC with some default key).
    let mut mac = Hmac::<Sha256>::new_from_slice(key).ok()?;
    let label: &[u8] = match who {
        Prover::Primary => b"hast-v1 primary",
        Prover::Secondary => b"hast-v1 secondary",
    };
    for part in [label, resource.as_bytes(), primary_nonce, secondary_nonce] {
        mac.update(&(part.len() as u32).to_be_bytes());
        mac.update(part);
    }
    Some(mac)
}

/// The proof `who` sends (empty, and so never accepted, if no MAC could be made).
pub fn prove(
    key: &[u8],
    who: Prover,
    resource: &str,
    primary_nonce: &[u8],
    secondary_nonce: &[u8],
) -> Vec<u8> {
    mac(key, who, resource, primary_nonce, secondary_nonce)
        .map(|m| m.finalize().into_bytes().to_vec())
        .unwrap_or_default()
}

/// Whether `proof` is what `who` must send (constant-time comparison).
pub fn verify(
    key: &[u8],
    who: Prover,
    resource: &str,
    primary_nonce: &[u8],
    secondary_nonce: &[u8],
    proof: &[u8],
) -> bool {
    mac(key, who, resource, primary_nonce, secondary_nonce)
        .is_some_and(|m| m.verify_slice(proof).is_ok())
}

/// Lower-case hex, for nonces and proofs in the JSON handshake.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Parses lower- or upper-case hex; `None` if malformed.
pub fn from_hex(text: &str) -> Option<Vec<u8>> {
    // `from_str_radix` alone would also take a sign: "+1" is not hex.
    if !text.len().is_multiple_of(2)
        || text.len() > 256
        || !text.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &[u8] = b"0123456789abcdef0123";

    #[test]
    fn proofs_verify_only_with_the_same_key_side_resource_and_nonces() {
        let (np, ns) = ([1u8; NONCE_LEN], [2u8; NONCE_LEN]);
        let p = prove(KEY, Prover::Primary, "r0", &np, &ns);
        assert!(verify(KEY, Prover::Primary, "r0", &np, &ns, &p));
        assert!(!verify(
            b"another key of 16+",
            Prover::Primary,
            "r0",
            &np,
            &ns,
            &p
        ));
        assert!(
            !verify(KEY, Prover::Secondary, "r0", &np, &ns, &p),
            "a side's proof is not the other's"
        );
        assert!(!verify(KEY, Prover::Primary, "r1", &np, &ns, &p));
        assert!(
            !verify(KEY, Prover::Primary, "r0", &ns, &np, &p),
            "nonces are bound to their roles"
        );
        assert!(!verify(KEY, Prover::Primary, "r0", &np, &ns, &p[..31]));
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let bytes = [0u8, 1, 0xab, 0xff];
        assert_eq!(to_hex(&bytes), "0001abff");
        assert_eq!(from_hex("0001ABff"), Some(bytes.to_vec()));
        for bad in ["0", "zz", "0g", "é1"] {
            assert_eq!(from_hex(bad), None, "{bad}");
        }
    }

    #[test]
    fn hex_with_a_sign_is_refused() {
        // Found by the peer_handshake_json fuzz target: a nonce with a `+` where a digit
        // belongs was accepted (`u8::from_str_radix("+1", 16)` is `Ok(1)`).
        assert_eq!(from_hex("+1"), None);
        let nonce = format!("{}+1{}", "11".repeat(8), "11".repeat(23));
        assert_eq!(nonce.len(), 2 * NONCE_LEN);
        assert_eq!(from_hex(&nonce), None);
        assert_eq!(from_hex("-1"), None);
    }
}
