//! Frame header of the peer protocol: 40 bytes, big-endian, sealed by a CRC-32C so that a
//! desynchronised or corrupted stream is caught at the first bad header instead of being
//! read as data. See `docs/protocol.md` for the byte layout.

use thiserror::Error;

/// `"HAST"`.
pub const MAGIC: u32 = 0x4841_5354;
/// Bytes in a frame header.
pub const HEADER_LEN: usize = 40;
/// Largest I/O a single frame carries (also the NBD maximum we advertise).
pub const MAX_IO: u32 = 32 << 20;
/// Largest handshake/control payload (JSON).
pub const MAX_CONTROL_PAYLOAD: u32 = 64 << 10;
/// Room for a checksum in front of data payloads.
pub const MAX_CHECKSUM_LEN: u32 = 32;
/// Largest activemap a peer may send (2^32 extents would need 512 MiB; 64 MiB of bitmap
/// covers 1 EiB at 2 MiB extents, far beyond any real device).
pub const MAX_BITMAP: u32 = 64 << 20;

/// What a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Primary → secondary, first frame: who I am, what I speak (JSON).
    Hello = 1,
    /// Secondary → primary: chosen version and capabilities (JSON).
    Welcome = 2,
    /// Primary → secondary: resuid, counters, sizes (JSON).
    State = 3,
    /// Secondary → primary: the connect-time decision and the secondary's counters (JSON).
    StateReply = 4,
    /// Either way: a refusal with a reason (JSON); the sender closes after it.
    Error = 5,
    /// Secondary → primary: the secondary's activemap (data payload).
    Bitmap = 6,
    /// Read `length` bytes at `offset`.
    Read = 16,
    /// Write the payload at `offset`.
    Write = 17,
    /// Discard `length` bytes at `offset`.
    Trim = 18,
    /// Zero `length` bytes at `offset`.
    WriteZeroes = 19,
    /// Make every completed write durable.
    Flush = 20,
    /// Nothing to do; proves the link is alive.
    Keepalive = 21,
    /// Primary → secondary (version 2): every extent owed to the secondary has been
    /// synchronised. The secondary makes all it has applied durable and, unless a write or
    /// flush failed earlier on this connection, records that its copy is consistent again
    /// ([`crate::metadata::DataState`]); then it replies.
    SyncDone = 22,
    /// Secondary → primary: memsync early acknowledgement (data received, not yet written).
    Received = 32,
    /// Secondary → primary: final result of request `seq` (`status` 0 or an errno; READ
    /// data as payload).
    Reply = 33,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Hello,
            2 => Kind::Welcome,
            3 => Kind::State,
            4 => Kind::StateReply,
            5 => Kind::Error,
            6 => Kind::Bitmap,
            16 => Kind::Read,
            17 => Kind::Write,
            18 => Kind::Trim,
            19 => Kind::WriteZeroes,
            20 => Kind::Flush,
            21 => Kind::Keepalive,
            22 => Kind::SyncDone,
            32 => Kind::Received,
            33 => Kind::Reply,
            _ => return None,
        })
    }

    /// Largest payload a frame of this kind may carry.
    pub fn max_payload(self) -> u32 {
        match self {
            Kind::Hello | Kind::Welcome | Kind::State | Kind::StateReply | Kind::Error => {
                MAX_CONTROL_PAYLOAD
            }
            Kind::Bitmap => MAX_BITMAP + MAX_CHECKSUM_LEN,
            Kind::Write | Kind::Reply => MAX_IO + MAX_CHECKSUM_LEN,
            Kind::Read
            | Kind::Trim
            | Kind::WriteZeroes
            | Kind::Flush
            | Kind::Keepalive
            | Kind::SyncDone
            | Kind::Received => 0,
        }
    }
}

