//! The primary's side of the link, as I/O only: the *connector* keeps trying to reach the
//! secondary and runs the handshake (its decisions are `PrimaryHandshake`'s and the
//! machine's), and each session gets a *writer* (the only task writing the socket;
//! keepalives when idle) and a *reader* (frames to the loop). When either fails, the loop
//! hears `Lost`; the machine decides what that means.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hast_core::proto::handshake::{Refusal, StateReply};
use hast_core::proto::Kind;
use hast_core::replication::handshake::{HandshakeFailure, PrimaryHandshake};
use hast_core::replication::SessionId;
use tokio::io::BufReader;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::input::{Input, SessionConn};
use super::Shared;
use crate::peer::{self, Outgoing, PeerError};

/// Longest wait between reconnection attempts (FreeBSD's HAST_KEEPALIVE).
pub const RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Starts a session's writer and reader; returns the writer's queue and the token that
/// ends both.
pub fn start_session(
    session: SessionId,
    conn: SessionConn,
    shared: &Arc<Shared>,
    inputs: mpsc::UnboundedSender<Input>,
) -> (mpsc::UnboundedSender<Outgoing>, CancellationToken) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Outgoing>();
    let stop = CancellationToken::new();
    let timeout = Duration::from_secs(shared.config().timeout.into());
    let name = shared.name.clone();
    {
        let (stop, inputs, name) = (stop.clone(), inputs.clone(), name.clone());
        let writer = conn.writer;
        tokio::spawn(async move {
            if let Err(e) = peer::send_loop(&mut rx, writer, timeout, &stop).await {
                warn!(resource = %name, "sending to the secondary failed: {e}");
            }
            stop.cancel();
            let _ = inputs.send(Input::Lost { session });
        });
    }
    {
        let stop = stop.clone();
        let mut reader = conn.reader;
        tokio::spawn(async move {
            let result: Result<(), PeerError> = async {
                loop {
                    let frame = tokio::select! {
                        _ = stop.cancelled() => return Ok(()),
                        frame = peer::read_frame(&mut reader, timeout) => frame?,
                    };
                    let h = frame.header;
                    let input = match h.kind {
                        Kind::Keepalive => continue,
                        Kind::Received => Input::Received {
                            session,
                            seq: h.seq,
                        },
                        Kind::Reply => {
                            let result = if h.status == 0 { Ok(()) } else { Err(h.status) };
                            // A payload failing its checksum ends the link (and so this
                            // request): the data cannot be trusted.
                            let data = if result.is_ok() && (h.payload_len > 0 || h.length > 0) {
                                Some(frame.data()?)
                            } else {
                                None
                            };
                            Input::Reply {
                                session,
                                seq: h.seq,
                                result,
                                data,
                            }
                        }
                        other => {
                            return Err(PeerError::Protocol(format!(
                                "unexpected {other:?} frame from the secondary"
                            )))
                        }
                    };
                    if inputs.send(input).is_err() {
                        return Ok(());
                    }
                }
            }
            .await;
            if let Err(e) = result {
                warn!(resource = %name, "connection to the secondary lost: {e}");
            }
            stop.cancel();
            let _ = inputs.send(Input::Lost { session });
        });
    }
    (tx, stop)
}

fn random_u64() -> u64 {
    let mut b = [0u8; 8];
    let _ = rustix::rand::getrandom(&mut b, rustix::rand::GetRandomFlags::empty());
    u64::from_ne_bytes(b)
}

/// How a connection attempt ended.
enum Attempt {
    /// A session was handed to the loop.
    Handed,
    /// Refused or failed before that.
    Failed(PeerError, bool),
}

/// Connects and runs the handshake; on success the connection is the loop's.
async fn establish(
    shared: &Arc<Shared>,
    session: SessionId,
    inputs: &mpsc::UnboundedSender<Input>,
) -> Attempt {
    match try_establish(shared, session, inputs).await {
        Ok(()) => Attempt::Handed,
        Err((e, split_brain)) => Attempt::Failed(e, split_brain),
    }
}

