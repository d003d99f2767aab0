//! hastctl's subcommands. Each returns the process exit code (sysexits values, or the
//! first per-resource error code for commands answered by hastd).

pub mod create;
pub mod daemon;
pub mod dump;
