//! One connection from a primary: its side of the handshake frames (what to answer is
//! the machine's decision, passed in as [`Step`]s), then a reader (frames → validated
//! requests → the resource task) and a writer (`Received`, replies, keepalives). It
//! decides nothing: a malformed frame or a dead socket ends it with a logged reason and
//! a `Lost` event; the machine decides what that means for the queue.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hast_core::proto::handshake::{ErrorMessage, Refusal, State, StateReply, Welcome};
use hast_core::proto::{Header, Kind};
use hast_core::replication::secondary::SecondaryEvent;
use hast_core::replication::{PeerRequest, RequestError, SessionId};
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc::{self, UnboundedReceiver, UnboundedSender};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::input::Input;
use super::Shared;
use crate::daemon::hooks::Event;
use crate::peer::{self, Outgoing, PeerError};

/// The machine's answer in the handshake.
pub(super) enum Step {
    /// Send `Welcome`.
    Welcome(Welcome),
    /// Send `StateReply` (and the activemap).
    Accept {
        reply: StateReply,
        send_bitmap: bool,
    },
    /// Send `Error` and close.
    Refuse(ErrorMessage),
}

/// What a connection task needs from the resource.
#[derive(Clone)]
pub(super) struct Ctx {
    pub shared: Arc<Shared>,
    pub session: SessionId,
    pub inputs: UnboundedSender<Input>,
    /// Requests in the machine's keeping, at most: a slow disk slows the primary down
    /// instead of growing memory.
    pub permits: Arc<Semaphore>,
}

impl Ctx {
    fn lost(&self) {
        let session = self.session;
        let _ = self
            .inputs
            .send(Input::Event(SecondaryEvent::Lost { session }));
    }
}

/// The connection's halves and the channels the resource task talks to it through.
pub(super) struct Halves {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
    pub peer: SocketAddr,
    pub steps: UnboundedReceiver<Step>,
    pub out: mpsc::Receiver<Outgoing>,
    /// Fired when the machine takes nothing more from this connection.
    pub dropped: CancellationToken,
}

/// Runs one connection until it ends.
pub(super) async fn run(ctx: Ctx, conn: Halves) {
    let Halves {
        mut reader,
        mut writer,
        peer,
        mut steps,
        out,
        dropped,
    } = conn;
    let name = ctx.shared.name.clone();
    let timeout = Duration::from_secs(ctx.shared.config().timeout.into());
    let result = tokio::select! {
        biased;
        _ = dropped.cancelled() => return,
        r = handshake(&ctx, &mut reader, &mut writer, &mut steps, timeout) => r,
    };
    if let Err(e) = result {
        warn!(resource = %name, "handshake with {peer} failed: {e}");
        ctx.lost();
        return;
    }
    info!(resource = %name, "connected to primary {peer}");
    ctx.shared.fire(Event::Connect);
    let writer = tokio::spawn(write_loop(ctx.clone(), out, writer, timeout));
    let read = read_loop(&ctx, reader, &dropped, timeout).await;
    if read.is_err() {
        ctx.lost();
    }
    // The writer ends when the machine closes the session: after its last reply.
    let written = writer.await.unwrap_or(Ok(()));
    match read.and(written) {
        Ok(()) => info!(resource = %name, "connection to primary {peer} closed"),
        Err(e) => warn!(resource = %name, "connection to primary {peer} lost: {e}"),
    }
    ctx.shared.fire(Event::Disconnect);
}

async fn next(steps: &mut UnboundedReceiver<Step>) -> Result<Step, PeerError> {
    steps.recv().await.ok_or(PeerError::Closed)
}

async fn refuse(w: &mut OwnedWriteHalf, msg: ErrorMessage, timeout: Duration) -> PeerError {
    if let Ok(frame) = Outgoing::json(Kind::Error, &msg) {
        let _ = peer::send(w, &frame, timeout).await;
    }
    PeerError::Refusing(msg)
}

