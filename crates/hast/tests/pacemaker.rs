//! A real Pacemaker cluster drives hast through the OCF agent (tests/pacemaker_cluster:
//! three nodes in network, mount and UTS namespaces; a and b run hastd, c gives quorum):
//!
//! - the primary's host dies under a ledger workload: Pacemaker promotes the survivor,
//!   which serves every acknowledged write; the dead node boots again, Pacemaker starts
//!   it as secondary and it resyncs; repeated, alternating, to time the failover;
//! - with `fence` set to contrib/ocf/hast-fence-pacemaker, the primary is cut off the
//!   network under load: it loses quorum, its fence fails and it acknowledges nothing
//!   more; the other side (with c) promotes its node, which fences (a constraint) and
//!   writes; after the heal the old primary is started as secondary, resyncs, the
//!   unfence step removes the constraint, and no split-brain is reported.
//!
//! Needs root, corosync, pacemaker (test.sh installs them).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;
mod netns;
mod pacemaker_cluster;

use std::time::{Duration, Instant};

use common::ledger::{verify, Problem, Workload};
use faults::*;
use pacemaker_cluster::PcmkCluster;

#[test]
fn pacemaker_promotes_the_survivor_and_starts_the_returning_node_as_secondary() {
    let Some(mut c) = PcmkCluster::new(false) else {
        return;
    };
    let mut primary = c.wait_primary_in_step(Duration::from_secs(120));
    let cfg = failover_ledger(0x9c);
    let mut ledger = ledger_on(&c.cluster, primary, &cfg);
    let probe = probe_offset(&ledger);
    let runs: usize = std::env::var("PACEMAKER_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let mut times = Vec::new();
    for run in 0..runs {
        let standby = other(primary);
        let wl = Workload::start(conn(&c.cluster, primary), ledger, &cfg);
        assert!(wl.wait_acked(300, Duration::from_secs(60)));
        let killed = Instant::now();
        c.kill_node(primary);
        let (l, stats) = wl.abort();
        ledger = l;
        let served =
            first_served_write(&c.cluster, standby, probe, Duration::from_secs(120), || {
                c.diagnostics()
            });
        let secs = served.duration_since(killed).as_secs_f64();
        eprintln!("run {run}: {primary} died, Pacemaker promoted {standby}, which served a write after {secs:.2}s ({stats})");
        times.push(secs);
        let verdict = verify(&mut conn(&c.cluster, standby), &ledger);
        assert!(
            verdict.slots_with(Problem::Lost).is_empty() && verdict.is_clean(),
            "run {run}: {verdict}"
        );
        c.start_node(primary);
        wait_for(
            &format!("Pacemaker to start {primary} as secondary"),
            Duration::from_secs(120),
            || c.role(primary) == "secondary",
        );
        assert_eq!(c.wait_primary_in_step(Duration::from_secs(120)), standby);
        assert_identical(&c.cluster);
        primary = standby;
    }
    eprintln!(
        "Pacemaker failover, host death to first served write: {}",
        spread(&times)
    );
    verify_clean(&c.cluster, primary, &ledger);
}

#[test]
fn pacemaker_fencing_stops_an_isolated_primary_and_no_split_brain_follows() {
    let Some(c) = PcmkCluster::new(true) else {
        return;
    };
    let primary = c.wait_primary_in_step(Duration::from_secs(120));
    let standby = other(primary);
    let cfg = failover_ledger(0xfe);
    let ledger = ledger_on(&c.cluster, primary, &cfg);
    let wl = Workload::start(conn(&c.cluster, primary), ledger, &cfg);
    assert!(wl.wait_acked(300, Duration::from_secs(60)));
    c.lan.isolate(primary);
    // The majority (standby and c) promotes the standby.
    wait_for(
        &format!("Pacemaker to promote {standby}"),
        Duration::from_secs(120),
        || c.role(standby) == "primary",
    );
    let (ledger, stats) = wl.stop();
    eprintln!("workload on the isolated {primary}: {stats}");
    // Every write the isolated primary acknowledged is on the standby.
    verify_clean(&c.cluster, standby, &ledger);
    let wl = Workload::start(conn(&c.cluster, standby), ledger, &cfg);
    assert!(
        wl.wait_acked(300, Duration::from_secs(60)),
        "the promoted {standby} does not write:\n{}",
        std::fs::read_to_string(c.cluster.path("fence.log")).unwrap_or_default()
    );
    let (ledger, _) = wl.stop();
    let fence_log = std::fs::read_to_string(c.cluster.path("fence.log")).unwrap_or_default();
    assert!(fence_log.contains("may be promoted only on"), "{fence_log}");

    // The heal: the old primary rejoins, Pacemaker starts it as secondary, it resyncs,
    // the unfence step removes the constraint.
    c.lan.heal();
    c.wait_online(&["a", "b", "c"], Duration::from_secs(120));
    wait_for(
        &format!("{primary} to run as secondary"),
        Duration::from_secs(120),
        || c.role(primary) == "secondary",
    );
    let now = c.wait_primary_in_step(Duration::from_secs(120));
    assert_eq!(
        now,
        standby,
        "{}\nfence log:\n{}\nhooks {primary}: {:?}\nhooks {standby}: {:?}",
        c.crm_mon("c"),
        std::fs::read_to_string(c.cluster.path("fence.log")).unwrap_or_default(),
        hook_runs(&c.cluster, primary)
            .iter()
            .map(|r| r.args.clone())
            .collect::<Vec<_>>(),
        hook_runs(&c.cluster, standby)
            .iter()
            .map(|r| r.args.clone())
            .collect::<Vec<_>>(),
    );
    wait_for("the unfence", Duration::from_secs(60), || {
        !String::from_utf8_lossy(&c.exec("c", &["cibadmin", "-Q", "-o", "constraints"]).stdout)
            .contains("hast-fence-r0")
    });
    assert_identical(&c.cluster);
    for node in ["a", "b"] {
        let log = c.hastd[usize::from(node == "b")]
            .as_ref()
            .unwrap()
            .log_text();
        assert!(
            !log.contains("split-brain"),
            "split-brain on {node}:\n{log}"
        );
    }
    verify_clean(&c.cluster, standby, &ledger);
}
