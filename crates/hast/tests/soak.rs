//! The randomized soak: a pair in two network namespaces, the acknowledged-write ledger
//! running through the primary, and a fault schedule drawn from a printed seed. Each
//! iteration injects one fault at a drawn moment of the workload (SIGKILL of either node,
//! both, a partition, disk errors or delays on the secondary, read errors on the primary,
//! a split-brain, a switchover, a crash in the middle of a sync), recovers the way an operator or failover manager would,
//! then reads every acknowledged write back through whichever node is primary and checks
//! that the two copies are identical. The same seed gives the same schedule.
//!
//! CI runs a few iterations per mode. A long run (docs/testing.md):
//!
//! ```text
//! SOAK_SEED=12345 SOAK_ITERATIONS=150 cargo test --release -p hast --test soak -- --nocapture
//! ```
//!
//! `SOAK_MODES` (default `memsync,fullsync,async`) picks the replication modes; `async`
//! reports the acknowledged writes it lost instead of failing on them (it acknowledges
//! before the secondary has anything), but never tolerates a torn or unreadable block.
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;
mod netns;

use std::time::{Duration, Instant};

use common::inject::Strace;
use common::ledger::{verify, Ledger, LedgerConfig, Workload};
use common::{Cluster, Daemon};
use faults::*;
use netns::{NetPair, Side};

/// A fixed, seedable generator (xorshift64*), so a schedule replays from its seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// One iteration's fault.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGKILL the primary under load; the secondary is promoted; the old primary
    /// returns as secondary.
    KillPrimary,
    /// SIGKILL the secondary under load; it returns.
    KillSecondary,
    /// SIGKILL the primary and restart it in place, primary again.
    RestartPrimary,
    /// SIGKILL both; both restart, the old primary primary again.
    RestartBoth,
    /// Cut the link for `ms` under load, then heal.
    Partition { ms: u64, side: u8 },
    /// The secondary's disk fails `n` writes (per thread), then recovers; then fail over.
    SecondaryEio { n: u64 },
    /// The secondary's fdatasync fails for a while; then fail over.
    SecondaryFlushEio,
    /// The secondary's disk is slow (`us` per write); the primary dies meanwhile.
    SlowSecondaryThenKillPrimary { us: u64 },
    /// The primary cannot read its disk: reads come from the secondary.
    PrimaryReadEio,
    /// Partition, the secondary is promoted too, both written, heal: split-brain must be
    /// reported on both; the operator discards the secondary's side.
    SplitBrain,
    /// A clean role swap.
    Switchover,
    /// The secondary misses writes, returns, and a node dies in the middle of the sync
    /// that follows: the half-synchronised secondary must refuse to become primary.
    CrashDuringSync { primary: bool },
}

impl Fault {
    fn draw(rng: &mut Rng) -> Fault {
        match rng.below(12) {
            0 => Fault::KillPrimary,
            1 => Fault::KillSecondary,
            2 => Fault::RestartPrimary,
            3 => Fault::RestartBoth,
            4 => Fault::Partition {
                ms: rng.range(500, 4000),
                side: rng.below(3) as u8,
            },
            5 => Fault::SecondaryEio { n: rng.range(1, 4) },
            6 => Fault::SecondaryFlushEio,
            7 => Fault::SlowSecondaryThenKillPrimary {
                us: rng.range(5_000, 30_000),
            },
            8 => Fault::PrimaryReadEio,
            9 => Fault::SplitBrain,
            10 => Fault::Switchover,
            _ => Fault::CrashDuringSync {
                primary: rng.below(2) == 0,
            },
        }
    }
}

/// What one step of the schedule does.
#[derive(Debug, Clone, Copy)]
struct Step {
    fault: Fault,
    /// Acknowledged writes before the fault.
    before: u64,
    /// Acknowledged writes after it (while the primary lives).
    after: u64,
}

fn schedule(seed: u64, n: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| Step {
            fault: Fault::draw(&mut rng),
            before: rng.range(100, 1200),
            after: rng.range(50, 600),
        })
        .collect()
}

fn config(net: &NetPair, mode: &str) -> String {
    let head = format!(
        "replication {mode}\nchecksum crc32c\ncompression none\ntimeout 2\nexec @DIR@/hook.sh\n"
    );
    pair_config(&head, &net.ip_a, &net.ip_b, None)
}

