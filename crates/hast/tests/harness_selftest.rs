//! Process tests of the test harness itself, against real daemons: the acknowledged-write
//! ledger (`common::ledger`) must pass a healthy pair, catch a lost or torn block, record
//! failed writes as uncertain, and survive a failover; strace injection
//! (`common::inject`) must really fail and delay a daemon's syscalls and let go of it.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;

use std::time::Duration;

use common::inject::Strace;
use common::ledger::{
    verify, Ledger, LedgerConfig, NbdConn, Problem, Workload, WorkloadStats, MAX_DETAILS,
};
use common::Cluster;
use faults::*;

const KIB4: u32 = 4096;

fn conn(cluster: &Cluster, node: &str) -> NbdConn {
    NbdConn::open_uri(&uri(cluster, node)).unwrap()
}

/// Runs a workload to its `max_writes` and returns the ledger and stats.
fn run(
    cluster: &Cluster,
    node: &str,
    ledger: Ledger,
    cfg: &LedgerConfig,
) -> (Ledger, WorkloadStats) {
    let wl = Workload::start(conn(cluster, node), ledger, cfg);
    assert!(
        wl.wait_done(Duration::from_secs(60)),
        "workload did not finish: {} acked",
        wl.acked()
    );
    let (ledger, stats) = wl.stop();
    eprintln!("workload on {node}: {stats}\n{ledger}");
    (ledger, stats)
}

fn assert_no_trouble(stats: &WorkloadStats, acked: u64) {
    assert_eq!(stats.acked, acked, "{stats}");
    assert_eq!(stats.uncertain, 0, "{stats}");
    assert!(!stats.broken, "{stats}");
}

