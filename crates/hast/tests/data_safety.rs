//! No acknowledged write lost, no split-brain missed: one process test per data-loss path
//! found by the fault-injection audit (issue "No acknowledged write lost"), each driving
//! two real hastd on loopback with the acknowledged-write ledger (`common::ledger`) and
//! injecting disk errors and delays into one daemon with strace (`common::inject`).
//! Every test here failed against the build before the fixes (run them against another
//! build with `HAST_TEST_BIN_DIR=/path/to/bin`); `docs/invariants.md` names the rule each
//! one proves.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;

use std::time::{Duration, Instant};

use common::inject::Strace;
use common::ledger::{verify, LedgerConfig, Problem, Workload};
use common::{Cluster, Daemon};
use faults::*;

fn strace_ok() -> bool {
    Strace::usable()
}

fn log_has(daemon: &Daemon, needle: &str) -> bool {
    daemon.log_text().contains(needle)
}

/// Defect 1: a memsync secondary with a slow disk has acknowledged (`Received`) far more
/// than it has written when the primary dies. It must apply every one of them, and its
/// promotion waits until it has; the old primary then rejoins without spreading a loss.
#[test]
fn memsync_secondary_applies_every_write_it_reported_received() {
    if !strace_ok() {
        return;
    }
    let (cluster, a, b) = loopback_pair("memsync", 64 * MIB);
    let cfg = LedgerConfig {
        seed: 0xd1,
        slot_size: 64 << 10,
        slots: 300,
        in_flight: 16,
        max_writes: Some(300),
        ..LedgerConfig::default()
    };
    let ledger = ledger_on(&cluster, "a", &cfg);
    let slow = Strace::delay(b.pid(), "pwrite64", 30_000, Some(&cluster.path("b.img")));
    let (ledger, stats) = run(&cluster, "a", ledger, &cfg);
    assert_eq!(stats.acked, 300, "{stats}");
    a.kill();
    // b is still working through its queue at 30 ms a write; promotion waits for it.
    promote(&cluster, "b");
    slow.detach();
    verify_clean(&cluster, "b", &ledger);

    // The old primary comes back as secondary: the sync goes from b, and b's copy (with
    // every acknowledged write) is what both end with.
    let _a = cluster.start("a");
    set_role(&cluster, "a", "secondary", false).unwrap();
    wait_settled(&cluster, "b");
    assert_identical(&cluster);
    verify_clean(&cluster, "b", &ledger);
}

/// Defect 2: fullsync writes the secondary fails (EIO) are acknowledged (the local write
/// succeeded) only after `localcnt` is raised, and the debt is synchronised within
/// seconds: the link is dropped and the reconnect's sync repairs the secondary.
#[test]
fn fullsync_writes_failed_on_the_secondary_are_counted_and_resynchronised() {
    if !strace_ok() {
        return;
    }
    let (cluster, a, b) = loopback_pair("fullsync", 64 * MIB);
    let cfg = LedgerConfig {
        seed: 0xd2,
        slots: 64,
        in_flight: 1,
        max_writes: Some(8),
        ..LedgerConfig::default()
    };
    let ledger = ledger_on(&cluster, "a", &cfg);
    // The secondary's disk thread fails its first four writes to the provider.
    let eio = Strace::fail(
        b.pid(),
        "pwrite64",
        "EIO",
        "1..4",
        Some(&cluster.path("b.img")),
    );
    let (ledger, stats) = run(&cluster, "a", ledger, &cfg);
    let injected = eio.injected();
    eio.detach();
    assert!(injected >= 1, "strace injected nothing");
    assert_eq!((stats.acked, stats.uncertain), (8, 0), "{stats}");
    assert!(
        log_has(&a, "localcnt raised"),
        "the primary acknowledged writes the secondary failed without raising localcnt"
    );
    wait_for(
        "the secondary's failure on record",
        Duration::from_secs(10),
        || log_has(&b, "failed: "),
    );
    // Within seconds: reconnected, synchronised, nothing owed, the secondary consistent.
    let started = Instant::now();
    wait_settled(&cluster, "a");
    eprintln!("settled {:?} after the writes", started.elapsed());
    assert!(status(&cluster, "b")["inconsistent"].is_null());
    assert_identical(&cluster);
    // Fail over: every acknowledged write is on b.
    a.kill();
    promote(&cluster, "b");
    verify_clean(&cluster, "b", &ledger);
}