/// The pair under test: who is primary now, and both daemons.
struct Pair<'a> {
    net: &'a NetPair,
    cluster: Cluster,
    daemons: [Option<Daemon>; 2],
    primary: usize,
    mode: String,
}

const NODES: [&str; 2] = ["a", "b"];

impl Pair<'_> {
    fn p(&self) -> &'static str {
        NODES[self.primary]
    }

    fn s(&self) -> &'static str {
        NODES[1 - self.primary]
    }

    fn start(&mut self, i: usize) {
        let wrapper = self.net.wrapper(NODES[i]);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        self.daemons[i] = Some(self.cluster.start_wrapped(NODES[i], &wrapper));
    }

    fn kill(&mut self, i: usize) {
        if let Some(d) = self.daemons[i].take() {
            d.kill();
        }
    }

    fn pid(&self, i: usize) -> u32 {
        self.daemons[i].as_ref().unwrap().pid()
    }

    fn log(&self, i: usize) -> String {
        self.daemons[i]
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }

    fn img(&self, i: usize) -> std::path::PathBuf {
        self.cluster.path(&format!("{}.img", NODES[i]))
    }

    fn settle(&self) {
        wait_settled(&self.cluster, self.p());
        wait_status(&self.cluster, self.s(), "complete");
        assert_identical(&self.cluster);
    }

    /// Reads the ledger back through the primary: returns the acknowledged writes lost.
    fn check(&self, ledger: &Ledger) -> usize {
        let verdict = verify(&mut conn(&self.cluster, self.p()), ledger);
        eprintln!("    verify on {}: {verdict}", self.p());
        let lost = verdict.lost as usize;
        if self.mode == "async" {
            assert_eq!(
                (verdict.corrupt, verdict.read_errors),
                (0, 0),
                "{verdict}: {:?}",
                verdict.offences
            );
        } else {
            verdict.assert_clean();
        }
        lost
    }
}

/// Runs one soak over `steps` in `mode`; returns (acknowledged writes verified, lost).
fn soak(mode: &str, seed: u64, steps: &[Step]) -> (u64, usize) {
    let Some(net) = NetPair::new() else {
        return (0, 0);
    };
    if !Strace::usable() {
        return (0, 0);
    }
    let cluster = Cluster::new(&config(&net, mode));
    create_both(&cluster, 64 * MIB);
    let mut pair = Pair {
        net: &net,
        cluster,
        daemons: [None, None],
        primary: 0,
        mode: mode.to_string(),
    };
    pair.start(0);
    pair.start(1);
    connect_pair(&pair.cluster);
    let cfg = LedgerConfig {
        seed,
        slots: 2000,
        in_flight: 16,
        max_writes: None,
        flush_every: 200,
        fua_every: 53,
        ..LedgerConfig::default()
    };
    let mut ledger = ledger_on(&pair.cluster, "a", &cfg);
    let mut lost = 0;
    for (i, step) in steps.iter().enumerate() {
        let t = Instant::now();
        eprintln!(
            "[{mode} seed {seed}] {}/{}: {step:?}, primary {}",
            i + 1,
            steps.len(),
            pair.p()
        );
        ledger = iteration(&mut pair, ledger, &cfg, *step);
        lost += pair.check(&ledger);
        pair.settle();
        eprintln!("    done in {:.1}s; {ledger}", t.elapsed().as_secs_f64());
    }
    let acked = ledger.acked_writes();
    drop(pair);
    (acked, lost)
}

