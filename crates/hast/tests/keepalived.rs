//! keepalived drives failover, with the files of contrib/keepalived unchanged but for
//! paths: a LAN of network namespaces (a switch with the gateway, nodes a and b), hastd
//! and keepalived (VRRP over the LAN) in each node. Nobody runs hastctl by hand here:
//!
//! - SIGKILL of the master's keepalived and hastd: the other node becomes primary by
//!   itself and serves every acknowledged write (ledger); the killed node comes back and
//!   rejoins as secondary with a resync; repeated, alternating, to time the failover
//!   (kill to first served write);
//! - the primary cut off the LAN while both become VRRP master: with `fence`
//!   (contrib's hast-fence.sh: hold the VIP and reach the gateway) the isolated primary
//!   stops writing and no split-brain follows; without it, split-brain is reported on
//!   both after the heal and neither copy is touched.
//!
//! Needs root, ip, nft, keepalived (installed by test.sh); skipped with a reason
//! otherwise, failed under CI.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;
mod keepalived_pair;
mod netns;

use std::time::{Duration, Instant};

use common::ledger::{verify, Ledger, LedgerConfig, Problem, Workload};
use faults::*;
use keepalived_pair::{idx, Pair, NODES};

#[test]
fn keepalived_fails_over_on_a_kill_and_the_killed_node_rejoins_by_itself() {
    let Some(mut pair) = Pair::new(false) else {
        return;
    };
    let mut primary = pair.wait_any_primary(Duration::from_secs(60));
    wait_settled(&pair.cluster, primary);
    let cfg = failover_ledger(0x6a11);
    let mut ledger = ledger_on(&pair.cluster, primary, &cfg);
    let probe = probe_offset(&ledger);
    let runs: usize = std::env::var("KEEPALIVED_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut times = Vec::new();
    for run in 0..runs {
        let standby = other(primary);
        let wl = Workload::start(conn(&pair.cluster, primary), ledger, &cfg);
        assert!(wl.wait_acked(300, Duration::from_secs(60)));
        let killed = Instant::now();
        pair.kill_node(primary);
        let (l, stats) = wl.abort();
        ledger = l;
        let served = first_served_write(
            &pair.cluster,
            standby,
            probe,
            Duration::from_secs(60),
            || pair.logs(),
        );
        let secs = served.duration_since(killed).as_secs_f64();
        eprintln!(
            "run {run}: {primary} killed, {standby} served a write after {secs:.2}s ({stats})"
        );
        times.push(secs);
        let verdict = verify(&mut conn(&pair.cluster, standby), &ledger);
        assert!(
            verdict.slots_with(Problem::Lost).is_empty() && verdict.is_clean(),
            "run {run}: {verdict}\n{}",
            pair.logs()
        );
        // The dead node comes back: keepalived makes it BACKUP, hast-backup.sh makes it
        // secondary, the new primary resyncs it.
        pair.restart_node(primary);
        wait_for(
            &format!("{primary} to rejoin as secondary"),
            Duration::from_secs(60),
            || pair.role(primary) == "secondary",
        );
        wait_settled(&pair.cluster, standby);
        assert_identical(&pair.cluster);
        primary = standby;
    }
    eprintln!(
        "keepalived failover, kill to first served write: {}",
        spread(&times)
    );
    verify_clean(&pair.cluster, primary, &ledger);
}

/// Cuts the primary off the LAN while the other node takes over as VRRP master too;
/// returns the ledger of what the cut-off primary acknowledged, and its name.
/// `under_load`: the workload runs through the cut (with fencing, every write after it
/// must fail); else it ends before the cut (without fencing, what the cut-off primary
/// acknowledges after it is what the split-brain sets apart).
fn both_masters(pair: &mut Pair, under_load: bool) -> (Ledger, LedgerConfig, &'static str) {
    let p = pair.wait_any_primary(Duration::from_secs(60));
    let o = other(p);
    wait_settled(&pair.cluster, p);
    let cfg = failover_ledger(0xb0b);
    let ledger = ledger_on(&pair.cluster, p, &cfg);
    let wl = Workload::start(conn(&pair.cluster, p), ledger, &cfg);
    assert!(wl.wait_acked(300, Duration::from_secs(60)));
    let (wl, before) = if under_load {
        (Some(wl), None)
    } else {
        let (ledger, stats) = wl.stop();
        eprintln!("workload on {p} before the cut: {stats}");
        (None, Some(ledger))
    };
    assert!(pair.lan.holds(p, &pair.lan.vip), "{}", pair.logs());
    pair.lan.isolate(p);
    // The other node stops hearing adverts and takes the VIP: both are VRRP masters.
    wait_for(
        &format!("{o} to take the VIP too"),
        Duration::from_secs(30),
        || pair.lan.holds(o, &pair.lan.vip),
    );
    pair.wait_primary(o, Duration::from_secs(60));
    assert!(pair.lan.holds(p, &pair.lan.vip), "{}", pair.logs());
    let ledger = match (wl, before) {
        (Some(wl), _) => {
            let (ledger, stats) = wl.stop();
            eprintln!("workload on the isolated {p}: {stats}");
            ledger
        }
        (None, Some(ledger)) => ledger,
        (None, None) => unreachable!(),
    };
    (ledger, cfg, p)
}

#[test]
fn both_masters_with_fencing_the_isolated_primary_stops_writing_and_no_split_brain() {
    let Some(mut pair) = Pair::new(true) else {
        return;
    };
    let (ledger, cfg, p) = both_masters(&mut pair, true);
    let o = other(p);
    let cluster = &pair.cluster;
    wait_for(
        &format!("{p}'s fence to fail"),
        Duration::from_secs(30),
        || status(cluster, p)["fence"] == "failed",
    );
    let offset = probe_offset(&ledger);
    let mut probe = conn(cluster, p);
    assert!(
        probe.write(offset, &[1; 4096], false).is_err(),
        "the isolated primary accepted a write"
    );
    // The other node has every write the isolated one acknowledged, and writes (its
    // fence passed: VIP + gateway).
    verify_clean(cluster, o, &ledger);
    let wl = Workload::start(conn(cluster, o), ledger, &cfg);
    assert!(
        wl.wait_acked(300, Duration::from_secs(60)),
        "{}",
        pair.logs()
    );
    let (ledger, _) = wl.stop();
    assert_eq!(status(cluster, o)["fence"], "open");

    // The heal: VRRP keeps the higher priority (a) as master, b runs hast-backup.sh and
    // becomes secondary; whichever was cut off wrote nothing since and resyncs.
    pair.lan.heal();
    wait_for("b to become secondary", Duration::from_secs(60), || {
        pair.role("b") == "secondary"
    });
    pair.wait_primary("a", Duration::from_secs(60));
    wait_settled(cluster, "a");
    assert_identical(cluster);
    for node in NODES {
        let log = pair.hastd[idx(node)].as_ref().unwrap().log_text();
        assert!(
            !log.contains("split-brain"),
            "split-brain on {node}:\n{log}"
        );
    }
    verify_clean(cluster, "a", &ledger);
}

#[test]
fn both_masters_without_fencing_are_a_split_brain_reported_on_both() {
    let Some(mut pair) = Pair::new(false) else {
        return;
    };
    let (ledger, _, p) = both_masters(&mut pair, false);
    let o = other(p);
    let cluster = &pair.cluster;
    verify_clean(cluster, o, &ledger);
    // Both write: the cut-off one degraded, the other promoted.
    qemu_io(&uri(cluster, p), &["write -P 0xaa 1M 64k".into()]);
    qemu_io(&uri(cluster, o), &["write -P 0xbb 2M 64k".into()]);
    pair.lan.heal();
    wait_for("b to become secondary", Duration::from_secs(60), || {
        pair.role("b") == "secondary"
    });
    for node in NODES {
        let d = pair.hastd[idx(node)].as_ref().unwrap();
        wait_log(d, &format!("the split-brain on {node}"), |l| {
            l.contains("split-brain")
        });
    }
    assert_eq!(status(cluster, "a")["status"], "degraded");
    // a, still primary, was not overwritten by b.
    let own = if p == "a" {
        "read -P 0xaa 1M 64k"
    } else {
        "read -P 0xbb 2M 64k"
    };
    qemu_io(&uri(cluster, "a"), &[own.into()]);
}
