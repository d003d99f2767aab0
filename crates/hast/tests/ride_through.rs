//! A client that rides through failovers: the export on TCP, reached on the virtual IP
//! keepalived moves; qemu-storage-daemon's NBD driver with `reconnect-delay` exports it
//! to a FUSE file, which a loop device turns into a block device carrying a mounted
//! ext4. A writer creates files (write + fsync each) while the primary's host dies
//! (keepalived and hastd SIGKILLed, its network cut, its addresses gone), several times,
//! alternating, with the dead node rejoining in between. The writer must never see an
//! I/O error, every file must read back, and e2fsck must find the unmounted file system
//! clean. The longest write+fsync around each failover is the stall the client saw.
//!
//! Needs root, ip, nft, keepalived, qemu-storage-daemon (qemu-utils), /dev/fuse,
//! losetup, mkfs.ext4 and e2fsck (test.sh installs them); skipped with a reason
//! otherwise, failed under CI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;
mod keepalived_pair;
mod netns;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{free_port, have_tool, in_ci, pseudo_random, run};
use faults::*;
use keepalived_pair::Pair;

/// qemu-storage-daemon and what it exports; stopped on drop (which removes the FUSE
/// mount).
struct Client {
    qsd: Child,
    file: PathBuf,
    loopdev: Option<String>,
    mnt: PathBuf,
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg(&self.mnt)
            .stderr(Stdio::null())
            .status();
        if let Some(dev) = self.loopdev.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.qsd.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.qsd.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.qsd.kill();
        let _ = self.qsd.wait();
        let _ = Command::new("umount")
            .arg("-l")
            .arg(&self.file)
            .stderr(Stdio::null())
            .status();
    }
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// What the writer saw.
#[derive(Default)]
struct Seen {
    /// (start, duration) of each write+fsync.
    ops: Vec<(Instant, Duration)>,
    errors: Vec<String>,
    files: u64,
}

const FILE_LEN: usize = 64 * 1024;

fn file_data(i: u64) -> Vec<u8> {
    pseudo_random(FILE_LEN, 0x5eed ^ i)
}

/// Creates files f0, f1, ... under `dir`, each written and fsynced, until `stop`.
fn writer(dir: PathBuf, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let t = Instant::now();
        let path = dir.join(format!("f{i}"));
        let result = std::fs::File::create(&path).and_then(|mut f| {
            f.write_all(&file_data(i))?;
            f.sync_all()
        });
        let took = t.elapsed();
        let mut s = seen.lock().unwrap();
        s.ops.push((t, took));
        match result {
            Ok(()) => {
                s.files = i + 1;
                i += 1;
            }
            Err(e) => {
                s.errors.push(format!("f{i}: {e}"));
                return;
            }
        }
        drop(s);
        // A steady trickle, like an application, not a flood.
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_reconnecting_nbd_client_rides_through_failovers_with_no_io_error() {
    let root = rustix::process::geteuid().is_root();
    let tools = [
        "qemu-storage-daemon",
        "losetup",
        "mkfs.ext4",
        "e2fsck",
        "nsenter",
    ];
    if !root || !tools.iter().all(|t| have_tool(t)) || !Path::new("/dev/fuse").exists() {
        assert!(!in_ci(), "ride-through needs root, {tools:?} and /dev/fuse");
        eprintln!("SKIP: ride-through needs root, {tools:?} and /dev/fuse");
        return;
    }
    let port = free_port();
    let Some(mut pair) = Pair::with_export(false, Some(port)) else {
        return;
    };
    let mut primary = pair.wait_any_primary(Duration::from_secs(60));
    wait_settled(&pair.cluster, primary);

    let file = pair.cluster.path("disk.raw");
    std::fs::write(&file, b"").unwrap();
    let mnt = pair.cluster.path("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut cmd = Command::new("nsenter");
    cmd.args(pair.lan.net_only("sw").iter().skip(1))
        .arg("qemu-storage-daemon")
        .arg("--blockdev")
        .arg(format!(
            "driver=nbd,node-name=hast,server.type=inet,server.host={},server.port={port},\
             export=r0,reconnect-delay=60",
            pair.lan.vip
        ))
        .arg("--export")
        .arg(format!(
            "type=fuse,id=fuse0,node-name=hast,mountpoint={},writable=on",
            file.display()
        ))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(pair.cluster.path("qsd.log")).unwrap())
        .stderr(std::fs::File::create(pair.cluster.path("qsd.err")).unwrap());
    let mut client = Client {
        qsd: cmd.spawn().unwrap(),
        file: file.clone(),
        loopdev: None,
        mnt: mnt.clone(),
    };
    wait_for("the FUSE export", Duration::from_secs(20), || {
        std::fs::metadata(&file).is_ok_and(|m| m.len() > 32 * MIB)
    });
    let dev = ok(Command::new("losetup").args(["-f", "--show"]).arg(&file));
    client.loopdev = Some(dev.clone());
    ok(Command::new("mkfs.ext4").args(["-q", "-F", &dev]));
    ok(Command::new("mount").arg(&dev).arg(&mnt));

    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let w = {
        let (dir, stop, seen) = (mnt.clone(), stop.clone(), seen.clone());
        std::thread::spawn(move || writer(dir, stop, seen))
    };
    let runs: usize = std::env::var("KEEPALIVED_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut stalls = Vec::new();
    for run in 0..runs {
        std::thread::sleep(Duration::from_millis(1500));
        let standby = other(primary);
        let killed = Instant::now();
        pair.kill_node(primary);
        pair.lan.isolate(primary);
        pair.wait_primary(standby, Duration::from_secs(60));
        // Files keep coming after the takeover.
        let files = seen.lock().unwrap().files;
        wait_for("the writer to go on", Duration::from_secs(90), || {
            let s = seen.lock().unwrap();
            assert!(s.errors.is_empty(), "the client saw errors: {:?}", s.errors);
            s.files >= files + 20
        });
        let stall = seen
            .lock()
            .unwrap()
            .ops
            .iter()
            .filter(|(t, d)| *t + *d >= killed)
            .map(|(_, d)| d.as_secs_f64())
            .fold(0.0, f64::max);
        eprintln!("run {run}: {primary} died, {standby} took over; the client stalled {stall:.2}s");
        stalls.push(stall);
        // The dead host comes back and rejoins as secondary.
        pair.lan.heal();
        pair.restart_node(primary);
        wait_for(
            &format!("{primary} to rejoin as secondary"),
            Duration::from_secs(60),
            || pair.role(primary) == "secondary",
        );
        wait_settled(&pair.cluster, standby);
        primary = standby;
    }
    stop.store(true, Ordering::SeqCst);
    w.join().unwrap();
    let s = seen.lock().unwrap();
    assert!(s.errors.is_empty(), "the client saw errors: {:?}", s.errors);
    // Every file reads back.
    for i in 0..s.files {
        let data = std::fs::read(mnt.join(format!("f{i}"))).unwrap();
        assert!(data == file_data(i), "f{i} reads back wrong");
    }
    ok(Command::new("umount").arg(&mnt));
    let fsck = run(Command::new("e2fsck").args(["-f", "-n", &dev]));
    assert!(
        fsck.status.success(),
        "e2fsck found problems: {}{}",
        String::from_utf8_lossy(&fsck.stdout),
        String::from_utf8_lossy(&fsck.stderr)
    );
    eprintln!(
        "ride-through: {} files written, 0 I/O errors, e2fsck clean; client stall: {}",
        s.files,
        spread(&stalls)
    );
    drop(client);
}
