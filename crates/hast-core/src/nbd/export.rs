//! What a backend says about itself, and the transmission flags and block sizes the
//! server derives from it.

use super::wire::tflags;

/// The largest READ or WRITE payload we accept and advertise (32 MiB, the spec's default
/// that every client already assumes).
pub const MAX_PAYLOAD: u32 = 32 * 1024 * 1024;

/// One export's properties, as its backend reports them when a client connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Minimum block size: a power of two in `1..=65536`. With 1, any offset and length
    /// are served; above 1, misaligned requests fail with EINVAL.
    pub min_block: u32,
    /// Preferred block size: a power of two, at least `max(min_block, 512)`.
    pub preferred_block: u32,
    /// Largest READ/WRITE payload, at most [`MAX_PAYLOAD`] and at least `preferred_block`.
    pub max_payload: u32,
    /// Every write-like command fails with EPERM.
    pub read_only: bool,
    /// TRIM is meaningful (advertised as `SEND_TRIM`).
    pub can_trim: bool,
    /// WRITE_ZEROES is implemented efficiently (advertised as `SEND_WRITE_ZEROES`).
    pub can_zero: bool,
    /// FLUSH/FUA on one connection covers writes completed on every connection.
    pub can_multi_conn: bool,
    /// Human-readable description for `NBD_INFO_DESCRIPTION`; empty for none.
    pub description: String,
}

impl ExportInfo {
    /// A read-write export of `size` bytes with byte granularity and everything but
    /// multi-conn enabled: a starting point for backends to adjust.
    pub fn new(size: u64) -> ExportInfo {
        ExportInfo {
            size,
            min_block: 1,
            preferred_block: 4096,
            max_payload: MAX_PAYLOAD,
            read_only: false,
            can_trim: true,
            can_zero: true,
            can_multi_conn: false,
            description: String::new(),
        }
    }

    /// The transmission flags for this export. FLUSH and FUA are always offered: hast's
    /// durability contract rests on them. Trim and zeroes are withheld from read-only
    /// exports since they would only ever fail.
    pub fn transmission_flags(&self) -> u16 {
        let mut flags = tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::SEND_FUA;
        if self.read_only {
            flags |= tflags::READ_ONLY;
        } else {
            if self.can_trim {
                flags |= tflags::SEND_TRIM;
            }
            if self.can_zero {
                flags |= tflags::SEND_WRITE_ZEROES;
            }
        }
        if self.can_multi_conn {
            flags |= tflags::CAN_MULTI_CONN;
        }
        flags
    }

    /// The block sizes to advertise `(min, preferred, max)`, clamped into what the spec
    /// allows so that a careless backend cannot make us advertise nonsense.
    pub fn block_sizes(&self) -> (u32, u32, u32) {
        let min = if self.min_block.is_power_of_two() && self.min_block <= 65536 {
            self.min_block
        } else {
            512
        };
        let floor = min.max(512);
        let preferred = if self.preferred_block.is_power_of_two() {
            self.preferred_block.max(floor)
        } else {
            4096u32.max(floor)
        };
        let max = self
            .max_payload
            .clamp(preferred, MAX_PAYLOAD.max(preferred));
        (min, preferred, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_for_read_write_and_read_only() {
        let mut info = ExportInfo::new(1 << 20);
        assert_eq!(info.transmission_flags(), 0b0110_1101);
        info.can_multi_conn = true;
        assert_eq!(info.transmission_flags(), 0b1_0110_1101);
        info.read_only = true;
        assert_eq!(info.transmission_flags(), 0b1_0000_1111);
    }

    #[test]
    fn block_sizes_are_clamped() {
        let mut info = ExportInfo::new(1 << 20);
        assert_eq!(info.block_sizes(), (1, 4096, MAX_PAYLOAD));
        info.min_block = 3;
        info.preferred_block = 256;
        info.max_payload = u32::MAX;
        assert_eq!(info.block_sizes(), (512, 512, MAX_PAYLOAD));
        info.min_block = 4096;
        info.max_payload = 1;
        assert_eq!(info.block_sizes(), (4096, 4096, 4096));
    }
}
