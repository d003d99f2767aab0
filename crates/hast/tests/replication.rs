//! Two hastd processes on loopback (`--node a` and `--node b`) replicating one resource:
//! mirrored writes in each replication mode, byte-identical data areas, role swap,
//! refused strangers, losing and regaining the secondary.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{fio_verify, have_tool, pseudo_random, qemu_io, run, sparse_file, Cluster, Daemon};

const MIB: u64 = 1 << 20;

fn config(mode: &str, checksum: &str, compression: &str) -> String {
    format!(
        "replication {mode}\nchecksum {checksum}\ncompression {compression}\ntimeout 5\n\
         on a {{ control uds://@DIR@/a.ctl listen tcp://127.0.0.1:@PA@ }}\n\
         on b {{ control uds://@DIR@/b.ctl listen tcp://127.0.0.1:@PB@ }}\n\
         resource r0 {{\n\
         \ton a {{ local @DIR@/a.img remote tcp://127.0.0.1:@PB@ export @DIR@/a.sock }}\n\
         \ton b {{ local @DIR@/b.img remote tcp://127.0.0.1:@PA@ export @DIR@/b.sock }}\n\
         }}\n"
    )
}

/// Both nodes created and running, b secondary, a primary, connected.
fn pair(text: &str) -> (Cluster, Daemon, Daemon) {
    let cluster = Cluster::new(text);
    for node in ["a", "b"] {
        sparse_file(&cluster.path(&format!("{node}.img")), 96 * MIB);
        cluster.hastctl_ok(node, &["create", "r0"]);
    }
    let a = cluster.start("a");
    let b = cluster.start("b");
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    wait_status(&cluster, "a", "complete");
    wait_status(&cluster, "b", "complete");
    (cluster, a, b)
}

fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn wait_status(cluster: &Cluster, node: &str, status: &str) {
    wait_for(
        &format!("{node} to be {status}"),
        Duration::from_secs(30),
        || cluster.status_json(node, "r0")["status"] == status,
    );
}

fn uri(cluster: &Cluster, node: &str) -> String {
    format!(
        "nbd+unix:///r0?socket={}",
        cluster.path(&format!("{node}.sock")).display()
    )
}

/// The data areas of both nodes (metadata and bitmap excluded).
fn data_areas(cluster: &Cluster) -> (Vec<u8>, Vec<u8>) {
    let dump = cluster.hastctl_ok("a", &["dump", "--json", "r0"]);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    let offset = v[0]["offset"].as_u64().unwrap() as usize;
    let a = std::fs::read(cluster.path("a.img")).unwrap();
    let b = std::fs::read(cluster.path("b.img")).unwrap();
    (a[offset..].to_vec(), b[offset..].to_vec())
}

fn assert_identical(cluster: &Cluster) {
    let (a, b) = data_areas(cluster);
    assert_eq!(a.len(), b.len());
    if let Some(pos) = a.iter().zip(&b).position(|(x, y)| x != y) {
        panic!(
            "data areas differ first at byte {pos} (extent {})",
            pos as u64 / (2 * MIB)
        );
    }
}

