//! The NBD server (to be written).