/// Frame flags.
pub mod flags {
    /// WRITE/TRIM/WRITE_ZEROES: make this request durable before the final reply.
    pub const FUA: u8 = 1 << 0;
    /// WRITE: send a `Received` frame as soon as the data is read off the socket.
    pub const MEMSYNC: u8 = 1 << 1;
    /// Synchronisation traffic, not an application request.
    pub const SYNC: u8 = 1 << 2;
    /// WRITE_ZEROES: the range may be deallocated (NBD without NO_HOLE).
    pub const MAY_TRIM: u8 = 1 << 3;
    /// Every flag a frame may carry.
    pub const ALL: u8 = FUA | MEMSYNC | SYNC | MAY_TRIM;
}

/// A decoded, validated header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Frame kind.
    pub kind: Kind,
    /// [`flags`] bits.
    pub flags: u8,
    /// Payload transform byte (compression | checksum << 4), see `payload.rs`.
    pub transform: u8,
    /// Request sequence number (unique per connection, never 0 for I/O).
    pub seq: u64,
    /// Device offset (bytes) of the I/O.
    pub offset: u64,
    /// Bytes the I/O covers (after decompression for data).
    pub length: u32,
    /// Replies: 0 for success or a Linux errno.
    pub status: u32,
    /// Bytes that follow the header.
    pub payload_len: u32,
}

/// A header that must not be used.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    /// Not our magic: the stream is not hast's or is out of step.
    #[error("bad frame magic {0:#010x}")]
    Magic(u32),
    /// The header's checksum does not match.
    #[error("frame header checksum mismatch")]
    HeaderChecksum,
    /// Unknown kind byte.
    #[error("unknown frame kind {0}")]
    Kind(u8),
    /// Flags this kind may not carry.
    #[error("invalid flags {flags:#04x} for {kind:?}")]
    Flags {
        /// The kind.
        kind: Kind,
        /// The flags.
        flags: u8,
    },
    /// Payload larger than the kind allows.
    #[error("{kind:?} payload of {len} bytes exceeds the limit of {max}")]
    PayloadTooLarge {
        /// The kind.
        kind: Kind,
        /// Announced length.
        len: u32,
        /// Limit.
        max: u32,
    },
    /// I/O length out of range for the kind.
    #[error("{kind:?} length {length} is out of range")]
    Length {
        /// The kind.
        kind: Kind,
        /// The length.
        length: u32,
    },
    /// Reserved byte not zero.
    #[error("reserved header byte is {0}, expected 0")]
    Reserved(u8),
}

impl Header {
    /// A header with no payload.
    pub fn new(kind: Kind, seq: u64) -> Header {
        Header {
            kind,
            flags: 0,
            transform: 0,
            seq,
            offset: 0,
            length: 0,
            status: 0,
            payload_len: 0,
        }
    }

