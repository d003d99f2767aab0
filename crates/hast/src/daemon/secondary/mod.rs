//! A resource in role secondary: it holds its provider open and locked, and applies what
//! the primary sends. It serves no export.
//!
//! The supervisor's peer listener hands each accepted, checked connection to
//! [`Secondary::offer`]; a new connection pre-empts the current one (the primary
//! restarted, or a new primary took over), as FreeBSD's hastd does. One session runs at a
//! time (`session.rs`).

mod session;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use hast_core::config;
use hast_core::control::{LinkState, ResourceStatus};
use hast_core::metadata::{DataState, Metadata};
use hast_core::proto::handshake::Hello;
use tokio::io::BufReader;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use super::hooks::{self, Event};
use super::resource::Progress;
use super::stats::Stats;
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

/// State shared by the secondary's tasks.
pub struct SecondaryShared {
    name: String,
    cfg: Mutex<Arc<config::Resource>>,
    store: Arc<LocalStore>,
    meta: tokio::sync::Mutex<Metadata>,
    counters: Mutex<(u64, u64, u64)>,
    /// What this node knows is missing from its copy, as last persisted (for status).
    datastate: Mutex<DataState>,
    stats: Stats,
    connected: AtomicBool,
    split_brain_reported: AtomicBool,
    /// The data state changed in memory and its metadata write has not succeeded yet.
    unpersisted: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

impl SecondaryShared {
    fn config(&self) -> Arc<config::Resource> {
        lock(&self.cfg).clone()
    }

    fn fire(&self, event: Event) {
        hooks::fire(self.config().exec.as_deref(), &self.name, &event);
    }

    fn report_split_brain(&self) {
        if !self.split_brain_reported.swap(true, Ordering::SeqCst) {
            error!(resource = %self.name, "split-brain condition: both nodes were written while apart; \
                   refusing the primary until an operator discards one side");
            self.fire(Event::SplitBrain);
        }
    }
}

/// A running secondary.
pub struct Secondary {
    shared: Arc<SecondaryShared>,
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
        let shared = Arc::new(SecondaryShared {
            name: cfg.name.clone(),
            counters: Mutex::new((meta.resuid, meta.localcnt, meta.remotecnt)),
            datastate: Mutex::new(meta.datastate),
            cfg: Mutex::new(cfg),
            store: Arc::new(store),
            meta: tokio::sync::Mutex::new(meta),
            stats: Stats::default(),
            connected: AtomicBool::new(false),
            split_brain_reported: AtomicBool::new(false),
            unpersisted: AtomicBool::new(false),
        });
        let (conns, rx) = mpsc::channel::<Box<PeerConn>>(4);
        let stop = CancellationToken::new();
        let task = tokio::spawn(run(shared.clone(), rx, stop.clone()));
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

    /// Ends the session and releases the provider.
    pub async fn stop(self, progress: &Progress) {
        progress.set("closing the connection to the primary and finishing its requests");
        self.stop.cancel();
        let _ = self.task.await;
        progress.set("flushing the local disk");
        let shared = self.shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            session::persist_datastate(&shared);
            shared.store.flush()
        })
        .await;
    }

    /// Applies an in-place configuration change.
    pub fn reload(&self, cfg: &Arc<config::Resource>) {
        *lock(&self.shared.cfg) = cfg.clone();
    }

    /// Fills the secondary's part of the status.
    pub fn fill_status(&self, st: &mut ResourceStatus) {
        let s = &self.shared;
        st.status = Some(if s.connected.load(Ordering::SeqCst) {
            LinkState::Complete
        } else {
            LinkState::Degraded
        });
        st.extentsize = s.store.extentsize();
        st.datasize = s.store.datasize();
        (st.resuid, st.localcnt, st.remotecnt) = *lock(&s.counters);
        let datastate = *lock(&s.datastate);
        st.inconsistent = (!datastate.is_consistent()).then(|| datastate.to_string());
        st.statistics = s.stats.snapshot();
        if s.split_brain_reported.load(Ordering::SeqCst) {
            st.error = Some(super::primary::SPLIT_BRAIN.to_string());
        }
        st.queues.local = s.stats.local_queue.load(Ordering::Relaxed);
    }
}

async fn run(
    shared: Arc<SecondaryShared>,
    mut conns: mpsc::Receiver<Box<PeerConn>>,
    stop: CancellationToken,
) {
    let mut current: Option<(CancellationToken, JoinHandle<()>)> = None;
    loop {
        let conn = tokio::select! {
            _ = stop.cancelled() => break,
            conn = conns.recv() => match conn {
                Some(conn) => conn,
                None => break,
            },
        };
        if let Some((token, task)) = current.take() {
            if !task.is_finished() {
                info!(resource = %shared.name, "new connection from {} replaces the current one", conn.peer);
            }
            token.cancel();
            let _ = task.await;
        }
        let token = stop.child_token();
        let task = tokio::spawn(session::run(shared.clone(), *conn, token.clone()));
        current = Some((token, task));
    }
    if let Some((token, task)) = current {
        token.cancel();
        let _ = task.await;
    }
}
