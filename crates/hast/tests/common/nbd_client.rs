//! A blocking NBD client for process tests: fixed-newstyle handshake with `NBD_OPT_GO`,
//! simple replies only, over a UNIX socket or TCP. [`NbdConn`] does one request at a time;
//! [`Pipeline`] keeps many in flight (the caller writes requests, a reader thread matches
//! the replies by cookie). It does not retry, reconnect or interpret data: that is the
//! ledger's job (`ledger.rs`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness: a failed setup should panic loudly

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use hast_core::nbd::wire::{self, client_flags, cmd, cmd_flags, handshake_flags, opt, rep};

/// How long a synchronous request may wait for its reply before the connection counts as
/// broken: long enough for a daemon slowed down by strace, short enough that a hung
/// daemon fails the test instead of hanging it.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a request (or the handshake) failed.
#[derive(Debug)]
pub enum NbdError {
    /// The server answered with an error reply carrying this errno (wire value: 5 is EIO).
    /// The connection is still usable.
    Errno(u32),
    /// The connection failed or ended (EOF, reset, timeout, shut down by us): the request's
    /// outcome is unknown and the connection is gone.
    Io(io::Error),
    /// The server broke the protocol or refused the export; the connection is gone.
    Protocol(String),
}

impl NbdError {
    /// The errno of an error reply, None for a broken connection.
    pub fn errno(&self) -> Option<u32> {
        match self {
            NbdError::Errno(e) => Some(*e),
            _ => None,
        }
    }

    /// True when the connection is gone (everything but an error reply).
    pub fn is_broken(&self) -> bool {
        !matches!(self, NbdError::Errno(_))
    }
}

/// The protocol's names for the errno values a reply may carry.
pub fn errno_name(errno: u32) -> &'static str {
    match errno {
        1 => "EPERM",
        5 => "EIO",
        12 => "ENOMEM",
        22 => "EINVAL",
        28 => "ENOSPC",
        75 => "EOVERFLOW",
        95 => "ENOTSUP",
        108 => "ESHUTDOWN",
        _ => "unknown errno",
    }
}

impl std::fmt::Display for NbdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NbdError::Errno(e) => write!(f, "error reply {} ({e})", errno_name(*e)),
            NbdError::Io(e) => write!(f, "connection broken: {e}"),
            NbdError::Protocol(m) => write!(f, "protocol error: {m}"),
        }
    }
}

impl std::error::Error for NbdError {}

impl From<io::Error> for NbdError {
    fn from(e: io::Error) -> NbdError {
        NbdError::Io(e)
    }
}

