//! hastd: one daemon per node, one worker per resource in role primary or secondary.
//!
//! ```text
//!  hastctl ──control socket──► supervisor ──► ResourceHandle (one per resource)
//!                                  │              └─ Worker: Primary | Secondary
//!                               signals               primary: NBD export ► local disk
//!                          (TERM/INT: stop, HUP: reload)
//! ```
//!
//! Start-up order: parse the config (errors: exit 78), take the pidfile (another hastd:
//! exit 75), bind the control socket, and only then tell a waiting parent that we are
//! ready, so `hastd` without `-F` returns only once the daemon really serves.

mod background;
mod control;
pub mod hooks;
mod listener;
mod logging;
pub mod pidfile;
pub mod primary;
mod progress;
mod resource;
mod secondary;
mod stats;
pub mod supervisor;
mod worker;

use std::path::PathBuf;

use hast_core::sysexits;
use tracing::error;

/// hastd's command line, as parsed by the binary.
#[derive(Debug, Clone)]
pub struct Options {
    /// `-c`
    pub config: PathBuf,
    /// `-P`
    pub pidfile: Option<PathBuf>,
    /// `-F`
    pub foreground: bool,
    /// Number of `-d`.
    pub debug: u8,
    /// `--node`
    pub node: Option<String>,
}

/// Runs the daemon; returns the exit code.
pub fn run(opts: Options) -> u8 {
    logging::init(opts.debug);
    let in_child = background::is_child();
    if !opts.foreground && !in_child {
        return background::spawn_and_wait();
    }
    let config_path = std::fs::canonicalize(&opts.config).unwrap_or_else(|_| opts.config.clone());
    let config = match crate::conf::load(&config_path, opts.node.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            error!("{err}");
            return err.exit_code();
        }
    };
    // As FreeBSD: in the foreground there is no pidfile unless -P names one.
    let pidfile_path = match (&opts.pidfile, opts.foreground && !in_child) {
        (Some(path), _) => Some(path.clone()),
        (None, false) => Some(config.pidfile.clone()),
        (None, true) => None,
    };
    let _pidfile = match pidfile_path
        .as_deref()
        .map(pidfile::Pidfile::acquire)
        .transpose()
    {
        Ok(pidfile) => pidfile,
        Err(err @ pidfile::PidfileError::Running { .. }) => {
            error!("{err}");
            return sysexits::EX_TEMPFAIL;
        }
        Err(err) => {
            error!("{err}");
            return sysexits::EX_OSERR;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return sysexits::EX_OSERR;
        }
    };
    let source = supervisor::Source {
        path: config_path,
        node: opts.node.clone(),
    };
    let sup = supervisor::Supervisor::new(source, config);
    let result = runtime.block_on(supervisor::run(sup, || {
        if in_child {
            background::detach();
        }
    }));
    // Workers are stopped; don't let stray blocking tasks delay the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => sysexits::EX_OK,
        Err(e) => {
            error!("{e:#}");
            sysexits::EX_OSERR
        }
    }
}
