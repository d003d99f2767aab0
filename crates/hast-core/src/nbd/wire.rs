//! NBD wire constants and the fixed-size messages of both phases.
//!
//! All integers are big-endian. Names follow the spec (`NBD_OPT_GO` becomes
//! [`opt::GO`]) so that a reader can grep proto.md for them.

/// `NBDMAGIC`, first 8 bytes of the server greeting.
pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
/// `IHAVEOPT`, second 8 bytes of the greeting and the prefix of every option.
pub const IHAVEOPT: u64 = 0x4948_4156_454f_5054;
/// Prefix of every option reply.
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
/// Prefix of every transmission request.
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
/// Prefix of every simple reply.
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

/// Length of the server greeting (two magics and the handshake flags).
pub const GREETING_LEN: usize = 18;
/// Length of the client flags word.
pub const CLIENT_FLAGS_LEN: usize = 4;
/// Length of an option header (magic, option, payload length).
pub const OPTION_HEADER_LEN: usize = 16;
/// Length of a transmission request header.
pub const REQUEST_LEN: usize = 28;
/// Length of a simple reply header (the data of a READ follows it).
pub const SIMPLE_REPLY_LEN: usize = 16;

/// Handshake flags the server sends (16 bits).
pub mod handshake_flags {
    /// The server speaks fixed newstyle.
    pub const FIXED_NEWSTYLE: u16 = 1 << 0;
    /// The server can omit the 124 zero bytes after `NBD_OPT_EXPORT_NAME`.
    pub const NO_ZEROES: u16 = 1 << 1;
}

/// Client flags (32 bits), answering the handshake flags.
pub mod client_flags {
    /// The client speaks fixed newstyle.
    pub const FIXED_NEWSTYLE: u32 = 1 << 0;
    /// The client does not want the 124 zero bytes.
    pub const NO_ZEROES: u32 = 1 << 1;
    /// Every flag this server understands; any other bit ends the connection.
    pub const KNOWN: u32 = FIXED_NEWSTYLE | NO_ZEROES;
}

/// Option numbers (`NBD_OPT_*`).
pub mod opt {
    /// Pick an export and enter transmission (legacy, cannot fail politely).
    pub const EXPORT_NAME: u32 = 1;
    /// End negotiation.
    pub const ABORT: u32 = 2;
    /// List exports.
    pub const LIST: u32 = 3;
    /// Upgrade to TLS.
    pub const STARTTLS: u32 = 5;
    /// Describe an export without entering transmission.
    pub const INFO: u32 = 6;
    /// Describe an export and enter transmission.
    pub const GO: u32 = 7;
    /// Ask for structured replies.
    pub const STRUCTURED_REPLY: u32 = 8;
    /// List metadata contexts.
    pub const LIST_META_CONTEXT: u32 = 9;
    /// Select metadata contexts.
    pub const SET_META_CONTEXT: u32 = 10;
    /// Ask for 64-bit extended headers.
    pub const EXTENDED_HEADERS: u32 = 11;
}

