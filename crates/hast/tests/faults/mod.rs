//! Helpers shared by the fault tests (`recovery.rs`, `partition.rs`): an exec hook that
//! records every event per node, polling with deadlines, NBD clients, data-area
//! comparison that streams (1 GiB devices), and log parsing.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness: a failed setup should panic loudly

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::common::ledger::{verify, Ledger, LedgerConfig, NbdConn, Workload, WorkloadStats};
use crate::common::{sparse_file, Cluster, Daemon};

pub const MIB: u64 = 1 << 20;

/// The hook: one line per event, `<pid> <ns-time> <args...>`, appended to `hook-<node>.log`
/// in the cluster directory. The node is read from the parent hastd's command line
/// (`--node X`); hooks inherit nothing else that tells the nodes apart.
pub const HOOK_SCRIPT: &str = r#"#!/bin/sh
node=$(tr '\0' '\n' < /proc/$PPID/cmdline 2>/dev/null | sed -n '/^--node$/{n;p;q}')
[ -n "$node" ] || node=unknown
echo "$$ $(date +%s%N) $*" >> "@DIR@/hook-$node.log"
"#;

/// Writes the hook script into the cluster directory (the config names it `@DIR@/hook.sh`).
pub fn install_hook(cluster: &Cluster) {
    use std::os::unix::fs::PermissionsExt;
    let path = cluster.path("hook.sh");
    let text = HOOK_SCRIPT.replace("@DIR@", &cluster.dir.path().display().to_string());
    std::fs::write(&path, text).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The config of a pair: nodes `a` and `b` listening on `ia`/`ib` (ports `@PA@`/`@PB@`),
/// resource `r0` on `a.img`/`b.img` in the cluster directory. `head`: the global lines
/// (replication, checksum, hooks, fence...), each ending in a newline; `export`: the
/// export address of both nodes (None: a UNIX socket each in the cluster directory).
pub fn pair_config(head: &str, ia: &str, ib: &str, export: Option<&str>) -> String {
    let (ea, eb) = match export {
        Some(e) => (e.to_string(), e.to_string()),
        None => ("@DIR@/a.sock".to_string(), "@DIR@/b.sock".to_string()),
    };
    format!(
        "{head}\
         on a {{ control uds://@DIR@/a.ctl listen tcp://{ia}:@PA@ }}\n\
         on b {{ control uds://@DIR@/b.ctl listen tcp://{ib}:@PB@ }}\n\
         resource r0 {{\n\
         \ton a {{ local @DIR@/a.img remote tcp://{ib}:@PB@ export {ea} }}\n\
         \ton b {{ local @DIR@/b.img remote tcp://{ia}:@PA@ export {eb} }}\n\
         }}\n"
    )
}

/// The global lines most fault tests use: `timeout 2` keeps outages short; no checksum
/// or compression so that syncs of pattern data are as fast as the disk; the hook.
pub fn fault_head(replication: &str) -> String {
    format!(
        "replication {replication}\nchecksum none\ncompression none\ntimeout 2\n\
         exec @DIR@/hook.sh\n"
    )
}

/// Both nodes on loopback, with [`fault_head`].
pub fn loopback_config(replication: &str) -> String {
    pair_config(&fault_head(replication), "127.0.0.1", "127.0.0.1", None)
}

/// Creates both providers (`size` bytes, sparse) and installs the hook.
pub fn create_both(cluster: &Cluster, size: u64) {
    install_hook(cluster);
    for node in ["a", "b"] {
        sparse_file(&cluster.path(&format!("{node}.img")), size);
        cluster.hastctl_ok(node, &["create", "r0"]);
    }
}

/// Roles set on running daemons: b secondary, a primary; waits until both are connected
/// and nothing is owed.
pub fn connect_pair(cluster: &Cluster) {
    cluster.hastctl_ok("b", &["role", "secondary", "r0"]);
    cluster.hastctl_ok("a", &["role", "primary", "r0"]);
    wait_status(cluster, "a", "complete");
    wait_status(cluster, "b", "complete");
    wait_settled(cluster, "a");
}

/// A loopback pair of `size` bytes, connected (a primary).
pub fn loopback_pair(replication: &str, size: u64) -> (Cluster, Daemon, Daemon) {
    let cluster = Cluster::new(&loopback_config(replication));
    create_both(&cluster, size);
    let a = cluster.start("a");
    let b = cluster.start("b");
    connect_pair(&cluster);
    (cluster, a, b)
}

pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn status(cluster: &Cluster, node: &str) -> serde_json::Value {
    cluster.status_json(node, "r0")
}

pub fn wait_status(cluster: &Cluster, node: &str, want: &str) {
    wait_for(
        &format!("{node} to be {want}"),
        Duration::from_secs(30),
        || status(cluster, node)["status"] == want,
    );
}

/// Waits until the primary `node` is connected, runs no sync and owes nothing.
pub fn wait_settled(cluster: &Cluster, node: &str) {
    wait_for(
        &format!("{node} to be complete, in sync, with nothing dirty"),
        Duration::from_secs(30),
        || {
            let st = status(cluster, node);
            st["status"] == "complete" && st["sync"].is_null() && st["dirty"] == 0
        },
    );
}

pub fn uri(cluster: &Cluster, node: &str) -> String {
    format!(
        "nbd+unix:///r0?socket={}",
        cluster.path(&format!("{node}.sock")).display()
    )
}

/// Runs qemu-io with `commands` on `uri`; panics if any fails.
pub fn qemu_io(uri: &str, commands: &[String]) {
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    crate::common::qemu_io(uri, &commands);
}

/// `write -P pattern off len` commands covering `[from, from+len)` in `step` pieces,
/// patterns varying per piece (so misplaced data shows).
pub fn pattern_writes(from: u64, len: u64, step: u64, seed: u8) -> Vec<String> {
    (0..len.div_ceil(step))
        .map(|i| {
            let off = from + i * step;
            let n = step.min(from + len - off);
            let pattern = seed.wrapping_add(i as u8) | 1;
            format!("write -P {pattern} {off} {n}")
        })
        .collect()
}

/// Where the data area starts in a provider (metadata and bitmap before it).
pub fn data_offset(cluster: &Cluster) -> u64 {
    let dump = cluster.hastctl_ok("a", &["dump", "--json", "r0"]);
    let v: serde_json::Value = serde_json::from_str(&dump).unwrap();
    v[0]["offset"].as_u64().unwrap()
}

fn read_full(f: &mut std::fs::File, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    n
}

/// First byte offset (in the data area) where the two providers differ, streaming.
pub fn first_difference(a: &Path, b: &Path, offset: u64) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    let mut fa = std::fs::File::open(a).unwrap();
    let mut fb = std::fs::File::open(b).unwrap();
    fa.seek(SeekFrom::Start(offset)).unwrap();
    fb.seek(SeekFrom::Start(offset)).unwrap();
    let mut ba = vec![0u8; 8 << 20];
    let mut bb = vec![0u8; 8 << 20];
    let mut pos = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba);
        let nb = read_full(&mut fb, &mut bb);
        assert_eq!(na, nb, "providers have different sizes");
        if na == 0 {
            return None;
        }
        if ba[..na] != bb[..nb] {
            let i = ba[..na].iter().zip(&bb[..nb]).position(|(x, y)| x != y);
            return Some(pos + i.unwrap() as u64);
        }
        pos += na as u64;
    }
}