/// Defect 3 (and 5, the durability flush): when the secondary's fdatasync fails, a client
/// FLUSH or FUA write is never answered "durable on both" with the pair still complete:
/// hast drops the secondary first, with the counter raised and the extents owed.
#[test]
fn a_failed_flush_on_the_secondary_drops_it_before_answering() {
    if !strace_ok() {
        return;
    }
    let (cluster, a, b) = loopback_pair("memsync", 64 * MIB);
    let cfg = LedgerConfig {
        seed: 0xd3,
        slots: 200,
        in_flight: 8,
        max_writes: Some(200),
        ..LedgerConfig::default()
    };
    let ledger = ledger_on(&cluster, "a", &cfg);
    let (ledger, _) = run(&cluster, "a", ledger, &cfg);
    let broken = Strace::fail(b.pid(), "fdatasync", "EIO", "1+", None);
    let flushing = LedgerConfig {
        max_writes: Some(60),
        flush_every: 10,
        fua_every: 7,
        ..cfg.clone()
    };
    let (ledger, stats) = run(&cluster, "a", ledger, &flushing);
    assert_eq!((stats.flush_errors, stats.uncertain), (0, 0), "{stats}");
    assert!(stats.flushes >= 1 && stats.fua_writes >= 1, "{stats}");
    // Answered: by then the secondary was dropped and the counter raised on disk. As long
    // as its flushes fail it cannot finish a sync, so the raise stays visible.
    let st = status(&cluster, "a");
    assert!(
        st["localcnt"].as_u64() > st["remotecnt"].as_u64(),
        "FLUSH answered with the counters as if durable on both: {st}"
    );
    // The first failure the primary hears of may be the flush itself or a write the
    // secondary refused after it (a disk whose flush failed is no longer trusted).
    assert!(
        log_has(&a, "failed (errno 5): dropping the connection")
            || log_has(&a, ": errno 5; dropping the connection"),
        "{}",
        a.log_text()
    );
    assert_eq!(
        status(&cluster, "b")["inconsistent"]
            .as_str()
            .map(|s| s.contains("failed")),
        Some(true),
        "the secondary records that a flush failed"
    );
    broken.detach();
    wait_settled(&cluster, "a");
    assert!(status(&cluster, "b")["inconsistent"].is_null());
    assert_identical(&cluster);
    a.kill();
    promote(&cluster, "b");
    verify_clean(&cluster, "b", &ledger);
}

/// Defect 4: a primary that has not connected since it started does not know whether the
/// secondary saw its earlier writes, so its first write raises the counter; the later
/// divergence is reported as split-brain instead of silently resolved.
#[test]
fn a_restarted_primary_raises_the_counter_and_divergence_is_split_brain() {
    let cluster = Cluster::new(&loopback_config("memsync"));
    create_both(&cluster, 64 * MIB);
    let a = cluster.start("a");
    // b down, a writes: a = 1/0.
    promote(&cluster, "a");
    conn(&cluster, "a").write(0, &vec![1; 4096], true).unwrap();
    // a init, b primary, a secondary: b synchronises from a.
    set_role(&cluster, "a", "init", false).unwrap();
    let b = cluster.start("b");
    promote(&cluster, "b");
    set_role(&cluster, "a", "secondary", false).unwrap();
    wait_settled(&cluster, "b");
    // b down; a primary again, writes X2.
    b.kill();
    set_role(&cluster, "a", "init", false).unwrap();
    promote(&cluster, "a");
    let x2 = vec![0x22; 4096];
    conn(&cluster, "a").write(MIB, &x2, true).unwrap();
    // a is killed; b is promoted and written.
    a.kill();
    let b = cluster.start("b");
    promote(&cluster, "b");
    conn(&cluster, "b")
        .write(2 * MIB, &vec![0x33; 4096], true)
        .unwrap();
    // a rejoins as secondary: both wrote apart, so this is a split-brain.
    let a = cluster.start("a");
    set_role(&cluster, "a", "secondary", false).unwrap();
    wait_log(&b, "the split-brain on b", |l| l.contains("split-brain"));
    wait_log(&a, "the split-brain on a", |l| l.contains("split-brain"));
    assert!(
        !b.log_text().contains("synchronization started"),
        "b synchronised over a's X2: {}",
        b.log_text()
    );
    let area = data_area(&cluster, "a");
    assert_eq!(
        &area[MIB as usize..MIB as usize + 4096],
        &x2[..],
        "X2 survives on a"
    );
}