/// Option reply types (`NBD_REP_*`); errors have bit 31 set.
pub mod rep {
    /// Option done.
    pub const ACK: u32 = 1;
    /// One export, in answer to `NBD_OPT_LIST`.
    pub const SERVER: u32 = 2;
    /// One `NBD_INFO_*` item, in answer to INFO or GO.
    pub const INFO: u32 = 3;
    /// Option unknown to this server.
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    /// Option known but forbidden by policy.
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    /// Option payload malformed.
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    /// Not supported on this platform.
    pub const ERR_PLATFORM: u32 = (1 << 31) + 4;
    /// TLS required first.
    pub const ERR_TLS_REQD: u32 = (1 << 31) + 5;
    /// No such export.
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    /// Server shutting down.
    pub const ERR_SHUTDOWN: u32 = (1 << 31) + 7;
    /// Client must ask for block sizes.
    pub const ERR_BLOCK_SIZE_REQD: u32 = (1 << 31) + 8;
    /// Option (or its reply) too large.
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// Information item types for INFO and GO (`NBD_INFO_*`).
pub mod info {
    /// Size and transmission flags (always sent).
    pub const EXPORT: u16 = 0;
    /// Canonical export name.
    pub const NAME: u16 = 1;
    /// Human-readable description.
    pub const DESCRIPTION: u16 = 2;
    /// Minimum, preferred and maximum block sizes.
    pub const BLOCK_SIZE: u16 = 3;
}

/// Transmission flags (16 bits, `NBD_FLAG_*`).
pub mod tflags {
    /// Always set.
    pub const HAS_FLAGS: u16 = 1 << 0;
    /// Writes will fail with EPERM.
    pub const READ_ONLY: u16 = 1 << 1;
    /// `NBD_CMD_FLUSH` is supported.
    pub const SEND_FLUSH: u16 = 1 << 2;
    /// `NBD_CMD_FLAG_FUA` is supported.
    pub const SEND_FUA: u16 = 1 << 3;
    /// Rotational medium hint.
    pub const ROTATIONAL: u16 = 1 << 4;
    /// `NBD_CMD_TRIM` is supported.
    pub const SEND_TRIM: u16 = 1 << 5;
    /// `NBD_CMD_WRITE_ZEROES` is supported.
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    /// `NBD_CMD_FLAG_DF` is supported (structured replies only).
    pub const SEND_DF: u16 = 1 << 7;
    /// FLUSH and FUA are visible across all connections to the export.
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    /// `NBD_CMD_CACHE` is supported.
    pub const SEND_CACHE: u16 = 1 << 10;
    /// `NBD_CMD_FLAG_FAST_ZERO` is supported.
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Command types (`NBD_CMD_*`).
pub mod cmd {
    /// Read.
    pub const READ: u16 = 0;
    /// Write, payload follows the header.
    pub const WRITE: u16 = 1;
    /// Disconnect, no reply.
    pub const DISC: u16 = 2;
    /// Flush.
    pub const FLUSH: u16 = 3;
    /// Discard.
    pub const TRIM: u16 = 4;
    /// Prefetch.
    pub const CACHE: u16 = 5;
    /// Write zeroes.
    pub const WRITE_ZEROES: u16 = 6;
    /// Block status (structured replies only).
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags (`NBD_CMD_FLAG_*`).
pub mod cmd_flags {
    /// Force unit access: persist before replying.
    pub const FUA: u16 = 1 << 0;
    /// WRITE_ZEROES must not punch a hole.
    pub const NO_HOLE: u16 = 1 << 1;
    /// READ must not fragment (structured replies only).
    pub const DF: u16 = 1 << 2;
    /// BLOCK_STATUS: one extent only.
    pub const REQ_ONE: u16 = 1 << 3;
    /// WRITE_ZEROES only if fast.
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// The error values a reply may carry. The spec restricts them to this set, whatever the
/// host's errno numbering; see [`NbdErrno::from_os_errno`] for the mapping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum NbdErrno {
    /// Operation not permitted (writes to a read-only export).
    Eperm = 1,
    /// Input/output error.
    Eio = 5,
    /// Out of memory (the spec asks servers to avoid it).
    Enomem = 12,
    /// Invalid argument (bad command, flags, range or alignment).
    Einval = 22,
    /// No space (writes past the end of the export).
    Enospc = 28,
    /// Value too large.
    Eoverflow = 75,
    /// Operation not supported (e.g. a fast zero that would be slow).
    Enotsup = 95,
    /// Server shutting down.
    Eshutdown = 108,
}

impl NbdErrno {
    /// The value on the wire.
    pub fn code(self) -> u32 {
        self as u32
    }

