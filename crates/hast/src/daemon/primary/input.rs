//! What the primary's event loop receives: client requests from the export, finished
//! disk I/O, the connector's hand-overs, frames from the secondary, configuration.

use std::sync::Arc;

use hast_core::nbd::NbdErrno;
use hast_core::proto::handshake::{State, StateReply};
use hast_core::replication::primary;
use hast_core::replication::{IoId, SessionId, WriteOp};
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::oneshot;

/// A client request, as the NBD side hands it over.
#[derive(Debug)]
pub enum ClientOp {
    Write {
        offset: u64,
        len: u64,
        fua: bool,
        op: WriteOp,
        data: Option<Arc<Vec<u8>>>,
    },
    Read {
        offset: u64,
        len: u64,
    },
    Flush,
}

/// The answer to a client request.
pub type Answer = Result<Option<Vec<u8>>, NbdErrno>;

/// Everything that reaches the loop.
#[derive(Debug)]
pub enum Input {
    Client {
        op: ClientOp,
        reply: oneshot::Sender<Answer>,
    },
    Local {
        io: IoId,
        result: Result<Option<Vec<u8>>, u32>,
    },
    MapWritten {
        gen: u64,
        ok: bool,
    },
    MetaWritten {
        gen: u64,
        ok: bool,
        counters: (u64, u64, u64),
    },
    HandshakeBegin {
        session: SessionId,
        random: u64,
        state: oneshot::Sender<State>,
    },
    HandshakeReply {
        session: SessionId,
        reply: StateReply,
        peer_map: Option<Vec<u8>>,
        conn: Box<SessionConn>,
    },
    HandshakeFailed {
        session: SessionId,
        split_brain: bool,
    },
    Received {
        session: SessionId,
        seq: u64,
    },
    Reply {
        session: SessionId,
        seq: u64,
        result: Result<(), u32>,
        data: Option<Vec<u8>>,
    },
    Lost {
        session: SessionId,
    },
    Settings(primary::Settings),
    /// The fence program `gen` ended (`ok`: exit 0 in time).
    Fenced {
        gen: u64,
        ok: bool,
    },
    /// Close the session (the remote address changed); the connector reconnects.
    CloseSession,
    Stop,
}

/// A connection whose handshake is done, handed to the loop.
#[derive(Debug)]
pub struct SessionConn {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}
