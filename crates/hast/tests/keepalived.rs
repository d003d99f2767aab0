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
mod netns;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::ledger::{verify, Ledger, LedgerConfig, NbdConn, Problem, Workload};
use common::{hastctl, have_tool, in_ci, Cluster, Daemon};
use faults::*;
use netns::lan::Lan;

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/keepalived")
}

/// keepalived of one node, in its own process group (its VRRP child dies with it).
struct Keepalived {
    child: Option<Child>,
}

impl Keepalived {
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Keepalived {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A hast pair under keepalived on a LAN. Declared so that the daemons drop before the
/// LAN.
struct Pair {
    lan: Lan,
    cluster: Cluster,
    hastd: [Option<Daemon>; 2],
    keepalived: [Keepalived; 2],
}

const NODES: [&str; 2] = ["a", "b"];

fn idx(node: &str) -> usize {
    usize::from(node == "b")
}

fn other(node: &str) -> &'static str {
    if node == "a" {
        "b"
    } else {
        "a"
    }
}

impl Pair {
    fn new(fence: bool) -> Option<Pair> {
        if !have_tool("keepalived") || !have_tool("qemu-io") {
            assert!(
                !in_ci(),
                "keepalived or qemu-io missing (test.sh installs them)"
            );
            eprintln!("SKIP: keepalived or qemu-io missing");
            return None;
        }
        let lan = Lan::new(&NODES)?;
        let fence_lines = if fence {
            "fence @DIR@/libexec/hast-fence.sh\nfence_timeout 20\n"
        } else {
            ""
        };
        let cluster = Cluster::new(&format!(
            "replication memsync\nchecksum none\ncompression none\ntimeout 2\n\
             exec @DIR@/hook.sh\n{fence_lines}\
             on a {{ control uds://@DIR@/a.ctl listen tcp://{ia}:@PA@ }}\n\
             on b {{ control uds://@DIR@/b.ctl listen tcp://{ib}:@PB@ }}\n\
             resource r0 {{\n\
             \ton a {{ local @DIR@/a.img remote tcp://{ib}:@PB@ export @DIR@/a.sock }}\n\
             \ton b {{ local @DIR@/b.img remote tcp://{ia}:@PA@ export @DIR@/b.sock }}\n\
             }}\n",
            ia = lan.addr("a"),
            ib = lan.addr("b"),
        ));
        create_both(&cluster, 64 * MIB);
        install_scripts(&cluster, &lan);
        let mut pair = Pair {
            lan,
            cluster,
            hastd: [None, None],
            keepalived: [Keepalived { child: None }, Keepalived { child: None }],
        };
        for node in NODES {
            pair.start_hastd(node);
        }
        for node in NODES {
            pair.start_keepalived(node);
        }
        Some(pair)
    }

    fn settings(&self, node: &str) -> PathBuf {
        self.cluster.path(&format!("settings-{node}"))
    }

    fn start_hastd(&mut self, node: &str) {
        let mut wrapper = self.lan.wrapper(node);
        // The fence program finds its settings (VIP, tie-breaker) through this.
        wrapper.extend([
            "env".into(),
            format!("HAST_KEEPALIVED_SETTINGS={}", self.settings(node).display()),
        ]);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        self.hastd[idx(node)] = Some(self.cluster.start_wrapped(node, &wrapper));
    }

    fn start_keepalived(&mut self, node: &str) {
        let dir = self.cluster.dir.path();
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(dir.join(format!("keepalived-{node}.log")))
            .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", self.lan.ns(node), "keepalived"])
            .args(["--dont-fork", "--log-console", "--log-detail", "--vrrp"])
            .arg("--use-file")
            .arg(dir.join(format!("keepalived-{node}.conf")))
            .arg("--pid")
            .arg(dir.join(format!("keepalived-{node}.pid")))
            .arg("--vrrp_pid")
            .arg(dir.join(format!("keepalived-vrrp-{node}.pid")))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .process_group(0)
            .spawn()
            .unwrap();
        self.keepalived[idx(node)] = Keepalived { child: Some(child) };
    }

    /// The node's host dies: keepalived and hastd killed at once.
    fn kill_node(&mut self, node: &str) {
        self.keepalived[idx(node)].kill();
        if let Some(d) = self.hastd[idx(node)].take() {
            d.kill();
        }
    }

    fn restart_node(&mut self, node: &str) {
        self.start_hastd(node);
        self.start_keepalived(node);
    }

