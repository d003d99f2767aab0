//! The `exec` hook: runs the configured program on events, with FreeBSD's arguments
//! (hast-reference.md §9), so existing scripts work unchanged:
//!
//! | argv[1] | further arguments |
//! |---|---|
//! | `role` | `<resource> <oldrole> <newrole>` |
//! | `connect`, `disconnect`, `syncstart`, `syncdone`, `syncintr`, `split-brain` | `<resource>` |
//!
//! Hooks run asynchronously: nothing in the I/O path ever waits for one. Each is watched by
//! a task that logs its exit status, and reports it every [`SLOW_HOOK_REPORT`] while it runs.
//! Hooks are never killed, as in FreeBSD: a failover script may legitimately take long.

use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hast_core::metadata::Role;
use tracing::{debug, error, warn};

/// How often a still-running hook is reported.
pub const SLOW_HOOK_REPORT: Duration = Duration::from_secs(60);

/// An event that runs the hook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The role changed through hastctl (or a config reload).
    Role {
        /// Role before.
        old: Role,
        /// Role after.
        new: Role,
    },
    /// The peer connection is up.
    Connect,
    /// The peer connection went down.
    Disconnect,
    /// Synchronisation started.
    SyncStart,
    /// Synchronisation finished.
    SyncDone,
    /// Synchronisation was interrupted.
    SyncIntr,
    /// Split-brain detected.
    SplitBrain,
}

impl Event {
    /// argv[1..] for resource `name`.
    pub fn args(&self, name: &str) -> Vec<String> {
        let word = match self {
            Event::Role { old, new } => {
                return vec![
                    "role".into(),
                    name.into(),
                    old.as_str().into(),
                    new.as_str().into(),
                ]
            }
            Event::Connect => "connect",
            Event::Disconnect => "disconnect",
            Event::SyncStart => "syncstart",
            Event::SyncDone => "syncdone",
            Event::SyncIntr => "syncintr",
            Event::SplitBrain => "split-brain",
        };
        vec![word.into(), name.into()]
    }
}

static DETACHED: AtomicBool = AtomicBool::new(false);

/// Once the daemon runs in the background, hooks get /dev/null for stdin/stdout/stderr.
pub fn set_detached() {
    DETACHED.store(true, Ordering::SeqCst);
}

/// Runs `exec` (if configured) for `event` of resource `name`, without waiting for it.
/// Must be called from within the tokio runtime.
pub fn fire(exec: Option<&Path>, name: &str, event: &Event) {
    let args = event.args(name);
    let Some(exec) = exec else {
        debug!(
            resource = name,
            "event {} (no exec hook configured)",
            args.join(" ")
        );
        return;
    };
    let mut cmd = tokio::process::Command::new(exec);
    if let Some(base) = exec.file_name() {
        std::os::unix::process::CommandExt::arg0(cmd.as_std_mut(), base);
    }
    cmd.args(&args).stdin(Stdio::null()).kill_on_drop(false);
    if DETACHED.load(Ordering::SeqCst) {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let line = format!("{} {}", exec.display(), args.join(" "));
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            error!(resource = name, "cannot run hook {line}: {e}");
            return;
        }
    };
    debug!(resource = name, "hook started: {line}");
    let resource = name.to_string();
    tokio::spawn(async move {
        let started = Instant::now();
        let status = loop {
            match tokio::time::timeout(SLOW_HOOK_REPORT, child.wait()).await {
                Ok(status) => break status,
                Err(_) => warn!(
                    resource,
                    "hook is running for {} seconds: {line}",
                    started.elapsed().as_secs()
                ),
            }
        };
        let secs = started.elapsed().as_secs_f64();
        match status {
            Ok(s) if s.success() => debug!(resource, "hook exited after {secs:.1}s: {line}"),
            Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
                (Some(code), _) => error!(
                    resource,
                    "hook exited ungracefully (exitcode={code}): {line}"
                ),
                (None, Some(sig)) => error!(resource, "hook was killed (signal={sig}): {line}"),
                _ => error!(resource, "hook ended abnormally: {line}"),
            },
            Err(e) => error!(resource, "hook disappeared ({e}): {line}"),
        }
    });
}

/// What the `fence` program is asked to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceVerb {
    /// Make sure the peer cannot become a second writer (exit 0: it cannot).
    Fence,
    /// Lift it: the peer is in step again.
    Unfence,
}

impl FenceVerb {
    fn as_str(self) -> &'static str {
        match self {
            FenceVerb::Fence => "fence",
            FenceVerb::Unfence => "unfence",
        }
    }
}

/// Runs `program <verb> <resource>` (the peer's address in `HAST_REMOTE`) and waits at
/// most `timeout`; true if it exited 0. Unlike the `exec` hook, the I/O path depends on
/// this one (writes wait for the fence), so it is killed when the time is up.
pub async fn fence(
    program: &Path,
    name: &str,
    remote: &str,
    verb: FenceVerb,
    timeout: Duration,
) -> bool {
    let line = format!("{} {} {name}", program.display(), verb.as_str());
    let mut cmd = tokio::process::Command::new(program);
    cmd.args([verb.as_str(), name])
        .env("HAST_RESOURCE", name)
        .env("HAST_REMOTE", remote)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if DETACHED.load(Ordering::SeqCst) {
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
    }
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => {
            error!(resource = name, "cannot run the fence program {line}: {e}");
            return false;
        }
    };
    let started = Instant::now();
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(s)) if s.success() => {
            let secs = started.elapsed().as_secs_f64();
            warn!(resource = name, "{line}: succeeded after {secs:.1}s");
            true
        }
        Ok(Ok(s)) => {
            error!(resource = name, "{line}: failed ({s})");
            false
        }
        Ok(Err(e)) => {
            error!(resource = name, "{line}: disappeared ({e})");
            false
        }
        Err(_) => {
            let _ = child.kill().await;
            error!(
                resource = name,
                "{line}: still running after {} s (fence_timeout): killed, counted as failed",
                timeout.as_secs()
            );
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_match_freebsd() {
        let role = Event::Role {
            old: Role::Init,
            new: Role::Primary,
        };
        assert_eq!(role.args("r0"), ["role", "r0", "init", "primary"]);
        assert_eq!(Event::SplitBrain.args("r0"), ["split-brain", "r0"]);
        assert_eq!(Event::SyncIntr.args("x"), ["syncintr", "x"]);
    }
}