fn nbdcopy(from: &str, to: &str) {
    let out = run(Command::new("nbdcopy").arg(from).arg(to));
    assert!(
        out.status.success(),
        "nbdcopy {from} {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn mirrored_writes(mode: &str, checksum: &str, compression: &str) {
    if !have_tool("qemu-io") || !have_tool("nbdcopy") {
        return;
    }
    let (cluster, _a, _b) = pair(&config(mode, checksum, compression));
    let u = uri(&cluster, "a");
    // 48 MiB of random data with nbdcopy while a second client does pattern, FUA,
    // zeroes, discard and flush elsewhere.
    let data = pseudo_random((48 * MIB) as usize, 42);
    let input = cluster.path("in.bin");
    std::fs::write(&input, &data).unwrap();
    let u2 = u.clone();
    let copier = std::thread::spawn(move || nbdcopy(input.to_str().unwrap(), &u2));
    qemu_io(
        &u,
        &[
            "write -P 0xab 64M 64k",
            "write -P 0x11 65M 3000",
            "write -f -P 0x22 66M 128k",
            "write -P 0x33 67M 1M",
            "write -z 67M 64k",
            "write -P 0x44 68M 1M",
            "discard 68M 1M",
            "write -P 0x55 70M 256k",
            "write -z -u 70M 4k",
            "flush",
        ],
    );
    copier.join().unwrap();
    qemu_io(
        &u,
        &[
            "read -P 0xab 64M 64k",
            "read -P 0 67M 64k",
            "read -P 0x33 68672k 4k",
        ],
    );
    // Every write was acknowledged and flushed: the secondary has all of it.
    wait_for("writes to settle", Duration::from_secs(30), || {
        cluster.status_json("a", "r0")["dirty"] == 0
    });
    assert_identical(&cluster);
    let (a, _) = data_areas(&cluster);
    assert!(a[..data.len()] == data[..], "primary lost data");
    let sec = cluster.status_json("b", "r0");
    assert!(sec["statistics"]["writes"].as_u64().unwrap() > 40, "{sec}");
    assert!(sec["statistics"]["flushes"].as_u64().unwrap() >= 1, "{sec}");
    assert!(sec["statistics"]["deletes"].as_u64().unwrap() >= 1, "{sec}");
}

#[test]
fn fullsync_mirrors_writes_with_sha256_and_lzf() {
    mirrored_writes("fullsync", "sha256", "lzf");
}

#[test]
fn memsync_mirrors_writes_with_crc32c_and_lz4() {
    mirrored_writes("memsync", "crc32c", "lz4");
}

#[test]
fn async_mirrors_writes_with_crc32_and_hole() {
    mirrored_writes("async", "crc32", "hole");
}

#[test]
fn fio_verifies_through_a_replicated_export() {
    if !have_tool("fio") {
        return;
    }
    let (cluster, _a, _b) = pair(&config("memsync", "none", "hole"));
    fio_verify(&uri(&cluster, "a"));
    qemu_io(&uri(&cluster, "a"), &["flush"]);
    wait_for("writes to settle", Duration::from_secs(30), || {
        cluster.status_json("a", "r0")["dirty"] == 0
    });
    assert_identical(&cluster);
}

#[test]
fn role_swap_serves_the_same_data() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, _a, _b) = pair(&config("fullsync", "none", "hole"));
    qemu_io(&uri(&cluster, "a"), &["write -P 0x5a 1M 512k", "flush"]);
    cluster.hastctl_ok("a", &["role", "secondary", "r0"]);
    cluster.hastctl_ok("b", &["role", "primary", "r0"]);
    wait_status(&cluster, "b", "complete");
    wait_status(&cluster, "a", "complete");
    qemu_io(
        &uri(&cluster, "b"),
        &["read -P 0x5a 1M 512k", "write -P 0xa5 4M 64k", "flush"],
    );
    // Nothing had to be synchronised for the swap: the counters agreed.
    let st = cluster.status_json("b", "r0");
    assert_eq!(st["sync"], serde_json::Value::Null, "{st}");
    wait_for("writes to settle", Duration::from_secs(30), || {
        cluster.status_json("b", "r0")["dirty"] == 0
    });
    assert_identical(&cluster);
}

/// Sends one framed handshake message (hast_core's codec) and returns the stream.
fn send_hello(addr: SocketAddr, resource: &str) -> TcpStream {
    use hast_core::proto::handshake::{Hello, VERSIONS};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let hello = Hello {
        versions: VERSIONS.to_vec(),
        resource: resource.into(),
        capabilities: vec![],
        nonce: None,
    };
    let body = serde_json::to_vec(&hello).unwrap();
    let header = hast_core::proto::Header {
        payload_len: body.len() as u32,
        ..hast_core::proto::Header::new(hast_core::proto::Kind::Hello, 0)
    };
    s.write_all(&header.encode()).unwrap();
    s.write_all(&body).unwrap();
    s
}

