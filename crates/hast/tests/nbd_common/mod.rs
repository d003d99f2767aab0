//! Helpers for the NBD server tests: a server on a temp file and socket, real-client
//! runners that skip when a tool is missing (fail under CI), and a raw protocol client
//! for misbehaving on purpose.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test helpers: a failed setup should panic loudly

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;

use hast::nbd::{Backend, ExportSet, FileBackend, NbdServer, NbdServerHandle, ServeOptions};
use hast_core::config::Address;
use hast_core::nbd::wire::{self, RequestHeader};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// True if `bin` is on PATH. Missing: under `CI` that is a failure, elsewhere the test is
/// skipped with a printed reason.
pub fn have(bin: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()));
    if !found {
        assert!(
            std::env::var_os("CI").is_none(),
            "{bin} is required under CI but missing"
        );
        eprintln!("SKIP: {bin} not installed");
    }
    found
}

pub struct Server {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub sock: PathBuf,
    pub handle: Option<NbdServerHandle>,
}

impl Server {
    /// A server exporting a zero-filled `size`-byte file as `r0` on a temp UNIX socket.
    pub async fn start(size: u64) -> Server {
        Server::start_with(size, |_| {}, ServeOptions::default()).await
    }

    pub async fn start_with(
        size: u64,
        tweak: impl FnOnce(&mut FileBackend),
        options: ServeOptions,
    ) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .set_len(size)
            .unwrap();
        let mut backend = FileBackend::open(&image, false).unwrap();
        tweak(&mut backend);
        let sock = dir.path().join("nbd.sock");
        let handle = start_on(&sock, ExportSet::single("r0", Arc::new(backend)), options).await;
        Server {
            dir,
            image,
            sock,
            handle: Some(handle),
        }
    }

    pub fn uri(&self) -> String {
        format!("nbd+unix:///r0?socket={}", self.sock.display())
    }

    pub async fn shutdown(mut self) {
        if let Some(h) = self.handle.take() {
            h.shutdown().await;
        }
    }
}

pub async fn start_on<B: Backend>(
    sock: &Path,
    exports: ExportSet<B>,
    options: ServeOptions,
) -> NbdServerHandle {
    NbdServer::start_with(&Address::Unix(sock.to_owned()), exports, options)
        .await
        .unwrap()
}

pub async fn run(cmd: &str, args: &[&str]) -> Output {
    // std's Command on the blocking pool: tokio's `process` feature is not enabled.
    let (c, a) = (
        cmd.to_owned(),
        args.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    let out = tokio::task::spawn_blocking(move || std::process::Command::new(c).args(a).output())
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "$ {cmd} {}\n{}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs qemu-io commands against `uri` and insists that every one succeeded.
pub async fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in commands {
        args.push("-c");
        args.push(c);
    }
    args.push(uri);
    let out = run("qemu-io", &args).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-io failed: {text}");
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("fail") && !lower.contains("error"),
        "qemu-io reported a problem: {text}"
    );
    text
}

/// A fixed pseudo-random byte stream (xorshift), so data tests need no RNG crate.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A hand-driven client: fixed newstyle, NO_ZEROES, then GO on `name`.
pub async fn raw_go(sock: &Path, name: &str) -> UnixStream {
    let mut s = UnixStream::connect(sock).await.unwrap();
    let mut greeting = [0u8; wire::GREETING_LEN];
    s.read_exact(&mut greeting).await.unwrap();
    assert_eq!(greeting, wire::greeting());
    s.write_all(&3u32.to_be_bytes()).await.unwrap();
    let mut payload = (name.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    let mut opt = wire::IHAVEOPT.to_be_bytes().to_vec();
    opt.extend_from_slice(&wire::opt::GO.to_be_bytes());
    opt.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    opt.extend_from_slice(&payload);
    s.write_all(&opt).await.unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).await.unwrap();
        let reply_type = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).await.unwrap();
        match reply_type {
            wire::rep::INFO => continue,
            wire::rep::ACK => return s,
            other => panic!("GO failed with reply type {other:#x}"),
        }
    }
}

pub async fn send_request(s: &mut UnixStream, command: u16, cookie: u64, offset: u64, length: u32) {
    let h = RequestHeader {
        flags: 0,
        command,
        cookie,
        offset,
        length,
    };
    s.write_all(&h.encode()).await.unwrap();
}

/// Reads one simple reply header: (error, cookie).
pub async fn read_reply(s: &mut UnixStream) -> (u32, u64) {
    let mut r = [0u8; wire::SIMPLE_REPLY_LEN];
    s.read_exact(&mut r).await.unwrap();
    assert_eq!(
        u32::from_be_bytes(r[0..4].try_into().unwrap()),
        wire::SIMPLE_REPLY_MAGIC
    );
    (
        u32::from_be_bytes(r[4..8].try_into().unwrap()),
        u64::from_be_bytes(r[8..16].try_into().unwrap()),
    )
}

/// True once the server has closed the connection (EOF or reset) within a few seconds.
pub async fn closed_by_server(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 64];
    let deadline = std::time::Duration::from_secs(5);
    loop {
        match tokio::time::timeout(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}