/// Extents (of `extentsize` bytes) whose data differs between the two providers.
pub fn differing_extents(cluster: &Cluster, extentsize: u64) -> Vec<u64> {
    let offset = data_offset(cluster);
    let a = std::fs::read(cluster.path("a.img")).unwrap();
    let b = std::fs::read(cluster.path("b.img")).unwrap();
    let (a, b) = (&a[offset as usize..], &b[offset as usize..]);
    a.chunks(extentsize as usize)
        .zip(b.chunks(extentsize as usize))
        .enumerate()
        .filter(|(_, (x, y))| x != y)
        .map(|(i, _)| i as u64)
        .collect()
}

pub fn assert_identical(cluster: &Cluster) {
    let offset = data_offset(cluster);
    if let Some(pos) = first_difference(&cluster.path("a.img"), &cluster.path("b.img"), offset) {
        panic!(
            "data areas differ first at byte {pos} (2 MiB extent {})",
            pos / (2 * MIB)
        );
    }
}

/// The data area of `node`'s provider (small devices only).
pub fn data_area(cluster: &Cluster, node: &str) -> Vec<u8> {
    let offset = data_offset(cluster) as usize;
    let all = std::fs::read(cluster.path(&format!("{node}.img"))).unwrap();
    all[offset..].to_vec()
}