async fn handshake(
    ctx: &Ctx,
    r: &mut BufReader<OwnedReadHalf>,
    w: &mut OwnedWriteHalf,
    steps: &mut UnboundedReceiver<Step>,
    timeout: Duration,
) -> Result<(), PeerError> {
    match next(steps).await? {
        Step::Welcome(welcome) => {
            peer::send(w, &Outgoing::json(Kind::Welcome, &welcome)?, timeout).await?
        }
        Step::Refuse(msg) => return Err(refuse(w, msg, timeout).await),
        Step::Accept { .. } => return Err(PeerError::Protocol("accepted before State".into())),
    }
    let state: State = peer::expect_json(r, Kind::State, timeout).await?;
    let session = ctx.session;
    ctx.inputs
        .send(Input::Event(SecondaryEvent::State { session, state }))
        .map_err(|_| PeerError::Closed)?;
    let (mut reply, send_bitmap) = match next(steps).await? {
        Step::Accept { reply, send_bitmap } => (reply, send_bitmap),
        Step::Refuse(msg) => return Err(refuse(w, msg, timeout).await),
        Step::Welcome(_) => return Err(PeerError::Protocol("a second Welcome".into())),
    };
    let bitmap = if send_bitmap {
        let store = ctx.shared.store.clone();
        let bits = tokio::task::spawn_blocking(move || store.read_bitmap()).await;
        match bits.ok().and_then(Result::ok) {
            Some(bits) if u32::try_from(bits.len()).is_ok() => Some(bits),
            _ => {
                let msg = ErrorMessage {
                    reason: Refusal::LocalFailure,
                    message: "cannot read the activemap on the secondary".into(),
                };
                return Err(refuse(w, msg, timeout).await);
            }
        }
    } else {
        None
    };
    reply.mapsize = bitmap.as_ref().map_or(0, |b| b.len() as u32);
    peer::send(w, &Outgoing::json(Kind::StateReply, &reply)?, timeout).await?;
    if let Some(bits) = bitmap {
        let cfg = ctx.shared.config();
        let header = Header::new(Kind::Bitmap, 0);
        let frame = Outgoing::data(header, Arc::new(bits), cfg.compression, cfg.checksum);
        peer::send(w, &frame, timeout).await?;
    }
    Ok(())
}

/// Reads requests until the machine drops the connection or it fails.
async fn read_loop(
    ctx: &Ctx,
    mut r: BufReader<OwnedReadHalf>,
    dropped: &CancellationToken,
    timeout: Duration,
) -> Result<(), PeerError> {
    let datasize = ctx.shared.store.datasize();
    loop {
        let frame = tokio::select! {
            biased;
            _ = dropped.cancelled() => return Ok(()),
            frame = peer::read_frame(&mut r, timeout) => frame?,
        };
        let h = frame.header;
        if h.kind == Kind::Keepalive {
            continue;
        }
        // Verified before anything else happens: a corrupt payload ends the session and
        // the primary keeps the extent dirty.
        let data = match h.kind {
            Kind::Write => Some(frame.data()?),
            _ => None,
        };
        let req = PeerRequest::from_header(&h, datasize, data.as_ref().map_or(0, Vec::len))
            .map_err(|e| match e {
                RequestError::NotARequest(kind) => {
                    PeerError::Protocol(format!("unexpected {kind:?} frame from the primary"))
                }
                other => PeerError::Protocol(other.to_string()),
            })?;
        let permit = tokio::select! {
            biased;
            _ = dropped.cancelled() => return Ok(()),
            permit = ctx.permits.clone().acquire_owned() => permit.map_err(|_| PeerError::Closed)?,
        };
        let request = Input::Request {
            session: ctx.session,
            seq: h.seq,
            req,
            data,
            permit,
        };
        if ctx.inputs.send(request).is_err() {
            return Err(PeerError::Closed);
        }
    }
}

/// Sends what the machine answers until it closes the session.
async fn write_loop(
    ctx: Ctx,
    mut rx: mpsc::Receiver<Outgoing>,
    w: OwnedWriteHalf,
    timeout: Duration,
) -> Result<(), PeerError> {
    let result = peer::send_loop(&mut rx, w, timeout, &CancellationToken::new()).await;
    if result.is_err() {
        ctx.lost();
        // Keep draining until the machine closes the session: replies it cannot send
        // are dropped, the requests are still applied.
        while rx.recv().await.is_some() {}
    }
    result
}