fn iteration(pair: &mut Pair, ledger: Ledger, cfg: &LedgerConfig, step: Step) -> Ledger {
    let (p, s) = (pair.primary, 1 - pair.primary);
    let cluster_conn = |pair: &Pair| conn(&pair.cluster, pair.p());
    let wl = Workload::start(cluster_conn(pair), ledger, cfg);
    let acked = |wl: &Workload, n: u64| {
        assert!(
            wl.wait_acked(n, Duration::from_secs(120)),
            "the workload stalled at {} acks",
            wl.acked()
        )
    };
    acked(&wl, step.before);
    match step.fault {
        Fault::KillPrimary => {
            pair.kill(p);
            let (ledger, _) = wl.abort();
            promote(&pair.cluster, NODES[s]);
            pair.primary = s;
            pair.start(p);
            set_role(&pair.cluster, NODES[p], "secondary", false).unwrap();
            ledger
        }
        Fault::KillSecondary => {
            pair.kill(s);
            acked(&wl, step.before + step.after);
            let (ledger, _) = wl.stop();
            pair.start(s);
            set_role(&pair.cluster, NODES[s], "secondary", false).unwrap();
            ledger
        }
        Fault::RestartPrimary => {
            pair.kill(p);
            let (ledger, _) = wl.abort();
            pair.start(p);
            promote(&pair.cluster, NODES[p]);
            ledger
        }
        Fault::RestartBoth => {
            pair.kill(p);
            pair.kill(s);
            let (ledger, _) = wl.abort();
            pair.start(s);
            pair.start(p);
            set_role(&pair.cluster, NODES[s], "secondary", false).unwrap();
            promote(&pair.cluster, NODES[p]);
            ledger
        }
        Fault::Partition { ms, side } => {
            let side = [Side::A, Side::B, Side::Both][side as usize];
            pair.net.cut(side);
            std::thread::sleep(Duration::from_millis(ms));
            acked(&wl, step.before + step.after);
            pair.net.heal();
            wl.stop().0
        }
        Fault::SecondaryEio { n } => {
            let eio = Strace::fail(
                pair.pid(s),
                "pwrite64",
                "EIO",
                &format!("1..{n}"),
                Some(&pair.img(s)),
            );
            acked(&wl, step.before + step.after);
            eio.detach();
            let (ledger, _) = wl.stop();
            fail_over_after_settling(pair, ledger)
        }
        Fault::SecondaryFlushEio => {
            let eio = Strace::fail(pair.pid(s), "fdatasync", "EIO", "1+", None);
            acked(&wl, step.before + step.after);
            eio.detach();
            let (ledger, _) = wl.stop();
            fail_over_after_settling(pair, ledger)
        }
        Fault::SlowSecondaryThenKillPrimary { us } => {
            let slow = Strace::delay(pair.pid(s), "pwrite64", us, Some(&pair.img(s)));
            acked(&wl, step.before + step.after);
            pair.kill(p);
            let (ledger, _) = wl.abort();
            promote(&pair.cluster, NODES[s]);
            slow.detach();
            pair.primary = s;
            pair.start(p);
            set_role(&pair.cluster, NODES[p], "secondary", false).unwrap();
            ledger
        }
        Fault::PrimaryReadEio => {
            let (ledger, _) = wl.stop();
            wait_settled(&pair.cluster, pair.p());
            let eio = Strace::fail(pair.pid(p), "pread64", "EIO", "1+", Some(&pair.img(p)));
            pair.check(&ledger);
            eio.detach();
            ledger
        }
        Fault::SplitBrain => {
            let (ledger, _) = wl.stop();
            split_brain(pair, ledger, cfg, step)
        }
        Fault::CrashDuringSync { primary } => {
            pair.kill(s);
            acked(&wl, step.before + step.after);
            let (ledger, _) = wl.stop();
            crash_during_sync(pair, primary);
            ledger
        }
        Fault::Switchover => {
            let (ledger, _) = wl.stop();
            wait_settled(&pair.cluster, pair.p());
            set_role(&pair.cluster, NODES[p], "secondary", false).unwrap();
            promote(&pair.cluster, NODES[s]);
            pair.primary = s;
            ledger
        }
    }
}

/// After a disk fault on the secondary: the pair repairs itself, then the primary dies
/// and the secondary must serve every acknowledged write.
fn fail_over_after_settling(pair: &mut Pair, ledger: Ledger) -> Ledger {
    let (p, s) = (pair.primary, 1 - pair.primary);
    pair.settle();
    pair.kill(p);
    promote(&pair.cluster, NODES[s]);
    pair.primary = s;
    pair.check(&ledger);
    pair.start(p);
    set_role(&pair.cluster, NODES[p], "secondary", false).unwrap();
    ledger
}

