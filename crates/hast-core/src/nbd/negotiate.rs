//! The fixed-newstyle handshake as a sans-IO state machine.
//!
//! The I/O layer sends [`greeting`](super::wire::greeting), then loops: read exactly
//! [`Negotiation::expect`] bytes, [`feed`](Negotiation::feed) them, write
//! [`Outcome::reply`], and act on [`Outcome::then`]. Nothing here blocks or allocates
//! more than [`MAX_OPTION_LEN`] for a client's benefit: larger options are answered with
//! an error and their payload is discarded by the I/O layer as it streams past.

use super::export::ExportInfo;
use super::wire::{be_u16, be_u32, be_u64, client_flags, info, opt, put_option_reply, rep};
use super::wire::{export_name_reply, IHAVEOPT};

/// Largest option payload we buffer. Real options are a name (≤ 4 KiB by the spec) plus
/// a few info requests; anything bigger is refused without being held in memory.
pub const MAX_OPTION_LEN: u32 = 64 * 1024;

/// An export offered on this connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedExport {
    /// The name clients ask for (`nbd+unix:///NAME`).
    pub name: String,
    /// Its properties, snapshotted when the connection started.
    pub info: ExportInfo,
}

/// The result of a successful negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    /// Index of the chosen export in the list given to [`Negotiation::new`].
    pub export: usize,
    /// Its canonical name.
    pub name: String,
    /// The transmission flags sent to the client.
    pub flags: u16,
    /// The client entered with `NBD_OPT_GO` and asked for `NBD_INFO_BLOCK_SIZE`, so it
    /// promised to honour the advertised block sizes.
    pub block_size_agreed: bool,
}

/// What the I/O layer does after writing [`Outcome::reply`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Then {
    /// Read [`Negotiation::expect`] bytes and feed them.
    Continue,
    /// Read and drop this many bytes (an oversized option's payload), then continue.
    Discard(u64),
    /// Close the connection (after `NBD_OPT_ABORT`).
    Close,
    /// Enter the transmission phase.
    Transmission(Negotiated),
}

/// Bytes to send and the next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Bytes to write to the client, possibly empty.
    pub reply: Vec<u8>,
    /// The next step.
    pub then: Then,
}

/// Violations after which the spec lets (or makes) the server drop the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NegotiationError {
    /// The client set flags we did not offer.
    #[error("unknown client flags {0:#x}")]
    UnknownClientFlags(u32),
    /// An option did not start with `IHAVEOPT`.
    #[error("bad option magic {0:#018x}")]
    BadOptionMagic(u64),
    /// `NBD_OPT_EXPORT_NAME` named no export; that option cannot fail politely.
    #[error("NBD_OPT_EXPORT_NAME for unknown export {0:?}")]
    UnknownExport(String),
    /// `NBD_OPT_EXPORT_NAME` longer than we buffer.
    #[error("NBD_OPT_EXPORT_NAME of {0} bytes")]
    ExportNameTooLong(u32),
    /// `feed` got a buffer of the wrong size (an I/O layer bug, not the client's).
    #[error("fed {got} bytes, expected {expected}")]
    WrongLength {
        /// What [`Negotiation::expect`] said.
        expected: usize,
        /// What was fed.
        got: usize,
    },
    /// `feed` after the negotiation ended.
    #[error("negotiation already finished")]
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    ClientFlags,
    OptionHeader,
    OptionPayload { option: u32, len: u32 },
    Finished,
}

/// The server side of one connection's handshake.
#[derive(Debug)]
pub struct Negotiation {
    exports: Vec<NamedExport>,
    state: State,
    no_zeroes: bool,
}

impl Negotiation {
    /// Starts a negotiation offering `exports`; the first one is the default export
    /// (what an empty name selects).
    pub fn new(exports: Vec<NamedExport>) -> Negotiation {
        Negotiation {
            exports,
            state: State::ClientFlags,
            no_zeroes: false,
        }
    }

