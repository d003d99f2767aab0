//! The NBD server against real clients (qemu-io, nbdinfo, nbdcopy, fio) and against a
//! raw client that breaks the protocol on purpose. Each test runs its own server on a
//! temp UNIX socket (one uses TCP on 127.0.0.1).

mod nbd_common;

use std::sync::Arc;
use std::time::Duration;

use hast::nbd::{Backend, ExportInfo, ExportSet, FileBackend, NbdErrno, ServeOptions};
use hast_core::nbd::wire::{cmd, IHAVEOPT};
use nbd_common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: u64 = 1024 * 1024;

/// Pattern writes and reads, unaligned I/O, FUA, zeroes with and without unmap, discard,
/// flush and a burst of concurrent aio writes: each verified by qemu-io and then against
/// the backing file itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_reads_what_it_wrote() {
    if !have("qemu-io") {
        return;
    }
    let server = Server::start(4 * MIB).await;
    let uri = server.uri();
    qemu_io(
        &uri,
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "write -P 0x11 100001 3000",
            "read -P 0x11 100001 3000",
            "read -P 0 100000 1",
            "write -f -P 0x22 1M 128k",
            "read -P 0x22 1M 128k",
            "write -z 1M 64k",
            "read -P 0 1M 64k",
            "read -P 0x22 1088k 64k",
            "write -P 0x33 2M 64k",
            "write -z -u 2M 64k",
            "read -P 0 2M 64k",
            "discard 3M 64k",
            "flush",
        ],
    )
    .await;
    let mut aio = Vec::new();
    for i in 0..64 {
        aio.push(format!(
            "aio_write -P 0x{:02x} {} 4k",
            i + 1,
            3 * MIB + i * 4096
        ));
    }
    aio.push("aio_flush".into());
    for i in 0..64 {
        aio.push(format!("read -P 0x{:02x} {} 4k", i + 1, 3 * MIB + i * 4096));
    }
    let aio: Vec<&str> = aio.iter().map(String::as_str).collect();
    qemu_io(&uri, &aio).await;

    let disk = std::fs::read(&server.image).unwrap();
    assert!(disk[..65536].iter().all(|&b| b == 0xab));
    assert!(disk[100001..103001].iter().all(|&b| b == 0x11));
    assert!(disk[(MIB + 65536) as usize..(MIB + 131072) as usize]
        .iter()
        .all(|&b| b == 0x22));
    assert!(disk[(2 * MIB) as usize..(2 * MIB + 65536) as usize]
        .iter()
        .all(|&b| b == 0));
    assert_eq!(disk[(3 * MIB + 63 * 4096) as usize], 64);
    server.shutdown().await;
}

/// Same client over TCP on an ephemeral loopback port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_over_tcp() {
    if !have("qemu-io") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(MIB).unwrap();
    let backend = Arc::new(FileBackend::open(&image, false).unwrap());
    let addr = hast_core::config::Address::Tcp {
        family: hast_core::config::Family::V4,
        host: "127.0.0.1".into(),
        port: 0,
    };
    let handle = hast::nbd::NbdServer::start(&addr, ExportSet::single("r0", backend))
        .await
        .unwrap();
    let hast::nbd::ListenAddr::Tcp(sa) = handle.local_addr().clone() else {
        panic!()
    };
    let uri = format!("nbd://127.0.0.1:{}/r0", sa.port());
    qemu_io(
        &uri,
        &["write -P 0x5a 512 4k", "read -P 0x5a 512 4k", "flush"],
    )
    .await;
    handle.shutdown().await;
    assert_eq!(std::fs::read(&image).unwrap()[600], 0x5a);
}

