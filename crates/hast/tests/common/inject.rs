//! Fault injection into a running hastd with strace's syscall tampering
//! (`-e inject=SYSCALL:error=EIO`, `:delay_enter=USEC`, `:when=FIRST..LAST`): attach to a
//! live process, inject, detach, and the process runs on untouched. It does not decide
//! what to break; tests do.
//!
//! Facts measured with Debian's strace 6.1 (a four-thread std program doing pwrite64 on
//! two files, and the real debug hastd of a loopback pair under fio), which decide how a
//! test can aim at, say, "the secondary's data writes":
//!
//! (a) `strace -f -p PID` attaches to *every* existing thread of a multi-threaded tokio
//!     process, not only the main one: all five tasks of an idle hastd showed strace as
//!     `TracerPid` at the first check. Threads created later (tokio's blocking pool
//!     grew from 5 to 20 threads under fio) are traced too, through `-f`. So are child
//!     processes (hook scripts). [`Strace::attach`] still waits until every task in
//!     `/proc/PID/task` is traced before returning.
//!
//! (b) `when=` counters are per *thread*, not per process: `when=1..4` made each of the
//!     four threads fail its own first four pwrite64 calls (16 failures in all), and on
//!     hastd `when=1..2` failed 2 calls in each of the 17 threads that wrote (34). A new
//!     thread starts at 1. Since tokio's blocking pool starts and retires threads on
//!     demand, `when=1..N` on hastd means "N per thread that happens to do the call",
//!     between N and N × threads in total. Count with [`Strace::injected`] instead of
//!     predicting; for "exactly one failure" there is no strace recipe.
//!
//! (c) `-P PATH` restricts injection (not just the output) to syscalls on that file, even
//!     for descriptors opened before the attach, and `when=` then counts only the calls
//!     on that file: with `-P a.dat`, each thread failed 4 writes to a.dat and none to
//!     b.dat. On hastd, `-P <provider>` therefore selects that node's provider I/O, but
//!     data, metadata and activemap writes are all pwrite64 on the same file: an EIO
//!     meant for data can hit an activemap write (which fails the resource). Let the
//!     activemap settle first (every extent hot, keepdirty ≥ extents) if that matters.
//!
//! (d) Injection only applies to syscalls strace *traces*: with `-e trace=none`, or a trace
//!     set without the injected syscall, nothing was injected. Pass
//!     `-e trace=SYSCALL` (the helpers below do); `-e status=failed` keeps the log to the
//!     failed (injected) calls. Delayed calls are logged with `(DELAYED)`, failed ones
//!     with `(INJECTED)`.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)] // test harness: a failed setup should panic loudly

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{have_tool, in_ci};

const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// A running strace attached to a process; detached on drop.
pub struct Strace {
    child: Option<Child>,
    target: u32,
    log: tempfile::TempPath,
}

/// Attaches to a sleeping child, which needs ptrace permission (root, or a relaxed
/// Yama scope and no seccomp/container policy against it).
fn probe() -> Result<(), String> {
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .spawn()
        .map_err(|e| format!("cannot start sleep: {e}"))?;
    let result = Strace::try_attach(sleeper.id(), &["-e", "trace=none"]).map(Strace::detach);
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    result
}

/// The tracer of every task of `pid` (None if the process is gone).
fn tracers(pid: u32) -> Option<Vec<u32>> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let tracer = status
            .lines()
            .find_map(|l| l.strip_prefix("TracerPid:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        out.push(tracer);
    }
    Some(out)
}

impl Strace {
    /// True if strace is installed and may ptrace here; prints why not (panics under CI).
    pub fn usable() -> bool {
        if !have_tool("strace") {
            return false;
        }
        static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
        match PROBE.get_or_init(probe) {
            Ok(()) => true,
            Err(why) if in_ci() => panic!("strace cannot be used: {why}"),
            Err(why) => {
                eprintln!("SKIP: strace cannot be used: {why}");
                false
            }
        }
    }