    /// How many bytes the next [`feed`](Self::feed) needs (0 once finished).
    pub fn expect(&self) -> usize {
        match self.state {
            State::ClientFlags => super::wire::CLIENT_FLAGS_LEN,
            State::OptionHeader => super::wire::OPTION_HEADER_LEN,
            State::OptionPayload { len, .. } => len as usize,
            State::Finished => 0,
        }
    }

    /// Consumes exactly [`expect`](Self::expect) bytes.
    pub fn feed(&mut self, input: &[u8]) -> Result<Outcome, NegotiationError> {
        let expected = self.expect();
        if self.state == State::Finished {
            return Err(NegotiationError::Finished);
        }
        if input.len() != expected {
            return Err(NegotiationError::WrongLength {
                expected,
                got: input.len(),
            });
        }
        let result = match self.state {
            State::ClientFlags => self.client_flags(be_u32(input, 0)),
            State::OptionHeader => self.option_header(input),
            State::OptionPayload { option, .. } => {
                self.state = State::OptionHeader;
                self.option(option, input)
            }
            State::Finished => Err(NegotiationError::Finished),
        };
        match &result {
            Ok(Outcome {
                then: Then::Close | Then::Transmission(_),
                ..
            })
            | Err(_) => {
                self.state = State::Finished;
            }
            _ => {}
        }
        result
    }

    fn client_flags(&mut self, flags: u32) -> Result<Outcome, NegotiationError> {
        if flags & !client_flags::KNOWN != 0 {
            return Err(NegotiationError::UnknownClientFlags(flags));
        }
        // A client without FIXED_NEWSTYLE gets fixed-newstyle behaviour anyway: the spec
        // allows it, and such a client only ever sends EXPORT_NAME.
        self.no_zeroes = flags & client_flags::NO_ZEROES != 0;
        self.state = State::OptionHeader;
        Ok(continue_with(Vec::new()))
    }

    fn option_header(&mut self, header: &[u8]) -> Result<Outcome, NegotiationError> {
        let magic = be_u64(header, 0);
        if magic != IHAVEOPT {
            return Err(NegotiationError::BadOptionMagic(magic));
        }
        let option = be_u32(header, 8);
        let len = be_u32(header, 12);
        if len > MAX_OPTION_LEN {
            if option == opt::EXPORT_NAME {
                return Err(NegotiationError::ExportNameTooLong(len));
            }
            let mut reply = Vec::new();
            put_option_reply(&mut reply, option, rep::ERR_TOO_BIG, b"option too large");
            return Ok(Outcome {
                reply,
                then: Then::Discard(u64::from(len)),
            });
        }
        if len == 0 {
            return self.option(option, &[]);
        }
        self.state = State::OptionPayload { option, len };
        Ok(continue_with(Vec::new()))
    }

    fn option(&mut self, option: u32, payload: &[u8]) -> Result<Outcome, NegotiationError> {
        let mut reply = Vec::new();
        match option {
            opt::EXPORT_NAME => {
                let name = String::from_utf8_lossy(payload);
                let Some(index) = self.lookup(&name) else {
                    return Err(NegotiationError::UnknownExport(name.into_owned()));
                };
                let export = &self.exports[index];
                let flags = export.info.transmission_flags();
                let reply = export_name_reply(export.info.size, flags, self.no_zeroes);
                let negotiated = Negotiated {
                    export: index,
                    name: export.name.clone(),
                    flags,
                    block_size_agreed: false,
                };
                return Ok(Outcome {
                    reply,
                    then: Then::Transmission(negotiated),
                });
            }
            opt::ABORT => {
                put_option_reply(&mut reply, option, rep::ACK, &[]);
                return Ok(Outcome {
                    reply,
                    then: Then::Close,
                });
            }
            opt::LIST => {
                if !payload.is_empty() {
                    put_option_reply(&mut reply, option, rep::ERR_INVALID, b"LIST takes no data");
                } else {
                    for export in &self.exports {
                        let mut entry = Vec::with_capacity(4 + export.name.len());
                        entry.extend_from_slice(&len_u32(export.name.len()).to_be_bytes());
                        entry.extend_from_slice(export.name.as_bytes());
                        put_option_reply(&mut reply, option, rep::SERVER, &entry);
                    }
                    put_option_reply(&mut reply, option, rep::ACK, &[]);
                }
            }
            opt::INFO | opt::GO => return Ok(self.info_or_go(option, payload)),
            // No TLS yet and simple replies only; both are allowed answers (docs/nbd.md).
            _ => put_option_reply(&mut reply, option, rep::ERR_UNSUP, &[]),
        }
        Ok(continue_with(reply))
    }

