//! Recovery and fault tests with real daemons on loopback: outages of the secondary, syncs
//! interrupted by SIGKILL, writes racing a sync, primary crashes (failover to the
//! secondary, or restart in place), split-brain and resuid mismatch, every hook event, and
//! a real file system surviving failover. Data areas are compared byte for byte; sync
//! volumes are taken from the daemons' own statistics and logs, never from timing.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{have_tool, in_ci, pseudo_random, run, Cluster};
use faults::*;

/// Polls the primary until a sync runs and has copied at least `min_bytes`; returns the
/// bytes copied by then. Panics if the sync ends first.
fn wait_sync_progress(cluster: &Cluster, node: &str, min_bytes: u64) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = false;
    loop {
        let st = status(cluster, node);
        if let Some(done) = st["sync"]["synced_bytes"].as_u64() {
            seen = true;
            if done >= min_bytes {
                return done;
            }
        } else if seen {
            panic!("the sync on {node} ended before it copied {min_bytes} bytes: {st}");
        }
        assert!(Instant::now() < deadline, "no sync on {node}: {st}");
    }
}

#[test]
fn outage_resyncs_only_the_dirty_extents_of_a_1gib_device() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, a, b) = loopback_pair("memsync", 1 << 30);
    let extentsize = status(&cluster, "a")["extentsize"].as_u64().unwrap();
    b.kill();
    wait_status(&cluster, "a", "degraded");

    // 1% of the device: ten 1 MiB writes spread over it, one straddling an extent
    // boundary, so 11 extents are dirty.
    let mut cmds = Vec::new();
    for i in 0..9u64 {
        cmds.push(format!(
            "write -P {} {} 1M",
            0x10 + i,
            i * 100 * MIB + 6 * MIB + 512 * 1024
        ));
    }
    cmds.push(format!("write -P 0x7e {} 1M", 1000 * MIB - 512 * 1024));
    cmds.push("flush".into());
    qemu_io(&uri(&cluster, "a"), &cmds);
    let st = status(&cluster, "a");
    let dirty = st["dirty"].as_u64().unwrap();
    assert_eq!(dirty, 11 * extentsize, "{st}");
    assert!(st["localcnt"].as_u64() > st["remotecnt"].as_u64(), "{st}");

    let _b = cluster.start("b");
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    wait_settled(&cluster, "a");
    wait_log(&a, "the end of the sync in a's log", |l| {
        !synced_totals(l).is_empty()
    });
    let totals = synced_totals(&a.log_text());
    assert_eq!(
        totals,
        vec![dirty],
        "the sync copied exactly the dirty extents ({} of them), not more",
        dirty / extentsize
    );
    assert_identical(&cluster);
    let st = status(&cluster, "a");
    assert_eq!(st["dirty"], 0, "{st}");
    // A synchronised pair remembers each other's counter: a = (x, y), b = (y, x).
    let sb = status(&cluster, "b");
    assert_eq!(
        (&st["localcnt"], &st["remotecnt"]),
        (&sb["remotecnt"], &sb["localcnt"]),
        "{st} {sb}"
    );
    let hooks = expect_hooks(
        &cluster,
        "a",
        0,
        &[
            "role r0 init primary",
            "connect r0",
            "disconnect r0",
            "connect r0",
            "syncstart r0",
            "syncdone r0",
        ],
    );
    assert_before(&hooks, "syncstart r0", "syncdone r0");
}

