//! LZF (the liblzf format that FreeBSD HAST's `compression lzf` uses): a tiny LZ77 with
//! 8 KiB window. Written here because the only crate is deprecated bindings; the format
//! is small enough to own, and the decoder must be strict since its input comes from the
//! network.
//!
//! Stream: a control byte `c`. If `c < 32`: `c + 1` literal bytes follow. Otherwise a back
//! reference: length `(c >> 5) + 2` (when `c >> 5 == 7`, the next byte adds to it), then
//! one more byte; distance = `((c & 31) << 8 | byte) + 1` back from the current output.

use thiserror::Error;

const MAX_LITERAL: usize = 32;
const MAX_OFF: usize = 1 << 13;
const MAX_REF: usize = (1 << 8) + (1 << 3);
const HASH_BITS: u32 = 14;

/// A stream that is not valid LZF for the expected length.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("corrupt LZF data at input byte {0}")]
pub struct LzfError(pub usize);

fn hash(b: &[u8]) -> usize {
    let v = u32::from(b[0]) << 16 | u32::from(b[1]) << 8 | u32::from(b[2]);
    (v.wrapping_mul(2_654_435_761) >> (32 - HASH_BITS)) as usize
}

fn flush_literals(out: &mut Vec<u8>, lit: &[u8]) {
    for chunk in lit.chunks(MAX_LITERAL) {
        out.push((chunk.len() - 1) as u8);
        out.extend_from_slice(chunk);
    }
}

/// Compresses `input`.
pub fn compress(input: &[u8]) -> Vec<u8> {
    let n = input.len();
    let mut out = Vec::with_capacity(n / 2 + 16);
    let mut table = vec![usize::MAX; 1 << HASH_BITS];
    let mut lit_start = 0;
    let mut i = 0;
    while i + 2 < n {
        let h = hash(&input[i..]);
        let candidate = table[h];
        table[h] = i;
        if candidate != usize::MAX
            && candidate < i
            && i - candidate <= MAX_OFF
            && input[candidate..candidate + 3] == input[i..i + 3]
        {
            let max_len = MAX_REF.min(n - i);
            let mut len = 3;
            while len < max_len && input[candidate + len] == input[i + len] {
                len += 1;
            }
            flush_literals(&mut out, &input[lit_start..i]);
            let off = i - candidate - 1;
            let l = len - 2;
            if l < 7 {
                out.push(((l << 5) | (off >> 8)) as u8);
            } else {
                out.push(((7 << 5) | (off >> 8)) as u8);
                out.push((l - 7) as u8);
            }
            out.push((off & 0xff) as u8);
            i += len;
            lit_start = i;
        } else {
            i += 1;
        }
    }
    flush_literals(&mut out, &input[lit_start..]);
    out
}

/// Decompresses `input`, which must expand to exactly `expected` bytes.
pub fn decompress(input: &[u8], expected: usize) -> Result<Vec<u8>, LzfError> {
    let mut out = Vec::with_capacity(expected);
    let mut ip = 0;
    while ip < input.len() {
        let ctrl = usize::from(input[ip]);
        ip += 1;
        if ctrl < MAX_LITERAL {
            let len = ctrl + 1;
            let lit = input.get(ip..ip + len).ok_or(LzfError(ip))?;
            if out.len() + len > expected {
                return Err(LzfError(ip));
            }
            out.extend_from_slice(lit);
            ip += len;
        } else {
            let mut len = ctrl >> 5;
            if len == 7 {
                len += usize::from(*input.get(ip).ok_or(LzfError(ip))?);
                ip += 1;
            }
            len += 2;
            let low = usize::from(*input.get(ip).ok_or(LzfError(ip))?);
            ip += 1;
            let distance = ((ctrl & 0x1f) << 8 | low) + 1;
            if distance > out.len() || out.len() + len > expected {
                return Err(LzfError(ip));
            }
            let start = out.len() - distance;
            // Byte by byte: the reference may overlap what it produces (runs).
            for k in 0..len {
                let b = out[start + k];
                out.push(b);
            }
        }
    }
    if out.len() != expected {
        return Err(LzfError(ip));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn compresses_repetitive_data() {
        let data: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let c = compress(&data);
        assert!(c.len() < data.len() / 10, "{} bytes", c.len());
        assert_eq!(decompress(&c, data.len()).unwrap(), data);
    }

    #[test]
    fn known_stream_decodes() {
        // "aaaaaaaa": literal 'a', then a back reference of length 7 at distance 1.
        let stream = [0u8, b'a', (5 << 5) as u8, 0];
        assert_eq!(decompress(&stream, 8).unwrap(), b"aaaaaaaa");
        assert!(decompress(&stream, 7).is_err());
        assert!(decompress(&stream, 9).is_err());
        assert!(
            decompress(&[(1 << 5) as u8, 0], 3).is_err(),
            "reference before any output"
        );
    }

    proptest! {
        #[test]
        fn round_trip(data in proptest::collection::vec(prop_oneof![Just(0u8), Just(1u8), any::<u8>()], 0..5000)) {
            let c = compress(&data);
            prop_assert_eq!(decompress(&c, data.len()).unwrap(), data);
        }

        #[test]
        fn decoder_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), expected in 0usize..2000) {
            let _ = decompress(&data, expected);
        }
    }
}
