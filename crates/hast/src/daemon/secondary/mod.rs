//! A resource in role secondary: it holds its provider open and locked, and applies what
//! the primary sends. It serves no export.
//!
//! The decisions are `hast_core::replication::secondary::Secondary`'s (the handshake, the
//! in-order queue, failures, `SyncDone`); this module carries them out. One task per
//! resource owns the machine (`task.rs`) and feeds it events from:
//!
//! - the supervisor's peer listener, which hands each accepted, checked connection to
//!   [`Secondary::offer`] (a new connection pre-empts the current one, as FreeBSD's
//!   hastd does: the machine says so);
//! - per connection (`conn.rs`), the handshake frames, then a reader (frames →
//!   validated requests) and a writer (`Received`, replies, keepalives);
//! - the disk (`disk.rs`): one thread applies data operations in the machine's order
//!   (and clears the activemap in line with them); flushes and metadata writes run on
//!   the blocking pool;
//! - a tick once a second (metadata retries).

mod conn;
mod disk;
mod input;
mod task;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use hast_core::config;
use hast_core::control::{LinkState, ResourceStatus};
use hast_core::proto::handshake::Hello;
use hast_core::replication::secondary::SecondaryStatus;
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::hooks::{self, Event};
use super::progress::Progress;
use crate::storage::LocalStore;

/// A connection from a primary whose `Hello` was read and whose address was checked.
pub struct PeerConn {
    /// The read half, buffered, positioned after `Hello`.
    pub reader: BufReader<OwnedReadHalf>,
    /// The write half.
    pub writer: OwnedWriteHalf,
    /// The primary's address.
    pub peer: SocketAddr,
    /// What it said first.
    pub hello: Hello,
}

/// What the secondary's tasks share.
pub(crate) struct Shared {
    name: String,
    cfg: Mutex<Arc<config::Resource>>,
    store: Arc<LocalStore>,
    /// The machine's status after the last event it handled.
    status: Mutex<SecondaryStatus>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl Shared {
    fn config(&self) -> Arc<config::Resource> {
        lock(&self.cfg).clone()
    }

    fn fire(&self, event: Event) {
        hooks::fire(self.config().exec.as_deref(), &self.name, &event);
    }
}

/// A running secondary.
pub struct Secondary {
    shared: Arc<Shared>,
    conns: mpsc::Sender<Box<PeerConn>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Secondary {
    /// Opens and locks the provider and waits for the primary.
    pub async fn start(
        cfg: Arc<config::Resource>,
        progress: &Progress,
    ) -> anyhow::Result<Secondary> {
        progress.set("opening the provider");
        let open_cfg = cfg.clone();
        let (store, meta) = tokio::task::spawn_blocking(move || {
            LocalStore::open(&open_cfg.local, &open_cfg.name, open_cfg.metaflush)
        })
        .await
        .context("provider open task failed")??;
        let machine = hast_core::replication::secondary::Secondary::new(meta);
        let shared = Arc::new(Shared {
            name: cfg.name.clone(),
            cfg: Mutex::new(cfg),
            store: Arc::new(store),
            status: Mutex::new(machine.status()),
        });
        let (conns, rx) = mpsc::channel::<Box<PeerConn>>(4);
        let stop = CancellationToken::new();
        let task = tokio::spawn(task::run(shared.clone(), machine, rx, stop.clone()));
        Ok(Secondary {
            shared,
            conns,
            stop,
            task,
        })
    }

    /// Hands a primary's connection over; gives it back if the worker is stopping.
    pub fn offer(&self, conn: Box<PeerConn>) -> Result<(), Box<PeerConn>> {
        self.conns.try_send(conn).map_err(|e| match e {
            mpsc::error::TrySendError::Full(c) | mpsc::error::TrySendError::Closed(c) => c,
        })
    }

    /// Ends the session, applies everything queued and releases the provider.
    pub async fn stop(self, progress: &Progress) {
        progress.set("closing the connection to the primary and finishing its requests");
        self.stop.cancel();
        let _ = self.task.await;
        progress.set("flushing the local disk");
        let store = self.shared.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.flush()).await;
    }

    /// Applies an in-place configuration change.
    pub fn reload(&self, cfg: &Arc<config::Resource>) {
        *lock(&self.shared.cfg) = cfg.clone();
    }

    /// Fills the secondary's part of the status.
    pub fn fill_status(&self, st: &mut ResourceStatus) {
        let s = &self.shared;
        let status = lock(&s.status).clone();
        st.status = Some(if status.connected {
            LinkState::Complete
        } else {
            LinkState::Degraded
        });
        st.extentsize = s.store.extentsize();
        st.datasize = s.store.datasize();
        (st.resuid, st.localcnt, st.remotecnt) = (status.resuid, status.localcnt, status.remotecnt);
        st.inconsistent = (!status.datastate.is_consistent()).then(|| status.datastate.to_string());
        st.statistics = status.stats;
        if status.split_brain {
            st.error = Some(super::primary::SPLIT_BRAIN.to_string());
        }
        st.queues.local = status.queue;
    }
}
