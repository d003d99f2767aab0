//! Data payload transforms (hast-reference.md §8.3): compression first, then a checksum
//! over the compressed bytes, so the receiver verifies before it decompresses anything.
//!
//! The transform byte of the header says what was applied: low nibble compression
//! (0 none, 1 hole, 2 lzf, 3 lz4), high nibble checksum (0 none, 1 crc32, 2 crc32c,
//! 3 sha256). The payload is `checksum bytes ‖ body`. Each side applies its own configured
//! transforms when it sends; the receiver follows the byte, so mismatched configs still
//! interoperate. Compression is only used when it makes the payload smaller.

use sha2::{Digest, Sha256};
use thiserror::Error;

use super::lzf;
use crate::config::{Checksum, Compression};

/// LZF/LZ4 are tried only above this size (as FreeBSD's `HAST_LZF_COMPRESS_MIN`).
const COMPRESS_MIN: usize = 1024;

/// A payload that cannot be accepted.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PayloadError {
    /// Unknown compression or checksum code.
    #[error("unknown payload transform {0:#04x}")]
    Transform(u8),
    /// Shorter than its checksum.
    #[error("payload shorter than its checksum")]
    Truncated,
    /// The data does not match its checksum.
    #[error("payload checksum mismatch ({0})")]
    Checksum(&'static str),
    /// Decompression failed or produced the wrong length.
    #[error("payload does not decompress to {expected} bytes ({reason})")]
    Decompress {
        /// Bytes the header announced.
        expected: u32,
        /// What went wrong.
        reason: String,
    },
}

fn compression_code(c: Compression) -> u8 {
    match c {
        Compression::None => 0,
        Compression::Hole => 1,
        Compression::Lzf => 2,
        Compression::Lz4 => 3,
    }
}

fn checksum_code(c: Checksum) -> u8 {
    match c {
        Checksum::None => 0,
        Checksum::Crc32 => 1,
        Checksum::Crc32c => 2,
        Checksum::Sha256 => 3,
    }
}

fn checksum_from_code(code: u8) -> Option<Checksum> {
    Some(match code {
        0 => Checksum::None,
        1 => Checksum::Crc32,
        2 => Checksum::Crc32c,
        3 => Checksum::Sha256,
        _ => return None,
    })
}

fn digest(kind: Checksum, body: &[u8]) -> Vec<u8> {
    match kind {
        Checksum::None => Vec::new(),
        Checksum::Crc32 => crc32fast::hash(body).to_be_bytes().to_vec(),
        Checksum::Crc32c => crc32c::crc32c(body).to_be_bytes().to_vec(),
        Checksum::Sha256 => Sha256::digest(body).to_vec(),
    }
}

fn digest_len(kind: Checksum) -> usize {
    match kind {
        Checksum::None => 0,
        Checksum::Crc32 | Checksum::Crc32c => 4,
        Checksum::Sha256 => 32,
    }
}

/// A payload ready to send: `prefix ‖ body`, where the body is either the caller's data
/// untouched (no copy) or a compressed buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The header's transform byte.
    pub transform: u8,
    /// The checksum, sent first (empty without checksum).
    pub prefix: Vec<u8>,
    /// What follows the checksum.
    pub body: Body,
}

/// The body of a sealed payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// The data as given: send it from the caller's buffer.
    Original,
    /// Compressed (or, for a hole, empty) bytes.
    Packed(Vec<u8>),
}

impl Sealed {
    /// Bytes on the wire.
    pub fn len(&self, data: &[u8]) -> usize {
        self.prefix.len()
            + match &self.body {
                Body::Original => data.len(),
                Body::Packed(p) => p.len(),
            }
    }

    /// The body bytes for `data`.
    pub fn body<'a>(&'a self, data: &'a [u8]) -> &'a [u8] {
        match &self.body {
            Body::Original => data,
            Body::Packed(p) => p,
        }
    }

    /// `prefix ‖ body` as one buffer (tests, small payloads).
    pub fn to_vec(&self, data: &[u8]) -> Vec<u8> {
        let mut v = self.prefix.clone();
        v.extend_from_slice(self.body(data));
        v
    }
}

fn compress(data: &[u8], compression: Compression) -> (Compression, Body) {
    if compression == Compression::None {
        return (Compression::None, Body::Original);
    }
    if data.iter().all(|&b| b == 0) {
        return (Compression::Hole, Body::Packed(Vec::new()));
    }
    if data.len() > COMPRESS_MIN {
        let packed = match compression {
            Compression::Lzf => Some(lzf::compress(data)),
            Compression::Lz4 => Some(lz4_flex::block::compress(data)),
            Compression::None | Compression::Hole => None,
        };
        if let Some(packed) = packed.filter(|p| p.len() < data.len()) {
            return (compression, Body::Packed(packed));
        }
    }
    (Compression::None, Body::Original)
}