    /// Runs `strace -f -qq -p PID ARGS...` (ARGS: `-e inject=...`, `-e trace=...`,
    /// `-P path`, ...) with its output in a temporary log, and returns once every thread
    /// of `pid` is traced. Panics if strace fails.
    pub fn attach(pid: u32, args: &[&str]) -> Strace {
        Strace::try_attach(pid, args).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_attach(pid: u32, args: &[&str]) -> Result<Strace, String> {
        let log = tempfile::Builder::new()
            .prefix("strace-")
            .suffix(".log")
            .tempfile()
            .map_err(|e| e.to_string())?
            .into_temp_path();
        // Trace output and strace's own complaints both go to stderr, hence to the log.
        let child = Command::new("strace")
            .args(["-f", "-qq", "-p", &pid.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
            .spawn()
            .map_err(|e| format!("cannot run strace: {e}"))?;
        let mut st = Strace {
            child: Some(child),
            target: pid,
            log,
        };
        let me = st.child.as_ref().unwrap().id();
        let deadline = Instant::now() + ATTACH_TIMEOUT;
        loop {
            if let Ok(Some(status)) = st.child.as_mut().unwrap().try_wait() {
                st.child = None;
                return Err(format!(
                    "strace -p {pid} {args:?} exited ({status}): {}",
                    st.log_text()
                ));
            }
            match tracers(pid) {
                None => return Err(format!("process {pid} is gone")),
                Some(t) if t.iter().all(|&tracer| tracer == me) => {
                    // TracerPid is set at PTRACE_SEIZE, a moment before strace has taken
                    // each thread's first stop and starts intercepting its syscalls.
                    std::thread::sleep(Duration::from_millis(50));
                    return Ok(st);
                }
                Some(_) if Instant::now() > deadline => {
                    return Err(format!(
                        "strace did not attach to every thread of {pid} in {:?}: {}",
                        ATTACH_TIMEOUT,
                        st.log_text()
                    ));
                }
                Some(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    }

    /// Fails `syscall` with `errno` (for example "EIO") on the calls `when` selects
    /// ("1..4", "3+", "1+2"; per thread, see the module doc), on `path` only if given.
    /// Failed calls are logged, see [`Strace::injected`].
    pub fn fail(pid: u32, syscall: &str, errno: &str, when: &str, path: Option<&Path>) -> Strace {
        let inject = format!("inject={syscall}:error={errno}:when={when}");
        let trace = format!("trace={syscall}");
        let mut args = vec!["-e", &trace, "-e", "status=failed", "-e", &inject];
        let path = path.map(|p| p.display().to_string());
        if let Some(p) = &path {
            args.extend(["-P", p]);
        }
        Strace::attach(pid, &args)
    }

    /// Delays every `syscall` (on `path` only if given) by `micros` before it runs.
    /// Every call is logged, see [`Strace::delayed`].
    pub fn delay(pid: u32, syscall: &str, micros: u64, path: Option<&Path>) -> Strace {
        let inject = format!("inject={syscall}:delay_enter={micros}");
        let trace = format!("trace={syscall}");
        let mut args = vec!["-e", &trace, "-e", &inject];
        let path = path.map(|p| p.display().to_string());
        if let Some(p) = &path {
            args.extend(["-P", p]);
        }
        Strace::attach(pid, &args)
    }

    /// The traced process.
    pub fn target(&self) -> u32 {
        self.target
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Calls failed by injection so far (as logged).
    pub fn injected(&self) -> usize {
        self.log_text().matches("(INJECTED)").count()
    }

    /// Calls delayed by injection so far (as logged).
    pub fn delayed(&self) -> usize {
        self.log_text().matches("(DELAYED)").count()
    }

    /// Detaches (SIGINT: strace detaches from every thread and exits) and waits until no
    /// thread of the target is traced any more.
    pub fn detach(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() {
            if Instant::now() > deadline {
                // The kernel detaches the tracees of a dead tracer.
                let _ = child.kill();
                let _ = child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while tracers(self.target).is_some_and(|t| t.iter().any(|&x| x != 0))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        self.stop();
    }
}