#[test]
fn sync_interrupted_by_a_killed_secondary_resumes_and_completes() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, a, b) = loopback_pair("memsync", 512 * MIB);
    let extentsize = status(&cluster, "a")["extentsize"].as_u64().unwrap();
    b.kill();
    wait_status(&cluster, "a", "degraded");
    let mut cmds = pattern_writes(0, 320 * MIB, 4 * MIB, 0x21);
    cmds.push("flush".into());
    qemu_io(&uri(&cluster, "a"), &cmds);
    let owed = status(&cluster, "a")["dirty"].as_u64().unwrap();
    assert_eq!(owed, 320 * MIB);
    expect_hooks(
        &cluster,
        "a",
        0,
        &["role r0 init primary", "connect r0", "disconnect r0"],
    );

    let b = cluster.start("b");
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    // Kill the secondary once at least two whole extents went over.
    let done = wait_sync_progress(&cluster, "a", 2 * extentsize + MIB);
    b.kill();
    wait_status(&cluster, "a", "degraded");
    wait_log(&a, "the interruption in a's log", |l| {
        l.contains("synchronization interrupted")
    });
    let order = expect_hooks(
        &cluster,
        "a",
        3,
        &["connect r0", "syncstart r0", "syncintr r0", "disconnect r0"],
    );
    assert_before(&order, "connect r0", "syncstart r0");
    assert_before(&order, "syncstart r0", "syncintr r0");
    assert!(synced_totals(&a.log_text()).is_empty());
    let still_owed = status(&cluster, "a")["dirty"].as_u64().unwrap();
    assert!(
        still_owed < owed && still_owed > 0,
        "{still_owed} of {owed} still owed after {done} copied"
    );

    let _b = cluster.start("b");
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    wait_settled(&cluster, "a");
    wait_log(&a, "the end of the sync", |l| !synced_totals(l).is_empty());
    let totals = synced_totals(&a.log_text());
    // Resumed from what was still owed (the secondary's map is empty: it was cleared at
    // the first request of the interrupted session).
    assert_eq!(
        totals,
        vec![still_owed],
        "resumed sync copied the rest only"
    );
    let order = expect_hooks(
        &cluster,
        "a",
        7,
        &["connect r0", "syncstart r0", "syncdone r0"],
    );
    assert_before(&order, "syncstart r0", "syncdone r0");
    assert_identical(&cluster);
}