/// nbdinfo sees the size, the flags we advertise and the block sizes; --list shows every
/// export on the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_reports_size_flags_and_block_sizes() {
    if !have("nbdinfo") {
        return;
    }
    let server = Server::start(3 * MIB).await;
    let out = run("nbdinfo", &["--json", &server.uri()]).await;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "r0");
    assert_eq!(e["export-size"], 3 * MIB);
    for yes in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(e[yes], true, "{yes}");
    }
    for no in ["is_read_only", "can_cache", "can_fast_zero", "can_df"] {
        assert_eq!(e[no], false, "{no}");
    }
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 * MIB);
    server.shutdown().await;

    // Two exports on one socket, the second read-only.
    let dir = tempfile::tempdir().unwrap();
    let mut set = ExportSet::new();
    for name in ["alpha", "beta"] {
        let image = dir.path().join(name);
        std::fs::File::create(&image).unwrap().set_len(MIB).unwrap();
        set.insert(
            name,
            Arc::new(FileBackend::open(&image, name == "beta").unwrap()),
        );
    }
    let sock = dir.path().join("s");
    let handle = start_on(&sock, set, ServeOptions::default()).await;
    let uri = format!("nbd+unix://?socket={}", sock.display());
    let out = run("nbdinfo", &["--list", "--json", &uri]).await;
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names: Vec<_> = v["exports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["export-name"].clone())
        .collect();
    assert_eq!(names, ["alpha", "beta"]);
    assert_eq!(v["exports"][1]["is_read_only"], true);
    // Writes to the read-only export fail with EPERM (payload consumed, stream in step).
    let mut s = raw_go(&sock, "beta").await;
    send_request(&mut s, cmd::WRITE, 1, 0, 512).await;
    s.write_all(&[7u8; 512]).await.unwrap();
    send_request(&mut s, cmd::READ, 2, 0, 512).await;
    assert_eq!(read_reply(&mut s).await, (NbdErrno::Eperm.code(), 1));
    assert_eq!(read_reply(&mut s).await, (0, 2));
    handle.shutdown().await;
}

/// 64 MiB of random data copied in with nbdcopy (multi-conn, many requests in flight)
/// and back out, byte for byte.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trip_64m() {
    if !have("nbdcopy") {
        return;
    }
    let server = Server::start(64 * MIB).await;
    let src = server.dir.path().join("src.img");
    let back = server.dir.path().join("back.img");
    let data = pseudo_random((64 * MIB) as usize, 0x1234_5678_9abc_def1);
    std::fs::write(&src, &data).unwrap();
    let out = run("nbdcopy", &[src.to_str().unwrap(), &server.uri()]).await;
    assert!(out.status.success());
    let out = run("nbdcopy", &[&server.uri(), back.to_str().unwrap()]).await;
    assert!(out.status.success());
    assert!(std::fs::read(&back).unwrap() == data, "copy back differs");
    assert!(
        std::fs::read(&server.image).unwrap() == data,
        "backing file differs"
    );
    server.shutdown().await;
}

/// fio's nbd engine: four jobs of random reads and writes at queue depth 32, each on its
/// own region, verified with crc32c.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_randrw_verifies() {
    if !have("fio") {
        return;
    }
    let server = Server::start(16 * MIB).await;
    let uri = format!("--uri={}", server.uri());
    let out = run(
        "fio",
        &[
            "--name=nbd",
            "--ioengine=nbd",
            &uri,
            "--rw=randrw",
            "--bs=4k",
            "--size=4M",
            "--offset_increment=4M",
            "--numjobs=4",
            "--iodepth=32",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--group_reporting",
        ],
    )
    .await;
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("err= 0"), "fio reported errors");
    server.shutdown().await;
}

/// After each misbehaviour the server is still up and a fresh client still works.
async fn still_serves(server: &Server) {
    if have("qemu-io") {
        qemu_io(
            &server.uri(),
            &["write -P 0x77 8k 4k", "read -P 0x77 8k 4k"],
        )
        .await;
    } else {
        let mut s = raw_go(&server.sock, "r0").await;
        send_request(&mut s, cmd::READ, 1, 0, 512).await;
        assert_eq!(read_reply(&mut s).await, (0, 1));
    }
}

/// Garbage instead of client flags, and a bad option magic, are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_handshake_is_dropped() {
    let server = Server::start(MIB).await;
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[
            0, 0, 0, 1, 0xde, 0xad, 0xbe, 0xef, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ][..],
    ] {
        let mut s = tokio::net::UnixStream::connect(&server.sock).await.unwrap();
        let mut greeting = [0u8; 18];
        s.read_exact(&mut greeting).await.unwrap();
        s.write_all(garbage).await.unwrap();
        assert!(closed_by_server(&mut s).await);
    }
    still_serves(&server).await;
    server.shutdown().await;
}

