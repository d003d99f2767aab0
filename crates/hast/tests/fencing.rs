//! Fencing (`fence` in hast.conf) across a real partition: two hosts made of network
//! namespaces, the link cut with nftables. The isolated primary suspends its writes and
//! runs the fence program; the program's verdict comes from an arbiter the test plays
//! (a file per node, as a cluster manager's constraint would be): refused, the old
//! primary fails its writes with EIO while its reads go on; the other node is promoted,
//! fences successfully and writes. After the heal the old primary rejoins as secondary
//! and is synchronised from the new one: no split-brain, both copies equal, and the
//! unfence step ran once the sync completed.
//!
//! Needs root, `ip`, `nft` and qemu-io (skipped with a reason otherwise, failed under CI).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;
mod netns;

use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{have_tool, Cluster, Daemon};
use faults::*;
use netns::{NetPair, Side};

/// The fence program: logs every call; `fence` succeeds only if the arbiter allows this
/// node (named by its peer's address, the only thing that tells the two apart here) to
/// fence its peer. It takes a moment, like a real constraint.
const FENCE_SCRIPT: &str = r#"#!/bin/sh
peer=${HAST_REMOTE#tcp://}
peer=${peer%:*}
echo "$1 $2 $peer" >> "@DIR@/fence.log"
[ "$1" = unfence ] && exit 0
sleep 0.3
test -e "@DIR@/allow-fencing-$peer"
"#;

fn config(net: &NetPair) -> String {
    let head = format!(
        "{}fence @DIR@/fence.sh\nfence_timeout 10\n",
        fault_head("memsync")
    );
    pair_config(&head, &net.ip_a, &net.ip_b, None)
}

fn start(cluster: &Cluster, net: &NetPair, node: &str) -> Daemon {
    net.start(cluster, node)
}

fn fence_log(cluster: &Cluster) -> String {
    std::fs::read_to_string(cluster.path("fence.log")).unwrap_or_default()
}

/// qemu-io commands on `uri`; returns (success, output).
fn try_qemu_io(uri: &str, commands: &[&str]) -> (bool, String) {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = cmd.arg(uri).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let failed = !out.status.success() || text.to_lowercase().contains("error");
    (!failed, text)
}

#[test]
fn a_partitioned_primary_that_cannot_fence_stops_writing_and_no_split_brain_follows() {
    if !have_tool("qemu-io") {
        assert!(!common::in_ci(), "qemu-io is missing");
        return;
    }
    let Some(net) = NetPair::new() else {
        return;
    };
    let cluster = Cluster::new(&config(&net));
    let dir = cluster.dir.path().display().to_string();
    let script = cluster.path("fence.sh");
    std::fs::write(&script, FENCE_SCRIPT.replace("@DIR@", &dir)).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    create_both(&cluster, 64 * MIB);
    // a may fence b (it will need to at the start, before b is connected).
    std::fs::write(cluster.path(&format!("allow-fencing-{}", net.ip_b)), "").unwrap();
    let a = start(&cluster, &net, "a");
    let b = start(&cluster, &net, "b");
    connect_pair(&cluster);
    let ua = uri(&cluster, "a");
    qemu_io(&ua, &["write -P 0x01 0 4M".into(), "flush".into()]);
    wait_settled(&cluster, "a");
    wait_for(
        "the unfence after the first sync",
        Duration::from_secs(10),
        || fence_log(&cluster).contains("unfence r0"),
    );
    assert_eq!(status(&cluster, "a")["fence"], "open");

    // The arbiter now sides with b: a is the one cut off.
    std::fs::remove_file(cluster.path(&format!("allow-fencing-{}", net.ip_b))).unwrap();
    std::fs::write(cluster.path(&format!("allow-fencing-{}", net.ip_a)), "").unwrap();
    net.cut(Side::Both);
    wait_status(&cluster, "a", "degraded");
    wait_for("a's fence to fail", Duration::from_secs(15), || {
        status(&cluster, "a")["fence"] == "failed"
    });
    let (ok, text) = try_qemu_io(&ua, &["write -P 0xaa 1M 1M"]);
    assert!(!ok, "a wrote without its secondary and unfenced: {text}");
    assert!(text.contains("Input/output error"), "{text}");
    // Reads go on.
    qemu_io(&ua, &["read -P 0x01 0 4M".into()]);
    let a_counters = (
        status(&cluster, "a")["localcnt"].clone(),
        status(&cluster, "a")["remotecnt"].clone(),
    );

    // The failover manager promotes b, which fences a and writes.
    wait_status(&cluster, "b", "degraded");
    promote(&cluster, "b");
    let ub = uri(&cluster, "b");
    let t = Instant::now();
    qemu_io(&ub, &["write -P 0xbb 8M 1M".into(), "flush".into()]);
    eprintln!("b's first write, fence included: {:?}", t.elapsed());
    assert_eq!(status(&cluster, "b")["fence"], "open");
    let log = fence_log(&cluster);
    assert!(log.contains(&format!("fence r0 {}", net.ip_a)), "{log}");

    // The heal: the manager demotes the old primary, which rejoins as secondary.
    net.heal();
    set_role(&cluster, "a", "secondary", false).unwrap();
    wait_settled(&cluster, "b");
    wait_for("b's unfence", Duration::from_secs(10), || {
        fence_log(&cluster).contains(&format!("unfence r0 {}", net.ip_a))
    });
    assert_identical(&cluster);
    for (node, d) in [("a", &a), ("b", &b)] {
        let log = d.log_text();
        assert!(
            !log.contains("split-brain"),
            "{node} reported a split-brain:\n{log}"
        );
        assert!(
            !hook_runs(&cluster, node)
                .iter()
                .any(|r| r.args.contains("split-brain")),
            "split-brain hook on {node}"
        );
    }
    assert!(
        a.log_text().contains("fencing failed"),
        "a logged its refusal"
    );
    eprintln!("a's counters while cut off: {a_counters:?}");
    // b's data everywhere, a's refused write nowhere.
    qemu_io(
        &ub,
        &["read -P 0x01 0 1M".into(), "read -P 0xbb 8M 1M".into()],
    );
}