/// The socket, whichever kind.
#[derive(Debug)]
enum Stream {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Stream {
    fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
        })
    }

    fn shutdown(&self) {
        let _ = match self {
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
        };
    }

    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Unix(s) => s.set_read_timeout(t),
            Stream::Tcp(s) => s.set_read_timeout(t),
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.read(buf),
            Stream::Tcp(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Unix(s) => s.write(buf),
            Stream::Tcp(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn be_u16(b: &[u8]) -> u16 {
    u16::from_be_bytes(b[..2].try_into().unwrap())
}
fn be_u32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}
fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

/// One request header, encoded.
fn request(command: u16, flags: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    wire::RequestHeader {
        flags,
        command,
        cookie,
        offset,
        length,
    }
    .encode()
    .to_vec()
}

/// Reads one simple reply header: (errno, cookie).
fn read_reply_header(s: &mut Stream) -> Result<(u32, u64), NbdError> {
    let mut h = [0u8; wire::SIMPLE_REPLY_LEN];
    s.read_exact(&mut h)?;
    if be_u32(&h) != wire::SIMPLE_REPLY_MAGIC {
        return Err(NbdError::Protocol(format!(
            "bad reply magic {:#010x} (structured reply?)",
            be_u32(&h)
        )));
    }
    Ok((be_u32(&h[4..]), be_u64(&h[8..])))
}

/// A connected NBD client in transmission phase, one request at a time.
#[derive(Debug)]
pub struct NbdConn {
    stream: Stream,
    size: u64,
    flags: u16,
    export: String,
    next_cookie: u64,
}

impl NbdConn {
    /// Connects to `target` (a UNIX socket path if it contains a `/`, else TCP
    /// `host:port`) and enters transmission on `export` with `NBD_OPT_GO`.
    pub fn connect(target: &str, export: &str) -> Result<NbdConn, NbdError> {
        let stream = if target.contains('/') {
            Stream::Unix(UnixStream::connect(target)?)
        } else {
            let s = TcpStream::connect(target)?;
            s.set_nodelay(true)?;
            Stream::Tcp(s)
        };
        NbdConn::handshake(stream, export)
    }

    /// Connects by URI: `nbd+unix:///EXPORT?socket=PATH` or `nbd://HOST:PORT/EXPORT`
    /// (what `faults::uri` and qemu use).
    pub fn open_uri(uri: &str) -> Result<NbdConn, NbdError> {
        let bad = || NbdError::Protocol(format!("unsupported NBD URI {uri}"));
        if let Some(rest) = uri.strip_prefix("nbd+unix:///") {
            let (export, query) = rest.split_once('?').ok_or_else(bad)?;
            let socket = query.strip_prefix("socket=").ok_or_else(bad)?;
            NbdConn::connect(socket, export)
        } else if let Some(rest) = uri.strip_prefix("nbd://") {
            let (hostport, export) = rest.split_once('/').unwrap_or((rest, ""));
            NbdConn::connect(hostport, export)
        } else {
            Err(bad())
        }
    }

    fn handshake(mut s: Stream, export: &str) -> Result<NbdConn, NbdError> {
        s.set_read_timeout(Some(REPLY_TIMEOUT))?;
        let mut greeting = [0u8; wire::GREETING_LEN];
        s.read_exact(&mut greeting)?;
        if be_u64(&greeting) != wire::NBDMAGIC || be_u64(&greeting[8..]) != wire::IHAVEOPT {
            return Err(NbdError::Protocol("not a newstyle NBD server".into()));
        }
        let hflags = be_u16(&greeting[16..]);
        if hflags & handshake_flags::FIXED_NEWSTYLE == 0 {
            return Err(NbdError::Protocol("server is not fixed newstyle".into()));
        }
        let mut cflags = client_flags::FIXED_NEWSTYLE;
        if hflags & handshake_flags::NO_ZEROES != 0 {
            cflags |= client_flags::NO_ZEROES;
        }
        // GO payload: name length, name, no information requests.
        let mut payload = (export.len() as u32).to_be_bytes().to_vec();
        payload.extend_from_slice(export.as_bytes());
        payload.extend_from_slice(&0u16.to_be_bytes());
        let mut out = cflags.to_be_bytes().to_vec();
        out.extend_from_slice(&wire::IHAVEOPT.to_be_bytes());
        out.extend_from_slice(&opt::GO.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(&payload);
        s.write_all(&out)?;

        let mut export_info = None;
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h)?;
            let (magic, reply_type, len) = (be_u64(&h), be_u32(&h[12..]), be_u32(&h[16..]));
            if magic != wire::OPTION_REPLY_MAGIC || len > 64 * 1024 {
                return Err(NbdError::Protocol(format!(
                    "bad option reply (magic {magic:#x}, length {len})"
                )));
            }
            let mut body = vec![0u8; len as usize];
            s.read_exact(&mut body)?;
            match reply_type {
                rep::ACK => break,
                rep::INFO if body.len() >= 12 && be_u16(&body) == wire::info::EXPORT => {
                    export_info = Some((be_u64(&body[2..]), be_u16(&body[10..])));
                }
                rep::INFO => {}
                t if t & (1 << 31) != 0 => {
                    return Err(NbdError::Protocol(format!(
                        "server refused export {export:?}: reply type {t:#x}: {}",
                        String::from_utf8_lossy(&body)
                    )));
                }
                t => return Err(NbdError::Protocol(format!("unexpected reply type {t}"))),
            }
        }
        let (size, flags) = export_info
            .ok_or_else(|| NbdError::Protocol("GO acknowledged without NBD_INFO_EXPORT".into()))?;
        Ok(NbdConn {
            stream: s,
            size,
            flags,
            export: export.to_string(),
            next_cookie: 1,
        })
    }

    /// Export size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Transmission flags (`wire::tflags::*`).
    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// True if every bit of `flag` (`wire::tflags::*`) was advertised.
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag == flag
    }

    pub fn export(&self) -> &str {
        &self.export
    }

    /// Sends one request and waits for its reply; returns the data of a READ.
    fn call(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<Vec<u8>, NbdError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let mut out = request(command, flags, cookie, offset, length);
        out.extend_from_slice(payload);
        self.stream.write_all(&out)?;
        let (errno, got) = read_reply_header(&mut self.stream)?;
        if got != cookie {
            return Err(NbdError::Protocol(format!(
                "reply for cookie {got}, expected {cookie}"
            )));
        }
        if errno != 0 {
            return Err(NbdError::Errno(errno));
        }
        let mut data = Vec::new();
        if command == cmd::READ {
            data = vec![0u8; length as usize];
            self.stream.read_exact(&mut data)?;
        }
        Ok(data)
    }

    pub fn read(&mut self, offset: u64, len: u32) -> Result<Vec<u8>, NbdError> {
        self.call(cmd::READ, 0, offset, len, &[])
    }

    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<(), NbdError> {
        let flags = if fua { cmd_flags::FUA } else { 0 };
        self.call(cmd::WRITE, flags, offset, data.len() as u32, data)
            .map(drop)
    }

    pub fn flush(&mut self) -> Result<(), NbdError> {
        self.call(cmd::FLUSH, 0, 0, 0, &[]).map(drop)
    }

    pub fn trim(&mut self, offset: u64, len: u32) -> Result<(), NbdError> {
        self.call(cmd::TRIM, 0, offset, len, &[]).map(drop)
    }

    pub fn write_zeroes(&mut self, offset: u64, len: u32) -> Result<(), NbdError> {
        self.call(cmd::WRITE_ZEROES, 0, offset, len, &[]).map(drop)
    }

    /// Sends `NBD_CMD_DISC` and closes.
    pub fn disconnect(mut self) {
        let _ = self
            .stream
            .write_all(&request(cmd::DISC, 0, self.next_cookie, 0, 0));
        self.stream.shutdown();
    }

    /// Turns the connection into a pipeline with a reader thread.
    pub fn into_pipeline(self) -> Pipeline {
        Pipeline::new(self)
    }
}

