//! One resource inside hastd: its configuration, its role, the worker that carries the
//! role out, and the role-change state machine.
//!
//! Role changes of one resource are serialised by `transition`; different resources
//! change roles independently, and status requests never wait for a transition (they read
//! `state`, which is only locked for short, non-blocking sections). A transition stops the
//! old worker completely (NBD export closed, in-flight requests finished, disk flushed,
//! provider unlocked) before starting the new one, as hastd kills and reaps its worker.

use std::sync::{Arc, Mutex, RwLock};

use hast_core::config;
use hast_core::control::{ControlError, ErrorCode, LinkState, ResourceStatus};
use hast_core::metadata::Role;
use tracing::{error, info};

use super::hooks::{self, Event};
use super::progress::Progress;
use super::secondary::PeerConn;
use super::worker::Worker;

struct State {
    role: Role,
    worker: Option<Worker>,
    /// Why the last attempt to take a role failed, or why the running worker failed.
    error: Option<String>,
}

/// A configured resource.
pub struct ResourceHandle {
    name: String,
    cfg: RwLock<Arc<config::Resource>>,
    state: Mutex<State>,
    transition: tokio::sync::Mutex<()>,
    progress: Progress,
}

impl ResourceHandle {
    /// A resource in role init.
    pub fn new(cfg: config::Resource) -> Arc<ResourceHandle> {
        Arc::new(ResourceHandle {
            name: cfg.name.clone(),
            cfg: RwLock::new(Arc::new(cfg)),
            state: Mutex::new(State {
                role: Role::Init,
                worker: None,
                error: None,
            }),
            transition: tokio::sync::Mutex::new(()),
            progress: Progress::default(),
        })
    }

    /// The current configuration.
    pub fn config(&self) -> Arc<config::Resource> {
        match self.cfg.read() {
            Ok(cfg) => cfg.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Replaces the configuration (the caller restarts the role if the change needs it).
    pub fn set_config(&self, cfg: config::Resource) {
        let cfg = Arc::new(cfg);
        match self.cfg.write() {
            Ok(mut slot) => *slot = cfg.clone(),
            Err(poisoned) => *poisoned.into_inner() = cfg.clone(),
        }
        if let Some(worker) = self.lock_state().worker.as_ref() {
            worker.reload(&cfg);
        }
    }

    fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.lock_state().role
    }

    /// What a transition in progress is waiting for.
    pub fn progress(&self) -> String {
        self.progress.get()
    }

    /// Changes the role; returns the previous one. Runs to completion even if the caller
    /// stops waiting (spawn it and time out the wait, never cancel it half way). `force`
    /// lets a node whose copy is known inconsistent become primary anyway.
    pub async fn set_role(self: Arc<Self>, new: Role, force: bool) -> Result<Role, ControlError> {
        let _serial = self.transition.lock().await;
        let previous = self.role();
        if previous == new {
            return Ok(previous);
        }
        let cfg = self.config();
        let old_worker = self.lock_state().worker.take();
        if let Some(worker) = old_worker {
            self.progress
                .set(format!("stopping role {}", previous.as_str()));
            worker.stop(&self.progress).await;
        }
        self.lock_state().role = Role::Init;
        let started = match new {
            Role::Init => Ok(None),
            role => {
                self.progress
                    .set(format!("starting role {}", role.as_str()));
                Worker::start(role, cfg.clone(), &self.progress, force)
                    .await
                    .map(Some)
            }
        };
        self.progress.set("");
        match started {
            Ok(worker) => {
                let mut state = self.lock_state();
                state.role = new;
                state.worker = worker;
                state.error = None;
                drop(state);
                info!(resource = %self.name, "role changed to {}", new.as_str());
                hooks::fire(
                    cfg.exec.as_deref(),
                    &self.name,
                    &Event::Role { old: previous, new },
                );
                Ok(previous)
            }
            Err(err) => {
                let message = format!("{}: cannot become {}: {err:#}", self.name, new.as_str());
                error!(resource = %self.name, "{message}; role stays init");
                self.lock_state().error = Some(message.clone());
                if previous != Role::Init {
                    let event = Event::Role {
                        old: previous,
                        new: Role::Init,
                    };
                    hooks::fire(cfg.exec.as_deref(), &self.name, &event);
                }
                Err(ControlError {
                    code: ErrorCode::Failed,
                    message,
                })
            }
        }
    }

    /// Hands a primary's connection to the secondary worker; gives it back, with the
    /// current role, if this node is not a running secondary.
    pub fn offer_peer(&self, conn: Box<PeerConn>) -> Result<(), (Box<PeerConn>, Role)> {
        let state = self.lock_state();
        match state.worker.as_ref() {
            Some(worker) => worker.offer(conn).map_err(|c| (c, state.role)),
            None => Err((conn, state.role)),
        }
    }

    /// A snapshot for hastctl.
    pub fn status(&self) -> ResourceStatus {
        let cfg = self.config();
        let state = self.lock_state();
        let mut status = ResourceStatus {
            name: cfg.name.clone(),
            role: state.role,
            provname: cfg.provname.clone(),
            localpath: cfg.local.display().to_string(),
            remoteaddr: cfg.remote_text.clone(),
            sourceaddr: cfg.source_text.clone(),
            export: cfg.export.to_string(),
            replication: cfg.replication,
            checksum: cfg.checksum,
            compression: cfg.compression,
            status: None,
            error: state.error.clone(),
            extentsize: 0,
            keepdirty: 0,
            datasize: 0,
            dirty: 0,
            resuid: 0,
            localcnt: 0,
            remotecnt: 0,
            sync: None,
            inconsistent: None,
            fence: None,
            queues: Default::default(),
            statistics: Default::default(),
        };
        if let Some(worker) = state.worker.as_ref() {
            worker.fill_status(&mut status);
            if let Some(failure) = worker.failure() {
                status.status = Some(LinkState::Failed);
                status.error = Some(failure);
            }
        }
        status
    }
}
