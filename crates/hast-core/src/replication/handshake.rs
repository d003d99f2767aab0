//! Both sides of the connect-time handshake (`docs/protocol.md`, "Handshake") as plain
//! code: what each side sends, what it checks in what the other sent, and, for the
//! secondary, the decision (`crate::decision`) with the metadata it must persist before it
//! replies. No sockets, no files: the daemon moves the frames, persists the metadata and
//! reads the activemap; the random nonces and the key are inputs.
//!
//! ```text
//! primary                                         secondary
//!   PrimaryHandshake::start ── Hello ──────────►  SecondaryHandshake::on_hello
//!   on_welcome ◄─────────────── Welcome | Error
//!   (State + proof) ───────────────────────────►  on_state (decision, metadata to persist)
//!   on_state_reply ◄──────── StateReply + Bitmap | Error
//! ```
//!
//! It does not decide which resource a connection is for or whether its address may
//! connect (the peer listener's job), nor build the primary's counters (the primary's
//! machine owns them).

use std::fmt;

use crate::decision::{self, Decision, PrimaryState, SecondaryState, Side, SyncKind};
use crate::metadata::{DataState, Metadata};
use crate::proto::auth;
use crate::proto::handshake::{
    self as msg, ErrorMessage, Hello, Refusal, State, StateReply, SyncSource, Welcome,
};
use crate::proto::{Header, Kind};

/// Why the primary gives up on a handshake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeFailure {
    /// The shared-secret exchange failed, or only one side has a key.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The secondary sent something the protocol does not allow here.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The secondary refused, with its reason.
    #[error("refused by the peer: {}", .message.message)]
    Refused {
        /// What it said.
        message: ErrorMessage,
        /// It refused because of a split-brain (the primary reports it too).
        split_brain: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PrimaryStage {
    /// `Hello` sent, waiting for `Welcome`.
    Hello,
    /// `State` sent (or about to be), waiting for `StateReply`.
    State,
    /// `StateReply` accepted.
    Done,
}

/// The primary's side of one handshake.
#[derive(Clone)]
pub struct PrimaryHandshake {
    resource: String,
    key: Option<Vec<u8>>,
    nonce: Option<[u8; auth::NONCE_LEN]>,
    stage: PrimaryStage,
    version: Option<u16>,
}

/// What the primary learnt from an accepted `StateReply`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    /// The protocol version both speak.
    pub version: u16,
    /// The node with the good data.
    pub syncsrc: Side,
    /// Every extent must be copied.
    pub full_sync: bool,
    /// Bytes of the secondary's activemap to read in a `Bitmap` frame next (0: none;
    /// check its header with [`PrimaryHandshake::check_bitmap`]).
    pub mapsize: u32,
    /// The secondary's reply as received (counters, `virgin`, `consistent`).
    pub reply: StateReply,
}

impl PrimaryHandshake {
    /// Starts a handshake for `resource`. With a `key`, the `Hello` asks for the
    /// shared-secret exchange with `nonce` (fresh and random; a key without a nonce
    /// cannot authenticate, and the handshake fails at the `Welcome`).
    pub fn start(
        resource: &str,
        key: Option<&[u8]>,
        nonce: Option<[u8; auth::NONCE_LEN]>,
    ) -> (PrimaryHandshake, Hello) {
        let nonce = key.and(nonce);
        let hello = Hello {
            versions: msg::VERSIONS.to_vec(),
            resource: resource.to_string(),
            capabilities: key.iter().map(|_| auth::CAPABILITY.to_string()).collect(),
            nonce: nonce.map(|n| auth::to_hex(&n)),
        };
        let hs = PrimaryHandshake {
            resource: resource.to_string(),
            key: key.map(<[u8]>::to_vec),
            nonce,
            stage: PrimaryStage::Hello,
            version: None,
        };
        (hs, hello)
    }

    /// Checks the secondary's `Welcome`: a version we offered and, with a key, its proof.
    /// Returns our proof for the `State` (`None` without a key).
    pub fn on_welcome(&mut self, welcome: &Welcome) -> Result<Option<String>, HandshakeFailure> {
        if self.stage != PrimaryStage::Hello {
            return Err(HandshakeFailure::Protocol("unexpected Welcome".into()));
        }
        if !msg::VERSIONS.contains(&welcome.version) {
            return Err(HandshakeFailure::Protocol(format!(
                "the secondary chose protocol version {}, which we did not offer",
                welcome.version
            )));
        }
        let proof = match &self.key {
            None => None,
            Some(key) => {
                let Some(np) = self.nonce else {
                    return Err(HandshakeFailure::Auth(
                        "no nonce to authenticate with".into(),
                    ));
                };
                Some(authenticate(key, &self.resource, &np, welcome)?)
            }
        };
        self.version = Some(welcome.version);
        self.stage = PrimaryStage::State;
        Ok(proof)
    }

    /// An `Error` frame instead of the expected message.
    pub fn on_error(&mut self, message: ErrorMessage) -> HandshakeFailure {
        self.stage = PrimaryStage::Done;
        HandshakeFailure::Refused {
            split_brain: message.reason == Refusal::SplitBrain,
            message,
        }
    }