/// A client that never answers the greeting is dropped after the handshake timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_client_times_out() {
    let options = ServeOptions {
        handshake_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    let server = Server::start_with(MIB, |_| {}, options).await;
    let mut s = tokio::net::UnixStream::connect(&server.sock).await.unwrap();
    let started = std::time::Instant::now();
    assert!(closed_by_server(&mut s).await);
    assert!(started.elapsed() >= Duration::from_millis(250));
    still_serves(&server).await;
    server.shutdown().await;
}

/// Unknown options get ERR_UNSUP and negotiation continues; ABORT is acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_option_then_abort() {
    let server = Server::start(MIB).await;
    let mut s = tokio::net::UnixStream::connect(&server.sock).await.unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).await.unwrap();
    s.write_all(&1u32.to_be_bytes()).await.unwrap();
    for (option, expected) in [
        (8u32, hast_core::nbd::wire::rep::ERR_UNSUP),
        (2, hast_core::nbd::wire::rep::ACK),
    ] {
        let mut o = IHAVEOPT.to_be_bytes().to_vec();
        o.extend_from_slice(&option.to_be_bytes());
        o.extend_from_slice(&0u32.to_be_bytes());
        s.write_all(&o).await.unwrap();
        let mut r = [0u8; 20];
        s.read_exact(&mut r).await.unwrap();
        assert_eq!(u32::from_be_bytes(r[12..16].try_into().unwrap()), expected);
    }
    assert!(closed_by_server(&mut s).await);
    server.shutdown().await;
}

/// Requests past the end: READ gets EINVAL, WRITE gets ENOSPC with its payload consumed
/// (the next request is still understood); unknown commands get EINVAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_the_end_and_unknown_commands_get_errors() {
    let server = Server::start(MIB).await;
    let mut s = raw_go(&server.sock, "r0").await;
    send_request(&mut s, cmd::READ, 1, MIB - 512, 1024).await;
    assert_eq!(read_reply(&mut s).await, (NbdErrno::Einval.code(), 1));
    send_request(&mut s, cmd::WRITE, 2, MIB, 4096).await;
    s.write_all(&[0xee; 4096]).await.unwrap();
    assert_eq!(read_reply(&mut s).await, (NbdErrno::Enospc.code(), 2));
    send_request(&mut s, 42, 3, 0, 0).await;
    assert_eq!(read_reply(&mut s).await, (NbdErrno::Einval.code(), 3));
    send_request(&mut s, cmd::READ, 4, MIB - 4, 4).await;
    assert_eq!(read_reply(&mut s).await, (0, 4));
    let mut data = [1u8; 4];
    s.read_exact(&mut data).await.unwrap();
    assert_eq!(data, [0; 4]);
    // DISC: no reply, the server closes.
    send_request(&mut s, cmd::DISC, 5, 0, 0).await;
    assert!(closed_by_server(&mut s).await);
    still_serves(&server).await;
    server.shutdown().await;
}

/// A 2 GiB WRITE closes the connection without the server reading (or allocating) it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_write_closes_the_connection() {
    let server = Server::start(MIB).await;
    let mut s = raw_go(&server.sock, "r0").await;
    send_request(&mut s, cmd::WRITE, 1, 0, 1 << 31).await;
    s.write_all(&[0u8; 4096]).await.unwrap();
    assert!(closed_by_server(&mut s).await);
    still_serves(&server).await;
    server.shutdown().await;
}

/// A client that vanishes in the middle of a WRITE payload: nothing of it is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_mid_payload_writes_nothing() {
    let server = Server::start(MIB).await;
    let mut s = raw_go(&server.sock, "r0").await;
    send_request(&mut s, cmd::WRITE, 1, 64 * 1024, 65536).await;
    s.write_all(&[0xcc; 1000]).await.unwrap();
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let disk = std::fs::read(&server.image).unwrap();
    assert!(
        disk.iter().all(|&b| b == 0),
        "partial write reached the disk"
    );
    still_serves(&server).await;
    server.shutdown().await;
}

