//! A small LAN on one machine: a switch namespace holding a bridge (and an address on
//! it, the gateway the nodes' fencing uses as tie-breaker, where clients run too) and
//! one namespace per node, each joined to the bridge by a veth whose node end is called
//! `eth0` (so a keepalived.conf naming `interface eth0` works unchanged). A node is cut
//! off with nftables drop rules inside its namespace. Everything is removed on drop.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness

use std::process::Command;
use std::sync::atomic::Ordering;

use super::{ip, nft_in, NEXT, TABLE};
use crate::common::{have_tool, in_ci, run};

/// The LAN; nodes are named "a", "b"...
pub struct Lan {
    /// The switch namespace (bridge, gateway address, clients).
    pub ns_sw: String,
    /// Per node: (name, namespace, address).
    pub nodes: Vec<(String, String, String)>,
    /// The gateway address (on the bridge).
    pub gateway: String,
    /// A free address on the LAN for a virtual IP.
    pub vip: String,
}

impl Lan {
    /// Creates the switch and one namespace per name in `nodes`, or returns None (after
    /// printing why) when this machine cannot; under CI that is a failure instead.
    pub fn new(nodes: &[&str]) -> Option<Lan> {
        if !rustix::process::geteuid().is_root() {
            assert!(!in_ci(), "network namespace tests need root in CI");
            eprintln!("SKIP: network namespace tests need root");
            return None;
        }
        if !have_tool("ip") || !have_tool("nft") {
            assert!(!in_ci(), "ip or nft missing");
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{pid}x{n}");
        let short = &tag[tag.len().saturating_sub(10)..];
        let net = format!("10.198.{}", (pid * 7 + n) % 250);
        let lan = Lan {
            ns_sw: format!("hastl-{tag}-sw"),
            nodes: nodes
                .iter()
                .enumerate()
                .map(|(i, name)| {
                    (
                        name.to_string(),
                        format!("hastl-{tag}-{name}"),
                        format!("{net}.{}", i + 1),
                    )
                })
                .collect(),
            gateway: format!("{net}.254"),
            vip: format!("{net}.100"),
        };
        ip(&["netns", "add", &lan.ns_sw]);
        let sw = lan.ns_sw.as_str();
        ip(&["-n", sw, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            sw,
            "addr",
            "add",
            &format!("{}/24", lan.gateway),
            "dev",
            "br0",
        ]);
        ip(&["-n", sw, "link", "set", "br0", "up"]);
        ip(&["-n", sw, "link", "set", "lo", "up"]);
        for (name, ns, addr) in &lan.nodes {
            ip(&["netns", "add", ns]);
            let port = format!("hl{short}{name}");
            ip(&[
                "link", "add", &port, "netns", sw, "type", "veth", "peer", "name", "eth0", "netns",
                ns,
            ]);
            ip(&["-n", sw, "link", "set", &port, "master", "br0"]);
            ip(&["-n", sw, "link", "set", &port, "up"]);
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", "eth0", "up"]);
        }
        Some(lan)
    }

    fn node(&self, name: &str) -> &(String, String, String) {
        self.nodes.iter().find(|(n, _, _)| n == name).unwrap()
    }

    /// The namespace of node `name`.
    pub fn ns(&self, name: &str) -> &str {
        &self.node(name).1
    }

    /// The address of node `name`.
    pub fn addr(&self, name: &str) -> &str {
        &self.node(name).2
    }

    /// `ip netns exec <ns>` for node `name` (or "sw").
    pub fn wrapper(&self, name: &str) -> Vec<String> {
        let ns = if name == "sw" {
            &self.ns_sw
        } else {
            self.ns(name)
        };
        vec!["ip".into(), "netns".into(), "exec".into(), ns.to_string()]
    }

    /// `nsenter --net=...`: the network namespace only, so that mounts made by the
    /// command (a FUSE export) are seen from the test's mount namespace.
    pub fn net_only(&self, name: &str) -> Vec<String> {
        let ns = if name == "sw" {
            &self.ns_sw
        } else {
            self.ns(name)
        };
        vec!["nsenter".into(), format!("--net=/run/netns/{ns}")]
    }

    /// Cuts node `name` off the LAN: every packet on its eth0 dropped, in and out.
    pub fn isolate(&self, name: &str) {
        nft_in(
            self.ns(name),
            &format!(
                "table inet {TABLE} {{\n\
                 chain in {{ type filter hook input priority -10; policy accept; iifname \"eth0\" drop; }}\n\
                 chain out {{ type filter hook output priority -10; policy accept; oifname \"eth0\" drop; }}\n\
                 }}\n"
            ),
        );
    }

    /// Removes every cut.
    pub fn heal(&self) {
        for (_, ns, _) in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "delete", "table", "inet", TABLE])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    /// Whether node `name` holds address `addr` now.
    pub fn holds(&self, name: &str, addr: &str) -> bool {
        let out = run(Command::new("ip").args(["-n", self.ns(name), "-o", "addr", "show"]));
        String::from_utf8_lossy(&out.stdout).contains(&format!("inet {addr}/"))
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for (_, ns, _) in &self.nodes {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.ns_sw])
            .stderr(std::process::Stdio::null())
            .status();
    }
}
