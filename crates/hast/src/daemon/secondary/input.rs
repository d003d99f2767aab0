//! What the secondary's resource task receives: from the connections, the disk thread
//! and the metadata writes.

use hast_core::replication::secondary::SecondaryEvent;
use hast_core::replication::{IoId, PeerRequest, SessionId};
use tokio::sync::OwnedSemaphorePermit;

use crate::peer::Outgoing;

/// What the resource task receives from the connections and the disk.
pub(super) enum Input {
    /// An event as is.
    Event(SecondaryEvent),
    /// A validated request; its permit is held until it is answered.
    Request {
        session: SessionId,
        seq: u64,
        req: PeerRequest,
        data: Option<Vec<u8>>,
        permit: OwnedSemaphorePermit,
    },
    /// A local operation ended; a READ's data is sealed for its reply.
    Disk {
        io: IoId,
        result: Result<(), u32>,
        read: Option<Outgoing>,
    },
    /// A metadata write ended.
    Meta {
        gen: u64,
        result: Result<(), String>,
    },
}