    /// Checks the secondary's `StateReply`. `own_mapsize`: bytes of this node's on-disk
    /// activemap; a bitmap the secondary announces must be exactly that size.
    pub fn on_state_reply(
        &mut self,
        reply: &StateReply,
        own_mapsize: u64,
    ) -> Result<Established, HandshakeFailure> {
        let (PrimaryStage::State, Some(version)) = (self.stage, self.version) else {
            return Err(HandshakeFailure::Protocol("unexpected StateReply".into()));
        };
        if reply.mapsize != 0 && u64::from(reply.mapsize) != own_mapsize {
            return Err(HandshakeFailure::Protocol(format!(
                "the secondary announces a {}-byte activemap, ours is {own_mapsize} bytes",
                reply.mapsize
            )));
        }
        self.stage = PrimaryStage::Done;
        Ok(Established {
            version,
            syncsrc: match reply.syncsrc {
                SyncSource::Primary => Side::Primary,
                SyncSource::Secondary => Side::Secondary,
            },
            full_sync: reply.full_sync,
            mapsize: reply.mapsize,
            reply: *reply,
        })
    }

    /// Checks the header of the frame that must carry the announced activemap.
    pub fn check_bitmap(established: &Established, h: &Header) -> Result<(), HandshakeFailure> {
        if h.kind != Kind::Bitmap || h.length != established.mapsize {
            return Err(HandshakeFailure::Protocol(
                "expected the secondary's activemap".into(),
            ));
        }
        Ok(())
    }
}

/// Checks the secondary's proof of the key and returns ours (hex).
fn authenticate(
    key: &[u8],
    resource: &str,
    np: &[u8],
    welcome: &Welcome,
) -> Result<String, HandshakeFailure> {
    let ns = welcome.nonce.as_deref().and_then(auth::from_hex);
    let proof = welcome.proof.as_deref().and_then(auth::from_hex);
    let (Some(ns), Some(proof)) = (ns, proof) else {
        return Err(HandshakeFailure::Auth(
            "the secondary did not authenticate: it has no authkey (configure the same key on both nodes)".into(),
        ));
    };
    if !auth::verify(key, auth::Prover::Secondary, resource, np, &ns, &proof) {
        return Err(HandshakeFailure::Auth(
            "the secondary does not know our authkey (are the keys different?)".into(),
        ));
    }
    Ok(auth::to_hex(&auth::prove(
        key,
        auth::Prover::Primary,
        resource,
        np,
        &ns,
    )))
}

/// The secondary's side of one handshake, between its `Welcome` and its `StateReply`.
#[derive(Clone)]
pub struct SecondaryHandshake {
    resource: String,
    version: u16,
    /// Key, the primary's nonce and ours, when authenticating.
    auth: Option<(Vec<u8>, Vec<u8>, [u8; auth::NONCE_LEN])>,
}

/// The secondary accepts the primary's `State`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The connect-time decision.
    pub decision: Decision,
    /// Metadata to persist *before* replying (the adopted resuid, and `SYNC_TARGET` when
    /// the sync about to start overwrites this copy); `None`: nothing changes.
    pub next_meta: Option<Metadata>,
    /// The reply; its `mapsize` is 0: the daemon fills it in when it sends the bitmap.
    pub reply: StateReply,
    /// Send this node's activemap after the reply (regular sync only).
    pub send_bitmap: bool,
}

/// The secondary refuses the primary's `State`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The `Error` frame to send.
    pub message: ErrorMessage,
    /// The refusal is a split-brain (report it, once per condition).
    pub split_brain: bool,
    /// What the operator should read in this node's log besides the refusal itself.
    pub detail: Option<String>,
}

fn refusal(reason: Refusal, message: impl Into<String>) -> ErrorMessage {
    ErrorMessage {
        reason,
        message: message.into(),
    }
}

impl SecondaryHandshake {
    /// The version to speak with a primary that said `hello`, or the refusal.
    pub fn version(hello: &Hello) -> Result<u16, ErrorMessage> {
        msg::choose_version(&hello.versions).ok_or_else(|| {
            refusal(
                Refusal::Version,
                format!(
                    "no common protocol version (primary speaks {:?}, we speak {:?})",
                    hello.versions,
                    msg::VERSIONS
                ),
            )
        })
    }

