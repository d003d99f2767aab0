//! Test harness: real hastd processes on this host, each with its own `--node`, config,
//! control socket, pidfile and backing files under a temporary directory, driven through
//! the real hastctl and real NBD clients.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness: a failed setup should panic loudly

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub mod inject;
pub mod ledger;
pub mod nbd_client;

/// The hastd and hastctl under test: this build's, or those in `$HAST_TEST_BIN_DIR` if set
/// (to show that a test fails against another build, e.g. the previous release).
pub fn hastd() -> String {
    binary("hastd", env!("CARGO_BIN_EXE_hastd"))
}

pub fn hastctl() -> String {
    binary("hastctl", env!("CARGO_BIN_EXE_hastctl"))
}

fn binary(name: &str, built: &str) -> String {
    match std::env::var_os("HAST_TEST_BIN_DIR") {
        Some(dir) => std::path::Path::new(&dir).join(name).display().to_string(),
        None => built.to_string(),
    }
}

/// True when a missing tool must fail the test instead of skipping it.
pub fn in_ci() -> bool {
    std::env::var_os("CI").is_some()
}

/// Returns false (after printing why) if `tool` is not installed; panics under CI.
pub fn have_tool(tool: &str) -> bool {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    if !found {
        if in_ci() {
            panic!("{tool} is not installed (run ./test.sh as root to install the test packages)");
        }
        eprintln!("SKIP: {tool} is not installed (run ./test.sh as root to install it)");
    }
    found
}

/// A TCP port nobody listens on right now (the kernel's pick for port 0).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Creates a sparse file of `size` bytes.
pub fn sparse_file(path: &Path, size: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(size).unwrap();
}

/// Runs a command, returning its output.
pub fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

/// Runs qemu-io commands against `uri` and insists that every one succeeded.
pub fn qemu_io(uri: &str, commands: &[&str]) -> String {
    let mut cmd = Command::new("qemu-io");
    cmd.args(["-f", "raw"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    let out = run(cmd.arg(uri));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "qemu-io failed: {text}");
    let lower = text.to_lowercase();
    assert!(
        !lower.contains("fail") && !lower.contains("error"),
        "qemu-io: {text}"
    );
    text
}

/// A fixed pseudo-random byte stream (xorshift), so data tests need no RNG crate.
pub fn pseudo_random(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// fio's nbd engine against `uri`: 4 jobs on separate 8 MiB regions, random 4k
/// read/write at iodepth 32, every block verified with crc32c.
pub fn fio_verify(uri: &str) {
    let out = run(Command::new("fio").args([
        "--name=hast",
        "--ioengine=nbd",
        &format!("--uri={uri}"),
        "--rw=randrw",
        "--bs=4k",
        "--size=8M",
        "--offset_increment=8M",
        "--numjobs=4",
        "--iodepth=32",
        "--verify=crc32c",
        "--do_verify=1",
        "--verify_fatal=1",
        "--verify_state_save=0",
        "--group_reporting",
    ]));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "fio: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("err= 0"), "fio reported errors: {text}");
}

/// One test cluster directory with a shared config file.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Cluster {
    /// A directory with `config_text` written as `hast.conf`; `@DIR@` in the text is
    /// replaced by the directory's path, `@PA@` and `@PB@` by free TCP ports.
    pub fn new(config_text: &str) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("hast-test-")
            .tempdir()
            .unwrap();
        let config = dir.path().join("hast.conf");
        let text = config_text
            .replace("@DIR@", &dir.path().display().to_string())
            .replace("@PA@", &free_port().to_string())
            .replace("@PB@", &free_port().to_string());

        std::fs::write(&config, text).unwrap();
        Cluster { dir, config }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// hastctl as node `node`.
    pub fn hastctl(&self, node: &str, args: &[&str]) -> Output {
        run(Command::new(hastctl())
            .arg("-c")
            .arg(&self.config)
            .args(["--node", node])
            .args(args))
    }

    /// hastctl that must succeed; returns stdout.
    pub fn hastctl_ok(&self, node: &str, args: &[&str]) -> String {
        let out = self.hastctl(node, args);
        assert!(
            out.status.success(),
            "hastctl --node {node} {args:?} failed ({:?}): {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `hastctl list --json` for one resource, parsed.
    pub fn status_json(&self, node: &str, resource: &str) -> serde_json::Value {
        let text = self.hastctl_ok(node, &["status", "--json", resource]);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        v[0].clone()
    }

    /// Starts hastd for `node` in the foreground with a pidfile, and waits until its
    /// control socket answers.
    pub fn start(&self, node: &str) -> Daemon {
        self.start_wrapped(node, &[])
    }
}

/// A running hastd; killed with SIGKILL on drop if still running.
pub struct Daemon {
    child: Option<Child>,
    pub node: String,
    pub pidfile: PathBuf,
    pub log: PathBuf,
}

impl Daemon {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args(["-s", sig, &self.pid().to_string()])
            .status();
    }

    /// SIGTERM and wait; returns the exit code.
    pub fn terminate(mut self) -> Option<i32> {
        self.signal("TERM");
        let mut child = self.child.take()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("hastd {} ignored SIGTERM:\n{}", self.node, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL and reap.
    pub fn kill(mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn hup(&self) {
        self.signal("HUP");
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("--- log of hastd {} ---\n{}", self.node, self.log_text());
            }
        }
    }
}

impl Cluster {
    /// Like [`Cluster::start`], but runs hastd through `wrapper` (for example
    /// `["ip", "netns", "exec", "ns-a"]`; the wrapper must exec hastd so that the child's
    /// pid is hastd's). The control socket is a file, so hastctl reaches it from here.
    pub fn start_wrapped(&self, node: &str, wrapper: &[&str]) -> Daemon {
        let pidfile = self.path(&format!("hastd-{node}.pid"));
        let log = self.path(&format!("hastd-{node}.log"));
        let logf = std::fs::File::create(&log).unwrap();
        let (program, prefix) = match wrapper.split_first() {
            Some((first, rest)) => (first.to_string(), rest.to_vec()),
            None => (hastd(), Vec::new()),
        };
        let mut cmd = Command::new(program);
        cmd.args(prefix);
        if !wrapper.is_empty() {
            cmd.arg(hastd());
        }
        let child = cmd
            .arg("-F")
            .arg("-d")
            .arg("-c")
            .arg(&self.config)
            .args(["--node", node])
            .arg("-P")
            .arg(&pidfile)
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf)
            .spawn()
            .unwrap();
        let daemon = Daemon {
            child: Some(child),
            node: node.into(),
            pidfile,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.hastctl(node, &["status"]).status.success() {
            assert!(
                Instant::now() < deadline,
                "hastd {node} did not start:\n{}",
                daemon.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }
}
