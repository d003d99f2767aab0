//! A resource in role primary: its provider open and locked, its activemap loaded, its
//! NBD export served. What to do with each request is decided by the state machine in
//! `hast_core::replication::primary`; this module only wires it to the world.
//!
//! | file | job |
//! |---|---|
//! | `mod.rs` | start, stop, status, reload |
//! | `shell/` | the event loop: owns the machine, carries out its actions (disk I/O in `disk.rs`, notices in `notices.rs`) |
//! | `input.rs` | what the loop receives |
//! | `backend.rs` | the NBD export's requests, as inputs of the loop |
//! | `link.rs` | the connector (handshake) and each session's reader and writer |
//!
//! Stopping (role change, SIGTERM): the export stops accepting, the requests in flight are
//! answered, the machine drains (the last writes get their flush on the secondary while
//! the session is still up), writes the bitmap and flushes the disk; then the connector
//! stops and the provider is unlocked. A crash instead leaves a bitmap that covers every
//! write that may have been in flight, which the next start loads as owed.

mod backend;
mod input;
mod link;
mod shell;

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use hast_core::activemap::ActiveMap;
use hast_core::config::{self, Address};
use hast_core::control::{LinkState, ResourceStatus, SyncProgress};
use hast_core::metadata::{DataState, Role};
use hast_core::replication::primary::{self as machine, FenceState, Settings, Status};
use hast_core::replication::rules::may_promote;
use hast_core::replication::SessionId;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use self::backend::PrimaryBackend;
use self::input::Input;
use self::shell::Shell;
use super::hooks::{self, Event as Hook};
use super::progress::Progress;
use super::stats::Stats;
use crate::nbd::{ExportSet, NbdServer, NbdServerHandle};
use crate::storage::LocalStore;

/// What status says while the peer refuses us for split-brain.
pub const SPLIT_BRAIN: &str = "split-brain: both nodes were written while apart; \
     on the node whose changes are to be discarded run 'hastctl role init', \
     'hastctl create' and 'hastctl role secondary' (full sync from the other)";

/// What the loop, the connector and the export share: read-mostly, each behind its own
/// small lock (nothing holds one across an await).
pub struct Shared {
    pub name: String,
    pub stats: Stats,
    cfg: Mutex<Arc<config::Resource>>,
    failure: Mutex<Option<String>>,
    snapshot: Mutex<Snapshot>,
    /// Bytes of this node's activemap (the secondary's must match).
    pub bitmap_size: u64,
    /// The provider's geometry, for status.
    extentsize: u32,
    datasize: u64,
    /// Tells the connector that a session ended (it then reconnects).
    ended: mpsc::UnboundedSender<SessionId>,
}

/// What `hastctl status` shows, published by the loop after each batch of inputs.
#[derive(Default)]
struct Snapshot {
    status: Option<Status>,
    /// (resuid, localcnt, remotecnt) as on disk.
    counters: (u64, u64, u64),
}

/// A poisoned lock only means a panic elsewhere; the data under these locks is plain
/// values that stay meaningful.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Shared {
    /// The configuration in effect.
    pub fn config(&self) -> Arc<config::Resource> {
        lock(&self.cfg).clone()
    }

    /// Runs the `exec` hook for `event`.
    pub fn fire(&self, event: Hook) {
        hooks::fire(self.config().exec.as_deref(), &self.name, &event);
    }

    /// The session is over; the connector may start another.
    pub fn session_ended(&self, session: SessionId) {
        let _ = self.ended.send(session);
    }

    /// Records a fatal error (the first one stays).
    pub fn set_failure(&self, what: String) {
        let mut slot = lock(&self.failure);
        if slot.is_none() {
            *slot = Some(what);
        }
    }

    fn publish(&self, status: Status) {
        lock(&self.snapshot).status = Some(status);
    }

    fn counters_written(&self, counters: (u64, u64, u64)) {
        lock(&self.snapshot).counters = counters;
    }
}

fn settings(cfg: &config::Resource) -> Settings {
    Settings {
        mode: cfg.replication,
        timeout_ms: u64::from(cfg.timeout) * 1000,
        syncrate: cfg.syncrate,
        fence_timeout_ms: cfg
            .fence
            .as_ref()
            .map(|_| u64::from(cfg.fence_timeout) * 1000),
    }
}

/// A running primary.
pub struct Primary {
    shared: Arc<Shared>,
    inputs: mpsc::UnboundedSender<Input>,
    export: NbdServerHandle,
    stop: CancellationToken,
    event_loop: JoinHandle<()>,
    connector: JoinHandle<()>,
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
        match may_promote(meta.datastate, force) {
            Ok(false) => {}
            Ok(true) => {
                warn!(resource = %cfg.name, "forced to become primary although its copy is {}; \
                      serving it as it is", meta.datastate);
                meta.datastate = DataState::CONSISTENT;
            }
            Err(state) => anyhow::bail!(refusal(&cfg.name, state, owed)),
        }
        meta.prevrole = Role::Primary;
        let to_write = meta.clone();
        let first_map = map.begin_map_write();
        let store = tokio::task::spawn_blocking(move || {
            store.write_metadata(&to_write)?;
            if let Some(w) = &first_map {
                store.write_bitmap(&w.image)?;
            }
            anyhow::Ok((store, first_map.map(|w| w.generation)))
        })
        .await
        .context("metadata write task failed")?
        .context("cannot write the metadata and the activemap")?;
        let (store, written) = store;
        if let Some(gen) = written {
            let _ = map.mark_written(gen);
        }
        let store = Arc::new(store);