/// A backend whose reads at offset 0 are slow, to observe concurrency.
struct SlowAtZero(FileBackend);

impl Backend for SlowAtZero {
    fn info(&self) -> ExportInfo {
        self.0.info()
    }
    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, NbdErrno> {
        if offset == 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        self.0.read(offset, len).await
    }
    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), NbdErrno> {
        self.0.write(offset, data, fua).await
    }
    async fn flush(&self) -> Result<(), NbdErrno> {
        self.0.flush().await
    }
    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), NbdErrno> {
        self.0.trim(offset, len, fua).await
    }
    async fn write_zeroes(&self, o: u64, l: u32, t: bool, fua: bool) -> Result<(), NbdErrno> {
        self.0.write_zeroes(o, l, t, fua).await
    }
}

/// Replies go out in completion order, by cookie; on shutdown the slow request in flight
/// is still answered and the socket file is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_out_of_order_and_shutdown_drains() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.img");
    std::fs::File::create(&image).unwrap().set_len(MIB).unwrap();
    let backend = SlowAtZero(FileBackend::open(&image, false).unwrap());
    let sock = dir.path().join("s");
    let handle = start_on(
        &sock,
        ExportSet::single("r0", Arc::new(backend)),
        ServeOptions::default(),
    )
    .await;
    let mut s = raw_go(&sock, "r0").await;
    send_request(&mut s, cmd::READ, 100, 0, 512).await;
    send_request(&mut s, cmd::READ, 200, 4096, 512).await;
    assert_eq!(read_reply(&mut s).await, (0, 200));
    let mut data = vec![0u8; 512];
    s.read_exact(&mut data).await.unwrap();

    send_request(&mut s, cmd::READ, 300, 0, 512).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let shutdown = tokio::spawn(handle.shutdown());
    // Both slow reads are answered; their relative order is up to the blocking pool.
    let mut cookies = Vec::new();
    for _ in 0..2 {
        let (error, cookie) = read_reply(&mut s).await;
        assert_eq!(error, 0);
        cookies.push(cookie);
        s.read_exact(&mut data).await.unwrap();
    }
    cookies.sort();
    assert_eq!(cookies, [100, 300]);
    assert!(closed_by_server(&mut s).await);
    shutdown.await.unwrap();
    assert!(!sock.exists(), "socket file left behind");
}

/// A stale socket file from a dead server is replaced; a live one or a regular file is
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_socket_replaced_live_one_refused() {
    let server = Server::start(MIB).await;
    let backend = Arc::new(FileBackend::open(&server.image, false).unwrap());
    let again = hast::nbd::NbdServer::start(
        &hast_core::config::Address::Unix(server.sock.clone()),
        ExportSet::single("r0", backend.clone()),
    )
    .await;
    assert!(matches!(again, Err(hast::nbd::ListenError::InUse(_))));
    let not_socket = hast::nbd::NbdServer::start(
        &hast_core::config::Address::Unix(server.image.clone()),
        ExportSet::single("r0", backend.clone()),
    )
    .await;
    assert!(matches!(
        not_socket,
        Err(hast::nbd::ListenError::NotASocket(_))
    ));

    let stale = server.dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let handle = start_on(
        &stale,
        ExportSet::single("r0", backend),
        ServeOptions::default(),
    )
    .await;
    let mut s = raw_go(&stale, "r0").await;
    send_request(&mut s, cmd::FLUSH, 9, 0, 0).await;
    assert_eq!(read_reply(&mut s).await, (0, 9));
    handle.shutdown().await;
    server.shutdown().await;
}

/// A client that floods READs and never reads the replies cannot hold shutdown hostage:
/// after the grace period its replies are dropped and the server stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_does_not_wait_forever_for_a_client_not_reading() {
    let options = ServeOptions {
        shutdown_grace: Duration::from_millis(300),
        ..Default::default()
    };
    let server = Server::start_with(MIB, |_| {}, options).await;
    let mut s = raw_go(&server.sock, "r0").await;
    for cookie in 0..200 {
        send_request(&mut s, cmd::READ, cookie, 0, MIB as u32).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(5), server.shutdown())
        .await
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(250));
    drop(s);
}