    /// Maps a Linux errno to the closest value the protocol allows, as the spec asks
    /// (EDQUOT and EFBIG become ENOSPC; EROFS and EACCES become EPERM); anything not
    /// listed is EIO.
    pub fn from_os_errno(errno: i32) -> NbdErrno {
        match errno {
            1 | 13 | 30 => NbdErrno::Eperm,    // EPERM, EACCES, EROFS
            12 => NbdErrno::Enomem,            // ENOMEM
            22 => NbdErrno::Einval,            // EINVAL
            27 | 28 | 122 => NbdErrno::Enospc, // EFBIG, ENOSPC, EDQUOT
            75 => NbdErrno::Eoverflow,         // EOVERFLOW
            95 => NbdErrno::Enotsup,           // EOPNOTSUPP == ENOTSUP on Linux
            108 => NbdErrno::Eshutdown,        // ESHUTDOWN
            _ => NbdErrno::Eio,
        }
    }
}

impl std::fmt::Display for NbdErrno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self {
            NbdErrno::Eperm => "EPERM",
            NbdErrno::Eio => "EIO",
            NbdErrno::Enomem => "ENOMEM",
            NbdErrno::Einval => "EINVAL",
            NbdErrno::Enospc => "ENOSPC",
            NbdErrno::Eoverflow => "EOVERFLOW",
            NbdErrno::Enotsup => "ENOTSUP",
            NbdErrno::Eshutdown => "ESHUTDOWN",
        };
        f.write_str(name)
    }
}

/// The server greeting: `NBDMAGIC`, `IHAVEOPT`, handshake flags (fixed newstyle and
/// no-zeroes).
pub fn greeting() -> [u8; GREETING_LEN] {
    let mut out = [0u8; GREETING_LEN];
    out[0..8].copy_from_slice(&NBDMAGIC.to_be_bytes());
    out[8..16].copy_from_slice(&IHAVEOPT.to_be_bytes());
    let flags = handshake_flags::FIXED_NEWSTYLE | handshake_flags::NO_ZEROES;
    out[16..18].copy_from_slice(&flags.to_be_bytes());
    out
}

/// Appends one option reply (`magic, option, type, length, payload`) to `out`.
pub fn put_option_reply(out: &mut Vec<u8>, option: u32, reply_type: u32, payload: &[u8]) {
    out.extend_from_slice(&OPTION_REPLY_MAGIC.to_be_bytes());
    out.extend_from_slice(&option.to_be_bytes());
    out.extend_from_slice(&reply_type.to_be_bytes());
    // Payloads are built by this module and bounded far below 4 GiB.
    let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The answer to `NBD_OPT_EXPORT_NAME`: size, transmission flags, and 124 zero bytes
/// unless the client asked for no zeroes.
pub fn export_name_reply(size: u64, flags: u16, no_zeroes: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(10 + 124);
    out.extend_from_slice(&size.to_be_bytes());
    out.extend_from_slice(&flags.to_be_bytes());
    if !no_zeroes {
        out.resize(out.len() + 124, 0);
    }
    out
}

/// A simple reply header. For a successful READ the data follows it.
pub fn simple_reply(error: Option<NbdErrno>, cookie: u64) -> [u8; SIMPLE_REPLY_LEN] {
    let mut out = [0u8; SIMPLE_REPLY_LEN];
    out[0..4].copy_from_slice(&SIMPLE_REPLY_MAGIC.to_be_bytes());
    out[4..8].copy_from_slice(&error.map_or(0, NbdErrno::code).to_be_bytes());
    out[8..16].copy_from_slice(&cookie.to_be_bytes());
    out
}

/// A transmission request header as read from the wire, not yet validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// Command flags (`NBD_CMD_FLAG_*`).
    pub flags: u16,
    /// Command type (`NBD_CMD_*`).
    pub command: u16,
    /// Opaque value echoed in the reply.
    pub cookie: u64,
    /// Byte offset into the export.
    pub offset: u64,
    /// Byte length (for WRITE, the payload that follows).
    pub length: u32,
}

/// The request magic was wrong: the stream is out of step and cannot be trusted again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad request magic {0:#010x}")]
pub struct BadRequestMagic(pub u32);

impl RequestHeader {
    /// Parses the 28-byte header.
    pub fn parse(buf: &[u8; REQUEST_LEN]) -> Result<RequestHeader, BadRequestMagic> {
        let magic = be_u32(buf, 0);
        if magic != REQUEST_MAGIC {
            return Err(BadRequestMagic(magic));
        }
        Ok(RequestHeader {
            flags: be_u16(buf, 4),
            command: be_u16(buf, 6),
            cookie: be_u64(buf, 8),
            offset: be_u64(buf, 16),
            length: be_u32(buf, 24),
        })
    }

