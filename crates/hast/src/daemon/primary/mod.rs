//! A resource in role primary: its provider open and locked, its activemap loaded, its
//! NBD export served.
//!
//! Tasks while primary:
//! - the NBD listener and one reader + one writer task per client connection
//!   (`crate::nbd`), which call into [`io::PrimaryCore`] with up to 64 requests in flight
//!   per connection;
//! - the lazy map writer: bitmap writes nobody waits for (extents that became clean) are
//!   batched here, at most every [`LAZY_MAP_DELAY`].
//!
//! Stopping (role change, SIGTERM): the export stops accepting, in-flight requests finish,
//! the lazy writer stops, the final bitmap is written, the disk is flushed, the provider
//! unlocked. A crash instead leaves a bitmap that covers every write that may have been in
//! flight, which the next start loads as sync-owed.

mod core;
pub mod io;
pub mod remote;
pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hast_core::activemap::ActiveMap;
use hast_core::config::{self, Address};
use hast_core::control::{LinkState, ResourceStatus};
use hast_core::metadata::{DataState, Role};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::io::{PrimaryBackend, PrimaryCore};
use super::resource::Progress;
use crate::nbd::{ExportSet, NbdServer, NbdServerHandle};
use crate::storage::LocalStore;

/// What status says while the peer refuses us for split-brain.
pub const SPLIT_BRAIN: &str = "split-brain: both nodes were written while apart; \
     on the node whose changes are to be discarded run 'hastctl role init', \
     'hastctl create' and 'hastctl role secondary' (full sync from the other)";

/// Delay that batches bitmap writes nobody waits for.
pub const LAZY_MAP_DELAY: Duration = Duration::from_millis(200);

/// A running primary.
pub struct Primary {
    core: Arc<PrimaryCore>,
    export: NbdServerHandle,
    stop: CancellationToken,
    lazy_writer: JoinHandle<()>,
    connector: JoinHandle<()>,
    keeper: JoinHandle<()>,
}

