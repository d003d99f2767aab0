//! hastd as primary without a peer: role changes, the NBD export driven by real clients
//! (qemu-io, nbdinfo, nbdcopy, fio), statistics, misbehaving clients, pidfile and
//! socket clean-up, provider locking, failure isolation between resources.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{fio_verify, have_tool, pseudo_random, qemu_io, run, sparse_file, Cluster};

const MIB: u64 = 1 << 20;

/// One node `a`, resource `r0` on a 96 MiB file, nobody to replicate to.
fn single_node() -> Cluster {
    let cluster = Cluster::new(
        "on a { control uds://@DIR@/a.ctl listen tcp://127.0.0.1:@PA@ }\n\
         resource r0 {\n\
         \ton a { local @DIR@/r0.img remote none export @DIR@/r0.sock }\n\
         }\n",
    );
    sparse_file(&cluster.path("r0.img"), 96 * MIB);
    cluster.hastctl_ok("a", &["create", "r0"]);
    cluster
}

fn uri(cluster: &Cluster) -> String {
    format!(
        "nbd+unix:///r0?socket={}",
        cluster.path("r0.sock").display()
    )
}

fn data_offset(cluster: &Cluster) -> u64 {
    let out = cluster.hastctl_ok("a", &["dump", "--json", "r0"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v[0]["offset"].as_u64().unwrap()
}

#[test]
fn qemu_io_writes_land_at_the_data_offset_and_are_counted() {
    if !have_tool("qemu-io") {
        return;
    }
    let cluster = single_node();
    let _hastd = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    let status = cluster.hastctl_ok("a", &["status", "r0"]);
    assert!(status.contains("r0\tdegraded primary        "), "{status}");

    qemu_io(
        &uri(&cluster),
        &[
            "write -P 0xab 0 64k",
            "read -P 0xab 0 64k",
            "write -P 0x11 100001 3000",
            "read -P 0x11 100001 3000",
            "write -f -P 0x22 8M 128k",
            "read -P 0x22 8M 128k",
            "write -z 8M 64k",
            "read -P 0 8M 64k",
            "write -P 0x33 16M 64k",
            "discard 16M 64k",
            "write -P 0x44 20M 4k",
            "write -z -u 20M 4k",
            "read -P 0 20M 4k",
            "flush",
        ],
    );
    let offset = data_offset(&cluster) as usize;
    let disk = std::fs::read(cluster.path("r0.img")).unwrap();
    assert!(disk[offset..offset + 65536].iter().all(|&b| b == 0xab));
    assert!(disk[offset + 100001..offset + 103001]
        .iter()
        .all(|&b| b == 0x11));
    let at = offset + (8 * MIB) as usize;
    assert!(disk[at + 65536..at + 131072].iter().all(|&b| b == 0x22));
    assert!(disk[at..at + 65536].iter().all(|&b| b == 0));
    // The metadata block is untouched by data writes.
    assert_eq!(&disk[0..8], b"HASTLNX\0");

    let st = cluster.status_json("a", "r0");
    assert_eq!(st["role"], "primary");
    assert_eq!(st["status"], "degraded");
    assert!(st["statistics"]["writes"].as_u64().unwrap() >= 6, "{st}");
    assert!(st["statistics"]["reads"].as_u64().unwrap() >= 5, "{st}");
    assert!(st["statistics"]["flushes"].as_u64().unwrap() >= 1, "{st}");
    assert!(st["statistics"]["deletes"].as_u64().unwrap() >= 1, "{st}");
    assert!(
        st["statistics"]["activemap_updates"].as_u64().unwrap() >= 1,
        "{st}"
    );
    // Nothing reached a peer: every extent written is dirty (0, 8M, 16M, 20M: four
    // distinct 2 MiB extents).
    assert_eq!(st["dirty"].as_u64().unwrap(), 4 * 2 * MIB, "{st}");
    assert_eq!(
        st["localcnt"].as_u64().unwrap(),
        1,
        "first write of the outage bumps localcnt"
    );
    let list = cluster.hastctl_ok("a", &["list", "r0"]);
    assert!(list.contains("  dirty: 8388608 (8.0M)\n"), "{list}");
}

#[test]
fn nbdinfo_sees_size_flags_and_block_sizes() {
    if !have_tool("nbdinfo") {
        return;
    }
    let cluster = single_node();
    let _hastd = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    let out = run(Command::new("nbdinfo").arg("--json").arg(uri(&cluster)));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let export = &v["exports"][0];
    let datasize = cluster.status_json("a", "r0")["datasize"].as_u64().unwrap();
    assert_eq!(export["export-size"].as_u64(), Some(datasize), "{v}");
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
    ] {
        assert_eq!(export[flag], true, "{flag}: {v}");
    }
    assert_eq!(export["is_read_only"], false);
    assert_eq!(export["block_size_minimum"].as_u64(), Some(1), "{v}");
    assert!(export["block_size_maximum"].as_u64().unwrap() >= MIB, "{v}");
    assert_eq!(export["export-name"], "r0");
}

#[test]
fn nbdcopy_64m_in_and_out() {
    if !have_tool("nbdcopy") {
        return;
    }
    let cluster = single_node();
    let _hastd = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    let data = pseudo_random((64 * MIB) as usize, 0x5eed);
    let input = cluster.path("in.bin");
    std::fs::write(&input, &data).unwrap();
    let out = run(Command::new("nbdcopy").arg(&input).arg(uri(&cluster)));
    assert!(
        out.status.success(),
        "nbdcopy in: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let output = cluster.path("out.bin");
    let out = run(Command::new("nbdcopy").arg(uri(&cluster)).arg(&output));
    assert!(
        out.status.success(),
        "nbdcopy out: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let back = std::fs::read(&output).unwrap();
    assert!(back.len() as u64 >= 64 * MIB);
    assert!(back[..data.len()] == data[..], "data read back differs");
    let offset = data_offset(&cluster) as usize;
    let disk = std::fs::read(cluster.path("r0.img")).unwrap();
    assert!(
        disk[offset..offset + data.len()] == data[..],
        "backing file differs"
    );
}

#[test]
fn fio_verifies_through_hastd() {
    if !have_tool("fio") {
        return;
    }
    let cluster = single_node();
    let _hastd = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    fio_verify(&uri(&cluster));
}

#[test]
fn role_changes_remove_and_restore_the_export() {
    let cluster = single_node();
    let hastd = cluster.start("a");
    let sock = cluster.path("r0.sock");
    assert!(!sock.exists(), "init serves nothing");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    assert!(sock.exists(), "primary serves the export");
    cluster.hastctl_ok("a", &["role", "secondary", "r0"]);
    assert!(!sock.exists(), "secondary serves no export");
    assert_eq!(cluster.status_json("a", "r0")["role"], "secondary");
    cluster.hastctl_ok("a", &["role", "init", "r0"]);
    assert_eq!(
        cluster.status_json("a", "r0")["status"],
        serde_json::Value::Null
    );
    cluster.hastctl_ok("a", &["role", "primary", "all"]);
    assert!(sock.exists());
    let status = cluster.hastctl_ok("a", &["status"]);
    assert!(
        status.starts_with("Name\tStatus\t Role\t\tComponents\n"),
        "{status}"
    );

    // While hastd holds the provider, create is refused and nothing is written.
    let out = cluster.hastctl("a", &["create", "r0"]);
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM: export socket, control socket and pidfile are gone, exit 0.
    let pidfile = hastd.pidfile.clone();
    assert!(pidfile.exists());
    assert_eq!(hastd.terminate(), Some(0));
    assert!(!sock.exists(), "export socket left behind");
    assert!(
        !cluster.path("a.ctl").exists(),
        "control socket left behind"
    );
    assert!(!pidfile.exists(), "pidfile left behind");
}

#[test]
fn a_second_hastd_on_the_same_provider_is_refused() {
    let cluster = single_node();
    let _first = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    // Same node again: the control socket is live, so it refuses to start.
    let out = run(Command::new(common::hastd())
        .args(["-F", "-c"])
        .arg(&cluster.config)
        .args(["--node", "a"]));
    assert_ne!(out.status.code(), Some(0));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already"),
        "{out:?}"
    );

    // Another node name using the same provider: starts, but cannot take the role.
    let other = Cluster::new(&format!(
        "on z {{ control uds://@DIR@/z.ctl listen tcp://127.0.0.1:@PA@ }}\nresource r0 {{\n on z {{ local {} remote none export @DIR@/z.sock }}\n}}\n",
        cluster.path("r0.img").display()
    ));
    let _z = other.start("z");
    let out = other.hastctl("z", &["role", "primary", "r0"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{out:?}"
    );
    let st = other.status_json("z", "r0");
    assert_eq!(st["role"], "init");
    assert!(st["error"].as_str().unwrap().contains("in use"), "{st}");
}

#[test]
fn a_broken_resource_does_not_disturb_the_others() {
    let cluster = Cluster::new(
        "on a { control uds://@DIR@/a.ctl listen tcp://127.0.0.1:@PA@ }\n\
         resource good { on a { local @DIR@/good.img remote none export @DIR@/good.sock } }\n\
         resource bad { on a { local @DIR@/bad.img remote none export @DIR@/bad.sock } }\n\
         resource gone { on a { local @DIR@/missing.img remote none export @DIR@/gone.sock } }\n",
    );
    sparse_file(&cluster.path("good.img"), 16 * MIB);
    sparse_file(&cluster.path("bad.img"), 16 * MIB);
    cluster.hastctl_ok("a", &["create", "good", "bad"]);
    // Corrupt one byte of bad's header.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(cluster.path("bad.img"))
        .unwrap();
    std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(30)).unwrap();
    f.write_all(&[0x5a]).unwrap();
    drop(f);

    let _hastd = cluster.start("a");
    let out = cluster.hastctl("a", &["role", "primary", "all"]);
    assert_eq!(out.status.code(), Some(6), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad") && stderr.contains("checksum"),
        "{stderr}"
    );
    assert!(stderr.contains("gone"), "{stderr}");
    assert_eq!(cluster.status_json("a", "good")["role"], "primary");
    assert!(cluster.path("good.sock").exists());
    assert_eq!(cluster.status_json("a", "bad")["role"], "init");
    let status = cluster.hastctl_ok("a", &["status"]);
    assert!(status.contains("good\tdegraded primary"), "{status}");
    // Unknown resources: error code 1, the others still reported.
    let out = cluster.hastctl("a", &["status", "good", "nosuch"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("nosuch\tERR1"));
}

/// NBD handshake with NO_ZEROES and GO for `name`; returns the connected stream.
fn nbd_go(sock: &Path, name: &str) -> UnixStream {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut payload = (name.len() as u32).to_be_bytes().to_vec();
    payload.extend_from_slice(name.as_bytes());
    payload.extend_from_slice(&0u16.to_be_bytes());
    let mut opt = 0x49484156454F5054u64.to_be_bytes().to_vec();
    opt.extend_from_slice(&7u32.to_be_bytes());
    opt.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    opt.extend_from_slice(&payload);
    s.write_all(&opt).unwrap();
    loop {
        let mut h = [0u8; 20];
        s.read_exact(&mut h).unwrap();
        let reply = u32::from_be_bytes(h[12..16].try_into().unwrap());
        let len = u32::from_be_bytes(h[16..20].try_into().unwrap());
        let mut body = vec![0u8; len as usize];
        s.read_exact(&mut body).unwrap();
        match reply {
            3 => continue, // NBD_REP_INFO
            1 => return s, // NBD_REP_ACK
            other => panic!("GO refused: {other:#x}"),
        }
    }
}

fn request(command: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut r = 0x25609513u32.to_be_bytes().to_vec();
    r.extend_from_slice(&0u16.to_be_bytes());
    r.extend_from_slice(&command.to_be_bytes());
    r.extend_from_slice(&cookie.to_be_bytes());
    r.extend_from_slice(&offset.to_be_bytes());
    r.extend_from_slice(&length.to_be_bytes());
    r
}

fn reply_error(s: &mut UnixStream) -> u32 {
    let mut r = [0u8; 16];
    s.read_exact(&mut r).unwrap();
    u32::from_be_bytes(r[4..8].try_into().unwrap())
}

fn closed(s: &mut UnixStream) -> bool {
    let mut buf = [0u8; 64];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

#[test]
fn misbehaving_clients_do_not_disturb_the_daemon() {
    if !have_tool("qemu-io") {
        return;
    }
    let cluster = single_node();
    let _hastd = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    let sock = cluster.path("r0.sock");
    let datasize = cluster.status_json("a", "r0")["datasize"].as_u64().unwrap();

    // Garbage instead of the handshake: the connection is dropped.
    let mut s = UnixStream::connect(&sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut greeting = [0u8; 18];
    s.read_exact(&mut greeting).unwrap();
    s.write_all(&[0xde; 64]).unwrap();
    assert!(closed(&mut s));

    // A read past the end: an error reply, the connection stays usable.
    let mut s = nbd_go(&sock, "r0");
    s.write_all(&request(0, 1, datasize - 512, 4096)).unwrap();
    assert_ne!(reply_error(&mut s), 0);
    s.write_all(&request(0, 2, 0, 512)).unwrap();
    assert_eq!(reply_error(&mut s), 0);
    let mut data = [0u8; 512];
    s.read_exact(&mut data).unwrap();

    // A 2 GiB write: the server cannot take it; the connection is closed.
    let mut s = nbd_go(&sock, "r0");
    s.write_all(&request(1, 3, 0, 2 << 30)).unwrap();
    assert!(closed(&mut s));

    // A write whose payload never fully arrives: nothing is written.
    let mut s = nbd_go(&sock, "r0");
    s.write_all(&request(1, 4, MIB, 65536)).unwrap();
    s.write_all(&[0x77; 1000]).unwrap();
    drop(s);

    qemu_io(
        &uri(&cluster),
        &[
            "write -P 0x66 0 4k",
            "read -P 0x66 0 4k",
            "read -P 0 1M 64k",
        ],
    );
    assert_eq!(cluster.status_json("a", "r0")["role"], "primary");
}

#[test]
fn sighup_adds_and_removes_resources() {
    let cluster = single_node();
    let hastd = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    sparse_file(&cluster.path("r1.img"), 16 * MIB);
    let text = std::fs::read_to_string(&cluster.config).unwrap();
    let dir = cluster.dir.path().display().to_string();
    let r1 = format!(
        "resource r1 {{\n\ton a {{ local {dir}/r1.img remote none export {dir}/r1.sock }}\n}}\n"
    );
    std::fs::write(&cluster.config, format!("{text}{r1}")).unwrap();
    cluster.hastctl_ok("a", &["create", "r1"]);
    hastd.hup();
    let mut seen = false;
    for _ in 0..100 {
        if cluster.hastctl("a", &["status", "r1"]).status.success() {
            seen = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(seen, "r1 not added by SIGHUP:\n{}", hastd.log_text());
    assert_eq!(cluster.status_json("a", "r1")["role"], "init");
    assert_eq!(
        cluster.status_json("a", "r0")["role"],
        "primary",
        "r0 untouched"
    );

    // Remove r0: it goes to init (export closed) and disappears.
    let head = text.lines().next().unwrap().to_string();
    std::fs::write(&cluster.config, format!("{head}\n{r1}")).unwrap();
    hastd.hup();
    for _ in 0..100 {
        if !cluster.hastctl("a", &["status", "r0"]).status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        cluster.hastctl("a", &["status", "r0"]).status.code(),
        Some(1)
    );
    assert!(
        !cluster.path("r0.sock").exists(),
        "removed resource still exported"
    );

    // A broken config is not applied; the daemon goes on with the old one.
    let good = std::fs::read_to_string(&cluster.config).unwrap();
    std::fs::write(&cluster.config, "resource {").unwrap();
    hastd.hup();
    let mut refused = false;
    for _ in 0..100 {
        if hastd.log_text().contains("configuration not reloaded") {
            refused = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(refused, "{}", hastd.log_text());
    std::fs::write(&cluster.config, good).unwrap();
    assert!(cluster.hastctl("a", &["status", "r1"]).status.success());
}

#[test]
fn background_start_returns_when_ready_and_reports_failures() {
    let cluster = single_node();
    let pidfile = cluster.path("bg.pid");
    let start = || {
        run(Command::new(common::hastd())
            .arg("-c")
            .arg(&cluster.config)
            .args(["--node", "a", "-P"])
            .arg(&pidfile))
    };
    let out = start();
    assert!(out.status.success(), "{out:?}");
    // Ready means ready: the control socket answers at once.
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    let pid = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .to_string();
    assert!(!pid.is_empty());

    // A second daemon: refused, with the reason on the terminal and EX_TEMPFAIL.
    let out = start();
    assert_eq!(out.status.code(), Some(75), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already running"),
        "{out:?}"
    );

    run(Command::new("kill").args(["-TERM", &pid]));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while pidfile.exists() || cluster.path("r0.sock").exists() {
        assert!(std::time::Instant::now() < deadline, "daemon did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn hastctl_without_a_daemon_says_so() {
    let cluster = single_node();
    let out = cluster.hastctl("a", &["status"]);
    assert_eq!(out.status.code(), Some(71), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is hastd running?") && err.contains("a.ctl"),
        "{err}"
    );
    // create and dump need no daemon.
    let dump = cluster.hastctl_ok("a", &["dump", "r0"]);
    assert!(dump.contains("resource: r0"), "{dump}");
}

/// A loop device, detached on drop.
struct Loop(String);

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

#[test]
fn a_block_device_provider_works_end_to_end() {
    let root = rustix::process::geteuid().is_root();
    if !root || !have_tool("losetup") || !have_tool("qemu-io") {
        assert!(!common::in_ci() || root, "CI must run this test as root");
        eprintln!("SKIP: needs root and losetup for a loop device");
        return;
    }
    let cluster = Cluster::new(
        "on a { control uds://@DIR@/a.ctl listen tcp://127.0.0.1:@PA@ }\n\
         resource r0 { on a { local @DIR@/dev remote none export @DIR@/r0.sock } }\n",
    );
    let backing = cluster.path("backing.img");
    sparse_file(&backing, 64 * MIB);
    let out = run(Command::new("losetup").args(["-f", "--show"]).arg(&backing));
    assert!(out.status.success(), "{out:?}");
    let dev = Loop(String::from_utf8_lossy(&out.stdout).trim().to_string());
    std::os::unix::fs::symlink(&dev.0, cluster.path("dev")).unwrap();
    cluster.hastctl_ok("a", &["create", "r0"]);
    let _hastd = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    let st = cluster.status_json("a", "r0");
    // 64 MiB device: header, a one-sector map, and the rest is data.
    assert_eq!(st["datasize"].as_u64(), Some(64 * MIB - 4096 - 512), "{st}");
    qemu_io(
        &uri(&cluster),
        &[
            "write -P 0x61 0 1M",
            "write -P 0x62 1000 3000",
            "read -P 0x62 1000 3000",
            "write -z 100 1000",
            "read -P 0 100 1000",
            "read -P 0x62 1100 100",
            "read -P 0x61 4000 4096",
            "discard 2M 1000000",
            "flush",
        ],
    );
    let offset = data_offset(&cluster) as usize;
    let disk = std::fs::read(&backing).unwrap();
    assert!(disk[offset + 100..offset + 1100].iter().all(|&b| b == 0));
    assert!(disk[offset + 1100..offset + 4000]
        .iter()
        .all(|&b| b == 0x62));
}
