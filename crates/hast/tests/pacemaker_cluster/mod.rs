//! A real Pacemaker/Corosync cluster of three nodes on one machine: nodes a and b run
//! hastd and the OCF agent contrib/ocf/hast as a promotable clone; c only gives quorum.
//! Each node lives in a network namespace of a LAN (netns/lan.rs) and in its own mount
//! and UTS namespaces (node.sh), where corosync and pacemakerd run with private state
//! directories; hastd runs in the same namespaces (the fence program talks to Pacemaker
//! over libqb IPC, which needs the node's /dev/shm). Commands for a node go through
//! `nsenter` into pacemakerd's namespaces.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{hastctl, have_tool, in_ci, run, Cluster, Daemon};
use crate::faults::*;
use crate::netns::lan::Lan;

pub const HAST_NODES: [&str; 2] = ["a", "b"];
const ALL: [&str; 3] = ["a", "b", "c"];
const NODE_SH: &str = include_str!("node.sh");

pub fn contrib_ocf() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/ocf")
}

pub struct PcmkCluster {
    pub lan: Lan,
    pub cluster: Cluster,
    pub hastd: [Option<Daemon>; 2],
    /// pacemakerd of a, b, c (its namespaces are the node's).
    nodes: [Option<Child>; 3],
}

fn ix(node: &str) -> usize {
    match node {
        "a" => 0,
        "b" => 1,
        _ => 2,
    }
}

impl PcmkCluster {
    /// Starts the three nodes and hastd on a and b (`fence`: with the Pacemaker fence
    /// program), configures the clone, and waits until the cluster is up. None (after
    /// saying why) where this cannot run; a failure under CI.
    pub fn new(fence: bool) -> Option<PcmkCluster> {
        let tools = [
            "corosync",
            "pacemakerd",
            "cibadmin",
            "crm_mon",
            "unshare",
            "nsenter",
        ];
        if !tools.iter().all(|t| have_tool(t)) || !have_tool("qemu-io") {
            assert!(
                !in_ci(),
                "Pacemaker tests need {tools:?} (test.sh installs them)"
            );
            eprintln!("SKIP: Pacemaker tests need {tools:?}");
            return None;
        }
        let lan = Lan::new(&ALL)?;
        let fence_lines = if fence {
            format!(
                "fence {}/hast-fence-pacemaker\nfence_timeout 20\n",
                contrib_ocf().canonicalize().unwrap().display()
            )
        } else {
            String::new()
        };
        let head = format!("{}{fence_lines}", fault_head("memsync"));
        let cluster = Cluster::new(&pair_config(&head, lan.addr("a"), lan.addr("b"), None));
        create_both(&cluster, 64 * MIB);
        let dir = cluster.dir.path().to_path_buf();
        std::fs::write(dir.join("node.sh"), NODE_SH).unwrap();
        std::fs::write(dir.join("corosync.conf"), corosync_conf(&lan)).unwrap();
        std::fs::write(
            dir.join("pacemaker-settings"),
            format!("LOG_FILE={}/fence.log\n", dir.display()),
        )
        .unwrap();
        let mut c = PcmkCluster {
            lan,
            cluster,
            hastd: [None, None],
            nodes: [None, None, None],
        };
        for node in ALL {
            c.start_node(node);
        }
        c.wait_online(&ALL, Duration::from_secs(120));
        c.configure();
        Some(c)
    }

