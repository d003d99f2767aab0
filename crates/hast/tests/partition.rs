//! Network partitions between two hosts made of network namespaces (veth + nftables drop
//! rules): the primary goes degraded after `timeout`, keeps serving, and after the heal
//! reconnects and resynchronises what was written meanwhile; a partition during a sync is
//! resumed; two primaries written while apart are a split-brain after the heal.
//!
//! Needs root, `ip` and `nft` (skipped with a reason otherwise, failed under CI). hastd
//! runs inside its namespace; hastctl and the NBD clients use UNIX sockets, which are
//! files and work from the root namespace.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;
mod netns;

use std::time::{Duration, Instant};

use common::{have_tool, Cluster, Daemon};
use faults::*;
use netns::{NetPair, Side};

fn config(net: &NetPair) -> String {
    pair_config(&fault_head("memsync"), &net.ip_a, &net.ip_b, None)
}

fn start(cluster: &Cluster, net: &NetPair, node: &str) -> Daemon {
    net.start(cluster, node)
}

/// A connected pair in two namespaces, a primary. The pair is returned first so that it
/// is dropped last, after the daemons inside it.
fn netns_pair(size: u64) -> Option<(NetPair, Cluster, Daemon, Daemon)> {
    if !have_tool("qemu-io") {
        return None;
    }
    let net = NetPair::new()?;
    let cluster = Cluster::new(&config(&net));
    create_both(&cluster, size);
    let a = start(&cluster, &net, "a");
    let b = start(&cluster, &net, "b");
    connect_pair(&cluster);
    Some((net, cluster, a, b))
}

/// Waits until the primary notices the partition; returns how long that took.
fn wait_degraded(cluster: &Cluster, node: &str) -> Duration {
    let t = Instant::now();
    wait_status(cluster, node, "degraded");
    t.elapsed()
}

#[test]
fn partition_degrades_the_primary_and_the_heal_resyncs() {
    let Some((net, cluster, a, _b)) = netns_pair(128 * MIB) else {
        return;
    };
    let extentsize = status(&cluster, "a")["extentsize"].as_u64().unwrap();
    let u = uri(&cluster, "a");
    qemu_io(&u, &["write -P 0x01 0 4M".into(), "flush".into()]);
    wait_settled(&cluster, "a");

    net.cut(Side::Both);
    let took = wait_degraded(&cluster, "a");
    eprintln!("primary degraded {took:?} after the cut (timeout 2)");
    wait_status(&cluster, "b", "degraded");
    expect_hooks(
        &cluster,
        "a",
        0,
        &["role r0 init primary", "connect r0", "disconnect r0"],
    );
    expect_hooks(
        &cluster,
        "b",
        0,
        &["role r0 init secondary", "connect r0", "disconnect r0"],
    );

    // The primary keeps serving; three extents become owed.
    let writes = [
        "write -P 0x21 10M 64k",
        "write -P 0x22 50M 1M",
        "write -P 0x23 100M 4k",
    ];
    let mut cmds: Vec<String> = writes.iter().map(|s| s.to_string()).collect();
    cmds.push("flush".into());
    qemu_io(&u, &cmds);
    let st = status(&cluster, "a");
    assert_eq!(st["dirty"].as_u64().unwrap(), 3 * extentsize, "{st}");
    assert_eq!(st["status"], "degraded");

    net.heal();
    wait_settled(&cluster, "a");
    wait_log(&a, "the end of the resync", |l| {
        !synced_totals(l).is_empty()
    });
    assert_eq!(synced_totals(&a.log_text()), vec![3 * extentsize]);
    assert_identical(&cluster);
    let order = expect_hooks(
        &cluster,
        "a",
        3,
        &["connect r0", "syncstart r0", "syncdone r0"],
    );
    assert_before(&order, "syncstart r0", "syncdone r0");
    expect_hooks(&cluster, "b", 3, &["connect r0"]);
    let reads: Vec<String> = writes.iter().map(|c| c.replace("write", "read")).collect();
    qemu_io(&u, &reads);
}

