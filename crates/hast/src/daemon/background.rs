//! Running in the background without fork(2) in a multi-threaded program: `hastd` (no `-F`)
//! starts itself again as a child in its own process group, relays the child's start-up
//! messages, and exits 0 once the child says it is ready — or with the child's exit code
//! if it failed. So `hastd && hastctl role primary r0` never races the daemon's start, and
//! a start-up error (bad config, port in use) still reaches the terminal.
//!
//! The child reports readiness by writing [`READY`] on its stdout pipe, then points its
//! stdout and stderr at /dev/null and logs to syslog.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use hast_core::sysexits;

const CHILD_ENV: &str = "HASTD_BACKGROUND_CHILD";
const READY: &str = "hastd-ready";

/// True in the background child.
pub fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

/// Parent side: start the child and wait for it to be ready or fail.
pub fn spawn_and_wait() -> u8 {
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("hastd: cannot find own executable: {e}");
            return sysexits::EX_OSERR;
        }
    };
    let mut child = match Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(CHILD_ENV, "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
    {
        Ok(child) => child,
        Err(e) => {
            eprintln!("hastd: cannot start the daemon process: {e}");
            return sysexits::EX_OSERR;
        }
    };
    // Relay start-up messages until the child detaches (its stderr then closes).
    let relay = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let _ = std::io::stderr().write_all(&buf[..n]);
            }
        })
    });
    let mut ready = false;
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(line) if line == READY => {
                    ready = true;
                    break;
                }
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    if let Some(relay) = relay {
        let _ = relay.join();
    }
    if ready {
        return sysexits::EX_OK;
    }
    match child.wait() {
        Ok(status) => status
            .code()
            .and_then(|c| u8::try_from(c).ok())
            .unwrap_or(sysexits::EX_SOFTWARE),
        Err(_) => sysexits::EX_SOFTWARE,
    }
}

/// Child side: tell the parent we serve, then leave the terminal.
pub fn detach() {
    println!("{READY}");
    let _ = std::io::stdout().flush();
    super::logging::switch_to_syslog();
    super::hooks::set_detached();
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        let _ = rustix::stdio::dup2_stdout(&null);
        let _ = rustix::stdio::dup2_stderr(&null);
    }
}