#[test]
fn writes_during_a_sync_to_the_extents_being_synced_end_identical() {
    if !have_tool("qemu-io") || !have_tool("fio") {
        return;
    }
    let (cluster, _a, b) = loopback_pair("memsync", 256 * MIB);
    b.kill();
    wait_status(&cluster, "a", "degraded");
    let mut cmds = pattern_writes(0, 200 * MIB, 4 * MIB, 0x41);
    cmds.push("flush".into());
    qemu_io(&uri(&cluster, "a"), &cmds);

    let _b = cluster.start("b");
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    wait_sync_progress(&cluster, "a", 1);
    // While the sync runs: fio rewrites the whole synced region with verified data
    // (every extent: behind the cursor, under it, ahead of it), and qemu-io writes into
    // the middle of each sync chunk from the far end backwards.
    let u = uri(&cluster, "a");
    let fio = Command::new("fio")
        .args([
            "--name=race",
            "--ioengine=nbd",
            &format!("--uri={u}"),
            "--rw=randwrite",
            "--bs=64k",
            "--size=100M",
            "--iodepth=16",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
        ])
        .current_dir(cluster.dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut chunk_writes: Vec<String> = (100..200u64)
        .rev()
        .step_by(3)
        .map(|m| format!("write -P 0x9d {} 4k", m * MIB + 300 * 1024))
        .collect();
    chunk_writes.push("flush".into());
    qemu_io(&u, &chunk_writes);
    let was_syncing = !status(&cluster, "a")["sync"].is_null();
    let out = fio.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.contains("err= 0"),
        "fio: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    qemu_io(&u, &["flush".into()]);
    wait_settled(&cluster, "a");
    assert_identical(&cluster);
    let reads: Vec<String> = chunk_writes[..chunk_writes.len() - 1]
        .iter()
        .map(|c| c.replace("write", "read"))
        .collect();
    qemu_io(&u, &reads);
    eprintln!("sync still running after the qemu-io writes: {was_syncing}");
}

/// Starts fio random writes on `uri` for a long time; the caller kills a daemon under it.
fn background_fio(uri: &str, size: &str) -> Child {
    Command::new("fio")
        .args([
            "--name=crash",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=16k",
            &format!("--size={size}"),
            "--iodepth=32",
            "--time_based",
            "--runtime=60",
        ])
        .current_dir(std::env::temp_dir())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn stop_child(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until `node`'s write statistics reach `n`.
fn wait_writes(cluster: &Cluster, node: &str, n: u64) {
    wait_for(
        &format!("{n} writes on {node}"),
        Duration::from_secs(30),
        || {
            status(cluster, node)["statistics"]["writes"]
                .as_u64()
                .unwrap_or(0)
                >= n
        },
    );
}

#[test]
fn primary_crash_failover_to_b_then_a_returns_as_secondary() {
    if !have_tool("qemu-io") || !have_tool("fio") {
        return;
    }
    let (cluster, a, _b) = loopback_pair("memsync", 128 * MIB);
    let fio = background_fio(&uri(&cluster, "a"), "64M");
    wait_writes(&cluster, "a", 300);
    a.kill();
    stop_child(fio);
    wait_status(&cluster, "b", "degraded");
    expect_hooks(
        &cluster,
        "b",
        0,
        &["role r0 init secondary", "connect r0", "disconnect r0"],
    );
    let b_runs = 3;

    // Scenario 4: b takes over and is written; a comes back as secondary.
    let before = status(&cluster, "b")["localcnt"].as_u64();
    cluster.hastctl_ok("b", &["role", "primary", "r0"]);
    let mut cmds = pattern_writes(10 * MIB, 3 * MIB, MIB, 0x60);
    cmds.push("write -P 0x6f 100M 64k".into());
    cmds.push("flush".into());
    qemu_io(&uri(&cluster, "b"), &cmds);
    let st = status(&cluster, "b");
    assert!(
        st["localcnt"].as_u64() > before,
        "b counted its writes: {st}"
    );

    let a = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "secondary", "r0"]);
    wait_settled(&cluster, "b");
    assert_identical(&cluster);
    let mut check = pattern_writes(10 * MIB, 3 * MIB, MIB, 0x60);
    check.push("write -P 0x6f 100M 64k".into());
    let reads: Vec<String> = check.iter().map(|c| c.replace("write", "read")).collect();
    qemu_io(&uri(&cluster, "b"), &reads);
    // The sync went from b (the new primary) to a.
    let blog = || std::fs::read_to_string(cluster.path("hastd-b.log")).unwrap();
    wait_for(
        "the end of the sync in b's log",
        Duration::from_secs(30),
        || !synced_totals(&blog()).is_empty(),
    );
    assert!(blog().contains("sync source Primary"), "{}", blog());
    let order = expect_hooks(
        &cluster,
        "b",
        b_runs,
        &[
            "role r0 secondary primary",
            "connect r0",
            "syncstart r0",
            "syncdone r0",
        ],
    );
    assert_before(&order, "syncstart r0", "syncdone r0");
    drop(a);
}

#[test]
fn primary_crash_and_restart_resyncs_every_extent_that_may_differ() {
    if !have_tool("fio") {
        return;
    }
    // async: acknowledged writes may be on the primary only when it dies. The device has
    // more extents than keepdirty (64), and fio writes only its first 48 MiB: what is
    // marked on disk, and resynced, is what was written, not everything.
    let (cluster, a, _b) = loopback_pair("async", 256 * MIB);
    let st = status(&cluster, "a");
    let extentsize = st["extentsize"].as_u64().unwrap();
    let datasize = st["datasize"].as_u64().unwrap();
    let fio = background_fio(&uri(&cluster, "a"), "48M");
    wait_writes(&cluster, "a", 500);
    a.kill();
    stop_child(fio);
    // Once b notices, its queued requests are all applied.
    wait_status(&cluster, "b", "degraded");

    // Every extent where the two copies differ now is marked in a's on-disk map.
    let map = ondisk_bitmap(&cluster, "a");
    let differ = differing_extents(&cluster, extentsize);
    for ext in &differ {
        assert!(
            bit_set(&map, *ext),
            "extent {ext} differs but is not in the on-disk activemap ({differ:?})"
        );
    }
    let marked: Vec<u64> = (0..datasize.div_ceil(extentsize))
        .filter(|e| bit_set(&map, *e))
        .collect();
    assert!(
        !marked.is_empty(),
        "nothing marked on disk after a crash during writes"
    );
    assert!(
        marked.iter().all(|e| *e < 24),
        "extents beyond fio's range marked: {marked:?}"
    );
    let marked_bytes: u64 = marked
        .iter()
        .map(|e| extentsize.min(datasize - e * extentsize))
        .sum();
    eprintln!(
        "{} extents marked on disk, {} differed at the crash",
        marked.len(),
        differ.len()
    );

    let a = cluster.start("a");
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    wait_log(&a, "the loaded map in a's log", |l| {
        l.contains("bytes marked dirty on disk are owed to the peer")
    });
    let log = a.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("bytes marked dirty on disk"))
        .unwrap();
    assert!(
        line.contains(&format!(" {marked_bytes} bytes marked dirty")),
        "{line} (expected {} extents)",
        marked.len()
    );
    wait_settled(&cluster, "a");
    wait_log(&a, "the end of the resync", |l| {
        !synced_totals(l).is_empty()
    });
    assert_eq!(synced_totals(&a.log_text()), vec![marked_bytes]);
    assert_identical(&cluster);
}