/// Defect 5: memsync and async answer before the secondary has written. When such a
/// write then fails there, the primary raises the counter as soon as it learns it, and
/// the secondary (which knows it failed) refuses to become primary without `-f`; after
/// a forced promotion and new writes, the divergence is a detected split-brain.
#[test]
fn early_acknowledged_writes_that_fail_later_are_never_silently_lost() {
    if !strace_ok() {
        return;
    }
    for mode in ["memsync", "async"] {
        let (cluster, a, b) = loopback_pair(mode, 64 * MIB);
        let cfg = LedgerConfig {
            seed: 0xd5,
            slots: 64,
            in_flight: 4,
            max_writes: Some(16),
            ..LedgerConfig::default()
        };
        let ledger = ledger_on(&cluster, "a", &cfg);
        let eio = Strace::fail(
            b.pid(),
            "pwrite64",
            "EIO",
            "1..2",
            Some(&cluster.path("b.img")),
        );
        let (_ledger, stats) = run(&cluster, "a", ledger, &cfg);
        assert_eq!(stats.acked, 16, "{mode}: {stats}");
        wait_for(
            &format!("{mode}: the raise on a"),
            Duration::from_secs(10),
            || log_has(&a, "localcnt raised"),
        );
        a.kill();
        eio.detach();
        let refused = set_role(&cluster, "b", "primary", false).unwrap_err();
        assert!(
            refused.contains("inconsistent") && refused.contains("-f"),
            "{mode}: {refused}"
        );
        set_role(&cluster, "b", "primary", true).unwrap();
        conn(&cluster, "b")
            .write(3 * MIB, &vec![0x44; 4096], true)
            .unwrap();
        let a = cluster.start("a");
        set_role(&cluster, "a", "secondary", false).unwrap();
        wait_log(&a, &format!("{mode}: the split-brain on a"), |l| {
            l.contains("split-brain")
        });
        assert!(!b.log_text().contains("synchronization started"), "{mode}");
    }
}

/// Defect 6: a primary out of date synchronises from its secondary; the secondary dies
/// mid-sync. Reads of extents not yet synchronised fail with EIO (never the old bytes),
/// and the stale state survives a restart of the primary.
#[test]
fn a_stale_primary_never_serves_stale_data() {
    if !strace_ok() {
        return;
    }
    let (cluster, a, b) = loopback_pair("memsync", 64 * MIB);
    let old = vec![0x0d; MIB as usize];
    let new = vec![0x4e; MIB as usize];
    let mut c = conn(&cluster, "a");
    for i in 0..40 {
        c.write(i * MIB, &old, false).unwrap();
    }
    c.flush().unwrap();
    drop(c);
    wait_settled(&cluster, "a");
    // a dies; b takes over and writes 40 MiB; b steps back, a is primary again: a is out
    // of date and synchronises from b.
    a.kill();
    promote(&cluster, "b");
    let mut c = conn(&cluster, "b");
    for i in 0..40 {
        c.write(i * MIB, &new, false).unwrap();
    }
    c.flush().unwrap();
    drop(c);
    set_role(&cluster, "b", "secondary", false).unwrap();
    let slow = Strace::delay(b.pid(), "pread64", 300_000, Some(&cluster.path("b.img")));
    let a = cluster.start("a");
    promote(&cluster, "a");
    wait_for("the sync from b to start", Duration::from_secs(30), || {
        !status(&cluster, "a")["sync"].is_null()
    });
    std::thread::sleep(Duration::from_millis(800));
    b.kill();
    drop(slow);
    wait_status(&cluster, "a", "degraded");
    let mut c = conn(&cluster, "a");
    let (mut good, mut refused) = (0, 0);
    for i in 0..40 {
        match c.read(i * MIB, MIB as u32) {
            Ok(data) => {
                assert!(data == new, "stale bytes served at {i} MiB");
                good += 1;
            }
            Err(e) => {
                assert_eq!(e.errno(), Some(5), "at {i} MiB: {e}");
                refused += 1;
            }
        }
    }
    eprintln!("{good} MiB read back new, {refused} MiB refused with EIO");
    assert!(refused > 0, "the sync finished before the secondary died");
    // Writes are refused too: this copy cannot take writes the secondary lacks.
    assert!(c.write(50 * MIB, &new[..4096], false).is_err());
    drop(c);
    // The state survives a restart: a refuses to be primary on its own.
    a.kill();
    let _a = cluster.start("a");
    let refused = set_role(&cluster, "a", "primary", false).unwrap_err();
    assert!(refused.contains("inconsistent"), "{refused}");
    // b, which has the good data, takes over; a finishes its sync as secondary.
    let _b = cluster.start("b");
    promote(&cluster, "b");
    set_role(&cluster, "a", "secondary", false).unwrap();
    wait_settled(&cluster, "b");
    assert!(status(&cluster, "a")["inconsistent"].is_null());
    assert_identical(&cluster);
}