    /// Answers `hello`: the version, and with a `key` this node's nonce (`our_nonce`,
    /// fresh and random) and proof. A key here requires one on the primary.
    pub fn on_hello(
        hello: &Hello,
        key: Option<&[u8]>,
        our_nonce: [u8; auth::NONCE_LEN],
    ) -> Result<(SecondaryHandshake, Welcome), ErrorMessage> {
        let version = SecondaryHandshake::version(hello)?;
        let mut welcome = Welcome {
            version,
            capabilities: Vec::new(),
            nonce: None,
            proof: None,
        };
        let mut hs = SecondaryHandshake {
            resource: hello.resource.clone(),
            version,
            auth: None,
        };
        if let Some(key) = key {
            let np = hello
                .nonce
                .as_deref()
                .and_then(auth::from_hex)
                .filter(|n| n.len() == auth::NONCE_LEN)
                .filter(|_| hello.capabilities.iter().any(|c| c == auth::CAPABILITY));
            let Some(np) = np else {
                return Err(refusal(
                    Refusal::Auth,
                    "authentication required: the primary has no authkey (configure the same key on both nodes)",
                ));
            };
            let proof = auth::prove(
                key,
                auth::Prover::Secondary,
                &hello.resource,
                &np,
                &our_nonce,
            );
            welcome.capabilities.push(auth::CAPABILITY.into());
            welcome.nonce = Some(auth::to_hex(&our_nonce));
            welcome.proof = Some(auth::to_hex(&proof));
            hs.auth = Some((key.to_vec(), np, our_nonce));
        }
        Ok((hs, welcome))
    }

    /// The protocol version agreed.
    pub fn agreed_version(&self) -> u16 {
        self.version
    }

    /// Decides on the primary's `state` against this node's metadata `meta` (what it acts
    /// on, written or not): the proof first, then the sizes, then the decision table with
    /// both nodes' data states (`docs/invariants.md` §3, §5).
    pub fn on_state(&self, state: &State, meta: &Metadata) -> Result<Accepted, Refused> {
        let refuse = |message: ErrorMessage| Refused {
            message,
            split_brain: false,
            detail: None,
        };
        if let Some((key, np, ns)) = &self.auth {
            let proof = state.proof.as_deref().and_then(auth::from_hex);
            if !proof.is_some_and(|p| {
                auth::verify(key, auth::Prover::Primary, &self.resource, np, ns, &p)
            }) {
                return Err(refuse(refusal(
                    Refusal::Auth,
                    "authentication failed: the primary does not know our authkey",
                )));
            }
        }
        if state.datasize != meta.datasize() || state.extentsize != meta.extentsize() {
            return Err(refuse(refusal(
                Refusal::SizeMismatch,
                format!(
                    "data size or extent size differs (primary {}/{}, secondary {}/{}): create both with the same -m and -e",
                    state.datasize,
                    state.extentsize,
                    meta.datasize(),
                    meta.extentsize()
                ),
            )));
        }
        let counters = decision::decide(
            &PrimaryState {
                resuid: state.resuid,
                localcnt: state.localcnt,
                remotecnt: state.remotecnt,
                virgin: state.virgin,
            },
            &SecondaryState {
                resuid: meta.resuid,
                localcnt: meta.localcnt,
                remotecnt: meta.remotecnt,
            },
        );
        let consistent = meta.datastate.is_consistent();
        let decision = decision::apply_data_states(counters, state.consistent, consistent);
        match decision {
            Decision::SplitBrain => {
                let text = decision
                    .errmsg()
                    .unwrap_or_else(|| "Split-brain condition!".into());
                return Err(Refused {
                    message: refusal(Refusal::SplitBrain, text),
                    split_brain: true,
                    detail: None,
                });
            }
            Decision::ResuidMismatch { .. } => {
                let text = decision
                    .errmsg()
                    .unwrap_or_else(|| "Resource unique ID mismatch.".into());
                return Err(Refused {
                    message: refusal(Refusal::ResuidMismatch, text.clone()),
                    split_brain: false,
                    detail: Some(text),
                });
            }
            Decision::SourceInconsistent { .. } => {
                let text = decision.to_string();
                let detail = format!(
                    "{text} Counters: {counters}; this node is {}.",
                    meta.datastate
                );
                return Err(Refused {
                    message: refusal(Refusal::SourceInconsistent, text),
                    split_brain: false,
                    detail: Some(detail),
                });
            }
            _ => {}
        }
        let mut next = meta.clone();
        if decision.secondary_adopts_resuid() {
            next.resuid = state.resuid;
        }
        if decision.sync_target() == Some(Side::Secondary) {
            next.datastate = next.datastate.with(DataState::SYNC_TARGET);
        }
        let kind = decision.sync_kind();
        let reply = StateReply {
            localcnt: next.localcnt,
            remotecnt: next.remotecnt,
            virgin: decision.reply_virgin(),
            syncsrc: match decision.syncsrc() {
                Some(Side::Secondary) => SyncSource::Secondary,
                _ => SyncSource::Primary,
            },
            full_sync: kind == SyncKind::Full,
            mapsize: 0,
            consistent,
        };
        Ok(Accepted {
            decision,
            next_meta: (next != *meta).then_some(next),
            reply,
            send_bitmap: kind == SyncKind::Regular,
        })
    }
}

/// The key never shows in a debug print.
impl fmt::Debug for PrimaryHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrimaryHandshake")
            .field("resource", &self.resource)
            .field("key", &self.key.as_ref().map(|_| "<redacted>"))
            .field("stage", &self.stage)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The key never shows in a debug print.
impl fmt::Debug for SecondaryHandshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecondaryHandshake")
            .field("resource", &self.resource)
            .field("version", &self.version)
            .field("auth", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

#[cfg(test)]
#[path = "handshake_tests.rs"]
mod tests;