#[test]
fn out_of_date_primary_syncs_from_the_secondary_and_reads_the_new_data_meanwhile() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, a, _b) = loopback_pair("memsync", 128 * MIB);
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0x01 0 8M".into(), "flush".into()],
    );
    wait_settled(&cluster, "a");
    // a steps down in order; b takes over and is written; b steps down again.
    cluster.hastctl_ok("a", &["role", "init", "r0"]);
    cluster.hastctl_ok("b", &["role", "primary", "r0"]);
    let mut cmds = pattern_writes(2 * MIB, 64 * MIB, 4 * MIB, 0xb1);
    cmds.push("flush".into());
    qemu_io(&uri(&cluster, "b"), &cmds);
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);

    // a is primary again with the older data: the counters say b has the good copy
    // (S.l > P.r, S.r = P.l), and reads of stale extents go to b until they are synced.
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    let reads: Vec<String> = pattern_writes(2 * MIB, 64 * MIB, 4 * MIB, 0xb1)
        .iter()
        .rev()
        .map(|c| c.replace("write", "read"))
        .collect();
    wait_status(&cluster, "a", "complete");
    qemu_io(&uri(&cluster, "a"), &reads);
    qemu_io(&uri(&cluster, "a"), &["read -P 0x01 0 2M".into()]);
    wait_settled(&cluster, "a");
    wait_log(&a, "the end of the sync", |l| !synced_totals(l).is_empty());
    let log = a.log_text();
    assert!(log.contains("sync source Secondary"), "{log}");
    assert_eq!(synced_totals(&log), vec![33 * 2 * MIB]);
    assert_identical(&cluster);
    // After the sync each node remembers the other's counter (A = (x, y), B = (y, x)).
    let (sa, sb) = (status(&cluster, "a"), status(&cluster, "b"));
    assert_eq!(
        (&sa["localcnt"], &sa["remotecnt"]),
        (&sb["remotecnt"], &sb["localcnt"]),
        "{sa}\n{sb}"
    );
}

#[test]
fn split_brain_is_refused_on_both_reported_once_and_recovered_by_recreate() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, a, b) = loopback_pair("memsync", 64 * MIB);
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0x01 0 4M".into(), "flush".into()],
    );
    wait_settled(&cluster, "a");
    // Apart: b is gone, a is written.
    b.kill();
    wait_status(&cluster, "a", "degraded");
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0xaa 1M 1M".into(), "flush".into()],
    );
    // b comes back alone as primary (a refuses it: a is no secondary) and is written.
    let b = cluster.start("b");
    cluster.hastctl_ok("b", &["role", "primary", "r0"]);
    qemu_io(
        &uri(&cluster, "b"),
        &["write -P 0xbb 20M 1M".into(), "flush".into()],
    );
    let a_before = data_area(&cluster, "a");
    let b_before = data_area(&cluster, "b");
    // b is made secondary: a connects and both see the split-brain. a's reconnect
    // backoff grew during the outage; a fresh primary worker starts again at 1 s, so
    // that four attempts (three reconnect cycles) take about 7 s.
    cluster.hastctl_ok("a", &["role", "init", "r0"]);
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    wait_log(&b, "the split-brain on b", |l| l.contains("split-brain"));
    wait_log(&a, "the split-brain on a", |l| l.contains("split-brain"));
    // The refusal repeats at every attempt, the event does not.
    wait_for(
        "four refused handshakes on b",
        Duration::from_secs(30),
        || count(&b.log_text(), "Split-brain condition!") >= 4,
    );
    expect_hooks(
        &cluster,
        "a",
        0,
        &[
            "role r0 init primary",
            "connect r0",
            "disconnect r0",
            "role r0 primary init",
            "role r0 init primary",
            "split-brain r0",
        ],
    );
    let order = expect_hooks(
        &cluster,
        "b",
        0,
        &[
            "role r0 init secondary",
            "connect r0",
            "role r0 init primary",
            "role r0 primary secondary",
            "split-brain r0",
        ],
    );
    assert_before(&order, "role r0 primary secondary", "split-brain r0");
    assert_eq!(count(&a.log_text(), "split-brain condition"), 1);
    assert_eq!(count(&b.log_text(), "split-brain condition"), 1);
    assert_eq!(status(&cluster, "a")["status"], "degraded");
    assert_eq!(status(&cluster, "b")["status"], "degraded");
    assert!(data_area(&cluster, "a") == a_before, "a's data was touched");
    assert!(data_area(&cluster, "b") == b_before, "b's data was touched");

    // The documented recovery: discard b.
    cluster.hastctl_ok("b", &["role", "init", "r0"]);
    cluster.hastctl_ok("b", &["create", "r0"]);
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    wait_settled(&cluster, "a");
    wait_log(&a, "the full sync", |l| !synced_totals(l).is_empty());
    let datasize = status(&cluster, "a")["datasize"].as_u64().unwrap();
    assert_eq!(synced_totals(&a.log_text()), vec![datasize], "full sync");
    assert_identical(&cluster);
    assert!(data_area(&cluster, "b") == a_before, "b holds a's data");
}

