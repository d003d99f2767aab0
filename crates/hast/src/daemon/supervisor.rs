//! The daemon's main loop: signals, configuration reload, the set of resources, and the
//! answers to control requests (hast-reference.md §2, §1.8; the socket is `control.rs`).
//!
//! Tasks: the control socket's (see `control.rs`), one signal loop. Role changes run in
//! their own tasks (see `resource.rs`): a control request waits for them at most
//! [`ROLE_CHANGE_WAIT`] and then answers "busy" with what the change is waiting for, so a
//! stuck disk never freezes hastctl or the other resources.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use hast_core::config::Config;
use hast_core::control::{ControlError, ErrorCode, Reply, Request, ResourceReply};
use hast_core::metadata::Role;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::control;
use super::resource::ResourceHandle;

/// How long a control request waits for a role change before answering "busy".
pub const ROLE_CHANGE_WAIT: Duration = Duration::from_secs(20);
/// Bound on the wait for all resources to reach init at shutdown.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(60);

/// Where the daemon's configuration comes from, for reloads.
#[derive(Debug, Clone)]
pub struct Source {
    /// Absolute path of the config file.
    pub path: PathBuf,
    /// `--node`, if given.
    pub node: Option<String>,
}

/// The running daemon.
pub struct Supervisor {
    source: Source,
    config: Mutex<Arc<Config>>,
    resources: Mutex<BTreeMap<String, Arc<ResourceHandle>>>,
    /// Order of resources as in the config file (status lists them in this order).
    order: Mutex<Vec<String>>,
}

impl Supervisor {
    /// A supervisor with every configured resource in role init.
    pub fn new(source: Source, config: Config) -> Arc<Supervisor> {
        let mut resources = BTreeMap::new();
        let mut order = Vec::new();
        for res in &config.resources {
            order.push(res.name.clone());
            resources.insert(res.name.clone(), ResourceHandle::new(res.clone()));
        }
        Arc::new(Supervisor {
            source,
            config: Mutex::new(Arc::new(config)),
            resources: Mutex::new(resources),
            order: Mutex::new(order),
        })
    }

    fn config(&self) -> Arc<Config> {
        lock(&self.config).clone()
    }

    fn resource(&self, name: &str) -> Option<Arc<ResourceHandle>> {
        lock(&self.resources).get(name).cloned()
    }

    /// Names a request designates: `all` (or nothing, for status) means every resource.
    fn expand(&self, names: &[String], empty_means_all: bool) -> Vec<String> {
        let all = (names.is_empty() && empty_means_all) || (names.len() == 1 && names[0] == "all");
        if all {
            lock(&self.order).clone()
        } else {
            names.to_vec()
        }
    }

    /// Answers one control request.
    pub async fn handle(self: &Arc<Self>, request: Request) -> Reply {
        match request {
            Request::Status { resources } => {
                let names = self.expand(&resources, true);
                let resources = names
                    .into_iter()
                    .map(|name| match self.resource(&name) {
                        Some(res) => ResourceReply {
                            name,
                            error: None,
                            previous_role: None,
                            status: Some(res.status()),
                        },
                        None => no_entry(name),
                    })
                    .collect();
                Reply {
                    error: None,
                    resources,
                }
            }
            Request::SetRole {
                role,
                resources,
                force,
            } => self.set_roles(role, resources, force).await,
        }
    }

    /// Changes the role of the named resources, in parallel; waits at most
    /// [`ROLE_CHANGE_WAIT`] for them.
    async fn set_roles(self: &Arc<Self>, role: Role, resources: Vec<String>, force: bool) -> Reply {
        if resources.is_empty() {
            return Reply {
                error: Some(ControlError {
                    code: ErrorCode::Invalid,
                    message: "no resource named".into(),
                }),
                resources: Vec::new(),
            };
        }
        let names = self.expand(&resources, false);
        // Start every change first, so resources change roles in parallel.
        let mut pending = Vec::new();
        for name in names {
            match self.resource(&name) {
                Some(res) => {
                    let task = tokio::spawn(res.clone().set_role(role, force));
                    pending.push((name, Some((res, task))));
                }
                None => pending.push((name, None)),
            }
        }
        let deadline = tokio::time::Instant::now() + ROLE_CHANGE_WAIT;
        let mut replies = Vec::new();
        for (name, job) in pending {
            let Some((res, task)) = job else {
                replies.push(no_entry(name));
                continue;
            };
            let reply = match tokio::time::timeout_at(deadline, task).await {
                Ok(Ok(Ok(previous))) => ResourceReply {
                    name,
                    error: None,
                    previous_role: Some(previous),
                    status: None,
                },
                Ok(Ok(Err(err))) => ResourceReply {
                    name,
                    error: Some(err),
                    previous_role: None,
                    status: None,
                },
                Ok(Err(join)) => ResourceReply {
                    name: name.clone(),
                    error: Some(ControlError {
                        code: ErrorCode::Failed,
                        message: format!("{name}: role change task failed: {join}"),
                    }),
                    previous_role: None,
                    status: None,
                },
                Err(_) => ResourceReply {
                    name: name.clone(),
                    error: Some(ControlError {
                        code: ErrorCode::Busy,
                        message: format!(
                            "{name}: role change to {} still in progress after {}s ({}); \
                             it continues in the background, check with 'hastctl status'",
                            role.as_str(),
                            ROLE_CHANGE_WAIT.as_secs(),
                            res.progress()
                        ),
                    }),
                    previous_role: None,
                    status: None,
                },
            };
            replies.push(reply);
        }
        Reply {
            error: None,
            resources: replies,
        }
    }

