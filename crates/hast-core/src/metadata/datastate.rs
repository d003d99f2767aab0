//! What a node knows to be wrong with its own copy of the data, persisted in the metadata
//! header (version 2's `flags`) so that a restart cannot forget it.
//!
//! Both flags mean the same thing to everyone else: *this copy lacks writes that the other
//! node has*, so it must not become the only copy served (role primary refuses unless
//! forced) and must not be the source of a synchronisation. They differ only in how the
//! node got there, which is what the operator needs to be told:
//!
//! - [`DataState::SYNC_TARGET`]: a synchronisation *towards* this node started and has not
//!   finished (the other side has the good data). Set before the first byte of the sync
//!   can arrive; cleared when the primary reports the sync complete.
//! - [`DataState::WRITE_FAILED`]: as secondary, this node failed to apply a write it had
//!   already acknowledged as received (memsync), or failed a flush, so writes the primary
//!   acknowledged may be missing here. Set before the failure is reported; cleared like the
//!   other, by a complete synchronisation.

use std::fmt;

/// A node's knowledge of its own data (the metadata `flags` field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct DataState(u16);

impl DataState {
    /// Nothing known to be missing.
    pub const CONSISTENT: DataState = DataState(0);
    /// Bit: the target of an unfinished synchronisation.
    pub const SYNC_TARGET: u16 = 1 << 0;
    /// Bit: a write or flush from the primary failed here.
    pub const WRITE_FAILED: u16 = 1 << 1;
    /// Every bit this version understands; others make the header unreadable.
    pub const KNOWN: u16 = DataState::SYNC_TARGET | DataState::WRITE_FAILED;

    /// The state with these bits, or `None` if a bit is not understood.
    pub fn from_bits(bits: u16) -> Option<DataState> {
        (bits & !DataState::KNOWN == 0).then_some(DataState(bits))
    }

    /// The raw flags.
    pub fn bits(self) -> u16 {
        self.0
    }

    /// Whether nothing is known to be missing from this copy.
    pub fn is_consistent(self) -> bool {
        self.0 == 0
    }

    /// Whether an unfinished synchronisation targets this copy.
    pub fn is_sync_target(self) -> bool {
        self.0 & DataState::SYNC_TARGET != 0
    }

    /// Whether a write or flush from the primary failed here.
    pub fn write_failed(self) -> bool {
        self.0 & DataState::WRITE_FAILED != 0
    }

    /// This state with `bit` set.
    pub fn with(self, bit: u16) -> DataState {
        DataState(self.0 | (bit & DataState::KNOWN))
    }
}

impl fmt::Display for DataState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.is_sync_target(), self.write_failed()) {
            (false, false) => f.write_str("consistent"),
            (true, false) => {
                f.write_str("inconsistent: a synchronization from the other node has not finished")
            }
            (false, true) => f.write_str(
                "inconsistent: a write or flush received from the primary failed on this disk",
            ),
            (true, true) => f.write_str(
                "inconsistent: a synchronization from the other node has not finished, \
                 and a write or flush received from the primary failed on this disk",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_round_trip_and_unknown_bits_are_refused() {
        for bits in 0..=DataState::KNOWN {
            let state = DataState::from_bits(bits).unwrap();
            assert_eq!(state.bits(), bits);
            assert_eq!(state.is_consistent(), bits == 0);
        }
        assert_eq!(DataState::from_bits(1 << 2), None);
        assert_eq!(DataState::from_bits(0x8001), None);
        let s = DataState::CONSISTENT.with(DataState::SYNC_TARGET);
        assert!(s.is_sync_target() && !s.write_failed());
        assert!(s.to_string().starts_with("inconsistent"));
        assert_eq!(DataState::CONSISTENT.to_string(), "consistent");
    }
}
