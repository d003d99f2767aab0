//! The secondary's disk: one thread applies data operations in the order the machine
//! issues them (FreeBSD's disk thread), and the activemap clear in line with them, so it
//! is done before the session's first request is applied; flushes and metadata writes run
//! on the blocking pool, beside it. Results go back to the resource task as [`Input`]s.
//! It decides nothing.

use std::sync::Arc;

use hast_core::config::{Checksum, Compression};
use hast_core::replication::secondary::{reply_header, SecondaryEvent};
use hast_core::replication::{IoId, LocalOp, SessionId};
use tokio::sync::mpsc::UnboundedSender;
use tracing::warn;

use super::input::Input;
use crate::peer::Outgoing;
use crate::storage::{LocalStore, StorageError};

/// Work for the disk thread.
pub(super) enum Job {
    /// A data operation (never a flush); `data`: a WRITE's bytes.
    Op {
        io: IoId,
        op: LocalOp,
        data: Option<Vec<u8>>,
        /// How to seal a READ's data for the reply.
        seal: (Compression, Checksum),
    },
    /// Clear the on-disk activemap.
    ClearBitmap,
    /// Mark every extent in the on-disk activemap (a full sync is being accepted).
    FillBitmap(SessionId),
}

/// The errno a failed storage call is answered with.
pub(super) fn errno_of(e: &StorageError) -> u32 {
    match e {
        StorageError::Io { source, .. } => source.raw_os_error().map_or(5, |n| n as u32),
        StorageError::OutOfBounds { .. } => 22,
        StorageError::Unsupported { .. } => 95,
        _ => 5,
    }
}

fn log_failure(name: &str, e: &StorageError) {
    if !matches!(e, StorageError::Unsupported { .. }) {
        warn!(resource = %name, "request from the primary failed: {e}");
    }
}

/// Starts the disk thread (a long-running task of the blocking pool); it ends when
/// `jobs` closes.
pub(super) fn spawn(
    name: String,
    store: Arc<LocalStore>,
    jobs: std::sync::mpsc::Receiver<Job>,
    results: UnboundedSender<Input>,
) -> tokio::task::JoinHandle<()> {
    tokio::task::spawn_blocking(move || {
        while let Ok(job) = jobs.recv() {
            match job {
                Job::ClearBitmap => {
                    // The primary merged our map into its own and persisted the union
                    // before it sent anything: from now on it tracks every extent.
                    if let Err(e) = store.write_bitmap(&[]) {
                        warn!(resource = %name, "cannot clear the activemap: {e}");
                    }
                }
                Job::FillBitmap(session) => {
                    let ok = match store.fill_bitmap() {
                        Ok(()) => true,
                        Err(e) => {
                            warn!(resource = %name, "cannot mark every extent in the activemap: {e}");
                            false
                        }
                    };
                    let event = SecondaryEvent::BitmapFilled { session, ok };
                    let _ = results.send(Input::Event(event));
                }
                Job::Op { io, op, data, seal } => {
                    let (result, read) = execute(&store, op, data, seal);
                    if let Err(e) = &result {
                        log_failure(&name, e);
                    }
                    let result = result.map_err(|e| errno_of(&e));
                    let _ = results.send(Input::Disk { io, result, read });
                }
            }
        }
    })
}

/// Applies one data operation; a READ's data comes back sealed for its reply.
fn execute(
    store: &LocalStore,
    op: LocalOp,
    data: Option<Vec<u8>>,
    (compression, checksum): (Compression, Checksum),
) -> (Result<(), StorageError>, Option<Outgoing>) {
    let result = match op {
        LocalOp::Read { offset, len } => {
            let mut buf = vec![0u8; len as usize];
            if let Err(e) = store.read(offset, &mut buf) {
                return (Err(e), None);
            }
            let frame = Outgoing::data(reply_header(0, 0), Arc::new(buf), compression, checksum);
            return (Ok(()), Some(frame));
        }
        LocalOp::Write { offset, .. } => match data {
            Some(data) => store.write(offset, &data),
            None => Err(StorageError::Io {
                path: store.provider().path().to_path_buf(),
                op: crate::storage::Op::Write,
                offset,
                len: 0,
                source: std::io::Error::other("the data of the write is missing"),
            }),
        },
        // A provider that cannot discard says so: the primary keeps the range owed so the
        // sync makes both copies equal.
        LocalOp::Trim { offset, len, .. } => store.discard(offset, len),
        LocalOp::Zeroes { offset, len, .. } => store.write_zeroes(offset, len),
        LocalOp::Flush => store.flush(),
    };
    (result, None)
}

/// Runs a flush beside the disk thread.
pub(super) fn flush(
    name: String,
    store: Arc<LocalStore>,
    io: IoId,
    results: UnboundedSender<Input>,
) {
    tokio::task::spawn_blocking(move || {
        let result = store.flush();
        if let Err(e) = &result {
            log_failure(&name, e);
        }
        let result = result.map_err(|e| errno_of(&e));
        let _ = results.send(Input::Disk {
            io,
            result,
            read: None,
        });
    });
}

/// Writes the metadata header on the blocking pool.
pub(super) fn write_meta(
    store: Arc<LocalStore>,
    gen: u64,
    meta: hast_core::metadata::Metadata,
    results: UnboundedSender<Input>,
) {
    tokio::task::spawn_blocking(move || {
        let result = store.write_metadata(&meta).map_err(|e| e.to_string());
        let _ = results.send(Input::Meta { gen, result });
    });
}
