//! What the secondary's machine takes and gives: its events, its actions, the notices
//! for the log, its status, and the headers of its answers.

use std::fmt;

use crate::control::Statistics;
use crate::decision::Decision;
use crate::metadata::{DataState, Metadata};
use crate::proto::auth;
use crate::proto::handshake::{ErrorMessage, Hello, Refusal, State, StateReply, Welcome};
use crate::proto::{Header, Kind};
use crate::replication::{DataRef, IoId, LocalOp, PeerRequest, SessionId};

/// After a metadata write failed twice in a row, events earlier than this (ms) do not
/// retry it ([`SecondaryEvent::Tick`] always does).
pub const META_RETRY_MS: u64 = 100;

/// What happened, for the machine (its debug print leaves the key out).
#[derive(Clone)]
pub enum SecondaryEvent {
    /// A primary connected and said `Hello` (its address and resource already checked).
    /// It pre-empts every other session.
    Hello {
        /// The new connection.
        session: SessionId,
        /// What the primary said.
        hello: Hello,
        /// This node's shared key, if configured; `Err` (why) if it cannot be read: the
        /// primary is then refused (`local-failure`) once its version was checked.
        key: Result<Option<Vec<u8>>, String>,
        /// A fresh random nonce for the exchange.
        nonce: [u8; auth::NONCE_LEN],
    },
    /// The primary's `State`.
    State {
        /// Its connection.
        session: SessionId,
        /// What it sent.
        state: State,
    },
    /// A validated request (a WRITE's data is kept by the shell as
    /// [`DataRef::Peer`]`(session, seq)`).
    Request {
        /// Its connection.
        session: SessionId,
        /// Its sequence number.
        seq: u64,
        /// The request.
        req: PeerRequest,
    },
    /// A [`SecondaryAction::Local`] completed; `Err(errno)` on failure.
    Local {
        /// The operation.
        io: IoId,
        /// Its outcome.
        result: Result<(), u32>,
    },
    /// A [`SecondaryAction::WriteMeta`] completed.
    MetaWritten {
        /// Its generation.
        gen: u64,
        /// Whether it is on disk.
        ok: bool,
    },
    /// A [`SecondaryAction::FillBitmap`] completed.
    BitmapFilled {
        /// The session it was for.
        session: SessionId,
        /// Whether it is on disk.
        ok: bool,
    },
    /// The connection is gone (read or write failed, protocol error): nothing more comes
    /// from it.
    Lost {
        /// The connection.
        session: SessionId,
    },
    /// Periodic (about once a second): retries a failed metadata write.
    Tick,
    /// The role ends: drop the connection, apply what is queued, try once more to write
    /// what is not on disk, then [`SecondaryAction::Stopped`].
    Stop,
}

impl fmt::Debug for SecondaryEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecondaryEvent::Hello {
                session,
                hello,
                key,
                ..
            } => f
                .debug_struct("Hello")
                .field("session", session)
                .field("hello", hello)
                .field(
                    "key",
                    &key.as_ref().map(|k| k.as_ref().map(|_| "<redacted>")),
                )
                .finish_non_exhaustive(),
            SecondaryEvent::State { session, state } => f
                .debug_struct("State")
                .field("session", session)
                .field("state", state)
                .finish(),
            SecondaryEvent::Request { session, seq, req } => f
                .debug_struct("Request")
                .field("session", session)
                .field("seq", seq)
                .field("req", req)
                .finish(),
            SecondaryEvent::Local { io, result } => f
                .debug_struct("Local")
                .field("io", io)
                .field("result", result)
                .finish(),
            SecondaryEvent::MetaWritten { gen, ok } => f
                .debug_struct("MetaWritten")
                .field("gen", gen)
                .field("ok", ok)
                .finish(),
            SecondaryEvent::BitmapFilled { session, ok } => f
                .debug_struct("BitmapFilled")
                .field("session", session)
                .field("ok", ok)
                .finish(),
            SecondaryEvent::Lost { session } => {
                f.debug_struct("Lost").field("session", session).finish()
            }
            SecondaryEvent::Tick => f.write_str("Tick"),
            SecondaryEvent::Stop => f.write_str("Stop"),
        }
    }
}