/// The answer to one pipelined request: the data of a READ, empty otherwise.
#[derive(Debug)]
pub struct Reply {
    pub cookie: u64,
    pub result: Result<Vec<u8>, NbdError>,
}

/// Requests in flight, shared by the submitting side and the reader thread. Once the
/// connection is broken no new request is accepted, so that the reader's final sweep
/// answers every request that was accepted.
#[derive(Default)]
struct InFlight {
    /// cookie -> bytes of data that follow a successful reply (READ length, else 0).
    pending: HashMap<u64, u32>,
    broken: Option<String>,
}

/// Many requests in flight on one connection. Guarantee: every `submit` that returns
/// `Ok(cookie)` gets exactly one [`Reply`] with that cookie (an `Io` error if the
/// connection breaks first); `Err` means no reply will come.
pub struct Pipeline {
    writer: Stream,
    shared: Arc<Mutex<InFlight>>,
    replies: Receiver<Reply>,
    reader: Option<JoinHandle<()>>,
    size: u64,
    flags: u16,
    next_cookie: u64,
}

impl Pipeline {
    fn new(conn: NbdConn) -> Pipeline {
        // The reader blocks for as long as the caller wants: the caller decides when a
        // silent server is dead (Pipeline::shutdown).
        conn.stream.set_read_timeout(None).unwrap();
        let reader_stream = conn.stream.try_clone().unwrap();
        let shared = Arc::new(Mutex::new(InFlight::default()));
        let (tx, rx) = mpsc::channel();
        let reader = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("nbd-reader".into())
                .spawn(move || read_replies(reader_stream, &shared, &tx))
                .unwrap()
        };
        Pipeline {
            writer: conn.stream,
            shared,
            replies: rx,
            reader: Some(reader),
            size: conn.size,
            flags: conn.flags,
            next_cookie: conn.next_cookie,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn flags(&self) -> u16 {
        self.flags
    }

    /// Requests sent and not answered yet.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().unwrap().pending.len()
    }