#[test]
fn ledger_workload_through_the_primary_verifies_clean() {
    let (cluster, _a, _b) = loopback_pair("fullsync", 64 * MIB);
    let c = conn(&cluster, "a");
    let size = c.size();
    let cfg = LedgerConfig {
        seed: 0x5eed,
        slots: 2000,
        in_flight: 32,
        max_writes: Some(3000),
        flush_every: 500,
        fua_every: 250,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::new(size, &cfg);

    // Placement: deterministic, distinct, aligned, from the first block to the last.
    let offsets = |l: &Ledger| {
        (0..l.slot_count())
            .map(|s| l.slot(s).offset)
            .collect::<Vec<_>>()
    };
    assert_eq!(offsets(&ledger), offsets(&Ledger::new(size, &cfg)));
    let o = offsets(&ledger);
    assert_eq!(o[0], 0);
    // The last whole aligned slot (the data area need not be a multiple of 4 KiB).
    assert_eq!(*o.last().unwrap(), (size / 4096 - 1) * 4096);
    assert!(o.windows(2).all(|w| w[0] < w[1]) && o.iter().all(|x| x % 4096 == 0));
    let other = Ledger::new(
        size,
        &LedgerConfig {
            seed: 7,
            ..cfg.clone()
        },
    );
    assert_ne!(o, offsets(&other), "the seed chooses the slots");
    let plan = ledger.planned_slots(3000);

    let wl = Workload::start(c, ledger, &cfg);
    assert!(wl.wait_acked(1000, Duration::from_secs(30)));
    assert!(
        wl.wait_done(Duration::from_secs(60)),
        "{} acked",
        wl.acked()
    );
    let (ledger, stats) = wl.stop();
    eprintln!("{stats}\n{ledger}");
    assert_no_trouble(&stats, 3000);
    assert_eq!(stats.error_replies, 0);
    assert_eq!(stats.fua_writes, 12);
    assert!(stats.flushes >= 5 && stats.flush_errors == 0, "{stats}");
    // The workload wrote exactly the planned sequence of slots.
    for s in 0..ledger.slot_count() {
        let planned = plan.iter().filter(|&&p| p == s).count() as u64;
        assert_eq!(ledger.slot(s).acked, planned, "slot {s}");
        assert_eq!(ledger.slot(s).issued, planned, "slot {s}");
    }

    let verdict = verify(&mut conn(&cluster, "a"), &ledger);
    eprintln!("{verdict}");
    verdict.assert_clean();
    assert_eq!(
        (verdict.slots, verdict.ok, verdict.acked_writes),
        (2000, 2000, 3000)
    );

    // The same ledger continues on a new connection: sequence numbers go on.
    let before = ledger.clone();
    let cfg2 = LedgerConfig {
        max_writes: Some(500),
        ..cfg.clone()
    };
    let (ledger, stats) = run(&cluster, "a", ledger, &cfg2);
    assert_no_trouble(&stats, 500);
    assert_eq!(ledger.acked_writes(), 3500);
    let total: u64 = (0..ledger.slot_count()).map(|s| ledger.slot(s).acked).sum();
    assert_eq!(total, 3500, "per-slot seqs count every write");
    assert!((0..ledger.slot_count())
        .any(|s| before.slot(s).acked > 0 && ledger.slot(s).acked > before.slot(s).acked));
    let verdict = verify(&mut conn(&cluster, "a"), &ledger);
    eprintln!("{verdict}");
    verdict.assert_clean();
    wait_settled(&cluster, "a");
    assert_identical(&cluster);
}

#[test]
fn verifier_reports_an_older_block_as_lost_and_a_torn_one_as_corrupt() {
    let (cluster, _a, _b) = loopback_pair("fullsync", 64 * MIB);
    let cfg = LedgerConfig {
        seed: 2,
        slots: 300,
        max_writes: Some(1500),
        ..LedgerConfig::default()
    };
    let ledger = Ledger::new(conn(&cluster, "a").size(), &cfg);
    let (ledger, stats) = run(&cluster, "a", ledger, &cfg);
    assert_no_trouble(&stats, 1500);
    let mut c = conn(&cluster, "a");
    verify(&mut c, &ledger).assert_clean();

    let written: Vec<u32> = (0..ledger.slot_count())
        .filter(|&s| ledger.slot(s).acked >= 2)
        .collect();
    let (old, torn, misplaced, zeroed) = (written[0], written[1], written[2], written[3]);
    let seq = |s: u32| ledger.slot(s).acked;
    let at = |s: u32| ledger.slot(s).offset;
    // An older write of the same slot: LOST.
    c.write(at(old), &ledger.block(old, seq(old) - 1), false)
        .unwrap();
    // First half of the older write, second half of the newer: CORRUPT.
    let mut half = ledger.block(torn, seq(torn) - 1);
    half[2048..].copy_from_slice(&ledger.block(torn, seq(torn))[2048..]);
    c.write(at(torn), &half, false).unwrap();
    // Another slot's current block: CORRUPT.
    c.write(at(misplaced), &ledger.block(old, seq(old)), true)
        .unwrap();
    // Zeroes where something was acked: LOST.
    c.write_zeroes(at(zeroed), KIB4).unwrap();
    // A trim between slots touches no slot.
    let gap = (1..ledger.slot_count())
        .map(|s| at(s) - u64::from(KIB4))
        .find(|&o| !(0..ledger.slot_count()).any(|s| at(s) == o))
        .unwrap();
    c.trim(gap, KIB4).unwrap();
    c.flush().unwrap();

    let verdict = verify(&mut c, &ledger);
    eprintln!("{verdict}");
    for o in &verdict.offences {
        eprintln!("  {o}");
    }
    assert_eq!(
        (verdict.lost, verdict.corrupt, verdict.read_errors),
        (2, 2, 0),
        "{verdict}"
    );
    assert!(verdict
        .to_string()
        .contains("2 lost, 2 corrupt, 0 read errors"));
    assert_eq!(verdict.slots_with(Problem::Lost), sorted(&[old, zeroed]));
    assert_eq!(
        verdict.slots_with(Problem::Corrupt),
        sorted(&[torn, misplaced])
    );
    let find = |s: u32| verdict.offences.iter().find(|o| o.slot == s).unwrap();
    assert_eq!(
        (find(old).expected_seq, find(old).found_seq),
        (seq(old), Some(seq(old) - 1))
    );
    assert_eq!(find(zeroed).found_seq, Some(0));
    assert_eq!(find(torn).found_seq, Some(seq(torn) - 1));
    assert!(
        find(misplaced).detail.contains("misplaced"),
        "{}",
        find(misplaced)
    );
    assert!(!verdict.is_clean());
}

/// A crash in the middle of an unacknowledged write may leave it applied up to a sector
/// boundary: allowed (and counted), but only between the last acknowledged block and
/// the uncertain ones, and only at whole sectors.
#[test]
fn verifier_allows_an_uncertain_write_cut_at_a_sector_boundary_only() {
    let cfg = LedgerConfig {
        seed: 3,
        slots: 16,
        ..LedgerConfig::default()
    };
    let mut ledger = Ledger::new(64 * MIB, &cfg);
    let acked = ledger.slot(5).acked;
    let seq = ledger.issue_uncertain(5);
    let mix = |cut: usize, first: u64, rest: u64| {
        let mut b = ledger.block(5, first);
        b[cut..].copy_from_slice(&ledger.block(5, rest)[cut..]);
        b
    };
    // The new write's first 3584 bytes (one page of the provider), the rest the old.
    assert!(ledger.is_torn_uncertain(5, &mix(3584, seq, acked)));
    assert!(ledger.is_torn_uncertain(5, &mix(512, acked, seq)));
    // Not at a sector boundary: damage, not a crash.
    assert!(!ledger.is_torn_uncertain(5, &mix(3000, seq, acked)));
    // A slot with nothing in flight is never torn legitimately.
    let other = ledger.block(6, 1);
    let mut torn = ledger.block(6, 0);
    torn[..512].copy_from_slice(&other[..512]);
    assert!(!ledger.is_torn_uncertain(6, &torn));
}

fn sorted(v: &[u32]) -> Vec<u32> {
    let mut v = v.to_vec();
    v.sort_unstable();
    v
}

#[test]
fn eio_injected_into_the_primarys_writes_is_uncertain_not_acked() {
    if !Strace::usable() {
        return;
    }
    let (cluster, a, _b) = loopback_pair("fullsync", 64 * MIB);
    let cfg = LedgerConfig {
        seed: 3,
        slots: 1000,
        max_writes: Some(2000),
        ..LedgerConfig::default()
    };
    // Warm-up: every extent written once, so that (32 extents, keepdirty 64) the activemap
    // needs no more writes and the EIO can only hit data writes (module doc of inject).
    let ledger = Ledger::new(conn(&cluster, "a").size(), &cfg);
    let (ledger, stats) = run(&cluster, "a", ledger, &cfg);
    assert_no_trouble(&stats, 2000);
    wait_settled(&cluster, "a");

    // The first two pwrite64 on a.img of each thread fail.
    let strace = Strace::fail(
        a.pid(),
        "pwrite64",
        "EIO",
        "1..2",
        Some(&cluster.path("a.img")),
    );
    let cfg2 = LedgerConfig {
        max_writes: Some(500),
        ..cfg.clone()
    };
    let (ledger, stats) = run(&cluster, "a", ledger, &cfg2);
    let injected = strace.injected();
    strace.detach();
    eprintln!("{injected} pwrite64 calls failed on a");
    let st = status(&cluster, "a");
    assert_ne!(
        st["status"], "failed",
        "an activemap write got the EIO: {st}"
    );
    assert_eq!(stats.acked, 500, "errors do not count: {stats}");
    assert!(stats.error_replies >= 2, "{stats}");
    assert_eq!(
        stats.error_replies as usize, injected,
        "one error reply per EIO: {stats}"
    );
    assert_eq!(stats.uncertain, stats.error_replies, "{stats}");
    assert!(!stats.broken, "{stats}");
    assert!(
        stats.first_error.as_deref().unwrap().contains("EIO"),
        "{stats}"
    );
    assert_eq!(ledger.uncertain_writes(), stats.uncertain);

    // Detached: writes succeed again, and nothing acked is missing.
    let cfg3 = LedgerConfig {
        max_writes: Some(200),
        ..cfg.clone()
    };
    let (ledger, stats) = run(&cluster, "a", ledger, &cfg3);
    assert_no_trouble(&stats, 200);
    let verdict = verify(&mut conn(&cluster, "a"), &ledger);
    eprintln!("{verdict}");
    verdict.assert_clean();
}

#[test]
fn delayed_secondary_writes_slow_fullsync_but_lose_nothing() {
    if !Strace::usable() {
        return;
    }
    let (cluster, _a, b) = loopback_pair("fullsync", 64 * MIB);
    let strace = Strace::delay(b.pid(), "pwrite64", 2000, Some(&cluster.path("b.img")));
    let cfg = LedgerConfig {
        seed: 4,
        slots: 500,
        fua_every: 50,
        flush_every: 100,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::new(conn(&cluster, "a").size(), &cfg);
    // Unbounded, then stopped: stop() waits for the replies of the writes in flight.
    let wl = Workload::start(conn(&cluster, "a"), ledger, &cfg);
    assert!(
        wl.wait_acked(400, Duration::from_secs(60)),
        "{} acked",
        wl.acked()
    );
    let (ledger, stats) = wl.stop();
    let delayed = strace.delayed();
    strace.detach();
    eprintln!("{stats}\n{ledger}\n{delayed} pwrite64 calls delayed on b");
    assert!(stats.acked >= 400 && stats.error_replies == 0, "{stats}");
    assert!(stats.uncertain == 0 && !stats.broken, "drained: {stats}");
    assert!(delayed >= 1, "strace delayed nothing");
    verify(&mut conn(&cluster, "a"), &ledger).assert_clean();
    wait_settled(&cluster, "a");
    assert_identical(&cluster);
}

#[test]
fn failed_reads_are_read_errors_of_their_slots() {
    if !Strace::usable() {
        return;
    }
    let (cluster, a, b) = loopback_pair("fullsync", 64 * MIB);
    let cfg = LedgerConfig {
        seed: 6,
        slots: 200,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::new(conn(&cluster, "a").size(), &cfg);
    // Aborted: the connection is cut with writes in flight, which become uncertain.
    let wl = Workload::start(conn(&cluster, "a"), ledger, &cfg);
    assert!(wl.wait_acked(300, Duration::from_secs(30)));
    let (ledger, stats) = wl.abort();
    eprintln!("{stats}\n{ledger}");
    assert!(stats.broken && stats.error_replies == 0, "{stats}");
    assert_eq!(ledger.uncertain_writes(), stats.uncertain);

    // Degraded, so that the primary cannot mask a local read error with a remote read.
    b.kill();
    wait_status(&cluster, "a", "degraded");
    let strace = Strace::fail(
        a.pid(),
        "pread64",
        "EIO",
        "1+",
        Some(&cluster.path("a.img")),
    );
    let verdict = verify(&mut conn(&cluster, "a"), &ledger);
    strace.detach();
    eprintln!("{verdict}");
    assert_eq!(verdict.read_errors, 200, "{verdict}");
    assert!(verdict.aborted.is_none() && verdict.offences.len() == MAX_DETAILS);
    assert!(verdict
        .offences
        .iter()
        .all(|o| o.problem == Problem::ReadError
            && o.found_seq.is_none()
            && o.detail.contains("EIO")));
    verify(&mut conn(&cluster, "a"), &ledger).assert_clean();
}

#[test]
fn killed_primary_breaks_the_workload_and_failover_keeps_every_acked_write() {
    let (cluster, a, _b) = loopback_pair("fullsync", 64 * MIB);
    let cfg = LedgerConfig {
        seed: 5,
        slots: 2000,
        ..LedgerConfig::default()
    };
    let ledger = Ledger::new(conn(&cluster, "a").size(), &cfg);
    let wl = Workload::start(conn(&cluster, "a"), ledger, &cfg);
    assert!(wl.wait_acked(800, Duration::from_secs(30)));
    a.kill();
    assert!(
        wl.wait_done(Duration::from_secs(30)),
        "the broken connection ends the workload"
    );
    let (ledger, stats) = wl.stop();
    eprintln!("{stats}\n{ledger}");
    assert!(stats.broken && stats.acked >= 800, "{stats}");
    assert_eq!(stats.error_replies, 0, "{stats}");
    assert_eq!(ledger.uncertain_writes(), stats.uncertain);

    wait_status(&cluster, "b", "degraded");
    cluster.hastctl_ok("b", &["role", "primary", "r0"]);
    let verdict = verify(&mut conn(&cluster, "b"), &ledger);
    eprintln!("{verdict}");
    verdict.assert_clean();

    let cfg2 = LedgerConfig {
        max_writes: Some(300),
        ..cfg.clone()
    };
    let (ledger, stats) = run(&cluster, "b", ledger, &cfg2);
    assert_no_trouble(&stats, 300);
    verify(&mut conn(&cluster, "b"), &ledger).assert_clean();
}