/// What the shell must do, in the order given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecondaryAction {
    /// Send `Welcome`.
    Welcome {
        /// The connection.
        session: SessionId,
        /// The message.
        welcome: Welcome,
    },
    /// Send `StateReply` (with `mapsize` and a `Bitmap` frame of this node's activemap
    /// if `send_bitmap`); from then on the session's requests come as events.
    Accept {
        /// The connection.
        session: SessionId,
        /// The reply (`mapsize` 0).
        reply: StateReply,
        /// Send the activemap.
        send_bitmap: bool,
        /// The decision, for the log.
        decision: Decision,
    },
    /// Send this `Error` frame; a [`SecondaryAction::Close`] follows.
    Refuse {
        /// The connection.
        session: SessionId,
        /// The refusal.
        message: ErrorMessage,
    },
    /// Stop reading from the connection: the machine takes nothing more from it.
    Drop {
        /// The connection.
        session: SessionId,
    },
    /// Everything for the connection has been emitted: close it once sent. Data the shell
    /// still keeps for it can go.
    Close {
        /// The connection.
        session: SessionId,
    },
    /// Mark every extent in this node's on-disk activemap (and flush it), in order with
    /// the disk operations; report with [`SecondaryEvent::BitmapFilled`]. Comes before a
    /// full sync's metadata: see `Secondary::decide_handshake`.
    FillBitmap {
        /// The session being accepted.
        session: SessionId,
    },
    /// Clear this node's on-disk activemap, before the next [`SecondaryAction::Local`].
    ClearBitmap {
        /// The session whose first request follows.
        session: SessionId,
    },
    /// Run a local disk operation; report it with [`SecondaryEvent::Local`].
    /// Data operations (up to [`super::DISK_PIPELINE`] at once) must be applied in the
    /// order given, one after the other; a [`LocalOp::Flush`] may run beside them (it is
    /// given only once every earlier data operation has ended).
    Local {
        /// Its number.
        io: IoId,
        /// What to do.
        op: LocalOp,
    },
    /// Send `Received` for a memsync WRITE (it is queued).
    Received {
        /// The connection.
        session: SessionId,
        /// The request.
        seq: u64,
    },
    /// Send the final reply: READ data (`DataRef::Local`) or `Err(errno)`.
    Reply {
        /// The connection.
        session: SessionId,
        /// The request.
        seq: u64,
        /// The outcome.
        result: Result<Option<DataRef>, u32>,
    },
    /// Drop the bytes behind a reference (a READ answered with an error after all).
    Release(DataRef),
    /// Write the metadata header; report with [`SecondaryEvent::MetaWritten`].
    WriteMeta {
        /// Its generation.
        gen: u64,
        /// The header.
        meta: Metadata,
    },
    /// Something the operator should read in the log.
    Notice(Notice),
    /// Stopping, and everything queued is applied and answered, the metadata settled.
    Stopped,
}

/// Log-worthy events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A new connection replaced a live one.
    Replaced {
        /// The old connection.
        old: SessionId,
        /// The new one.
        new: SessionId,
    },
    /// The handshake was refused (besides the `Refuse`, what to log; the refusal text
    /// itself is in the `Refuse`).
    Refused {
        /// The connection.
        session: SessionId,
        /// The refusal's reason.
        reason: Refusal,
        /// Further detail for the operator.
        detail: String,
    },
    /// A split-brain, reported once per condition (until a handshake succeeds).
    SplitBrain,
    /// A write or flush failed here; the copy is now marked inconsistent (first failure
    /// only, while the mark stands).
    WriteFailed {
        /// Frame kind of the request.
        kind: Kind,
        /// Its offset.
        offset: u64,
        /// Its length.
        len: u32,
        /// The error.
        errno: u32,
    },
    /// `SyncDone` recorded the copy as consistent.
    SyncConfirmed,
    /// `SyncDone` arrived on a session on which a write or flush failed: the copy stays
    /// marked inconsistent.
    SyncDoneAfterFailure,
    /// A metadata write failed (once per run of failures).
    MetaWriteFailed,
    /// A session broke the protocol and was dropped.
    Violation {
        /// The connection.
        session: SessionId,
        /// What it did.
        reason: String,
    },
}

/// What `hastctl status` shows of the secondary.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SecondaryStatus {
    /// A session is accepted and not lost.
    pub connected: bool,
    /// What is known to be missing from this copy (the wanted and the on-disk state
    /// together: a failure shows at once, consistency once written).
    pub datastate: DataState,
    /// Resource id on disk.
    pub resuid: u64,
    /// `localcnt` on disk.
    pub localcnt: u64,
    /// `remotecnt` on disk.
    pub remotecnt: u64,
    /// Requests received and not answered yet.
    pub queue: u64,
    /// Request counters (`activemap_updates` stays 0).
    pub stats: Statistics,
    /// A split-brain was reported and no handshake succeeded since.
    pub split_brain: bool,
}

/// The header of the `Received` for request `seq`.
pub fn received_header(seq: u64) -> Header {
    Header::new(Kind::Received, seq)
}

/// The header of the final reply to request `seq` (`status`: 0 or the errno); a READ's
/// data and its transform are the sender's business.
pub fn reply_header(seq: u64, status: u32) -> Header {
    Header {
        status,
        ..Header::new(Kind::Reply, seq)
    }
}