    fn role(&self, node: &str) -> String {
        status(&self.cluster, node)["role"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// What the failover scripts and keepalived logged, for failure messages.
    fn logs(&self) -> String {
        let mut out = String::new();
        for name in [
            "failover-a.log",
            "failover-b.log",
            "keepalived-a.log",
            "keepalived-b.log",
        ] {
            let text = std::fs::read_to_string(self.cluster.path(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {name} (last lines) ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    fn wait_primary(&self, node: &str, limit: Duration) {
        let t = Instant::now();
        while self.role(node) != "primary" || status(&self.cluster, node)["status"].is_null() {
            assert!(
                t.elapsed() < limit,
                "{node} did not become primary:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Copies contrib/keepalived into the cluster directory and writes what differs per
/// node: paths in keepalived.conf (and b's lower priority), the settings files, and a
/// hastctl wrapper with this cluster's config and node name.
fn install_scripts(cluster: &Cluster, lan: &Lan) {
    let dir = cluster.dir.path();
    let libexec = dir.join("libexec");
    std::fs::create_dir_all(&libexec).unwrap();
    // keepalived's script security wants root-owned, not group/world-writable paths.
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in [
        "hast-master.sh",
        "hast-backup.sh",
        "hast-fault.sh",
        "hast-fence.sh",
    ] {
        let to = libexec.join(f);
        std::fs::copy(contrib().join(f), &to).unwrap();
        std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let conf = std::fs::read_to_string(contrib().join("keepalived.conf")).unwrap();
    for node in NODES {
        let settings = dir.join(format!("settings-{node}"));
        let wrapper = dir.join(format!("hastctl-{node}"));
        std::fs::write(
            &wrapper,
            format!(
                "#!/bin/sh\nexec {} -c {} --node {node} \"$@\"\n",
                hastctl(),
                cluster.config.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            &settings,
            format!(
                "HASTCTL={wrapper}\nNBD_DEVICE=\"\"\nMOUNTPOINT=\"\"\nWAIT_PEER=15\n\
                 LOCKDIR={dir}/lock-{node}\nLOG_FILE={dir}/failover-{node}.log\n\
                 VIP={vip}\nTIEBREAKER={gw}\n",
                wrapper = wrapper.display(),
                dir = dir.display(),
                vip = lan.vip,
                gw = lan.gateway,
            ),
        )
        .unwrap();
        let mut text = conf
            .replace("10.0.0.100/24", &format!("{}/24", lan.vip))
            .replace(
                "/usr/local/libexec/hast/",
                &format!("{}/", libexec.display()),
            )
            .replace(" shared\"", &format!(" r0 {}\"", settings.display()))
            .replace("vrrp_instance hast_shared", "vrrp_instance hast_r0");
        if node == "b" {
            text = text.replace("priority 100 ", "priority 90 ");
        }
        assert!(text.contains(&lan.vip) && text.contains(" r0 "), "{text}");
        std::fs::write(dir.join(format!("keepalived-{node}.conf")), text).unwrap();
    }
}

fn ledger_config(seed: u64) -> LedgerConfig {
    LedgerConfig {
        seed,
        slots: 1500,
        in_flight: 16,
        max_writes: None,
        flush_every: 200,
        fua_every: 53,
        ..LedgerConfig::default()
    }
}

/// A 4 KiB block that is none of the ledger's slots, for probe writes.
fn probe_offset(ledger: &Ledger) -> u64 {
    let used: std::collections::BTreeSet<u64> = (0..ledger.slot_count())
        .map(|s| ledger.slot(s).offset)
        .collect();
    (0..).map(|i| i * 4096).find(|o| !used.contains(o)).unwrap()
}

/// Waits until `node` serves a write (its export exists only while primary); returns
/// when it did.
fn first_served_write(cluster: &Cluster, node: &str, probe: u64, limit: Duration) -> Instant {
    let t = Instant::now();
    loop {
        if let Ok(mut c) = NbdConn::open_uri(&uri(cluster, node)) {
            if c.write(probe, &[0x5a; 4096], false).is_ok() {
                return Instant::now();
            }
        }
        assert!(
            t.elapsed() < limit,
            "{node} served no write within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

#[test]
fn keepalived_fails_over_on_a_kill_and_the_killed_node_rejoins_by_itself() {
    let Some(mut pair) = Pair::new(false) else {
        return;
    };
    pair.wait_primary("a", Duration::from_secs(30));
    wait_settled(&pair.cluster, "a");
    let cfg = ledger_config(0x6a11);
    let mut ledger = ledger_on(&pair.cluster, "a", &cfg);
    let probe = probe_offset(&ledger);
    let runs: usize = std::env::var("KEEPALIVED_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let mut times = Vec::new();
    let mut primary = "a";
    for run in 0..runs {
        let standby = other(primary);
        let wl = Workload::start(conn(&pair.cluster, primary), ledger, &cfg);
        assert!(wl.wait_acked(300, Duration::from_secs(60)));
        let killed = Instant::now();
        pair.kill_node(primary);
        let (l, stats) = wl.abort();
        ledger = l;
        let served = first_served_write(&pair.cluster, standby, probe, Duration::from_secs(60));
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
    let (mut sorted, n) = (times.clone(), times.len());
    let med = median(&mut sorted);
    eprintln!(
        "keepalived failover, kill to first served write over {n} runs: median {med:.2}s, \
         min {:.2}s, max {:.2}s ({times:?})",
        sorted[0],
        sorted[n - 1]
    );
    verify_clean(&pair.cluster, primary, &ledger);
}

/// Cuts the primary `a` off the LAN while `b` takes over as VRRP master too; returns
/// the ledger of what `a` acknowledged. `under_load`: the workload runs through the cut
/// (with fencing, every write after it must fail); else it ends before the cut (without
/// fencing, what `a` acknowledges after it is what the split-brain sets apart).
fn both_masters(pair: &mut Pair, under_load: bool) -> (Ledger, LedgerConfig) {
    pair.wait_primary("a", Duration::from_secs(30));
    wait_settled(&pair.cluster, "a");
    let cfg = ledger_config(0xb0b);
    let ledger = ledger_on(&pair.cluster, "a", &cfg);
    let wl = Workload::start(conn(&pair.cluster, "a"), ledger, &cfg);
    assert!(wl.wait_acked(300, Duration::from_secs(60)));
    let (wl, before) = if under_load {
        (Some(wl), None)
    } else {
        let (ledger, stats) = wl.stop();
        eprintln!("workload on a before the cut: {stats}");
        (None, Some(ledger))
    };
    assert!(pair.lan.holds("a", &pair.lan.vip), "{}", pair.logs());
    pair.lan.isolate("a");
    // b stops hearing a's adverts and takes the VIP: both are VRRP masters now.
    wait_for("b to take the VIP too", Duration::from_secs(30), || {
        pair.lan.holds("b", &pair.lan.vip)
    });
    pair.wait_primary("b", Duration::from_secs(60));
    assert!(pair.lan.holds("a", &pair.lan.vip), "{}", pair.logs());
    let ledger = match (wl, before) {
        (Some(wl), _) => {
            let (ledger, stats) = wl.stop();
            eprintln!("workload on the isolated a: {stats}");
            ledger
        }
        (None, Some(ledger)) => ledger,
        (None, None) => unreachable!(),
    };
    (ledger, cfg)
}

#[test]
fn both_masters_with_fencing_the_isolated_primary_stops_writing_and_no_split_brain() {
    let Some(mut pair) = Pair::new(true) else {
        return;
    };
    let (ledger, cfg) = both_masters(&mut pair, true);
    let cluster = &pair.cluster;
    wait_for("a's fence to fail", Duration::from_secs(30), || {
        status(cluster, "a")["fence"] == "failed"
    });
    let offset = probe_offset(&ledger);
    let mut probe = conn(cluster, "a");
    assert!(
        probe.write(offset, &[1; 4096], false).is_err(),
        "the isolated primary accepted a write"
    );
    // b has every write a acknowledged, and writes (its fence passed: VIP + gateway).
    verify_clean(cluster, "b", &ledger);
    let wl = Workload::start(conn(cluster, "b"), ledger, &cfg);
    assert!(
        wl.wait_acked(300, Duration::from_secs(60)),
        "{}",
        pair.logs()
    );
    let (ledger, _) = wl.stop();
    assert_eq!(status(cluster, "b")["fence"], "open");

    // The heal: VRRP keeps the higher priority (a) as master, b runs hast-backup.sh and
    // becomes secondary; a, which wrote nothing since the cut, synchronises from b.
    pair.lan.heal();
    wait_for("b to become secondary", Duration::from_secs(60), || {
        pair.role("b") == "secondary"
    });
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
    let (ledger, _) = both_masters(&mut pair, false);
    assert!(
        pair.lan.holds("a", &pair.lan.vip) && pair.lan.holds("b", &pair.lan.vip),
        "not both VRRP masters:\n{}",
        pair.logs()
    );
    let cluster = &pair.cluster;
    verify_clean(cluster, "b", &ledger);
    // Both write: a degraded, b promoted.
    qemu_io(&uri(cluster, "a"), &["write -P 0xaa 1M 64k".into()]);
    qemu_io(&uri(cluster, "b"), &["write -P 0xbb 2M 64k".into()]);
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
    // Neither side was overwritten by the other.
    qemu_io(&uri(cluster, "a"), &["read -P 0xaa 1M 64k".into()]);
}