    /// Boots `node`: corosync and Pacemaker, then hastd for a and b.
    pub fn start_node(&mut self, node: &str) {
        let dir = self.cluster.dir.path();
        let child = Command::new("ip")
            .args(["netns", "exec", self.lan.ns(node), "unshare", "-m", "-u"])
            .arg("sh")
            .arg(dir.join("node.sh"))
            .arg(node)
            .arg(dir.join(format!("pcmk-{node}")))
            .arg(dir.join("corosync.conf"))
            .arg(contrib_ocf().canonicalize().unwrap())
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("node-{node}.out"))).unwrap())
            .stderr(std::fs::File::create(dir.join(format!("node-{node}.err"))).unwrap())
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        self.nodes[ix(node)] = Some(child);
        // pacemakerd is up once its namespaces have the private /run.
        wait_for(
            &format!("{node}'s pacemakerd"),
            Duration::from_secs(30),
            || {
                std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| c.starts_with("pacemakerd"))
            },
        );
        if node != "c" {
            let t = pid.to_string();
            let wrapper = [
                "nsenter",
                "-t",
                &t,
                "-n",
                "-m",
                "-u",
                "env",
                &format!(
                    "HAST_PACEMAKER_SETTINGS={}/pacemaker-settings",
                    dir.display()
                ),
            ];
            self.hastd[ix(node)] = Some(self.cluster.start_wrapped(node, &wrapper));
        }
    }

    /// The host of `node` dies: every process in its network namespace is killed.
    pub fn kill_node(&mut self, node: &str) {
        let out = run(Command::new("ip").args(["netns", "pids", self.lan.ns(node)]));
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
        if let Some(mut c) = self.nodes[ix(node)].take() {
            let _ = c.wait();
        }
        if node != "c" {
            if let Some(d) = self.hastd[ix(node)].take() {
                d.kill();
            }
        }
    }

    /// Runs `cmd` in `node`'s namespaces.
    pub fn exec(&self, node: &str, cmd: &[&str]) -> Output {
        let pid = self.nodes[ix(node)].as_ref().unwrap().id().to_string();
        run(Command::new("nsenter")
            .args(["-t", &pid, "-n", "-m", "-u"])
            .args(cmd))
    }

    pub fn exec_ok(&self, node: &str, cmd: &[&str]) -> String {
        let out = self.exec(node, cmd);
        assert!(
            out.status.success(),
            "{cmd:?} on {node}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `crm_mon -1` as seen from `node`.
    pub fn crm_mon(&self, node: &str) -> String {
        String::from_utf8_lossy(&self.exec(node, &["crm_mon", "-1", "-r"]).stdout).into_owned()
    }

    pub fn wait_online(&self, nodes: &[&str], limit: Duration) {
        let want = format!("Online: [ {} ]", nodes.join(" "));
        let t = Instant::now();
        loop {
            let mon = self.crm_mon(nodes[0]);
            if mon.contains(&want) && mon.contains("partition with quorum") {
                return;
            }
            assert!(
                t.elapsed() < limit,
                "cluster not up after {limit:?}:\n{mon}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn configure(&self) {
        let cfg = self.cluster.config.display().to_string();
        self.exec_ok(
            "a",
            &[
                "crm_attribute",
                "-t",
                "crm_config",
                "-n",
                "stonith-enabled",
                "-v",
                "false",
            ],
        );
        let clone = format!(
            r#"<clone id="hast-r0-clone">
  <meta_attributes id="hast-r0-clone-meta">
    <nvpair id="hast-r0-promotable" name="promotable" value="true"/>
    <nvpair id="hast-r0-promoted-max" name="promoted-max" value="1"/>
    <nvpair id="hast-r0-clone-max" name="clone-max" value="2"/>
    <nvpair id="hast-r0-clone-node-max" name="clone-node-max" value="1"/>
    <nvpair id="hast-r0-notify" name="notify" value="true"/>
  </meta_attributes>
  <primitive id="hast-r0" class="ocf" provider="hast" type="hast">
    <instance_attributes id="hast-r0-params">
      <nvpair id="hast-r0-resource" name="resource" value="r0"/>
      <nvpair id="hast-r0-config" name="config" value="{cfg}"/>
      <nvpair id="hast-r0-hastctl" name="hastctl" value="{ctl}"/>
    </instance_attributes>
    <operations>
      <op id="hast-r0-mon-p" name="monitor" interval="2s" role="Promoted" timeout="20s"/>
      <op id="hast-r0-mon-u" name="monitor" interval="3s" role="Unpromoted" timeout="20s"/>
    </operations>
  </primitive>
</clone>"#,
            ctl = hastctl()
        );
        self.exec_ok("a", &["cibadmin", "-C", "-o", "resources", "-X", &clone]);
        self.exec_ok(
            "a",
            &[
                "cibadmin",
                "-C",
                "-o",
                "constraints",
                "-X",
                r#"<rsc_location id="hast-r0-not-on-c" rsc="hast-r0-clone" node="c" score="-INFINITY"/>"#,
            ],
        );
    }

    /// The hast node that is primary and connected, once there is one.
    pub fn wait_primary_in_step(&self, limit: Duration) -> &'static str {
        let t = Instant::now();
        loop {
            for node in HAST_NODES {
                if self.hastd[ix(node)].is_some() {
                    let st = status(&self.cluster, node);
                    if st["role"] == "primary"
                        && st["status"] == "complete"
                        && st["dirty"] == 0
                        && st["sync"].is_null()
                    {
                        return node;
                    }
                }
            }
            assert!(
                t.elapsed() < limit,
                "no primary in step after {limit:?}:\n{}",
                self.diagnostics()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// What a failure message needs: Pacemaker's view with node attributes and fail
    /// counts, the constraints, both hast statuses, the fence log.
    pub fn diagnostics(&self) -> String {
        let mon =
            String::from_utf8_lossy(&self.exec("c", &["crm_mon", "-1", "-r", "-A", "-f"]).stdout)
                .into_owned();
        let cons = String::from_utf8_lossy(
            &self
                .exec("c", &["cibadmin", "-Q", "-o", "constraints"])
                .stdout,
        )
        .into_owned();
        let mut out = format!("{mon}\nconstraints: {cons}\n");
        for node in HAST_NODES {
            if self.hastd[ix(node)].is_some() {
                let st = status(&self.cluster, node);
                out.push_str(&format!(
                    "{node}: role {} status {} inconsistent {} error {} fence {}\n",
                    st["role"], st["status"], st["inconsistent"], st["error"], st["fence"]
                ));
            }
        }
        out.push_str(
            &std::fs::read_to_string(self.cluster.dir.path().join("fence.log")).unwrap_or_default(),
        );
        out
    }

    pub fn role(&self, node: &str) -> String {
        status(&self.cluster, node)["role"]
            .as_str()
            .unwrap_or("")
            .to_string()
    }
}

impl Drop for PcmkCluster {
    fn drop(&mut self) {
        for node in ALL {
            if self.nodes[ix(node)].is_some() {
                self.kill_node(node);
            }
        }
    }
}

fn corosync_conf(lan: &Lan) -> String {
    let mut nodes = String::new();
    for (i, name) in ALL.iter().enumerate() {
        nodes.push_str(&format!(
            "  node {{\n    ring0_addr: {}\n    name: {name}\n    nodeid: {}\n  }}\n",
            lan.addr(name),
            i + 1
        ));
    }
    format!(
        "totem {{\n  version: 2\n  cluster_name: hasttest\n  transport: knet\n\
         \x20 crypto_cipher: none\n  crypto_hash: none\n  token: 1000\n}}\n\
         nodelist {{\n{nodes}}}\n\
         quorum {{\n  provider: corosync_votequorum\n}}\n\
         logging {{\n  to_stderr: yes\n  to_syslog: no\n  to_logfile: no\n}}\n"
    )
}
