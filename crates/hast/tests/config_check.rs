//! `hastd -t`: the documented examples pass for every node they name, broken files
//! are reported as `FILE:LINE: message` with exit 78, unreadable files exit 72.

// The helpers are test code too: a failed spawn or temp file should fail the test loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const EX_OSFILE: i32 = 72;
const EX_CONFIG: i32 = 78;

fn hastd_check(config: &Path, node: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hastd"));
    cmd.arg("-t").arg("-c").arg(config).env_remove("HAST_NODE");
    if let Some(node) = node {
        cmd.args(["--node", node]);
    }
    cmd.output().expect("run hastd")
}

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/examples")
}

/// The words after `on` that open a block: the nodes a file names.
fn node_names(text: &str) -> Vec<String> {
    let spaced = text
        .lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
        .replace('{', " { ")
        .replace('}', " } ");
    let words: Vec<&str> = spaced.split_whitespace().collect();
    let mut names: Vec<String> = words
        .windows(3)
        .filter(|w| w[0] == "on" && w[2] == "{")
        .map(|w| w[1].to_string())
        .collect();
    names.sort();
    names.dedup();
    names
}

fn write_config(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new()
        .suffix(".conf")
        .tempfile()
        .expect("temp file");
    file.write_all(text.as_bytes()).expect("write config");
    file
}

/// Runs `hastd -t` on `text` as node `a`; returns exit code and stderr lines.
fn check_text(text: &str) -> (i32, Vec<String>, String) {
    let file = write_config(text);
    let out = hastd_check(file.path(), Some("a"));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let prefix = format!("{}:", file.path().display());
    let lines = stderr
        .lines()
        .map(|l| {
            l.strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("line without FILE: prefix: {l}"))
                .to_string()
        })
        .collect();
    (out.status.code().unwrap_or(-1), lines, prefix)
}

#[test]
fn every_example_passes_for_every_node_it_names() {
    let mut checked = 0;
    for entry in std::fs::read_dir(examples_dir()).expect("docs/examples") {
        let path = entry.expect("dir entry").path();
        if path.extension().and_then(|e| e.to_str()) != Some("conf") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("read example");
        let nodes = node_names(&text);
        assert!(!nodes.is_empty(), "{} names no node", path.display());
        for node in &nodes {
            let out = hastd_check(&path, Some(node));
            assert_eq!(
                out.status.code(),
                Some(0),
                "{} --node {node}: {}",
                path.display(),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(String::from_utf8_lossy(&out.stdout).contains("configuration OK"));
            checked += 1;
        }
    }
    assert!(checked >= 6, "only {checked} example/node pairs checked");
}

#[test]
fn node_can_come_from_the_environment() {
    let path = examples_dir().join("one-host.conf");
    let out = Command::new(env!("CARGO_BIN_EXE_hastd"))
        .arg("-t")
        .arg("-c")
        .arg(&path)
        .env("HAST_NODE", "b")
        .output()
        .expect("run hastd");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let out = hastd_check(&path, Some("c"));
    assert_eq!(out.status.code(), Some(EX_CONFIG));
}

#[test]
fn unknown_keyword_reports_its_real_line() {
    let (code, lines, _) = check_text("# comment\n\nreplicaton async\n");
    assert_eq!(code, EX_CONFIG);
    assert_eq!(
        lines,
        vec!["3: unknown keyword 'replicaton': did you mean 'replication'?"]
    );
}

#[test]
fn missing_node_block_names_this_node() {
    let (code, lines, _) = check_text("resource shared {\n local /x\n on b { remote c }\n}\n");
    assert_eq!(code, EX_CONFIG);
    assert_eq!(
        lines,
        vec!["1: resource 'shared' has no 'on' block for this node (this node answers to: a)"]
    );
}

#[test]
fn unclosed_brace_reports_where_it_was_opened() {
    let (code, lines, _) = check_text("timeout 5\nresource r {\n local /x\n on a { remote b }\n");
    assert_eq!(code, EX_CONFIG);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].starts_with("2: unexpected end of file"),
        "{lines:?}"
    );
}

#[test]
fn every_error_is_printed_one_per_line() {
    let text = "replication foo\n\
                resource r {\n\
                  timeout 0\n\
                  on a { remote 10.0.0.1:0 }\n\
                }\n";
    let (code, lines, _) = check_text(text);
    assert_eq!(code, EX_CONFIG);
    assert_eq!(
        lines,
        vec![
            "1: unknown replication mode 'foo' (expected fullsync, memsync or async)",
            "2: resource 'r' has no 'local' for this node; add 'local <path>' to the resource \
             or to its 'on a' block",
            "3: timeout must be greater than zero (it is in seconds; the default is 20)",
            "4: bad remote address: port '0' is not a number from 1 to 65535",
        ]
    );
}

#[test]
fn missing_file_exits_72() {
    let out = hastd_check(Path::new("/nonexistent/hast.conf"), Some("a"));
    assert_eq!(out.status.code(), Some(EX_OSFILE));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("/nonexistent/hast.conf: cannot read the configuration file:"),
        "{stderr}"
    );
}

#[test]
fn unreadable_file_exits_72() {
    let dir = tempfile::tempdir().expect("temp dir");
    let out = hastd_check(dir.path(), Some("a"));
    assert_eq!(out.status.code(), Some(EX_OSFILE), "{out:?}");
}

#[test]
fn node_names_helper_finds_on_blocks_only() {
    assert_eq!(
        node_names("metaflush on\non a{ }\nresource r { on b { } on a { } } # on c {"),
        vec!["a", "b"]
    );
}