fn read_error_reason(s: &mut TcpStream) -> String {
    let mut head = [0u8; hast_core::proto::HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    let h = hast_core::proto::Header::decode(&head).unwrap();
    assert_eq!(h.kind, hast_core::proto::Kind::Error);
    let mut body = vec![0u8; h.payload_len as usize];
    s.read_exact(&mut body).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["reason"].as_str().unwrap().to_string()
}

fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn listen_addr(cluster: &Cluster, node: &str) -> SocketAddr {
    let text = std::fs::read_to_string(&cluster.config).unwrap();
    let needle = format!("on {node} {{ control uds://");
    let line = text.lines().find(|l| l.starts_with(&needle)).unwrap();
    let port = line
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches(" }")
        .trim();
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[test]
fn strangers_and_garbage_are_refused_without_disturbing_the_pair() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, _a, b) = pair(&config("memsync", "none", "hole"));
    let addr = listen_addr(&cluster, "b");

    // From an address that is no resource's remote: closed without a word, logged.
    let mut s = connect_from("127.0.0.2", addr);
    assert!(closed(&mut s), "stranger got an answer");
    wait_for("the refusal to be logged", Duration::from_secs(10), || {
        b.log_text().contains("127.0.0.2") && b.log_text().contains("refused")
    });

    // A resource this node does not have: an error frame says so.
    let mut s = send_hello(addr, "nosuch");
    assert_eq!(read_error_reason(&mut s), "unknown-resource");

    // Garbage bytes: that connection is closed, nothing else happens.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[0xffu8; 200]).unwrap();
    assert!(closed(&mut s));

    // A second primary for r0 from the right address: the secondary takes the newer
    // session (as FreeBSD) — but a hostile one that then sends garbage is dropped, and
    // the real primary reconnects.
    let mut s = send_hello(addr, "r0");
    let mut head = [0u8; hast_core::proto::HEADER_LEN];
    s.read_exact(&mut head).unwrap();
    s.write_all(&[0u8; 64]).unwrap();
    assert!(closed(&mut s));

    wait_status(&cluster, "a", "complete");
    wait_status(&cluster, "b", "complete");
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0x77 0 64k", "read -P 0x77 0 64k", "flush"],
    );
    wait_for("writes to settle", Duration::from_secs(30), || {
        cluster.status_json("a", "r0")["dirty"] == 0
    });
    assert_identical(&cluster);
}

/// Connects to `addr` from source address `ip` (any 127.x address works on Linux's
/// loopback). std cannot bind a client socket, so this goes through tokio's TcpSocket.
fn connect_from(ip: &str, addr: SocketAddr) -> TcpStream {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stream = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4().unwrap();
        sock.bind(format!("{ip}:0").parse().unwrap()).unwrap();
        sock.connect(addr).await.unwrap()
    });
    let std = stream.into_std().unwrap();
    std.set_nonblocking(false).unwrap();
    std.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std
}

#[test]
fn losing_the_secondary_degrades_and_its_return_resyncs() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, _a, b) = pair(&config("memsync", "none", "hole"));
    qemu_io(&uri(&cluster, "a"), &["write -P 0x01 0 1M", "flush"]);
    b.kill();
    wait_status(&cluster, "a", "degraded");
    // The primary keeps serving; what it writes now is owed to the peer.
    qemu_io(
        &uri(&cluster, "a"),
        &[
            "write -P 0x02 10M 64k",
            "write -P 0x03 40M 4k",
            "read -P 0x01 0 1M",
        ],
    );
    let st = cluster.status_json("a", "r0");
    assert_eq!(st["dirty"].as_u64().unwrap(), 2 * 2 * MIB, "{st}");
    assert!(
        st["localcnt"].as_u64().unwrap() > st["remotecnt"].as_u64().unwrap(),
        "{st}"
    );

    let _b = cluster.start("b");
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    wait_status(&cluster, "a", "complete");
    wait_for("the resync", Duration::from_secs(30), || {
        cluster.status_json("a", "r0")["dirty"] == 0
    });
    assert_identical(&cluster);
    // A synchronised pair remembers each other's counter: a = (x, y), b = (y, x).
    let (sa, sb) = (
        cluster.status_json("a", "r0"),
        cluster.status_json("b", "r0"),
    );
    assert_eq!(
        (&sa["localcnt"], &sa["remotecnt"]),
        (&sb["remotecnt"], &sb["localcnt"]),
        "counters after the sync: {sa} {sb}"
    );
}

#[test]
fn extents_become_clean_only_once_durable_on_the_secondary() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, _a, _b) = pair(&config("fullsync", "none", "hole"));
    let flushes = |node: &str| {
        cluster.status_json(node, "r0")["statistics"]["flushes"]
            .as_u64()
            .unwrap()
    };
    let before = flushes("b");
    // No FLUSH from the client: only the primary's own durability flush can clean this.
    qemu_io(&uri(&cluster, "a"), &["write -P 0x42 6M 64k"]);
    wait_for(
        "the extent to become clean",
        Duration::from_secs(10),
        || cluster.status_json("a", "r0")["dirty"] == 0,
    );
    assert!(
        flushes("b") > before,
        "the extent became clean without a flush on the secondary"
    );
    assert_identical(&cluster);
}

