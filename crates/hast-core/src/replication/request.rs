//! The requests the primary sends the secondary, typed: each frame header is built here
//! and nowhere else, and a received header becomes a [`PeerRequest`] only after it has
//! been validated once against the data size, so no other code looks at flag bits or
//! range arithmetic.

use thiserror::Error;

use crate::proto::{flags, Header, Kind};

/// A request from the primary to the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerRequest {
    /// Read `len` bytes at `offset`; `sync`: synchronisation traffic.
    Read {
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u32,
        /// Synchronisation traffic, not an application read.
        sync: bool,
    },
    /// Write the frame's payload at `offset`.
    Write {
        /// Device offset.
        offset: u64,
        /// Bytes (the payload's length).
        len: u32,
        /// Durable before the final reply.
        fua: bool,
        /// Acknowledge with `Received` as soon as the data is queued for the disk.
        memsync: bool,
        /// Synchronisation traffic, not an application write.
        sync: bool,
    },
    /// Discard `len` bytes at `offset`.
    Trim {
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u32,
        /// Durable before the final reply.
        fua: bool,
    },
    /// Make `len` bytes at `offset` read as zeroes.
    WriteZeroes {
        /// Device offset.
        offset: u64,
        /// Bytes.
        len: u32,
        /// Durable before the final reply.
        fua: bool,
        /// The range may be deallocated.
        may_trim: bool,
    },
    /// Make every completed write durable.
    Flush,
    /// Every extent owed to the secondary is synchronised (see `proto::Kind::SyncDone`);
    /// the secondary has everything the primary wrote up to its `localcnt` (sent in the
    /// header's `offset`), and records it as its `remotecnt`.
    SyncDone {
        /// The primary's `localcnt` when it sent this.
        localcnt: u64,
    },
}

/// Why a received request header cannot be a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RequestError {
    /// Not a request kind (a reply, a handshake frame, a keepalive).
    #[error("{0:?} is not a request")]
    NotARequest(Kind),
    /// The range does not fit the data area.
    #[error("{kind:?} at {offset} (+{len}) is outside the {datasize}-byte data area")]
    OutOfRange {
        /// Frame kind.
        kind: Kind,
        /// Offset asked for.
        offset: u64,
        /// Length asked for.
        len: u32,
        /// Size of the data area.
        datasize: u64,
    },
    /// A WRITE whose payload does not have the announced length.
    #[error("WRITE of {len} bytes came with {got} bytes of data")]
    Payload {
        /// Announced length.
        len: u32,
        /// Bytes received.
        got: usize,
    },
}

impl PeerRequest {
    /// The frame header for this request with sequence number `seq`. The payload (WRITE
    /// data) and its transform are the sender's business.
    pub fn header(&self, seq: u64) -> Header {
        let (kind, offset, length, fl) = match *self {
            PeerRequest::Read { offset, len, sync } => {
                (Kind::Read, offset, len, bit(sync, flags::SYNC))
            }
            PeerRequest::Write {
                offset,
                len,
                fua,
                memsync,
                sync,
            } => (
                Kind::Write,
                offset,
                len,
                bit(fua, flags::FUA) | bit(memsync, flags::MEMSYNC) | bit(sync, flags::SYNC),
            ),
            PeerRequest::Trim { offset, len, fua } => {
                (Kind::Trim, offset, len, bit(fua, flags::FUA))
            }
            PeerRequest::WriteZeroes {
                offset,
                len,
                fua,
                may_trim,
            } => (
                Kind::WriteZeroes,
                offset,
                len,
                bit(fua, flags::FUA) | bit(may_trim, flags::MAY_TRIM),
            ),
            PeerRequest::Flush => (Kind::Flush, 0, 0, 0),
            PeerRequest::SyncDone { localcnt } => (Kind::SyncDone, localcnt, 0, 0),
        };
        Header {
            flags: fl,
            offset,
            length,
            ..Header::new(kind, seq)
        }
    }

