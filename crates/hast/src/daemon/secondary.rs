//! A resource in role secondary. It holds its provider open and locked (so `hastctl
//! create` and a second hastd are refused) and validates its metadata; it serves no
//! export. The peer link that lets a primary connect comes with replication.

use std::sync::Arc;

use anyhow::Context;
use hast_core::config;
use hast_core::control::{LinkState, ResourceStatus};
use hast_core::metadata::Metadata;

use super::resource::Progress;
use crate::storage::LocalStore;

/// A running secondary.
pub struct Secondary {
    store: Arc<LocalStore>,
    meta: Metadata,
}

impl Secondary {
    /// Opens and locks the provider.
    pub async fn start(
        cfg: Arc<config::Resource>,
        progress: &Progress,
    ) -> anyhow::Result<Secondary> {
        progress.set("opening the provider");
        let (store, meta) = tokio::task::spawn_blocking(move || {
            LocalStore::open(&cfg.local, &cfg.name, cfg.metaflush)
        })
        .await
        .context("provider open task failed")??;
        Ok(Secondary {
            store: Arc::new(store),
            meta,
        })
    }

    /// Releases the provider.
    pub async fn stop(self, progress: &Progress) {
        progress.set("releasing the provider");
        drop(self);
    }

    /// Fills the secondary's part of the status.
    pub fn fill_status(&self, st: &mut ResourceStatus) {
        st.status = Some(LinkState::Degraded);
        st.extentsize = self.store.extentsize();
        st.datasize = self.store.datasize();
        st.resuid = self.meta.resuid;
        st.localcnt = self.meta.localcnt;
        st.remotecnt = self.meta.remotecnt;
    }
}
