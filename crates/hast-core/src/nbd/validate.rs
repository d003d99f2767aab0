//! Request validation: one flat function that checks a request against the export
//! before any I/O, and says what to do with it (after nbdkit's `validate_request`).
//!
//! A bad request becomes an error reply, never a dropped connection, with one exception:
//! a WRITE whose payload is larger than we advertised. Its data is already on the wire and
//! must be consumed to stay in step, but consuming up to 4 GiB for a client that broke its
//! promise is a denial-of-service lever, so the connection is closed instead (the spec
//! allows a hard disconnect on a violated MUST).

use super::export::ExportInfo;
use super::wire::{cmd, cmd_flags, NbdErrno, RequestHeader};

/// A validated command, ready for the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Read `length` bytes at `offset`.
    Read {
        /// Byte offset.
        offset: u64,
        /// Byte count (≤ max payload; may be 0).
        length: u32,
    },
    /// Write the `length`-byte payload that follows the header.
    Write {
        /// Byte offset.
        offset: u64,
        /// Byte count (≤ max payload; may be 0).
        length: u32,
        /// Persist before replying.
        fua: bool,
    },
    /// Finish in-flight requests, then close. No reply.
    Disconnect,
    /// Persist every write already replied to.
    Flush,
    /// Discard a range (a hint).
    Trim {
        /// Byte offset.
        offset: u64,
        /// Byte count (may be 0).
        length: u32,
        /// Persist before replying.
        fua: bool,
    },
    /// Make a range read as zeroes.
    WriteZeroes {
        /// Byte offset.
        offset: u64,
        /// Byte count (may be 0).
        length: u32,
        /// The backend may punch a hole (`NBD_CMD_FLAG_NO_HOLE` was not set).
        may_trim: bool,
        /// Persist before replying.
        fua: bool,
    },
}

/// The decision on one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Carry it out.
    Execute(Command),
    /// Reply with this error without touching the backend, after reading and dropping
    /// `discard` payload bytes (non-zero only for a rejected WRITE).
    Reject {
        /// The error to reply with.
        errno: NbdErrno,
        /// Payload bytes to consume first.
        discard: u32,
    },
    /// Close the connection: the request's payload is larger than we promised to read.
    Close {
        /// The offending WRITE length.
        length: u32,
    },
}