#[test]
fn a_frozen_secondary_is_dropped_and_catches_up_when_it_thaws() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, _a, b) = pair(&config("fullsync", "none", "hole"));
    let pid = b.pid().to_string();
    // SIGSTOP: the secondary's sockets stay open but nothing answers, not even keepalives.
    run(Command::new("kill").args(["-STOP", &pid]));
    let started = Instant::now();
    // A fullsync write waits for the secondary; the primary gives up on it after
    // `timeout` (5 s here), answers the client from its local copy, and goes degraded.
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0x3c 2M 64k", "read -P 0x3c 2M 64k"],
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the write hung"
    );
    wait_status(&cluster, "a", "degraded");
    assert!(cluster.status_json("a", "r0")["dirty"].as_u64().unwrap() > 0);
    run(Command::new("kill").args(["-CONT", &pid]));
    wait_status(&cluster, "a", "complete");
    wait_for("the resync", Duration::from_secs(30), || {
        cluster.status_json("a", "r0")["dirty"] == 0
    });
    assert_identical(&cluster);
}

/// A connected-or-refused pair where node a runs with key `a_key` and b with `b_key`
/// (None: no `authkey`). Real deployments copy one config to both nodes; to give the
/// nodes different keys, each daemon here starts from its own copy of the config.
fn auth_config(a_key: Option<&str>, b_key: Option<&str>) -> (Cluster, Daemon, Daemon) {
    let text = config("memsync", "none", "hole");
    let cluster = Cluster::new(&text);
    for node in ["a", "b"] {
        sparse_file(&cluster.path(&format!("{node}.img")), 32 * MIB);
    }
    let mut per_node = Vec::new();
    for (node, key) in [("a", a_key), ("b", b_key)] {
        let mut conf = std::fs::read_to_string(&cluster.config).unwrap();
        if let Some(key) = key {
            let path = cluster.path(&format!("{node}.key"));
            std::fs::write(&path, format!("{key}\n")).unwrap();
            conf = format!("authkey {}\n{conf}", path.display());
        }
        let path = cluster.path(&format!("{node}.conf"));
        std::fs::write(&path, conf).unwrap();
        per_node.push(path);
    }
    // Each node runs with its own copy of the config (the only difference: authkey).
    let start = |node: &str, conf: &std::path::Path| {
        std::fs::copy(conf, &cluster.config).unwrap();
        cluster.hastctl_ok(node, &["create", "r0"]);
        cluster.start(node)
    };
    let a = start("a", &per_node[0]);
    let b = start("b", &per_node[1]);
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    (cluster, a, b)
}

#[test]
fn peers_with_the_same_authkey_connect() {
    let (cluster, a, _b) = auth_config(
        Some("correct horse battery staple"),
        Some("correct horse battery staple"),
    );
    wait_status(&cluster, "a", "complete");
    wait_status(&cluster, "b", "complete");
    assert!(!a.log_text().contains("authentication failed"));
}

#[test]
fn peers_with_different_or_missing_authkeys_are_refused() {
    let (cluster, a, b) = auth_config(
        Some("the primary's own secret"),
        Some("the secondary's secret!"),
    );
    wait_for("the refusal", Duration::from_secs(20), || {
        a.log_text().contains("does not know our authkey")
    });
    assert_eq!(cluster.status_json("a", "r0")["status"], "degraded");
    assert_eq!(cluster.status_json("b", "r0")["status"], "degraded");
    drop((a, b));

    let (cluster, a, b) = auth_config(None, Some("only the secondary has one"));
    wait_for("the refusal", Duration::from_secs(20), || {
        a.log_text().contains("authentication required")
            && b.log_text().contains("authentication required")
    });
    assert_eq!(cluster.status_json("a", "r0")["status"], "degraded");

    let (cluster, a, _b) = auth_config(Some("only the primary has one"), None);
    wait_for("the refusal", Duration::from_secs(20), || {
        a.log_text().contains("it has no authkey")
    });
    assert_eq!(cluster.status_json("a", "r0")["status"], "degraded");

    let (_cluster, a, _b) = auth_config(Some("short"), Some("short"));
    wait_for("the refusal", Duration::from_secs(20), || {
        a.log_text().contains("at least 16 are needed")
    });
}