    /// Encodes the header (what a client sends); used by tests and tools.
    pub fn encode(&self) -> [u8; REQUEST_LEN] {
        let mut out = [0u8; REQUEST_LEN];
        out[0..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        out[4..6].copy_from_slice(&self.flags.to_be_bytes());
        out[6..8].copy_from_slice(&self.command.to_be_bytes());
        out[8..16].copy_from_slice(&self.cookie.to_be_bytes());
        out[16..24].copy_from_slice(&self.offset.to_be_bytes());
        out[24..28].copy_from_slice(&self.length.to_be_bytes());
        out
    }
}

// The readers below take fixed positions inside buffers whose length the caller has
// already checked; a short slice yields zeroes rather than a panic.
pub(crate) fn be_u16(buf: &[u8], at: usize) -> u16 {
    let mut b = [0u8; 2];
    if let Some(s) = buf.get(at..at + 2) {
        b.copy_from_slice(s);
    }
    u16::from_be_bytes(b)
}

pub(crate) fn be_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    if let Some(s) = buf.get(at..at + 4) {
        b.copy_from_slice(s);
    }
    u32::from_be_bytes(b)
}

pub(crate) fn be_u64(buf: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    if let Some(s) = buf.get(at..at + 8) {
        b.copy_from_slice(s);
    }
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting_bytes() {
        assert_eq!(
            greeting(),
            [
                b'N', b'B', b'D', b'M', b'A', b'G', b'I', b'C', b'I', b'H', b'A', b'V', b'E', b'O',
                b'P', b'T', 0x00, 0x03
            ]
        );
    }

    #[test]
    fn option_reply_bytes() {
        let mut out = Vec::new();
        put_option_reply(&mut out, opt::LIST, rep::SERVER, b"ab");
        assert_eq!(
            out,
            [
                0x00, 0x03, 0xe8, 0x89, 0x04, 0x55, 0x65, 0xa9, // magic
                0, 0, 0, 3, // option
                0, 0, 0, 2, // reply type
                0, 0, 0, 2, // length
                b'a', b'b'
            ]
        );
    }

    #[test]
    fn export_name_reply_with_and_without_zeroes() {
        let with = export_name_reply(0x0102_0304_0506_0708, 0x010d, false);
        assert_eq!(with.len(), 8 + 2 + 124);
        assert_eq!(&with[..10], &[1, 2, 3, 4, 5, 6, 7, 8, 0x01, 0x0d]);
        assert!(with[10..].iter().all(|&b| b == 0));
        let without = export_name_reply(0x0102_0304_0506_0708, 0x010d, true);
        assert_eq!(without, [1, 2, 3, 4, 5, 6, 7, 8, 0x01, 0x0d]);
    }

    #[test]
    fn simple_reply_bytes() {
        assert_eq!(
            simple_reply(None, 0x1122_3344_5566_7788),
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 0, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88]
        );
        assert_eq!(
            simple_reply(Some(NbdErrno::Enospc), 1),
            [0x67, 0x44, 0x66, 0x98, 0, 0, 0, 28, 0, 0, 0, 0, 0, 0, 0, 1]
        );
    }

    #[test]
    fn request_parse_and_encode() {
        let bytes: [u8; REQUEST_LEN] = [
            0x25, 0x60, 0x95, 0x13, // magic
            0x00, 0x01, // flags: FUA
            0x00, 0x01, // WRITE
            0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 7, // cookie
            0, 0, 0, 0, 0, 0, 0x10, 0, // offset 4096
            0, 0, 0x02, 0, // length 512
        ];
        let h = RequestHeader::parse(&bytes).unwrap();
        assert_eq!(
            h,
            RequestHeader {
                flags: cmd_flags::FUA,
                command: cmd::WRITE,
                cookie: 0xdead_beef_0000_0007,
                offset: 4096,
                length: 512
            }
        );
        assert_eq!(h.encode(), bytes);
        let mut bad = bytes;
        bad[0] = 0;
        assert_eq!(
            RequestHeader::parse(&bad),
            Err(BadRequestMagic(0x0060_9513))
        );
    }

    #[test]
    fn errno_mapping() {
        assert_eq!(NbdErrno::from_os_errno(122), NbdErrno::Enospc);
        assert_eq!(NbdErrno::from_os_errno(27), NbdErrno::Enospc);
        assert_eq!(NbdErrno::from_os_errno(30), NbdErrno::Eperm);
        assert_eq!(NbdErrno::from_os_errno(4), NbdErrno::Eio);
        assert_eq!(NbdErrno::Eshutdown.code(), 108);
    }
}
