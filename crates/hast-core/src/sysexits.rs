//! Exit codes of hastd and hastctl: FreeBSD's sysexits(3) values, so that scripts written
//! for FreeBSD's HAST keep working (hast-reference.md §3.6).

/// Success.
pub const EX_OK: u8 = 0;
/// Command line usage error.
pub const EX_USAGE: u8 = 64;
/// Bad input data (unknown resource, invalid create parameters, corrupt metadata).
pub const EX_DATAERR: u8 = 65;
/// Cannot open an input (the provider).
pub const EX_NOINPUT: u8 = 66;
/// The daemon is not answering.
pub const EX_UNAVAILABLE: u8 = 69;
/// Internal software error, or the daemon reported a request-level error.
pub const EX_SOFTWARE: u8 = 70;
/// Operating-system error (sockets, fork).
pub const EX_OSERR: u8 = 71;
/// A system file (the config file) cannot be opened.
pub const EX_OSFILE: u8 = 72;
/// Input/output error on the provider.
pub const EX_IOERR: u8 = 74;
/// Temporary failure (out of memory, another hastd running).
pub const EX_TEMPFAIL: u8 = 75;
/// Configuration error.
pub const EX_CONFIG: u8 = 78;