    /// Sends one request (`payload` for WRITE). See the type's guarantee.
    pub fn submit(
        &mut self,
        command: u16,
        flags: u16,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) -> Result<u64, NbdError> {
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        {
            let mut s = self.shared.lock().unwrap();
            if let Some(why) = &s.broken {
                return Err(NbdError::Io(io::Error::other(why.clone())));
            }
            let data_len = if command == cmd::READ { length } else { 0 };
            s.pending.insert(cookie, data_len);
        }
        let mut out = request(command, flags, cookie, offset, length);
        out.extend_from_slice(payload);
        if let Err(e) = self.writer.write_all(&out) {
            // Wake the reader so it sweeps; whoever removes the cookie reports it.
            self.writer.shutdown();
            if self
                .shared
                .lock()
                .unwrap()
                .pending
                .remove(&cookie)
                .is_some()
            {
                return Err(NbdError::Io(e));
            }
        }
        Ok(cookie)
    }

    /// The next reply, waiting at most `timeout`; None on timeout or when nothing can
    /// come any more.
    pub fn recv_timeout(&self, timeout: Duration) -> Option<Reply> {
        self.replies.recv_timeout(timeout).ok()
    }

    /// A reply that already arrived, if any.
    pub fn try_recv(&self) -> Option<Reply> {
        self.replies.try_recv().ok()
    }

    /// Breaks the connection now: every request in flight is answered with an `Io` error.
    pub fn shutdown(&self) {
        self.writer.shutdown();
    }

    /// Sends `NBD_CMD_DISC` and closes at once (a server that failed to close after DISC
    /// cannot hang us). Meant for when nothing is in flight: requests still in flight are
    /// answered with an Io error, replies not received yet are dropped.
    pub fn close(mut self) {
        let disc = request(cmd::DISC, 0, self.next_cookie, 0, 0);
        let _ = self.writer.write_all(&disc);
        self.writer.shutdown();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        if let Some(r) = self.reader.take() {
            self.writer.shutdown();
            let _ = r.join();
        }
    }
}

/// The reader thread: delivers replies until the connection ends, then answers every
/// request still in flight with the reason.
fn read_replies(mut s: Stream, shared: &Mutex<InFlight>, tx: &Sender<Reply>) {
    let why = loop {
        let (errno, cookie) = match read_reply_header(&mut s) {
            Ok(h) => h,
            Err(NbdError::Io(e)) => break e.to_string(),
            Err(e) => break e.to_string(),
        };
        let Some(data_len) = shared.lock().unwrap().pending.remove(&cookie) else {
            break format!("reply for unknown cookie {cookie}");
        };
        let result = if errno != 0 {
            Err(NbdError::Errno(errno))
        } else {
            let mut data = vec![0u8; data_len as usize];
            match s.read_exact(&mut data) {
                Ok(()) => Ok(data),
                Err(e) => {
                    let why = format!("in READ data: {e}");
                    let _ = tx.send(Reply {
                        cookie,
                        result: Err(NbdError::Io(io::Error::other(why.clone()))),
                    });
                    break why;
                }
            }
        };
        let _ = tx.send(Reply { cookie, result });
    };
    s.shutdown();
    let mut st = shared.lock().unwrap();
    st.broken = Some(why.clone());
    for (cookie, _) in st.pending.drain() {
        let _ = tx.send(Reply {
            cookie,
            result: Err(NbdError::Io(io::Error::other(why.clone()))),
        });
    }
}