/// Applies the sender's transforms to `data`, without copying it when nothing shrinks it.
pub fn seal(data: &[u8], compression: Compression, checksum: Checksum) -> Sealed {
    let (used, body) = compress(data, compression);
    let transform = compression_code(used) | checksum_code(checksum) << 4;
    let prefix = match &body {
        Body::Original => digest(checksum, data),
        Body::Packed(p) => digest(checksum, p),
    };
    Sealed {
        transform,
        prefix,
        body,
    }
}

/// Verifies and undoes the transforms of a received payload that must yield `length`
/// bytes.
pub fn open(transform: u8, payload: &[u8], length: u32) -> Result<Vec<u8>, PayloadError> {
    let checksum = checksum_from_code(transform >> 4).ok_or(PayloadError::Transform(transform))?;
    let n = digest_len(checksum);
    if payload.len() < n {
        return Err(PayloadError::Truncated);
    }
    let (sum, body) = payload.split_at(n);
    if digest(checksum, body) != sum {
        return Err(PayloadError::Checksum(checksum.as_str()));
    }
    let expected = length as usize;
    let bad = |reason: String| PayloadError::Decompress {
        expected: length,
        reason,
    };
    let data = match transform & 0x0f {
        0 => body.to_vec(),
        1 if body.is_empty() => vec![0u8; expected],
        1 => return Err(bad("hole payload is not empty".into())),
        2 => lzf::decompress(body, expected).map_err(|e| bad(e.to_string()))?,
        3 => lz4_flex::block::decompress(body, expected).map_err(|e| bad(e.to_string()))?,
        _ => return Err(PayloadError::Transform(transform)),
    };
    if data.len() != expected {
        return Err(bad(format!("got {} bytes", data.len())));
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ALL_C: [Compression; 4] = [
        Compression::None,
        Compression::Hole,
        Compression::Lzf,
        Compression::Lz4,
    ];
    const ALL_S: [Checksum; 4] = [
        Checksum::None,
        Checksum::Crc32,
        Checksum::Crc32c,
        Checksum::Sha256,
    ];

    #[test]
    fn zeroes_become_a_hole_and_come_back() {
        let zeroes = vec![0u8; 65536];
        for c in [Compression::Hole, Compression::Lzf, Compression::Lz4] {
            let sealed = seal(&zeroes, c, Checksum::Crc32c);
            let (t, p) = (sealed.transform, sealed.to_vec(&zeroes));
            assert_eq!(t & 0x0f, 1);
            assert_eq!(p.len(), 4);
            assert_eq!(open(t, &p, 65536).unwrap(), zeroes);
        }
        let sealed = seal(&zeroes, Compression::None, Checksum::None);
        assert_eq!((sealed.transform, sealed.len(&zeroes)), (0, 65536));
        assert_eq!(
            sealed.body,
            Body::Original,
            "no copy when nothing is transformed"
        );
    }

    #[test]
    fn a_flipped_bit_is_caught_by_every_checksum() {
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
        for s in [Checksum::Crc32, Checksum::Crc32c, Checksum::Sha256] {
            for c in ALL_C {
                let sealed = seal(&data, c, s);
                let (t, mut p) = (sealed.transform, sealed.to_vec(&data));
                let last = p.len() - 1;
                p[last] ^= 0x10;
                assert!(
                    matches!(open(t, &p, 4096), Err(PayloadError::Checksum(_))),
                    "{s:?} {c:?}"
                );
            }
        }
    }

    #[test]
    fn wrong_length_and_unknown_codes_are_refused() {
        let data = vec![5u8; 8192];
        let sealed = seal(&data, Compression::Lz4, Checksum::None);
        let (t, p) = (sealed.transform, sealed.to_vec(&data));
        assert!(open(t, &p, 8191).is_err());
        assert!(open(0x04, &p, 8192).is_err());
        assert!(open(0x40, &p, 8192).is_err());
        assert_eq!(open(0x31, &[1, 2], 8), Err(PayloadError::Truncated));
    }

    proptest! {
        #[test]
        fn seal_open_round_trip(
            data in proptest::collection::vec(prop_oneof![Just(0u8), any::<u8>()], 1..6000),
            c in 0usize..4, s in 0usize..4,
        ) {
            let sealed = seal(&data, ALL_C[c], ALL_S[s]);
            let p = sealed.to_vec(&data);
            prop_assert_eq!(open(sealed.transform, &p, data.len() as u32).unwrap(), data);
        }

        #[test]
        fn open_never_panics(t in any::<u8>(), p in proptest::collection::vec(any::<u8>(), 0..200), len in 0u32..5000) {
            let _ = open(t, &p, len);
        }
    }
}