impl Primary {
    /// Opens the provider and starts serving. A provider whose metadata says its copy is
    /// inconsistent is refused unless `force` (the operator accepts the data as it is).
    pub async fn start(
        cfg: Arc<config::Resource>,
        progress: &Progress,
        force: bool,
    ) -> anyhow::Result<Primary> {
        progress.set("opening the provider");
        let open_cfg = cfg.clone();
        let (store, mut meta, bitmap) = tokio::task::spawn_blocking(move || {
            let (store, meta) =
                LocalStore::open(&open_cfg.local, &open_cfg.name, open_cfg.metaflush)?;
            let bitmap = store.read_bitmap()?;
            anyhow::Ok((store, meta, bitmap))
        })
        .await
        .context("provider open task failed")??;
        let mut map = ActiveMap::new(
            meta.datasize(),
            meta.extentsize(),
            meta.keepdirty(),
            meta.sectorsize(),
        )
        .context("metadata describes an unusable activemap")?;
        let _ = map
            .load(&bitmap)
            .context("cannot load the on-disk activemap")?;
        let owed = map.dirty_bytes();
        if owed > 0 {
            info!(resource = %cfg.name, "{owed} bytes marked dirty on disk are owed to the peer");
        }
        if !meta.datastate.is_consistent() {
            if !force {
                anyhow::bail!(refusal(&cfg.name, meta.datastate, owed));
            }
            warn!(resource = %cfg.name, "forced to become primary although its copy is {}; \
                  serving it as it is", meta.datastate);
            meta.datastate = DataState::CONSISTENT;
        }
        meta.prevrole = Role::Primary;
        let to_write = meta.clone();
        let store =
            tokio::task::spawn_blocking(move || store.write_metadata(&to_write).map(|()| store))
                .await
                .context("metadata write task failed")?
                .context("cannot write metadata")?;
        let core = Arc::new(PrimaryCore::new(cfg.clone(), store, meta, map));
        core.write_map_if_needed()
            .await
            .map_err(|e| anyhow::anyhow!("cannot write the activemap: {e}"))?;

        progress.set(format!("starting the NBD export on {}", cfg.export));
        if let Address::Unix(path) = &cfg.export {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        let exports = ExportSet::single(cfg.name.clone(), Arc::new(PrimaryBackend(core.clone())));
        let export = NbdServer::start(&cfg.export, exports)
            .await
            .with_context(|| format!("cannot serve the NBD export {}", cfg.export))?;
        let stop = CancellationToken::new();
        let lazy_writer = tokio::spawn(lazy_map_writer(core.clone(), stop.clone()));
        let connector = tokio::spawn(remote::connector(core.clone(), stop.clone()));
        let keeper = tokio::spawn(durability_keeper(core.clone(), stop.clone()));
        info!(resource = %cfg.name, "serving NBD export {} ({} bytes)", cfg.export, core.store.datasize());
        Ok(Primary {
            core,
            export,
            stop,
            lazy_writer,
            connector,
            keeper,
        })
    }

    /// Stops serving and releases the provider.
    pub async fn stop(self, progress: &Progress) {
        let name = self.core.name.clone();
        progress.set("closing the NBD export and finishing requests in flight");
        self.export.shutdown().await;
        // With the session still up, let the last writes get their final replies and a
        // flush on the secondary, so a clean switchover leaves nothing owed. (A stuck
        // secondary is dropped by the session's watchdog, which bounds this wait.)
        progress.set("waiting for the secondary to confirm the last writes");
        self.core.background.close();
        self.core.background.wait().await;
        let _ = self.core.flush_peer(async { Ok(()) }, false).await;
        self.stop.cancel();
        let _ = self.lazy_writer.await;
        let _ = self.connector.await;
        let _ = self.keeper.await;
        let _ = self.core.flush_peer(async { Ok(()) }, false).await;
        progress.set("writing the activemap and flushing the local disk");
        if let Err(e) = self.core.write_map_if_needed().await {
            warn!(resource = %name, "final activemap write failed: {e}");
        }
        let core = self.core.clone();
        match tokio::task::spawn_blocking(move || core.store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(resource = %name, "final flush failed: {e}"),
            Err(e) => warn!(resource = %name, "final flush task failed: {e}"),
        }
        // The provider (and its lock) is released when the last reference goes.
    }

    /// Fills the primary's part of the status.
    pub fn fill_status(&self, st: &mut ResourceStatus) {
        let core = &self.core;
        st.status = Some(if core.is_connected() {
            LinkState::Complete
        } else {
            LinkState::Degraded
        });
        st.extentsize = core.store.extentsize();
        st.keepdirty = core.keepdirty();
        st.datasize = core.store.datasize();
        st.dirty = core.dirty_bytes();
        st.sync = core.sync_tracker().progress(core.owed_bytes());
        (st.resuid, st.localcnt, st.remotecnt) = core.counters();
        if core.is_stale() {
            st.inconsistent = Some(
                DataState::CONSISTENT
                    .with(DataState::SYNC_TARGET)
                    .to_string(),
            );
        }
        st.statistics = core.stats.snapshot();
        if core.split_brain() {
            st.error = Some(SPLIT_BRAIN.to_string());
        }
        if let Some(session) = core.session() {
            (st.queues.send, st.queues.recv) = session.queue_sizes();
        }
        st.queues.local = core
            .stats
            .local_queue
            .load(std::sync::atomic::Ordering::Relaxed);
    }

    /// Applies an in-place configuration change (replication, checksum, compression,
    /// timeout, exec, remote: the next connection uses the new values).
    pub fn reload(&self, cfg: &Arc<config::Resource>) {
        let remote_changed = {
            let old = self.core.config();
            old.remote != cfg.remote || old.source != cfg.source
        };
        self.core.set_config(cfg.clone());
        if remote_changed {
            if let Some(session) = self.core.session() {
                session.close();
            }
        }
    }

    /// A fatal error, if any.
    pub fn failure(&self) -> Option<String> {
        self.core.failure()
    }
}

/// How long replicated writes wait, batched, for the flush that makes them durable on
/// the secondary (and lets their extents become clean).
pub const DURABILITY_DELAY: Duration = Duration::from_millis(100);

async fn durability_keeper(core: Arc<PrimaryCore>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = core.undurable_added.notified() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(DURABILITY_DELAY) => {}
        }
        let _ = core.flush_peer(async { Ok(()) }, false).await;
    }
}

/// Why a node with an inconsistent copy does not become primary, and what to do.
fn refusal(name: &str, state: DataState, dirty: u64) -> String {
    format!(
        "this node's copy is {state} ({} marked dirty on disk); the other node has the \
         up-to-date data: make it primary, or let this node finish its sync as secondary. \
         To serve this copy as it is (acknowledged writes may be missing or stale), run \
         'hastctl role -f primary {name}'",
        hast_core::units::humanize(dirty)
    )
}

async fn lazy_map_writer(core: Arc<PrimaryCore>, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = core.map_dirty.notified() => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(LAZY_MAP_DELAY) => {}
        }
        // Errors are counted and recorded by write_map; the next write retries.
        let _ = core.write_map_if_needed().await;
    }
}