#[test]
fn resuid_mismatch_is_refused_with_its_own_message() {
    if !have_tool("qemu-io") {
        return;
    }
    let (cluster, a, b) = loopback_pair("memsync", 64 * MIB);
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0x33 0 2M".into(), "flush".into()],
    );
    wait_settled(&cluster, "a");
    let b_before = data_area(&cluster, "b");
    let old = status(&cluster, "b")["resuid"].as_u64().unwrap();
    assert_ne!(old, 0);
    // a's provider is re-created while b keeps its data and resuid.
    cluster.hastctl_ok("a", &["role", "init", "r0"]);
    cluster.hastctl_ok("a", &["create", "r0"]);
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    wait_log(&b, "the refusal on b", |l| {
        l.contains("Resource unique ID mismatch (primary=")
    });
    wait_log(&a, "the refusal on a", |l| {
        l.contains("Resource unique ID mismatch")
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(status(&cluster, "a")["status"], "degraded");
    assert_eq!(status(&cluster, "b")["resuid"].as_u64().unwrap(), old);
    assert!(!a.log_text().contains("split-brain"));
    assert!(!b.log_text().contains("split-brain"));
    assert!(hook_runs(&cluster, "a")
        .iter()
        .chain(hook_runs(&cluster, "b").iter())
        .all(|r| !r.args.starts_with("split-brain")));
    assert!(data_area(&cluster, "b") == b_before, "b's data was touched");
}

#[test]
fn hook_events_fire_with_freebsd_arguments_in_causal_order() {
    if !have_tool("qemu-io") {
        return;
    }
    let cluster = Cluster::new(&loopback_config("fullsync"));
    create_both(&cluster, 64 * MIB);
    let a = cluster.start("a");
    let b = cluster.start("b");
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    expect_hooks(&cluster, "b", 0, &["role r0 init secondary"]);
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    wait_settled(&cluster, "a");
    // Fresh pair: nothing to sync, so no syncstart.
    expect_hooks(&cluster, "a", 0, &["role r0 init primary", "connect r0"]);
    expect_hooks(&cluster, "b", 1, &["connect r0"]);

    // The secondary dies: the primary reports the disconnect.
    b.kill();
    wait_status(&cluster, "a", "degraded");
    expect_hooks(&cluster, "a", 2, &["disconnect r0"]);
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0x42 6M 64k".into(), "flush".into()],
    );

    // It returns: connect on both, then a sync with start and end on the primary.
    let b = cluster.start("b");
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    wait_settled(&cluster, "a");
    let order = expect_hooks(
        &cluster,
        "a",
        3,
        &["connect r0", "syncstart r0", "syncdone r0"],
    );
    assert_before(&order, "connect r0", "syncstart r0");
    assert_before(&order, "syncstart r0", "syncdone r0");
    let order = expect_hooks(&cluster, "b", 2, &["role r0 init secondary", "connect r0"]);
    assert_before(&order, "role r0 init secondary", "connect r0");

    // Orderly role changes: the secondary leaves, then the primary.
    cluster.hastctl_ok("b", &["role", "init", "r0"]);
    expect_hooks(
        &cluster,
        "b",
        4,
        &["disconnect r0", "role r0 secondary init"],
    );
    expect_hooks(&cluster, "a", 6, &["disconnect r0"]);
    cluster.hastctl_ok("a", &["role", "init", "r0"]);
    expect_hooks(&cluster, "a", 7, &["role r0 primary init"]);
    assert_identical(&cluster);
    drop((a, b));
}

// ---------------------------------------------------------------------------------------
// A real file system through failover: ext4 on /dev/loopN on an nbdfuse file on the export.