    /// The 40 header bytes.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
        b[4] = self.kind as u8;
        b[5] = self.flags;
        b[6] = self.transform;
        b[7] = 0;
        b[8..16].copy_from_slice(&self.seq.to_be_bytes());
        b[16..24].copy_from_slice(&self.offset.to_be_bytes());
        b[24..28].copy_from_slice(&self.length.to_be_bytes());
        b[28..32].copy_from_slice(&self.status.to_be_bytes());
        b[32..36].copy_from_slice(&self.payload_len.to_be_bytes());
        let crc = crc32c::crc32c(&b[0..36]);
        b[36..40].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// Decodes and validates a header; the payload is read (up to `payload_len`, which is
    /// already bounded) only after this succeeds.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Result<Header, FrameError> {
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(x)
        };
        let magic = u32_at(0);
        if magic != MAGIC {
            return Err(FrameError::Magic(magic));
        }
        if crc32c::crc32c(&b[0..36]) != u32_at(36) {
            return Err(FrameError::HeaderChecksum);
        }
        let kind = Kind::from_u8(b[4]).ok_or(FrameError::Kind(b[4]))?;
        if b[7] != 0 {
            return Err(FrameError::Reserved(b[7]));
        }
        let h = Header {
            kind,
            flags: b[5],
            transform: b[6],
            seq: u64_at(8),
            offset: u64_at(16),
            length: u32_at(24),
            status: u32_at(28),
            payload_len: u32_at(32),
        };
        h.validate()?;
        Ok(h)
    }

    fn validate(&self) -> Result<(), FrameError> {
        let allowed = match self.kind {
            Kind::Write => flags::FUA | flags::MEMSYNC | flags::SYNC,
            Kind::Trim => flags::FUA | flags::SYNC,
            Kind::WriteZeroes => flags::FUA | flags::SYNC | flags::MAY_TRIM,
            Kind::Read | Kind::Reply => flags::SYNC,
            _ => 0,
        };
        if self.flags & !allowed != 0 {
            return Err(FrameError::Flags {
                kind: self.kind,
                flags: self.flags,
            });
        }
        let max = self.kind.max_payload();
        if self.payload_len > max {
            return Err(FrameError::PayloadTooLarge {
                kind: self.kind,
                len: self.payload_len,
                max,
            });
        }
        let length_ok = match self.kind {
            Kind::Read | Kind::Write => self.length > 0 && self.length <= MAX_IO,
            Kind::Trim | Kind::WriteZeroes => self.length > 0,
            Kind::Reply => self.length <= MAX_IO,
            Kind::Bitmap => self.length <= MAX_BITMAP,
            _ => true,
        };
        if !length_ok {
            return Err(FrameError::Length {
                kind: self.kind,
                length: self.length,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn header_round_trips_byte_for_byte() {
        let h = Header {
            kind: Kind::Write,
            flags: flags::FUA | flags::MEMSYNC,
            transform: 0x21,
            seq: 7,
            offset: 4096,
            length: 512,
            status: 0,
            payload_len: 516,
        };
        let b = h.encode();
        assert_eq!(&b[0..4], b"HAST");
        assert_eq!(b[4], 17);
        assert_eq!(b[5], 3);
        assert_eq!(&b[8..16], &7u64.to_be_bytes());
        assert_eq!(Header::decode(&b), Ok(h));
    }

    #[test]
    fn bad_headers_are_refused() {
        let good = Header {
            length: 512,
            payload_len: 512,
            ..Header::new(Kind::Write, 1)
        }
        .encode();
        let mut b = good;
        b[0] = b'X';
        assert!(matches!(Header::decode(&b), Err(FrameError::Magic(_))));
        let mut b = good;
        b[20] ^= 1;
        assert_eq!(Header::decode(&b), Err(FrameError::HeaderChecksum));
        let reseal = |mut b: [u8; HEADER_LEN]| {
            let crc = crc32c::crc32c(&b[0..36]);
            b[36..40].copy_from_slice(&crc.to_be_bytes());
            b
        };
        let mut b = good;
        b[4] = 99;
        assert_eq!(Header::decode(&reseal(b)), Err(FrameError::Kind(99)));
        let huge = Header {
            length: 512,
            payload_len: u32::MAX,
            ..Header::new(Kind::Write, 1)
        };
        assert!(matches!(
            Header::decode(&huge.encode()),
            Err(FrameError::PayloadTooLarge { .. })
        ));
        let zero = Header {
            length: 0,
            ..Header::new(Kind::Read, 1)
        };
        assert!(matches!(
            Header::decode(&zero.encode()),
            Err(FrameError::Length { .. })
        ));
        let flagged = Header {
            flags: flags::MEMSYNC,
            ..Header::new(Kind::Flush, 1)
        };
        assert!(matches!(
            Header::decode(&flagged.encode()),
            Err(FrameError::Flags { .. })
        ));
        let keep_payload = Header {
            payload_len: 1,
            ..Header::new(Kind::Keepalive, 0)
        };
        assert!(Header::decode(&keep_payload.encode()).is_err());
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), HEADER_LEN)) {
            let mut b = [0u8; HEADER_LEN];
            b.copy_from_slice(&bytes);
            let _ = Header::decode(&b);
            // With a valid magic and checksum, only validation can refuse it.
            b[0..4].copy_from_slice(&MAGIC.to_be_bytes());
            let crc = crc32c::crc32c(&b[0..36]);
            b[36..40].copy_from_slice(&crc.to_be_bytes());
            if let Ok(h) = Header::decode(&b) {
                prop_assert!(h.payload_len <= h.kind.max_payload());
                prop_assert_eq!(Header::decode(&h.encode()), Ok(h));
            }
        }
    }
}