/// Defect 7: the primary is killed in the middle of a resync. The half-synchronised secondary refuses `role primary` (what is missing, how to force
/// it) instead of serving old data; `-f` is the documented override.
#[test]
fn a_half_synchronised_secondary_refuses_to_become_primary() {
    if !strace_ok() {
        return;
    }
    let (cluster, a, b) = loopback_pair("memsync", 64 * MIB);
    b.kill();
    wait_status(&cluster, "a", "degraded");
    let mut c = conn(&cluster, "a");
    for i in 0..40 {
        c.write(i * MIB, &vec![0x77; MIB as usize], false).unwrap();
    }
    c.flush().unwrap();
    drop(c);
    let b = cluster.start("b");
    let slow = Strace::delay(b.pid(), "pwrite64", 200_000, Some(&cluster.path("b.img")));
    set_role(&cluster, "b", "secondary", false).unwrap();
    wait_for("the sync to b to start", Duration::from_secs(30), || {
        status(&cluster, "a")["sync"]["synced_bytes"].as_u64() > Some(0)
    });
    a.kill();
    drop(slow);
    let st = status(&cluster, "b");
    assert!(
        st["inconsistent"]
            .as_str()
            .is_some_and(|s| s.contains("synchronization")),
        "{st}"
    );
    let refused = set_role(&cluster, "b", "primary", false).unwrap_err();
    eprintln!("refusal: {refused}");
    assert!(
        refused.contains("inconsistent") && refused.contains("role -f primary r0"),
        "{refused}"
    );
    assert_ne!(status(&cluster, "b")["role"], "primary");
    // The override serves the copy as it is.
    set_role(&cluster, "b", "primary", true).unwrap();
    assert!(conn(&cluster, "b").read(0, 4096).is_ok());
    assert!(log_has(&b, "forced to become primary"));
}

/// Defect 8a: a write that fails locally but succeeds on the secondary is answered with
/// the error, and its extent stays owed until the sync makes both copies equal again.
#[test]
fn a_local_write_error_keeps_the_extent_owed() {
    if !strace_ok() {
        return;
    }
    let (cluster, a, _b) = loopback_pair("fullsync", 16 * MIB);
    // Warm every extent (8, all in the keepdirty set), so no activemap write is due when
    // the error is injected: only the data write can meet it.
    let mut c = conn(&cluster, "a");
    for i in 0..8 {
        c.write(i * 2 * MIB, &vec![0x11; 4096], false).unwrap();
    }
    c.flush().unwrap();
    wait_settled(&cluster, "a");
    let eio = Strace::fail(
        a.pid(),
        "pwrite64",
        "EIO",
        "1+",
        Some(&cluster.path("a.img")),
    );
    let result = c.write(2 * MIB, &vec![0x99; 4096], false);
    eio.detach();
    assert_eq!(result.map_err(|e| e.errno()), Err(Some(5)));
    drop(c);
    wait_settled(&cluster, "a");
    assert_identical(&cluster);
}

/// Defect 8b: a TRIM the secondary cannot do (its provider refuses discard) leaves the
/// range owed, and the sync makes the copies equal.
#[test]
fn a_trim_only_one_side_can_do_is_made_equal() {
    if !strace_ok() {
        return;
    }
    let (cluster, _a, b) = loopback_pair("fullsync", 16 * MIB);
    let mut c = conn(&cluster, "a");
    c.write(4 * MIB, &vec![0x66; 4 * MIB as usize], true)
        .unwrap();
    wait_settled(&cluster, "a");
    let nodiscard = Strace::fail(
        b.pid(),
        "fallocate",
        "EOPNOTSUPP",
        "1+",
        Some(&cluster.path("b.img")),
    );
    c.trim(4 * MIB, 4 * MIB as u32).unwrap();
    wait_settled(&cluster, "a");
    nodiscard.detach();
    assert_identical(&cluster);
}