#[test]
fn partition_during_a_sync_resumes_after_the_heal() {
    let Some((net, cluster, a, _b)) = netns_pair(256 * MIB) else {
        return;
    };
    let extentsize = status(&cluster, "a")["extentsize"].as_u64().unwrap();
    // A slower link makes the sync long enough to cut in the middle of it.
    let shaped = net.shape("400mbit");
    eprintln!("link shaped with tbf: {shaped}");

    // One-sided cut: only b drops.
    net.cut(Side::B);
    wait_degraded(&cluster, "a");
    let mut cmds = pattern_writes(0, 128 * MIB, 4 * MIB, 0x31);
    cmds.push("flush".into());
    qemu_io(&uri(&cluster, "a"), &cmds);
    let owed = status(&cluster, "a")["dirty"].as_u64().unwrap();
    assert_eq!(owed, 128 * MIB);

    net.heal();
    let done = {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = status(&cluster, "a");
            if let Some(n) = st["sync"]["synced_bytes"].as_u64() {
                if n > 2 * extentsize {
                    break n;
                }
            }
            assert!(
                st["dirty"] != 0 && Instant::now() < deadline,
                "sync did not get going or ended too soon: {st}"
            );
        }
    };
    net.cut(Side::B);
    wait_degraded(&cluster, "a");
    wait_log(&a, "the interruption", |l| {
        l.contains("synchronization interrupted")
    });
    let order = expect_hooks(
        &cluster,
        "a",
        0,
        &[
            "role r0 init primary",
            "connect r0",
            "disconnect r0",
            "connect r0",
            "syncstart r0",
            "syncintr r0",
            "disconnect r0",
        ],
    );
    assert_before(&order[3..], "syncstart r0", "syncintr r0");
    let still_owed = status(&cluster, "a")["dirty"].as_u64().unwrap();
    assert!(
        still_owed > 0 && still_owed < owed,
        "{still_owed} of {owed} owed after {done} bytes were copied"
    );

    net.heal();
    wait_settled(&cluster, "a");
    wait_log(&a, "the end of the sync", |l| !synced_totals(l).is_empty());
    assert_eq!(
        synced_totals(&a.log_text()),
        vec![still_owed],
        "the sync resumed with what was still owed"
    );
    assert_identical(&cluster);
    expect_hooks(
        &cluster,
        "a",
        7,
        &["connect r0", "syncstart r0", "syncdone r0"],
    );
}

#[test]
fn two_primaries_written_during_a_partition_are_a_split_brain_after_the_heal() {
    let Some((net, cluster, a, b)) = netns_pair(64 * MIB) else {
        return;
    };
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0x01 0 4M".into(), "flush".into()],
    );
    wait_settled(&cluster, "a");
    net.cut(Side::Both);
    wait_degraded(&cluster, "a");
    wait_status(&cluster, "b", "degraded");

    // Both sides written while apart: a as the old primary, b promoted by someone who
    // believed a dead; then b is put back to secondary, still apart.
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0xaa 1M 1M".into(), "flush".into()],
    );
    cluster.hastctl_ok("b", &["role", "primary", "r0"]);
    qemu_io(
        &uri(&cluster, "b"),
        &["write -P 0xbb 20M 1M".into(), "flush".into()],
    );
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    let a_before = data_area(&cluster, "a");
    let b_before = data_area(&cluster, "b");
    expect_hooks(
        &cluster,
        "a",
        0,
        &["role r0 init primary", "connect r0", "disconnect r0"],
    );
    expect_hooks(
        &cluster,
        "b",
        0,
        &[
            "role r0 init secondary",
            "connect r0",
            "disconnect r0",
            "role r0 secondary primary",
            "role r0 primary secondary",
        ],
    );

    net.heal();
    wait_log(&b, "the split-brain on b", |l| l.contains("split-brain"));
    wait_log(&a, "the split-brain on a", |l| l.contains("split-brain"));
    // Refused again at the next attempt, reported once.
    wait_for(
        "two refused handshakes on b",
        Duration::from_secs(30),
        || count(&b.log_text(), "Split-brain condition!") >= 2,
    );
    expect_hooks(&cluster, "a", 3, &["split-brain r0"]);
    expect_hooks(&cluster, "b", 5, &["split-brain r0"]);
    assert_eq!(status(&cluster, "a")["status"], "degraded");
    assert_eq!(status(&cluster, "b")["status"], "degraded");
    assert!(data_area(&cluster, "a") == a_before, "a's data was touched");
    assert!(data_area(&cluster, "b") == b_before, "b's data was touched");
}