    /// The request a received (already frame-validated) header asks for, checked against
    /// the secondary's data area. `payload_len` is the decoded WRITE data's length.
    pub fn from_header(
        h: &Header,
        datasize: u64,
        payload_len: usize,
    ) -> Result<PeerRequest, RequestError> {
        let fua = h.flags & flags::FUA != 0;
        let (offset, len) = (h.offset, h.length);
        let req = match h.kind {
            Kind::Read => PeerRequest::Read {
                offset,
                len,
                sync: h.flags & flags::SYNC != 0,
            },
            Kind::Write => {
                if payload_len != len as usize {
                    return Err(RequestError::Payload {
                        len,
                        got: payload_len,
                    });
                }
                PeerRequest::Write {
                    offset,
                    len,
                    fua,
                    memsync: h.flags & flags::MEMSYNC != 0,
                    sync: h.flags & flags::SYNC != 0,
                }
            }
            Kind::Trim => PeerRequest::Trim { offset, len, fua },
            Kind::WriteZeroes => PeerRequest::WriteZeroes {
                offset,
                len,
                fua,
                may_trim: h.flags & flags::MAY_TRIM != 0,
            },
            Kind::Flush => PeerRequest::Flush,
            Kind::SyncDone => PeerRequest::SyncDone { localcnt: offset },
            other => return Err(RequestError::NotARequest(other)),
        };
        if let Some((offset, len)) = req.range() {
            if offset
                .checked_add(u64::from(len))
                .is_none_or(|end| end > datasize)
            {
                return Err(RequestError::OutOfRange {
                    kind: h.kind,
                    offset,
                    len,
                    datasize,
                });
            }
        }
        Ok(req)
    }

    /// The byte range the request touches, if any.
    pub fn range(&self) -> Option<(u64, u32)> {
        match *self {
            PeerRequest::Read { offset, len, .. }
            | PeerRequest::Write { offset, len, .. }
            | PeerRequest::Trim { offset, len, .. }
            | PeerRequest::WriteZeroes { offset, len, .. } => Some((offset, len)),
            PeerRequest::Flush | PeerRequest::SyncDone { .. } => None,
        }
    }

    /// Whether it changes data (a failure of it makes the secondary's copy incomplete).
    pub fn modifies(&self) -> bool {
        matches!(
            self,
            PeerRequest::Write { .. } | PeerRequest::Trim { .. } | PeerRequest::WriteZeroes { .. }
        )
    }

    /// Whether the secondary must make it durable before its final reply.
    pub fn needs_flush(&self) -> bool {
        match *self {
            PeerRequest::Write { fua, .. }
            | PeerRequest::Trim { fua, .. }
            | PeerRequest::WriteZeroes { fua, .. } => fua,
            PeerRequest::Flush => true,
            PeerRequest::Read { .. } | PeerRequest::SyncDone { .. } => false,
        }
    }

    /// Bytes of data the frame carries (WRITE payload).
    pub fn payload_len(&self) -> u32 {
        match *self {
            PeerRequest::Write { len, .. } => len,
            _ => 0,
        }
    }
}

fn bit(on: bool, flag: u8) -> u8 {
    if on {
        flag
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(offset: u64, len: u32) -> Vec<PeerRequest> {
        let mut v = vec![
            PeerRequest::Flush,
            PeerRequest::SyncDone { localcnt: offset },
        ];
        for a in [false, true] {
            for b in [false, true] {
                v.push(PeerRequest::Read {
                    offset,
                    len,
                    sync: a,
                });
                v.push(PeerRequest::Trim {
                    offset,
                    len,
                    fua: a,
                });
                v.push(PeerRequest::WriteZeroes {
                    offset,
                    len,
                    fua: a,
                    may_trim: b,
                });
                for c in [false, true] {
                    v.push(PeerRequest::Write {
                        offset,
                        len,
                        fua: a,
                        memsync: b,
                        sync: c,
                    });
                }
            }
        }
        v
    }

    #[test]
    fn every_request_round_trips_through_a_validated_header() {
        for req in all(4096, 512) {
            let h = req.header(9);
            let bytes = h.encode();
            let back = Header::decode(&bytes).unwrap();
            assert_eq!(back.seq, 9);
            let payload = req.payload_len() as usize;
            assert_eq!(PeerRequest::from_header(&back, 1 << 20, payload), Ok(req));
        }
    }

    #[test]
    fn ranges_outside_the_data_area_and_short_payloads_are_refused() {
        let write = PeerRequest::Write {
            offset: (1 << 20) - 512,
            len: 1024,
            fua: false,
            memsync: false,
            sync: false,
        };
        let h = write.header(1);
        assert!(matches!(
            PeerRequest::from_header(&h, 1 << 20, 1024),
            Err(RequestError::OutOfRange { .. })
        ));
        let ok = PeerRequest::Write {
            offset: 0,
            len: 1024,
            fua: false,
            memsync: false,
            sync: false,
        };
        let h = ok.header(1);
        assert_eq!(
            PeerRequest::from_header(&h, 1 << 20, 10),
            Err(RequestError::Payload { len: 1024, got: 10 })
        );
        let trim = PeerRequest::Trim {
            offset: u64::MAX - 10,
            len: 100,
            fua: false,
        };
        assert!(PeerRequest::from_header(&trim.header(1), u64::MAX, 0).is_err());
        let reply = Header::new(Kind::Reply, 3);
        assert_eq!(
            PeerRequest::from_header(&reply, 1 << 20, 0),
            Err(RequestError::NotARequest(Kind::Reply))
        );
    }
}