/// The on-disk activemap of `node`'s provider as raw bytes (offset 4096 up to the data).
pub fn ondisk_bitmap(cluster: &Cluster, node: &str) -> Vec<u8> {
    let offset = data_offset(cluster) as usize;
    let all = std::fs::read(cluster.path(&format!("{node}.img"))).unwrap();
    all[4096..offset].to_vec()
}

pub fn bit_set(bitmap: &[u8], extent: u64) -> bool {
    bitmap
        .get((extent / 8) as usize)
        .is_some_and(|b| b & (1 << (extent % 8)) != 0)
}

/// Every `N` of the log lines "synchronization complete: N bytes synchronized".
pub fn synced_totals(log: &str) -> Vec<u64> {
    let needle = "synchronization complete: ";
    log.lines()
        .filter_map(|l| {
            let rest = &l[l.find(needle)? + needle.len()..];
            rest.split(' ').next()?.parse().ok()
        })
        .collect()
}

/// Occurrences of `needle` in the log.
pub fn count(log: &str, needle: &str) -> usize {
    log.matches(needle).count()
}

/// Waits until `daemon`'s log satisfies `cond`.
pub fn wait_log(daemon: &Daemon, what: &str, mut cond: impl FnMut(&str) -> bool) {
    wait_for(what, Duration::from_secs(30), || cond(&daemon.log_text()));
}

/// One recorded hook run.
#[derive(Debug, Clone)]
pub struct HookRun {
    pub pid: u32,
    pub args: String,
}

/// Every hook run recorded for `node`, in file order.
pub fn hook_runs(cluster: &Cluster, node: &str) -> Vec<HookRun> {
    let text =
        std::fs::read_to_string(cluster.path(&format!("hook-{node}.log"))).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ' ');
            let pid = it.next()?.parse().ok()?;
            let _time = it.next()?;
            Some(HookRun {
                pid,
                args: it.next().unwrap_or("").to_string(),
            })
        })
        .collect()
}

/// The runs in the order hastd started them: hooks write their lines asynchronously, but
/// their pids were allocated in spawn order (corrected for one wrap of pid_max).
pub fn spawn_order(runs: &[HookRun]) -> Vec<String> {
    let mut v: Vec<(u64, String)> = runs
        .iter()
        .map(|r| (u64::from(r.pid), r.args.clone()))
        .collect();
    let (lo, hi) = (
        v.iter().map(|x| x.0).min().unwrap_or(0),
        v.iter().map(|x| x.0).max().unwrap_or(0),
    );
    if hi - lo > 1 << 14 {
        for x in &mut v {
            if x.0 < 1 << 14 {
                x.0 += 1 << 22;
            }
        }
    }
    v.sort_by_key(|x| x.0);
    v.into_iter().map(|x| x.1).collect()
}

/// Waits until `node`'s hook log has, after its first `from` runs, exactly the runs in
/// `expected` (as a multiset: hooks of unrelated causes may race); fails at once if a run
/// that is not expected shows up. Returns the new runs in spawn order.
pub fn expect_hooks(cluster: &Cluster, node: &str, from: usize, expected: &[&str]) -> Vec<String> {
    let want = multiset(expected.iter().map(|s| s.to_string()));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let runs = hook_runs(cluster, node);
        let new = &runs[from.min(runs.len())..];
        let got = multiset(new.iter().map(|r| r.args.clone()));
        if got == want {
            // Nothing else fires for the same cause a moment later.
            std::thread::sleep(Duration::from_millis(300));
            let again = hook_runs(cluster, node);
            assert_eq!(
                again.len(),
                runs.len(),
                "unexpected hook runs on {node}: {:?}",
                &again[runs.len()..]
            );
            return spawn_order(new);
        }
        for (k, n) in &got {
            assert!(
                want.get(k).is_some_and(|w| n <= w),
                "unexpected hook run on {node}: '{k}' (all new runs: {new:?}, expected {expected:?})"
            );
        }
        assert!(
            Instant::now() < deadline,
            "hooks on {node}: expected {expected:?}, got {new:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn multiset(items: impl Iterator<Item = String>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for i in items {
        *m.entry(i).or_insert(0) += 1;
    }
    m
}

