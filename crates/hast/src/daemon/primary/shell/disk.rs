//! The machine's disk I/O, on the blocking pool; each end comes back as an input.

use hast_core::replication::{IoId, LocalOp};
use tracing::{error, warn};

use super::Shell;
use crate::daemon::primary::input::Input;
use crate::daemon::primary::Shared;
use crate::daemon::stats::bump;
use crate::storage::LocalStore;

impl Shell {
    /// Local disk I/O on the blocking pool; its end comes back as an input.
    pub(super) fn local_io(&mut self, io: IoId, op: LocalOp) {
        let data = match op {
            LocalOp::Write { data, .. } => self.take(data),
            _ => None,
        };
        bump(&self.shared.stats.local_queue);
        self.on_disk(move |store, shared| {
            let result = match op {
                LocalOp::Write { offset, fua, .. } => match &data {
                    Some(d) => store.write(offset, d).and_then(|()| durable(store, fua)),
                    None => unreachable_payload(shared, io),
                },
                LocalOp::Trim { offset, len, fua } => store
                    .discard(offset, len)
                    .and_then(|()| durable(store, fua)),
                LocalOp::Zeroes {
                    offset, len, fua, ..
                } => store
                    .write_zeroes(offset, len)
                    .and_then(|()| durable(store, fua)),
                LocalOp::Read { offset, len } => {
                    let mut buf = vec![0u8; len as usize];
                    store.read(offset, &mut buf).map(|()| Some(buf))
                }
                LocalOp::Flush => store.flush().map(|()| None),
            };
            shared
                .stats
                .local_queue
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            let result = result.map_err(|e| {
                let counter = match op {
                    LocalOp::Read { .. } => &shared.stats.read_errors,
                    LocalOp::Trim { .. } => &shared.stats.delete_errors,
                    LocalOp::Flush => &shared.stats.flush_errors,
                    _ => &shared.stats.write_errors,
                };
                if !matches!(e, crate::storage::StorageError::Unsupported { .. }) {
                    bump(counter);
                    warn!(resource = %shared.name, "local {op:?} failed: {e}");
                }
                e.errno()
            });
            Input::Local { io, result }
        });
    }

    /// Runs `work` on the blocking pool; its result comes back as an input.
    pub(super) fn on_disk<F>(&self, work: F)
    where
        F: FnOnce(&LocalStore, &Shared) -> Input + Send + 'static,
    {
        let (store, tx, shared) = (self.store.clone(), self.inputs.clone(), self.shared.clone());
        tokio::task::spawn_blocking(move || {
            let input = work(&store, &shared);
            // The provider is unlocked when its last reference goes: this one must be gone
            // before the loop can hear that the I/O ended (and perhaps stop the role).
            drop(store);
            let _ = tx.send(input);
        });
    }
}

/// The machine named bytes the shell does not have: a bug, reported as a failed write
/// (never as written data).
fn unreachable_payload(
    shared: &Shared,
    io: IoId,
) -> Result<Option<Vec<u8>>, crate::storage::StorageError> {
    error!(resource = %shared.name, "local write {io:?} has no payload (bug); failing it");
    Err(crate::storage::StorageError::Io {
        path: std::path::PathBuf::new(),
        op: crate::storage::Op::Write,
        offset: 0,
        len: 0,
        source: std::io::Error::from_raw_os_error(5),
    })
}

/// Whether a bitmap or metadata write succeeded; a failure is counted and logged.
pub(super) fn succeeded(
    shared: &Shared,
    what: &str,
    r: Result<(), crate::storage::StorageError>,
) -> bool {
    match r {
        Ok(()) => true,
        Err(e) => {
            bump(&shared.stats.write_errors);
            error!(resource = %shared.name, "{what} write failed: {e}");
            false
        }
    }
}

/// The flush of a FUA operation.
fn durable(store: &LocalStore, fua: bool) -> Result<Option<Vec<u8>>, crate::storage::StorageError> {
    if fua {
        store.flush()?;
    }
    Ok(None)
}