/// Runs a command that must succeed.
fn must(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The export as a block device: nbdfuse file → loop device; torn down on drop (even if
/// the export died under it).
struct Attached {
    fuse_dir: PathBuf,
    nbdfuse: Option<Child>,
    loopdev: Option<String>,
    mnt: Option<PathBuf>,
}

impl Attached {
    fn new(cluster: &Cluster, node: &str) -> Attached {
        let fuse_dir = cluster.path(&format!("fuse-{node}"));
        std::fs::create_dir_all(&fuse_dir).unwrap();
        let pidfile = cluster.path(&format!("nbdfuse-{node}.pid"));
        let child = Command::new("nbdfuse")
            .arg("-P")
            .arg(&pidfile)
            .arg(fuse_dir.join("disk"))
            .arg(uri(cluster, node))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut me = Attached {
            fuse_dir: fuse_dir.clone(),
            nbdfuse: Some(child),
            loopdev: None,
            mnt: None,
        };
        wait_for("nbdfuse to be ready", Duration::from_secs(20), || {
            pidfile.exists() && fuse_dir.join("disk").exists()
        });
        let dev = must(
            Command::new("losetup")
                .args(["-f", "--show", "--direct-io=on"])
                .arg(fuse_dir.join("disk")),
        );
        me.loopdev = Some(dev.trim().to_string());
        me
    }

    fn dev(&self) -> &str {
        self.loopdev.as_deref().unwrap()
    }

    fn mount(&mut self, at: &Path) {
        std::fs::create_dir_all(at).unwrap();
        must(Command::new("mount").arg(self.dev()).arg(at));
        self.mnt = Some(at.to_path_buf());
    }

    fn umount(&mut self) {
        if let Some(m) = self.mnt.take() {
            must(Command::new("umount").arg(&m));
        }
    }
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(m) = self.mnt.take() {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
        if let Some(dev) = self.loopdev.take() {
            let _ = Command::new("losetup").args(["-d", &dev]).status();
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg(&self.fuse_dir)
            .stderr(Stdio::null())
            .status();
        if let Some(mut c) = self.nbdfuse.take() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.fuse_dir)
                .status();
        }
    }
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

#[test]
fn ext4_survives_failover() {
    if !is_root() {
        assert!(!in_ci(), "the ext4 failover test needs root in CI");
        eprintln!("SKIP: ext4_survives_failover needs root (loop devices, mount)");
        return;
    }
    for tool in [
        "nbdfuse",
        "losetup",
        "mkfs.ext4",
        "fsck.ext4",
        "fusermount3",
    ] {
        if !have_tool(tool) {
            return;
        }
    }
    if !Path::new("/dev/fuse").exists() {
        assert!(!in_ci(), "/dev/fuse is missing");
        eprintln!("SKIP: no /dev/fuse");
        return;
    }
    let (cluster, a, _b) = loopback_pair("fullsync", 128 * MIB);
    let mnt = cluster.path("mnt");
    let mut files = Vec::new();
    {
        let mut dev = Attached::new(&cluster, "a");
        must(Command::new("mkfs.ext4").args(["-q", "-F", "-E", "nodiscard", dev.dev()]));
        dev.mount(&mnt);
        for i in 0..20u64 {
            let data = pseudo_random(100_000 + i as usize * 997, i + 1);
            std::fs::write(mnt.join(format!("f{i}")), &data).unwrap();
            files.push(data);
        }
        std::fs::create_dir(mnt.join("dir")).unwrap();
        must(Command::new("sync").arg("-f").arg(&mnt));
        // The primary dies with the file system mounted.
        a.kill();
        // Drop: lazy unmount, loop and FUSE torn down.
    }
    wait_status(&cluster, "b", "degraded");
    cluster.hastctl_ok("b", &["role", "primary", "r0"]);
    let mut dev = Attached::new(&cluster, "b");
    // Mount replays the journal; then a forced read-only check must find nothing.
    dev.mount(&mnt);
    for (i, data) in files.iter().enumerate() {
        let got = std::fs::read(mnt.join(format!("f{i}"))).unwrap();
        assert!(got == *data, "file f{i} differs after failover");
    }
    assert!(mnt.join("dir").is_dir());
    dev.umount();
    let fsck = must(Command::new("fsck.ext4").args(["-f", "-n", dev.dev()]));
    eprintln!(
        "ext4 on {}: {} files intact on b after failover; {}",
        dev.dev(),
        files.len(),
        fsck.lines().last().unwrap_or("")
    );
}
