//! The worker of a resource in role primary or secondary: one enum so the role state
//! machine (`resource.rs`) stays independent of what each role runs.

use std::sync::Arc;

use hast_core::config;
use hast_core::control::ResourceStatus;
use hast_core::metadata::Role;

use super::primary::Primary;
use super::progress::Progress;
use super::secondary::{PeerConn, Secondary};

/// A running role.
pub enum Worker {
    /// Serving the export.
    Primary(Primary),
    /// Holding the provider for the primary.
    Secondary(Secondary),
}

impl Worker {
    /// Starts `role` (primary or secondary) for `cfg`; `force`: see `Primary::start`.
    pub async fn start(
        role: Role,
        cfg: Arc<config::Resource>,
        progress: &Progress,
        force: bool,
    ) -> anyhow::Result<Worker> {
        match role {
            Role::Primary => Ok(Worker::Primary(Primary::start(cfg, progress, force).await?)),
            Role::Secondary => Ok(Worker::Secondary(Secondary::start(cfg, progress).await?)),
            Role::Init => anyhow::bail!("role init has no worker"),
        }
    }

    /// Stops the role completely.
    pub async fn stop(self, progress: &Progress) {
        match self {
            Worker::Primary(p) => p.stop(progress).await,
            Worker::Secondary(s) => s.stop(progress).await,
        }
    }

    /// Applies an in-place configuration change (fields read live need nothing here).
    pub fn reload(&self, cfg: &Arc<config::Resource>) {
        match self {
            Worker::Primary(p) => p.reload(cfg),
            Worker::Secondary(s) => s.reload(cfg),
        }
    }

    /// Fills the worker's part of the status.
    pub fn fill_status(&self, status: &mut ResourceStatus) {
        match self {
            Worker::Primary(p) => p.fill_status(status),
            Worker::Secondary(s) => s.fill_status(status),
        }
    }

    /// Hands a primary's connection to a secondary; a primary refuses it.
    pub fn offer(&self, conn: Box<PeerConn>) -> Result<(), Box<PeerConn>> {
        match self {
            Worker::Secondary(s) => s.offer(conn),
            Worker::Primary(_) => Err(conn),
        }
    }

    /// A fatal error the worker hit, if any.
    pub fn failure(&self) -> Option<String> {
        match self {
            Worker::Primary(p) => p.failure(),
            Worker::Secondary(_) => None,
        }
    }
}