    /// Re-reads the configuration (SIGHUP), as hast-reference.md §1.8. Errors leave the
    /// old configuration in force.
    pub async fn reload(self: &Arc<Self>) -> anyhow::Result<()> {
        let new = crate::conf::load(&self.source.path, self.source.node.as_deref())
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let old = self.config();
        if new.control != old.control {
            warn!(
                "control address change ({} -> {}) takes effect at restart",
                old.control, new.control
            );
        }
        if new.listen != old.listen {
            warn!("listen address changes take effect at restart");
        }

        let mut jobs = Vec::new();
        // Removed resources go to init and disappear.
        for res in &old.resources {
            if new.resource(&res.name).is_none() {
                if let Some(handle) = self.resource(&res.name) {
                    info!(resource = %res.name, "resource removed from the configuration");
                    jobs.push(tokio::spawn(async move {
                        let _ = handle.set_role(Role::Init, false).await;
                    }));
                }
                lock(&self.resources).remove(&res.name);
            }
        }
        for res in &new.resources {
            match self.resource(&res.name) {
                None => {
                    info!(resource = %res.name, "resource added (role init)");
                    lock(&self.resources)
                        .insert(res.name.clone(), ResourceHandle::new(res.clone()));
                }
                Some(handle) => {
                    let current = handle.config();
                    if *current == *res {
                        continue;
                    }
                    let role = handle.role();
                    if role == Role::Init || !needs_restart(&current, res) {
                        info!(resource = %res.name, "configuration updated");
                        handle.set_config(res.clone());
                        continue;
                    }
                    info!(resource = %res.name, "configuration changed; restarting role {}", role.as_str());
                    let res = res.clone();
                    jobs.push(tokio::spawn(async move {
                        let _ = handle.clone().set_role(Role::Init, false).await;
                        handle.set_config(res);
                        let _ = handle.set_role(role, false).await;
                    }));
                }
            }
        }
        *lock(&self.order) = new.resources.iter().map(|r| r.name.clone()).collect();
        *lock(&self.config) = Arc::new(new);
        for job in jobs {
            let _ = job.await;
        }
        Ok(())
    }

    /// Puts every resource in role init (SIGTERM/SIGINT): exports closed, disks flushed.
    pub async fn shutdown(self: &Arc<Self>) {
        let handles: Vec<_> = lock(&self.resources).values().cloned().collect();
        let jobs: Vec<_> = handles
            .into_iter()
            .map(|h| tokio::spawn(h.set_role(Role::Init, false)))
            .collect();
        let all = async {
            for job in jobs {
                let _ = job.await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_WAIT, all).await.is_err() {
            error!(
                "resources did not stop within {}s; exiting anyway",
                SHUTDOWN_WAIT.as_secs()
            );
        }
    }
}

/// Fields whose change needs the role restarted; the others (replication, checksum,
/// compression, timeout, exec, metaflush, remote, source) are applied in place.
fn needs_restart(old: &hast_core::config::Resource, new: &hast_core::config::Resource) -> bool {
    old.local != new.local || old.provname != new.provname || old.export != new.export
}

fn no_entry(name: String) -> ResourceReply {
    ResourceReply {
        error: Some(ControlError {
            code: ErrorCode::NoEntry,
            message: format!("{name}: no such resource in the configuration"),
        }),
        name,
        previous_role: None,
        status: None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(poisoned) => poisoned.into_inner(),
    }
}

/// Runs the daemon until SIGTERM/SIGINT. `ready` is called once the control socket is
/// listening (a background daemon then detaches from the terminal).
pub async fn run(sup: Arc<Supervisor>, ready: impl FnOnce()) -> anyhow::Result<()> {
    let config = sup.config();
    let (listener, control_path) = control::bind(&config.control).await?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let peers = super::listener::bind(&config.listen).await?;
    let stop = CancellationToken::new();
    let handler = {
        let sup = sup.clone();
        move |request| {
            let sup = sup.clone();
            async move { sup.handle(request).await }
        }
    };
    let control = tokio::spawn(control::serve(handler, listener, stop.clone()));
    let peer_tasks: Vec<_> = peers
        .into_iter()
        .map(|l| tokio::spawn(super::listener::serve(sup.clone(), l, stop.clone())))
        .collect();
    info!(
        "started successfully, {} resources, control socket {}",
        config.resources.len(),
        control_path.display()
    );
    ready();
    loop {
        tokio::select! {
            _ = term.recv() => { info!("SIGTERM received, exiting"); break; }
            _ = int.recv() => { info!("SIGINT received, exiting"); break; }
            _ = hup.recv() => {
                info!("SIGHUP received, reloading configuration");
                match sup.reload().await {
                    Ok(()) => info!("configuration reloaded"),
                    Err(e) => error!("configuration not reloaded: {e:#}"),
                }
            }
        }
    }
    stop.cancel();
    let _ = control.await;
    for task in peer_tasks {
        let _ = task.await;
    }
    sup.shutdown().await;
    let _ = std::fs::remove_file(&control_path);
    Ok(())
}

impl super::listener::Routing for Supervisor {
    fn current_config(&self) -> Arc<Config> {
        self.config()
    }

    fn resource_handle(&self, name: &str) -> Option<Arc<ResourceHandle>> {
        self.resource(name)
    }
}
