//! A hast pair under keepalived on a LAN of network namespaces (netns/lan.rs), with the
//! files of contrib/keepalived installed unchanged but for paths: each node runs hastd
//! and keepalived (VRRP) in its namespace; the notify scripts run hastctl through a
//! wrapper that names this cluster's config and node. Shared by keepalived.rs and
//! ride_through.rs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{hastctl, have_tool, in_ci, Cluster, Daemon};
use crate::faults::*;
use crate::netns::lan::Lan;

fn contrib() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/keepalived")
}

/// keepalived of one node, in its own process group (its VRRP child dies with it).
pub struct Keepalived {
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
pub struct Pair {
    pub lan: Lan,
    pub cluster: Cluster,
    pub hastd: [Option<Daemon>; 2],
    keepalived: [Keepalived; 2],
}

pub const NODES: [&str; 2] = ["a", "b"];

pub fn idx(node: &str) -> usize {
    usize::from(node == "b")
}

impl Pair {
    pub fn new(fence: bool) -> Option<Pair> {
        Pair::with_export(fence, None)
    }

    /// `tcp_export`: serve the export on this TCP port of every address (clients reach
    /// it on the VIP) instead of a UNIX socket.
    pub fn with_export(fence: bool, tcp_export: Option<u16>) -> Option<Pair> {
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
        let export = tcp_export.map(|p| format!("tcp://0.0.0.0:{p}"));
        let head = format!("{}{fence_lines}", fault_head("memsync"));
        let cluster = Cluster::new(&pair_config(
            &head,
            lan.addr("a"),
            lan.addr("b"),
            export.as_deref(),
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

    pub fn settings(&self, node: &str) -> PathBuf {
        self.cluster.path(&format!("settings-{node}"))
    }

    pub fn start_hastd(&mut self, node: &str) {
        let mut wrapper = self.lan.wrapper(node);
        // The fence program finds its settings (VIP, tie-breaker) through this.
        wrapper.extend([
            "env".into(),
            format!("HAST_KEEPALIVED_SETTINGS={}", self.settings(node).display()),
        ]);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        self.hastd[idx(node)] = Some(self.cluster.start_wrapped(node, &wrapper));
    }

    pub fn start_keepalived(&mut self, node: &str) {
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

    /// The node's host dies: keepalived and hastd killed at once; its addresses go with
    /// it (a SIGKILLed keepalived leaves the VIP configured, a dead host does not).
    pub fn kill_node(&mut self, node: &str) {
        self.keepalived[idx(node)].kill();
        if let Some(d) = self.hastd[idx(node)].take() {
            d.kill();
        }
        let _ = Command::new("ip")
            .args(["-n", self.lan.ns(node), "addr", "del"])
            .arg(format!("{}/24", self.lan.vip))
            .args(["dev", "eth0"])
            .stderr(Stdio::null())
            .status();
    }

    pub fn restart_node(&mut self, node: &str) {
        self.start_hastd(node);
        self.start_keepalived(node);
    }

    pub fn role(&self, node: &str) -> String {
        status(&self.cluster, node)["role"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }

    /// What the failover scripts and keepalived logged, for failure messages.
    pub fn logs(&self) -> String {
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

    /// The node VRRP made master first (usually a, the higher priority, but a busy
    /// machine can let b's master-down timer fire first), once it is primary.
    pub fn wait_any_primary(&self, limit: Duration) -> &'static str {
        let t = Instant::now();
        loop {
            for node in NODES {
                let st = status(&self.cluster, node);
                if st["role"] == "primary" && !st["status"].is_null() {
                    return node;
                }
            }
            assert!(
                t.elapsed() < limit,
                "no node became primary:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn wait_primary(&self, node: &str, limit: Duration) {
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
