//! The OCF resource agent contrib/ocf/hast, action by action, against a hast pair in two
//! network namespaces: Debian's `ocf-tester` (meta-data validated against the DTD, every
//! action and its idempotence), then each action's exit code and the promotion score it
//! reports in the states that matter: hastd down (probe), secondaries, a primary in step,
//! an inconsistent copy during a resync (no score, promotion refused), a split-brain (no
//! score, promotion refused), and validate-all on bad parameters.
//!
//! Needs root, ip, nft, tc and resource-agents' ocf-tester (installed by test.sh).
#![allow(clippy::unwrap_used, clippy::expect_used)] // a test that cannot set up must panic

mod common;
mod faults;
mod netns;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{hastctl, have_tool, in_ci, Cluster, Daemon};
use faults::*;
use netns::{NetPair, Side};

const OCF_SUCCESS: i32 = 0;
const OCF_ERR_GENERIC: i32 = 1;
const OCF_ERR_INSTALLED: i32 = 5;
const OCF_ERR_CONFIGURED: i32 = 6;
const OCF_NOT_RUNNING: i32 = 7;
const OCF_RUNNING_PROMOTED: i32 = 8;

fn agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../contrib/ocf/hast")
}

/// Runs the agent's `action` for node `node` with extra `OCF_RESKEY_` parameters;
/// returns (exit code, stdout).
fn ocf(cluster: &Cluster, node: &str, action: &str, extra: &[(&str, &str)]) -> (i32, String) {
    let mut cmd = Command::new(agent());
    cmd.arg(action)
        .env("OCF_ROOT", "/usr/lib/ocf")
        .env("OCF_RESKEY_resource", "r0")
        .env("OCF_RESKEY_config", &cluster.config)
        .env("OCF_RESKEY_node", node)
        .env("OCF_RESKEY_hastctl", hastctl())
        .env("OCF_RESKEY_role_timeout", "30");
    for (k, v) in extra {
        if v.is_empty() {
            cmd.env_remove(format!("OCF_RESKEY_{k}"));
        } else {
            cmd.env(format!("OCF_RESKEY_{k}"), v);
        }
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!(
        "ocf {action} on {node}: {:?} {stdout}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn expect(cluster: &Cluster, node: &str, action: &str, code: i32) -> String {
    let (rc, out) = ocf(cluster, node, action, &[]);
    assert_eq!(rc, code, "{action} on {node}: {out}");
    out
}

fn start(cluster: &Cluster, net: &NetPair, node: &str) -> Daemon {
    net.start(cluster, node)
}

#[test]
fn the_ocf_agent_passes_ocf_tester_and_reports_honest_codes_and_scores() {
    if !have_tool("ocf-tester") || !have_tool("qemu-io") || !have_tool("xmllint") {
        assert!(
            !in_ci(),
            "ocf-tester, xmllint or qemu-io missing (test.sh installs them)"
        );
        eprintln!("SKIP: ocf-tester, xmllint or qemu-io missing");
        return;
    }
    let Some(net) = NetPair::new() else {
        return;
    };
    let cluster = Cluster::new(&pair_config(
        "replication memsync\nchecksum none\ncompression none\ntimeout 2\n",
        &net.ip_a,
        &net.ip_b,
        None,
    ));
    create_both(&cluster, 64 * MIB);

    // A probe where hastd does not run: not running, and stop is a success.
    expect(&cluster, "b", "monitor", OCF_NOT_RUNNING);
    expect(&cluster, "b", "stop", OCF_SUCCESS);

    // ocf-tester on a alone (every action, twice where idempotence matters).
    let _a = start(&cluster, &net, "a");
    let out = Command::new("ocf-tester")
        .args(["-n", "hast", "-o", "resource=r0"])
        .arg("-o")
        .arg(format!("config={}", cluster.config.display()))
        .args(["-o", "node=a"])
        .arg("-o")
        .arg(format!("hastctl={}", hastctl()))
        .arg(agent())
        .env("OCF_ROOT", "/usr/lib/ocf")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && text.contains("passed all tests"),
        "ocf-tester: {text}"
    );

    // validate-all refuses what cannot work.
    let (rc, _) = ocf(&cluster, "a", "validate-all", &[("resource", "")]);
    assert_eq!(rc, OCF_ERR_CONFIGURED);
    let (rc, _) = ocf(&cluster, "a", "validate-all", &[("resource", "nosuch")]);
    assert_eq!(rc, OCF_ERR_CONFIGURED);
    let (rc, _) = ocf(
        &cluster,
        "a",
        "validate-all",
        &[("hastctl", "/nonexistent/hastctl")],
    );
    assert_eq!(rc, OCF_ERR_INSTALLED);
    let (rc, _) = ocf(
        &cluster,
        "a",
        "validate-all",
        &[("CRM_meta_clone_max", "3")],
    );
    assert_eq!(rc, OCF_ERR_CONFIGURED);
    expect(&cluster, "a", "validate-all", OCF_SUCCESS);

    // Start both, promote a: the primary in step scores highest, its secondary next.
    let _b = start(&cluster, &net, "b");
    expect(&cluster, "a", "start", OCF_SUCCESS);
    expect(&cluster, "b", "start", OCF_SUCCESS);
    expect(&cluster, "a", "monitor", OCF_SUCCESS);
    expect(&cluster, "a", "promote", OCF_SUCCESS);
    wait_settled(&cluster, "a");
    let out = expect(&cluster, "a", "monitor", OCF_RUNNING_PROMOTED);
    assert!(out.contains("score 10000"), "{out}");
    let out = expect(&cluster, "b", "monitor", OCF_SUCCESS);
    assert!(out.contains("score 1000"), "{out}");
    expect(&cluster, "a", "notify", OCF_SUCCESS);

    // b misses writes, then resyncs over a slow link: while its copy is inconsistent it
    // has no score and refuses promotion.
    expect(&cluster, "b", "stop", OCF_SUCCESS);
    expect(&cluster, "b", "monitor", OCF_NOT_RUNNING);
    qemu_io(
        &uri(&cluster, "a"),
        &["write -P 0x33 0 48M".into(), "flush".into()],
    );
    assert!(net.shape("40mbit"), "tc tbf is needed to slow the resync");
    expect(&cluster, "b", "start", OCF_SUCCESS);
    wait_for(
        "b's copy to be inconsistent",
        Duration::from_secs(30),
        || !status(&cluster, "b")["inconsistent"].is_null(),
    );
    let out = expect(&cluster, "b", "monitor", OCF_SUCCESS);
    assert!(out.contains("score none"), "{out}");
    expect(&cluster, "b", "promote", OCF_ERR_GENERIC);
    assert_eq!(status(&cluster, "b")["role"], "secondary");
    wait_settled(&cluster, "a");
    let out = expect(&cluster, "b", "monitor", OCF_SUCCESS);
    assert!(out.contains("score 1000"), "{out}");

    // Split-brain: both promoted while apart and written; after the heal neither copy
    // scores and b refuses promotion.
    net.cut(Side::Both);
    wait_status(&cluster, "b", "degraded");
    let out = expect(&cluster, "b", "monitor", OCF_SUCCESS);
    assert!(
        out.contains("score 100,") || out.ends_with("score 100\n"),
        "{out}"
    );
    expect(&cluster, "b", "promote", OCF_SUCCESS);
    qemu_io(&uri(&cluster, "a"), &["write -P 0xaa 1M 64k".into()]);
    qemu_io(&uri(&cluster, "b"), &["write -P 0xbb 2M 64k".into()]);
    expect(&cluster, "b", "demote", OCF_SUCCESS);
    net.heal();
    wait_for("the split-brain on b", Duration::from_secs(30), || {
        status(&cluster, "b")["error"]
            .as_str()
            .is_some_and(|e| e.to_lowercase().contains("split-brain"))
    });
    let out = expect(&cluster, "b", "monitor", OCF_SUCCESS);
    assert!(out.contains("score none"), "{out}");
    expect(&cluster, "b", "promote", OCF_ERR_GENERIC);

    // Demote and stop, idempotent.
    expect(&cluster, "a", "demote", OCF_SUCCESS);
    expect(&cluster, "a", "monitor", OCF_SUCCESS);
    expect(&cluster, "a", "stop", OCF_SUCCESS);
    expect(&cluster, "a", "monitor", OCF_NOT_RUNNING);
    expect(&cluster, "a", "stop", OCF_SUCCESS);
}
