//! The worker of a resource in role primary or secondary (placeholder until storage lands).

use std::sync::Arc;

use hast_core::config;
use hast_core::control::ResourceStatus;
use hast_core::metadata::Role;

use super::resource::Progress;

/// A running role.
pub enum Worker {}

impl Worker {
    /// Starts `role` for `cfg`.
    pub async fn start(
        role: Role,
        cfg: Arc<config::Resource>,
        progress: &Progress,
    ) -> anyhow::Result<Worker> {
        let _ = (cfg, progress);
        anyhow::bail!("role {} not available yet", role.as_str())
    }

    /// Stops the role completely.
    pub async fn stop(self, progress: &Progress) {
        let _ = progress;
        match self {}
    }

    /// Applies an in-place configuration change.
    pub fn reload(&self, cfg: &Arc<config::Resource>) {
        let _ = cfg;
        match *self {}
    }

    /// Fills the worker's part of the status.
    pub fn fill_status(&self, status: &mut ResourceStatus) {
        let _ = status;
        match *self {}
    }

    /// A fatal error the worker hit, if any.
    pub fn failure(&self) -> Option<String> {
        match *self {}
    }
}