    fn info_or_go(&mut self, option: u32, payload: &[u8]) -> Outcome {
        let mut reply = Vec::new();
        let Some((name, requests)) = parse_info_request(payload) else {
            put_option_reply(
                &mut reply,
                option,
                rep::ERR_INVALID,
                b"malformed INFO/GO data",
            );
            return continue_with(reply);
        };
        let Some(index) = self.lookup(&name) else {
            let msg = format!("unknown export {name:?}");
            put_option_reply(&mut reply, option, rep::ERR_UNKNOWN, msg.as_bytes());
            return continue_with(reply);
        };
        let export = &self.exports[index];
        let flags = export.info.transmission_flags();

        let mut item = Vec::with_capacity(16);
        item.extend_from_slice(&info::EXPORT.to_be_bytes());
        item.extend_from_slice(&export.info.size.to_be_bytes());
        item.extend_from_slice(&flags.to_be_bytes());
        put_option_reply(&mut reply, option, rep::INFO, &item);

        // Sent whether or not requested, as qemu-nbd and nbdkit do: it costs nothing and
        // tells every client our limits.
        let (min, preferred, max) = export.info.block_sizes();
        item.clear();
        item.extend_from_slice(&info::BLOCK_SIZE.to_be_bytes());
        for v in [min, preferred, max] {
            item.extend_from_slice(&v.to_be_bytes());
        }
        put_option_reply(&mut reply, option, rep::INFO, &item);

        if requests.contains(&info::NAME) {
            item.clear();
            item.extend_from_slice(&info::NAME.to_be_bytes());
            item.extend_from_slice(export.name.as_bytes());
            put_option_reply(&mut reply, option, rep::INFO, &item);
        }
        if requests.contains(&info::DESCRIPTION) && !export.info.description.is_empty() {
            item.clear();
            item.extend_from_slice(&info::DESCRIPTION.to_be_bytes());
            item.extend_from_slice(export.info.description.as_bytes());
            put_option_reply(&mut reply, option, rep::INFO, &item);
        }
        put_option_reply(&mut reply, option, rep::ACK, &[]);

        if option == opt::GO {
            let negotiated = Negotiated {
                export: index,
                name: export.name.clone(),
                flags,
                block_size_agreed: requests.contains(&info::BLOCK_SIZE),
            };
            Outcome {
                reply,
                then: Then::Transmission(negotiated),
            }
        } else {
            continue_with(reply)
        }
    }

    fn lookup(&self, name: &str) -> Option<usize> {
        if name.is_empty() {
            return (!self.exports.is_empty()).then_some(0);
        }
        self.exports.iter().position(|e| e.name == name)
    }
}

fn continue_with(reply: Vec<u8>) -> Outcome {
    Outcome {
        reply,
        then: Then::Continue,
    }
}

fn len_u32(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// INFO/GO data: u32 name length, name, u16 count, count × u16 info types. `None` if the
/// lengths do not add up exactly.
fn parse_info_request(payload: &[u8]) -> Option<(String, Vec<u16>)> {
    let name_len = usize::try_from(be_u32(payload.get(..4)?, 0)).ok()?;
    let name_end = 4usize.checked_add(name_len)?;
    let name = std::str::from_utf8(payload.get(4..name_end)?)
        .ok()?
        .to_owned();
    let count = usize::from(be_u16(payload.get(name_end..name_end + 2)?, 0));
    let list = payload.get(name_end + 2..)?;
    if list.len() != count * 2 {
        return None;
    }
    let requests = list.chunks_exact(2).map(|c| be_u16(c, 0)).collect();
    Some((name, requests))
}

#[cfg(test)]
#[path = "negotiate_tests.rs"]
mod tests;