/// Defect 8d: a 256 MiB WRITE_ZEROES on a secondary that has to write the zeroes (no
/// ZERO_RANGE) and a slow disk goes out in pieces, so the watchdog never sees one
/// request outlive `timeout` (2 s here) and the pair stays connected.
#[test]
fn a_huge_write_zeroes_goes_out_in_pieces() {
    if !strace_ok() {
        return;
    }
    let (cluster, _a, b) = loopback_pair("fullsync", 300 * MIB);
    let hooks = hook_runs(&cluster, "a").len();
    let b_img = cluster.path("b.img");
    let nozero = Strace::attach(
        b.pid(),
        &[
            "-e",
            "trace=fallocate,pwrite64",
            "-e",
            "inject=fallocate:error=EOPNOTSUPP",
            "-e",
            "inject=pwrite64:delay_enter=20000",
            "-P",
            b_img.to_str().unwrap(),
        ],
    );
    conn(&cluster, "a")
        .write_zeroes(0, 256 * MIB as u32)
        .unwrap();
    nozero.detach();
    let new: Vec<String> = hook_runs(&cluster, "a")[hooks..]
        .iter()
        .map(|r| r.args.clone())
        .collect();
    assert!(
        !new.iter().any(|h| h.starts_with("disconnect")),
        "the secondary was dropped: {new:?}"
    );
    wait_settled(&cluster, "a");
    assert_identical(&cluster);
}

/// Read errors on the primary are served from the secondary; a write failing on both
/// nodes is the client's error.
#[test]
fn disk_errors_on_either_side() {
    if !strace_ok() {
        return;
    }
    let (cluster, a, b) = loopback_pair("fullsync", 16 * MIB);
    let data = vec![0x3c; 65536];
    let mut c = conn(&cluster, "a");
    c.write(MIB, &data, true).unwrap();
    wait_settled(&cluster, "a");
    let unreadable = Strace::fail(
        a.pid(),
        "pread64",
        "EIO",
        "1+",
        Some(&cluster.path("a.img")),
    );
    assert_eq!(
        c.read(MIB, 65536).unwrap(),
        data,
        "served from the secondary"
    );
    unreadable.detach();
    // Writes failing on both legs.
    let both = [
        Strace::fail(
            a.pid(),
            "pwrite64",
            "EIO",
            "1+",
            Some(&cluster.path("a.img")),
        ),
        Strace::fail(
            b.pid(),
            "pwrite64",
            "EIO",
            "1+",
            Some(&cluster.path("b.img")),
        ),
    ];
    let result = c.write(MIB, &vec![0xee; 4096], false);
    for s in both {
        s.detach();
    }
    assert_eq!(result.map_err(|e| e.errno()), Err(Some(5)));
    wait_settled(&cluster, "a");
    assert_identical(&cluster);
}

/// Issue scenarios under load: SIGKILL of the secondary, then of the primary, with
/// failover and failback, in memsync and fullsync; the ledger checks every step.
#[test]
fn kills_failover_and_failback_under_load_lose_nothing() {
    for mode in ["memsync", "fullsync"] {
        let (cluster, a, b) = loopback_pair(mode, 64 * MIB);
        let cfg = LedgerConfig {
            seed: 0xf0 ^ mode.len() as u64,
            slots: 2000,
            in_flight: 32,
            max_writes: None,
            flush_every: 300,
            fua_every: 97,
            ..LedgerConfig::default()
        };
        let ledger = ledger_on(&cluster, "a", &cfg);
        // The secondary dies under load: the primary goes on, nothing lost.
        let wl = Workload::start(conn(&cluster, "a"), ledger, &cfg);
        assert!(wl.wait_acked(500, Duration::from_secs(60)));
        b.kill();
        assert!(wl.wait_acked(1500, Duration::from_secs(60)));
        let (ledger, stats) = wl.stop();
        assert!(!stats.broken, "{mode}: {stats}");
        verify_clean(&cluster, "a", &ledger);
        let b = cluster.start("b");
        set_role(&cluster, "b", "secondary", false).unwrap();
        wait_settled(&cluster, "a");
        // The primary dies under load: b takes over with every acknowledged write.
        let wl = Workload::start(conn(&cluster, "a"), ledger, &cfg);
        assert!(wl.wait_acked(800, Duration::from_secs(60)));
        a.kill();
        let (ledger, _) = wl.abort();
        promote(&cluster, "b");
        verify_clean(&cluster, "b", &ledger);
        // Failback: a returns as secondary, catches up, and takes its role back.
        let a = cluster.start("a");
        set_role(&cluster, "a", "secondary", false).unwrap();
        let (ledger, _) = run(
            &cluster,
            "b",
            ledger,
            &LedgerConfig {
                max_writes: Some(500),
                ..cfg.clone()
            },
        );
        wait_settled(&cluster, "b");
        set_role(&cluster, "b", "secondary", false).unwrap();
        promote(&cluster, "a");
        wait_settled(&cluster, "a");
        verify_clean(&cluster, "a", &ledger);
        assert_identical(&cluster);
        let lost = verify(&mut conn(&cluster, "a"), &ledger).slots_with(Problem::Lost);
        assert!(lost.is_empty(), "{mode}: {lost:?}");
        drop((a, b));
    }
}