/// Checks everything about `req` against `export` and the flags we advertised for it:
/// command known and offered, flags known and valid for the command, write access,
/// payload size, range (ENOSPC for writes past the end, EINVAL otherwise, as the spec
/// says) and alignment to the minimum block size.
pub fn validate(req: &RequestHeader, export: &ExportInfo) -> Verdict {
    let (min_block, _, max_payload) = export.block_sizes();
    let is_write = req.command == cmd::WRITE;
    if is_write && req.length > max_payload {
        return Verdict::Close { length: req.length };
    }
    let reject = |errno| Verdict::Reject {
        errno,
        discard: if is_write { req.length } else { 0 },
    };

    // FUA is valid on every command once SEND_FUA is advertised (which we always do).
    let allowed_flags = match req.command {
        cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM => cmd_flags::FUA,
        cmd::WRITE_ZEROES => cmd_flags::FUA | cmd_flags::NO_HOLE,
        cmd::DISC => return Verdict::Execute(Command::Disconnect),
        _ => return reject(NbdErrno::Einval),
    };
    if req.flags & !allowed_flags != 0 {
        return reject(NbdErrno::Einval);
    }
    let fua = req.flags & cmd_flags::FUA != 0;
    let write_like = matches!(req.command, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if write_like && export.read_only {
        return reject(NbdErrno::Eperm);
    }
    if (req.command == cmd::TRIM && !export.can_trim)
        || (req.command == cmd::WRITE_ZEROES && !export.can_zero)
    {
        return reject(NbdErrno::Einval);
    }
    if req.command == cmd::FLUSH {
        return if req.offset == 0 && req.length == 0 {
            Verdict::Execute(Command::Flush)
        } else {
            reject(NbdErrno::Einval)
        };
    }
    if req.command == cmd::READ && req.length > max_payload {
        return reject(NbdErrno::Einval);
    }
    let in_range = req
        .offset
        .checked_add(u64::from(req.length))
        .is_some_and(|end| end <= export.size);
    if !in_range {
        let past_end = if matches!(req.command, cmd::WRITE | cmd::WRITE_ZEROES) {
            NbdErrno::Enospc
        } else {
            NbdErrno::Einval
        };
        return reject(past_end);
    }
    let min = u64::from(min_block);
    if min > 1 && (!req.offset.is_multiple_of(min) || u64::from(req.length) % min != 0) {
        return reject(NbdErrno::Einval);
    }

    let (offset, length) = (req.offset, req.length);
    Verdict::Execute(match req.command {
        cmd::READ => Command::Read { offset, length },
        cmd::WRITE => Command::Write {
            offset,
            length,
            fua,
        },
        cmd::TRIM => Command::Trim {
            offset,
            length,
            fua,
        },
        _ => Command::WriteZeroes {
            offset,
            length,
            may_trim: req.flags & cmd_flags::NO_HOLE == 0,
            fua,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nbd::export::MAX_PAYLOAD;

    fn req(command: u16, flags: u16, offset: u64, length: u32) -> RequestHeader {
        RequestHeader {
            flags,
            command,
            cookie: 9,
            offset,
            length,
        }
    }

    fn rw() -> ExportInfo {
        ExportInfo::new(1 << 20)
    }

    fn rejected(errno: NbdErrno, discard: u32) -> Verdict {
        Verdict::Reject { errno, discard }
    }

    #[test]
    fn accepts_ordinary_commands() {
        let e = rw();
        assert_eq!(
            validate(&req(cmd::READ, 0, 0, 4096), &e),
            Verdict::Execute(Command::Read {
                offset: 0,
                length: 4096
            })
        );
        assert_eq!(
            validate(&req(cmd::WRITE, cmd_flags::FUA, 1, 3), &e),
            Verdict::Execute(Command::Write {
                offset: 1,
                length: 3,
                fua: true
            })
        );
        assert_eq!(
            validate(&req(cmd::FLUSH, 0, 0, 0), &e),
            Verdict::Execute(Command::Flush)
        );
        assert_eq!(
            validate(&req(cmd::WRITE_ZEROES, cmd_flags::NO_HOLE, 512, 512), &e),
            Verdict::Execute(Command::WriteZeroes {
                offset: 512,
                length: 512,
                may_trim: false,
                fua: false
            })
        );
        assert_eq!(
            validate(&req(cmd::TRIM, 0, (1 << 20) - 1, 1), &e),
            Verdict::Execute(Command::Trim {
                offset: (1 << 20) - 1,
                length: 1,
                fua: false
            })
        );
        assert_eq!(
            validate(&req(cmd::DISC, 0xffff, 5, 5), &e),
            Verdict::Execute(Command::Disconnect)
        );
    }

    #[test]
    fn zero_length_is_allowed_up_to_the_end() {
        let e = rw();
        assert_eq!(
            validate(&req(cmd::READ, 0, 1 << 20, 0), &e),
            Verdict::Execute(Command::Read {
                offset: 1 << 20,
                length: 0
            })
        );
        assert_eq!(
            validate(&req(cmd::READ, 0, (1 << 20) + 1, 0), &e),
            rejected(NbdErrno::Einval, 0)
        );
    }

    #[test]
    fn unknown_commands_and_flags_are_einval() {
        let e = rw();
        for c in [cmd::CACHE, cmd::BLOCK_STATUS, 8, 0xffff] {
            assert_eq!(
                validate(&req(c, 0, 0, 1), &e),
                rejected(NbdErrno::Einval, 0)
            );
        }
        assert_eq!(
            validate(&req(cmd::READ, cmd_flags::DF, 0, 1), &e),
            rejected(NbdErrno::Einval, 0)
        );
        assert_eq!(
            validate(&req(cmd::WRITE, cmd_flags::NO_HOLE, 0, 7), &e),
            rejected(NbdErrno::Einval, 7)
        );
        assert_eq!(
            validate(&req(cmd::WRITE_ZEROES, cmd_flags::FAST_ZERO, 0, 7), &e),
            rejected(NbdErrno::Einval, 0)
        );
        assert_eq!(
            validate(&req(cmd::FLUSH, 0, 1, 0), &e),
            rejected(NbdErrno::Einval, 0)
        );
    }

    #[test]
    fn past_the_end_is_enospc_for_writes_einval_otherwise() {
        let e = rw();
        let end = 1u64 << 20;
        assert_eq!(
            validate(&req(cmd::WRITE, 0, end, 1), &e),
            rejected(NbdErrno::Enospc, 1)
        );
        assert_eq!(
            validate(&req(cmd::WRITE_ZEROES, 0, end - 1, 2), &e),
            rejected(NbdErrno::Enospc, 0)
        );
        assert_eq!(
            validate(&req(cmd::READ, 0, end - 1, 2), &e),
            rejected(NbdErrno::Einval, 0)
        );
        assert_eq!(
            validate(&req(cmd::TRIM, 0, u64::MAX, 2), &e),
            rejected(NbdErrno::Einval, 0)
        );
        assert_eq!(
            validate(&req(cmd::WRITE, 0, u64::MAX, 2), &e),
            rejected(NbdErrno::Enospc, 2)
        );
    }

    #[test]
    fn read_only_is_eperm_and_discards_the_payload() {
        let mut e = rw();
        e.read_only = true;
        assert_eq!(
            validate(&req(cmd::WRITE, 0, 0, 10), &e),
            rejected(NbdErrno::Eperm, 10)
        );
        assert_eq!(
            validate(&req(cmd::TRIM, 0, 0, 10), &e),
            rejected(NbdErrno::Eperm, 0)
        );
        assert_eq!(
            validate(&req(cmd::READ, 0, 0, 10), &e),
            Verdict::Execute(Command::Read {
                offset: 0,
                length: 10
            })
        );
    }

    #[test]
    fn oversized_payloads() {
        let mut e = rw();
        e.size = u64::MAX;
        assert_eq!(
            validate(&req(cmd::WRITE, 0, 0, 1 << 31), &e),
            Verdict::Close { length: 1 << 31 }
        );
        assert_eq!(
            validate(&req(cmd::READ, 0, 0, MAX_PAYLOAD + 1), &e),
            rejected(NbdErrno::Einval, 0)
        );
        assert!(matches!(
            validate(&req(cmd::WRITE, 0, 0, MAX_PAYLOAD), &e),
            Verdict::Execute(_)
        ));
        // TRIM and WRITE_ZEROES carry no payload, so they are not bounded by it.
        assert!(matches!(
            validate(&req(cmd::TRIM, 0, 0, u32::MAX), &e),
            Verdict::Execute(_)
        ));
    }

    #[test]
    fn alignment_when_min_block_above_one() {
        let mut e = rw();
        e.min_block = 512;
        assert_eq!(
            validate(&req(cmd::READ, 0, 1, 512), &e),
            rejected(NbdErrno::Einval, 0)
        );
        assert_eq!(
            validate(&req(cmd::WRITE, 0, 512, 100), &e),
            rejected(NbdErrno::Einval, 100)
        );
        assert!(matches!(
            validate(&req(cmd::READ, 0, 1024, 512), &e),
            Verdict::Execute(_)
        ));
    }

    #[test]
    fn unadvertised_trim_and_zero_are_einval() {
        let mut e = rw();
        e.can_trim = false;
        e.can_zero = false;
        assert_eq!(
            validate(&req(cmd::TRIM, 0, 0, 1), &e),
            rejected(NbdErrno::Einval, 0)
        );
        assert_eq!(
            validate(&req(cmd::WRITE_ZEROES, 0, 0, 1), &e),
            rejected(NbdErrno::Einval, 0)
        );
    }
}
