//! Two hosts on one machine: network namespaces A and B joined by a veth pair, with
//! nftables drop rules to partition them and tbf to slow the link (as
//! /work/shared/tools/netns-pair.sh, but with names unique per test so tests run in
//! parallel). Everything is removed on drop, also when the test panics.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness: a failed setup should panic loudly

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::common::{have_tool, in_ci, run, Cluster, Daemon};

pub mod lan;

pub(crate) static NEXT: AtomicU32 = AtomicU32::new(1);

/// Which side(s) of the link to cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    A,
    B,
    Both,
}

/// A namespace pair; deleted on drop (which also deletes the veth ends inside).
pub struct NetPair {
    pub ns_a: String,
    pub ns_b: String,
    pub veth_a: String,
    pub veth_b: String,
    pub ip_a: String,
    pub ip_b: String,
}

pub(crate) fn ip(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) fn nft_in(ns: &str, script: &str) {
    use std::io::Write;
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "nft in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub(crate) const TABLE: &str = "hastpart";

impl NetPair {
    /// Creates the pair, or returns None (after printing why) when this machine cannot:
    /// not root, or `ip`/`nft` missing. Under CI that is a failure instead.
    pub fn new() -> Option<NetPair> {
        if !rustix::process::geteuid().is_root() {
            assert!(!in_ci(), "network namespace tests need root in CI");
            eprintln!("SKIP: network namespace tests need root");
            return None;
        }
        if !have_tool("ip") || !have_tool("nft") {
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let tag = format!("{pid}x{n}");
        let pair = NetPair {
            ns_a: format!("hastt-{tag}-a"),
            ns_b: format!("hastt-{tag}-b"),
            // Interface names: at most 15 bytes.
            veth_a: format!("vh{}a", &tag[tag.len().saturating_sub(11)..]),
            veth_b: format!("vh{}b", &tag[tag.len().saturating_sub(11)..]),
            // Only ever configured inside the two namespaces.
            ip_a: format!("10.199.{}.1", (pid as u32 * 7 + n) % 250),
            ip_b: format!("10.199.{}.2", (pid as u32 * 7 + n) % 250),
        };
        ip(&["netns", "add", &pair.ns_a]);
        ip(&["netns", "add", &pair.ns_b]);
        ip(&[
            "link",
            "add",
            &pair.veth_a,
            "netns",
            &pair.ns_a,
            "type",
            "veth",
            "peer",
            "name",
            &pair.veth_b,
            "netns",
            &pair.ns_b,
        ]);
        for (ns, dev, addr) in [
            (&pair.ns_a, &pair.veth_a, &pair.ip_a),
            (&pair.ns_b, &pair.veth_b, &pair.ip_b),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
        }
        Some(pair)
    }

    /// `ip netns exec <ns>` for node `a` or `b`: the wrapper for `Cluster::start_wrapped`.
    pub fn wrapper(&self, node: &str) -> Vec<String> {
        let ns = if node == "a" { &self.ns_a } else { &self.ns_b };
        vec!["ip".into(), "netns".into(), "exec".into(), ns.clone()]
    }

    /// Starts hastd for `node` inside its namespace.
    pub fn start(&self, cluster: &Cluster, node: &str) -> Daemon {
        let wrapper = self.wrapper(node);
        let wrapper: Vec<&str> = wrapper.iter().map(String::as_str).collect();
        cluster.start_wrapped(node, &wrapper)
    }

    fn sides(&self, side: Side) -> Vec<(&str, &str)> {
        let a = (self.ns_a.as_str(), self.veth_a.as_str());
        let b = (self.ns_b.as_str(), self.veth_b.as_str());
        match side {
            Side::A => vec![a],
            Side::B => vec![b],
            Side::Both => vec![a, b],
        }
    }

    /// Partition: every packet on the veth is dropped, in and out, on `side`.
    pub fn cut(&self, side: Side) {
        for (ns, dev) in self.sides(side) {
            nft_in(
                ns,
                &format!(
                    "table inet {TABLE} {{\n\
                     chain in {{ type filter hook input priority -10; policy accept; iifname \"{dev}\" drop; }}\n\
                     chain out {{ type filter hook output priority -10; policy accept; oifname \"{dev}\" drop; }}\n\
                     }}\n"
                ),
            );
        }
    }

    /// Removes the partition rules on both sides.
    pub fn heal(&self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip")
                .args(["netns", "exec", ns, "nft", "delete", "table", "inet", TABLE])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }

    /// Limits both directions of the link to `rate` (tbf), e.g. "400mbit". Returns false
    /// if tbf is not available (the caller then relies on volume alone).
    pub fn shape(&self, rate: &str) -> bool {
        self.sides(Side::Both).into_iter().all(|(ns, dev)| {
            run(Command::new("ip").args([
                "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf", "rate",
                rate, "burst", "256kb", "latency", "50ms",
            ]))
            .status
            .success()
        })
    }
}

impl Drop for NetPair {
    fn drop(&mut self) {
        // Processes inside must be gone first (daemons are declared after the pair, so
        // they are dropped before it); deleting a namespace removes its veth end too.
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