/// Asserts that `first` was spawned before `then` in `order`.
pub fn assert_before(order: &[String], first: &str, then: &str) {
    let i = order.iter().position(|x| x == first);
    let j = order.iter().position(|x| x == then);
    assert!(
        matches!((i, j), (Some(i), Some(j)) if i < j),
        "expected '{first}' before '{then}' in {order:?}"
    );
}

// ---------------------------------------------------------------------------------
// The acknowledged-write ledger on a pair, and role changes that wait.

pub fn conn(cluster: &Cluster, node: &str) -> NbdConn {
    NbdConn::open_uri(&uri(cluster, node)).unwrap()
}

pub fn ledger_on(cluster: &Cluster, node: &str, cfg: &LedgerConfig) -> Ledger {
    Ledger::new(conn(cluster, node).size(), cfg)
}

/// Runs a workload on `node` until `cfg.max_writes` are acknowledged.
pub fn run(
    cluster: &Cluster,
    node: &str,
    ledger: Ledger,
    cfg: &LedgerConfig,
) -> (Ledger, WorkloadStats) {
    let wl = Workload::start(conn(cluster, node), ledger, cfg);
    assert!(
        wl.wait_done(Duration::from_secs(120)),
        "workload on {node} did not finish: {} acked",
        wl.acked()
    );
    let (ledger, stats) = wl.stop();
    eprintln!("workload on {node}: {stats}\n{ledger}");
    (ledger, stats)
}

/// Reads every slot back through `node`'s export; must be clean.
pub fn verify_clean(cluster: &Cluster, node: &str, ledger: &Ledger) {
    let verdict = verify(&mut conn(cluster, node), ledger);
    eprintln!("verify on {node}: {verdict}");
    verdict.assert_clean();
}

/// `hastctl role ROLE r0` on `node`, waiting through a "busy" answer (the change goes on
/// in the background) until the role is taken. Returns hastctl's output if it failed.
pub fn set_role(cluster: &Cluster, node: &str, role: &str, force: bool) -> Result<(), String> {
    let mut args = vec!["role"];
    if force {
        args.push("-f");
    }
    args.extend([role, "r0"]);
    let out = cluster.hastctl(node, &args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => Ok(()),
        // Busy: still applying what it acknowledged; the change completes by itself.
        Some(5) => {
            wait_for(
                &format!("{node} to become {role}"),
                Duration::from_secs(60),
                || {
                    let st = status(cluster, node);
                    st["role"] == role && !st["status"].is_null()
                },
            );
            Ok(())
        }
        _ => Err(text),
    }
}

pub fn promote(cluster: &Cluster, node: &str) {
    set_role(cluster, node, "primary", false).unwrap();
}

// ---------------------------------------------------------------------------------
// Failover measurements (keepalived, Pacemaker, ride-through).

/// The other node of a pair.
pub fn other(node: &str) -> &'static str {
    if node == "a" {
        "b"
    } else {
        "a"
    }
}

/// The ledger of the failover tests: small writes, a FLUSH now and then, some FUA.
pub fn failover_ledger(seed: u64) -> LedgerConfig {
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
pub fn probe_offset(ledger: &Ledger) -> u64 {
    let used: std::collections::BTreeSet<u64> = (0..ledger.slot_count())
        .map(|s| ledger.slot(s).offset)
        .collect();
    (0..).map(|i| i * 4096).find(|o| !used.contains(o)).unwrap()
}

/// Waits until `node` serves a write at `probe` (its export exists only while primary);
/// returns when it did. `why` says what to print if it never does.
pub fn first_served_write(
    cluster: &Cluster,
    node: &str,
    probe: u64,
    limit: Duration,
    why: impl Fn() -> String,
) -> Instant {
    let t = Instant::now();
    loop {
        if let Ok(mut c) = NbdConn::open_uri(&uri(cluster, node)) {
            if c.write(probe, &[0x5a; 4096], false).is_ok() {
                return Instant::now();
            }
        }
        assert!(
            t.elapsed() < limit,
            "{node} served no write within {limit:?}:\n{}",
            why()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// "median M s, min A s, max B s over N runs (every value)" of timings in seconds.
pub fn spread(secs: &[f64]) -> String {
    let mut sorted = secs.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let n = sorted.len();
    format!(
        "median {:.2}s, min {:.2}s, max {:.2}s over {n} runs ({secs:?})",
        sorted[n / 2],
        sorted[0],
        sorted[n - 1]
    )
}
