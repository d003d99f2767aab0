//! hastctl's subcommands. Each returns the process exit code (sysexits values).

pub mod create;
pub mod dump;