async fn try_establish(
    shared: &Arc<Shared>,
    session: SessionId,
    inputs: &mpsc::UnboundedSender<Input>,
) -> Result<(), (PeerError, bool)> {
    let plain = |e: PeerError| (e, false);
    let cfg = shared.config();
    let Some(remote) = cfg.remote.clone() else {
        return Err(plain(PeerError::Address("remote is 'none'".into())));
    };
    let timeout = Duration::from_secs(cfg.timeout.into());
    let stream = peer::connect(&remote, cfg.source.as_ref(), timeout)
        .await
        .map_err(plain)?;
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    let key = cfg
        .authkey
        .as_deref()
        .map(peer::load_key)
        .transpose()
        .map_err(plain)?;
    let nonce = key.as_ref().map(|_| peer::nonce());
    let (mut hs, hello) = PrimaryHandshake::start(&cfg.name, key.as_deref(), nonce);
    let refused = |hs: &mut PrimaryHandshake, e: PeerError| match e {
        PeerError::Refused(msg) => {
            let split = msg.reason == Refusal::SplitBrain;
            let _ = hs.on_error(msg.clone());
            (PeerError::Refused(msg), split)
        }
        other => (other, false),
    };
    peer::send(
        &mut wr,
        &Outgoing::json(Kind::Hello, &hello).map_err(plain)?,
        timeout,
    )
    .await
    .map_err(plain)?;
    let welcome = match peer::expect_json(&mut rd, Kind::Welcome, timeout).await {
        Ok(w) => w,
        Err(e) => return Err(refused(&mut hs, e)),
    };
    let proof = hs.on_welcome(&welcome).map_err(|e| plain(failure(e)))?;
    let (state_tx, state_rx) = oneshot::channel();
    let random = loop {
        let r = random_u64();
        if r != 0 {
            break r;
        }
    };
    if inputs
        .send(Input::HandshakeBegin {
            session,
            random,
            state: state_tx,
        })
        .is_err()
    {
        return Err(plain(PeerError::Closed));
    }
    let mut state = state_rx.await.map_err(|_| plain(PeerError::Closed))?;
    state.proof = proof;
    peer::send(
        &mut wr,
        &Outgoing::json(Kind::State, &state).map_err(plain)?,
        timeout,
    )
    .await
    .map_err(plain)?;
    let reply: StateReply = match peer::expect_json(&mut rd, Kind::StateReply, timeout).await {
        Ok(r) => r,
        Err(e) => return Err(refused(&mut hs, e)),
    };
    let own = shared.bitmap_size;
    let established = hs
        .on_state_reply(&reply, own)
        .map_err(|e| plain(failure(e)))?;
    let peer_map = if established.mapsize > 0 {
        let frame = peer::read_frame(&mut rd, timeout).await.map_err(plain)?;
        PrimaryHandshake::check_bitmap(&established, &frame.header)
            .map_err(|e| plain(failure(e)))?;
        Some(frame.data().map_err(|e| plain(e.into()))?)
    } else {
        None
    };
    let conn = Box::new(SessionConn {
        reader: rd,
        writer: wr,
    });
    inputs
        .send(Input::HandshakeReply {
            session,
            reply,
            peer_map,
            conn,
        })
        .map_err(|_| plain(PeerError::Closed))
}

fn failure(e: HandshakeFailure) -> PeerError {
    match e {
        HandshakeFailure::Auth(m) => PeerError::Auth(m),
        HandshakeFailure::Protocol(m) => PeerError::Protocol(m),
        HandshakeFailure::Refused { message, .. } => PeerError::Refused(message),
    }
}

/// Keeps a session up while the resource is primary: connect, hand over, wait for its
/// end, retry with backoff (1 s, doubling, at most [`RECONNECT_MAX`]).
pub async fn connector(
    shared: Arc<Shared>,
    inputs: mpsc::UnboundedSender<Input>,
    stop: CancellationToken,
    mut ended: mpsc::UnboundedReceiver<SessionId>,
) {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    let mut backoff = Duration::from_secs(1);
    let mut last_error = String::new();
    loop {
        if shared.config().remote.is_none() {
            // `remote none`: standalone by configuration; wait for a reload to change it.
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(RECONNECT_MAX) => continue,
            }
        }
        let session = SessionId(NEXT.fetch_add(1, Ordering::Relaxed));
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            attempt = establish(&shared, session, &inputs) => attempt,
        };
        match attempt {
            Attempt::Handed => {
                backoff = Duration::from_secs(1);
                last_error.clear();
                // Wait for the machine (or the socket) to end this session.
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        s = ended.recv() => match s {
                            Some(s) if s == session => break,
                            Some(_) => continue,
                            None => return,
                        },
                    }
                }
            }
            Attempt::Failed(e, split_brain) => {
                let _ = inputs.send(Input::HandshakeFailed {
                    session,
                    split_brain,
                });
                let text = e.to_string();
                // Say it once per condition, not at every retry.
                if text != last_error {
                    warn!(resource = %shared.name, "cannot connect to the secondary: {text}");
                    last_error = text;
                } else {
                    debug!(resource = %shared.name, "still cannot connect: {last_error}");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(RECONNECT_MAX);
    }
}