        let (ended_tx, ended_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: cfg.name.clone(),
            stats: Stats::default(),
            cfg: Mutex::new(cfg.clone()),
            failure: Mutex::new(None),
            snapshot: Mutex::new(Snapshot {
                status: None,
                counters: (meta.resuid, meta.localcnt, meta.remotecnt),
            }),
            bitmap_size: map.ondisk_size(),
            extentsize: map.extentsize(),
            datasize: map.datasize(),
            ended: ended_tx,
        });
        let machine = machine::Primary::new(settings(&cfg), meta, map, 0);
        shared.publish(machine.status());
        let (inputs, rx) = mpsc::unbounded_channel();
        let shell = Shell::new(machine, shared.clone(), store.clone(), inputs.clone());
        let event_loop = tokio::spawn(shell.run(rx));

        progress.set(format!("starting the NBD export on {}", cfg.export));
        if let Address::Unix(path) = &cfg.export {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
            }
        }
        let backend = PrimaryBackend::new(shared.clone(), inputs.clone(), &store);
        let exports = ExportSet::single(cfg.name.clone(), Arc::new(backend));
        let export = match NbdServer::start(&cfg.export, exports).await {
            Ok(export) => export,
            Err(e) => {
                let _ = inputs.send(Input::Stop);
                let _ = event_loop.await;
                return Err(e)
                    .with_context(|| format!("cannot serve the NBD export {}", cfg.export));
            }
        };
        let stop = CancellationToken::new();
        let connector = tokio::spawn(link::connector(
            shared.clone(),
            inputs.clone(),
            stop.clone(),
            ended_rx,
        ));
        info!(resource = %cfg.name, "serving NBD export {} ({} bytes)", cfg.export, store.datasize());
        Ok(Primary {
            shared,
            inputs,
            export,
            stop,
            event_loop,
            connector,
        })
    }

    /// Stops serving and releases the provider.
    pub async fn stop(self, progress: &Progress) {
        progress.set("closing the NBD export and finishing requests in flight");
        self.export.shutdown().await;
        // The machine drains with the session still up, so the last writes get their
        // flush on the secondary and a clean switchover leaves nothing owed (a stuck
        // secondary is dropped by the watchdog, which bounds this wait).
        progress.set("waiting for the secondary to confirm the last writes; writing the activemap");
        let _ = self.inputs.send(Input::Stop);
        if let Err(e) = self.event_loop.await {
            warn!(resource = %self.shared.name, "the primary's event loop failed: {e}");
        }
        self.stop.cancel();
        let _ = self.connector.await;
        // The provider (and its lock) is released when the last reference goes.
    }

    /// Fills the primary's part of the status.
    pub fn fill_status(&self, st: &mut ResourceStatus) {
        let snap = lock(&self.shared.snapshot);
        st.extentsize = self.shared.extentsize;
        st.datasize = self.shared.datasize;
        (st.resuid, st.localcnt, st.remotecnt) = snap.counters;
        st.statistics = self.shared.stats.snapshot();
        st.queues.local = self
            .shared
            .stats
            .local_queue
            .load(std::sync::atomic::Ordering::Relaxed);
        let Some(s) = &snap.status else {
            return;
        };
        st.status = Some(if s.connected {
            LinkState::Complete
        } else {
            LinkState::Degraded
        });
        st.keepdirty = s.keepdirty;
        st.dirty = s.dirty;
        st.sync = s.sync.map(|(done, ms)| progress(done, ms, s.owed));
        if s.stale {
            st.inconsistent = Some(
                DataState::CONSISTENT
                    .with(DataState::SYNC_TARGET)
                    .to_string(),
            );
        }
        if s.disk_failed {
            st.inconsistent = Some(
                DataState::CONSISTENT
                    .with(DataState::WRITE_FAILED)
                    .to_string(),
            );
        }
        if s.split_brain {
            st.error = Some(SPLIT_BRAIN.to_string());
        }
        if s.fence != FenceState::Off {
            st.fence = Some(s.fence.as_str().to_string());
        }
        (st.queues.send, st.queues.recv) = s.peer_queues;
    }

    /// Applies an in-place configuration change (replication, checksum, compression,
    /// timeout, syncrate, exec, remote: the next connection uses the new address).
    pub fn reload(&self, cfg: &Arc<config::Resource>) {
        let remote_changed = {
            let old = self.shared.config();
            old.remote != cfg.remote || old.source != cfg.source
        };
        *lock(&self.shared.cfg) = cfg.clone();
        let _ = self.inputs.send(Input::Settings(settings(cfg)));
        if remote_changed {
            let _ = self.inputs.send(Input::CloseSession);
        }
    }

    /// A fatal error, if any.
    pub fn failure(&self) -> Option<String> {
        lock(&self.shared.failure).clone()
    }
}

/// The status's view of a sync pass: `done` bytes in `ms`, `remaining` still owed.
fn progress(done: u64, ms: u64, remaining: u64) -> SyncProgress {
    let rate = (done * 1000).checked_div(ms).unwrap_or(0);
    SyncProgress {
        synced_bytes: done,
        remaining_bytes: remaining,
        rate_bytes_per_sec: rate,
        eta_seconds: (rate > 0).then(|| remaining / rate),
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