/// The secondary comes back to a sync made slow by its disk; a node dies in the middle.
fn crash_during_sync(pair: &mut Pair, kill_primary: bool) {
    let (p, s) = (pair.primary, 1 - pair.primary);
    pair.start(s);
    let slow = Strace::delay(pair.pid(s), "pwrite64", 20_000, Some(&pair.img(s)));
    set_role(&pair.cluster, NODES[s], "secondary", false).unwrap();
    wait_for("the sync to start", Duration::from_secs(30), || {
        !status(&pair.cluster, pair.p())["sync"].is_null()
    });
    if kill_primary {
        pair.kill(p);
        slow.detach();
        let refused = set_role(&pair.cluster, NODES[s], "primary", false);
        assert!(
            refused.as_ref().is_err_and(|e| e.contains("inconsistent")),
            "a half-synchronised secondary was promoted: {refused:?}"
        );
        // The operator brings the primary back; the sync resumes.
        set_role(&pair.cluster, NODES[s], "secondary", false).unwrap();
        pair.start(p);
        promote(&pair.cluster, NODES[p]);
    } else {
        pair.kill(s);
        slow.detach();
        pair.start(s);
        set_role(&pair.cluster, NODES[s], "secondary", false).unwrap();
    }
}

/// Both nodes written while apart: after the heal both refuse to synchronise and say
/// split-brain; the operator discards the secondary's side (init, create, secondary).
fn split_brain(pair: &mut Pair, ledger: Ledger, cfg: &LedgerConfig, step: Step) -> Ledger {
    let (p, s) = (pair.primary, 1 - pair.primary);
    wait_settled(&pair.cluster, pair.p());
    pair.net.cut(Side::Both);
    wait_status(&pair.cluster, pair.p(), "degraded");
    // The failover manager promotes the other side too (no fencing).
    promote(&pair.cluster, NODES[s]);
    conn(&pair.cluster, NODES[s])
        .write(0, &vec![0xbb; 4096], true)
        .unwrap();
    let (ledger, _) = run(
        &pair.cluster,
        pair.p(),
        ledger,
        &LedgerConfig {
            max_writes: Some(step.after),
            ..cfg.clone()
        },
    );
    pair.net.heal();
    set_role(&pair.cluster, NODES[s], "secondary", false).unwrap();
    wait_for("split-brain on both nodes", Duration::from_secs(60), || {
        pair.log(p).contains("split-brain") && pair.log(s).contains("split-brain")
    });
    // Nothing was synchronised over either side.
    assert_eq!(status(&pair.cluster, pair.p())["status"], "degraded");
    set_role(&pair.cluster, NODES[s], "init", false).unwrap();
    pair.cluster.hastctl_ok(NODES[s], &["create", "r0"]);
    set_role(&pair.cluster, NODES[s], "secondary", false).unwrap();
    ledger
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn run_soak(mode: &str) {
    let modes = std::env::var("SOAK_MODES").unwrap_or_else(|_| "memsync,fullsync,async".into());
    if !modes.split(',').any(|m| m == mode) {
        eprintln!("SKIP: {mode} not in SOAK_MODES={modes}");
        return;
    }
    let seed = env_u64("SOAK_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let n = env_u64("SOAK_ITERATIONS").unwrap_or(5) as usize;
    let steps = schedule(seed, n);
    eprintln!("soak {mode}: SOAK_SEED={seed} SOAK_ITERATIONS={n}");
    let (acked, lost) = soak(mode, seed, &steps);
    eprintln!(
        "soak {mode}: SOAK_SEED={seed}: {n} iterations, {acked} acknowledged writes verified, {lost} lost"
    );
    if mode != "async" {
        assert_eq!(lost, 0);
    }
}

#[test]
fn soak_memsync() {
    run_soak("memsync");
}

#[test]
fn soak_fullsync() {
    run_soak("fullsync");
}

#[test]
fn soak_async_reports_what_it_lost() {
    run_soak("async");
}

#[test]
fn the_same_seed_gives_the_same_schedule() {
    let a = format!("{:?}", schedule(42, 50));
    assert_eq!(a, format!("{:?}", schedule(42, 50)));
    assert_ne!(a, format!("{:?}", schedule(43, 50)));
    // Every fault kind is drawn over a long schedule.
    let kinds: std::collections::BTreeSet<String> = schedule(7, 400)
        .iter()
        .map(|s| {
            format!("{:?}", s.fault)
                .split([' ', '{'])
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(kinds.len(), 12, "{kinds:?}");
}
