//! The daemon's pidfile: created, locked for the daemon's life (so a second hastd is
//! refused even when the first one's pidfile was not cleaned up), removed at exit.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why the pidfile could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum PidfileError {
    /// Another process holds the lock.
    #[error("another hastd is already running (pid {pid}, pidfile {path})")]
    Running {
        /// Pid written in the file, or `?`.
        pid: String,
        /// The pidfile.
        path: PathBuf,
    },
    /// The file could not be created or written.
    #[error("cannot write pidfile {path}: {source}")]
    Io {
        /// The pidfile.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// A held pidfile; dropping it removes the file.
#[derive(Debug)]
pub struct Pidfile {
    path: PathBuf,
    _file: File,
}

impl Pidfile {
    /// Creates (or takes over a stale) pidfile at `path` and writes this process's pid.
    pub fn acquire(path: &Path) -> Result<Pidfile, PidfileError> {
        let io_err = |source| PidfileError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = if pid.trim().is_empty() {
                    "?".into()
                } else {
                    pid.trim().into()
                };
                return Err(PidfileError::Running {
                    pid,
                    path: path.to_path_buf(),
                });
            }
            Err(TryLockError::Error(e)) => return Err(io_err(e)),
        }
        file.set_len(0).map_err(io_err)?;
        file.seek(SeekFrom::Start(0)).map_err(io_err)?;
        writeln!(file, "{}", std::process::id()).map_err(io_err)?;
        file.sync_all().map_err(io_err)?;
        Ok(Pidfile {
            path: path.to_path_buf(),
            _file: file,
        })
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_and_file_removed_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/hastd.pid");
        let first = Pidfile::acquire(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.trim(), std::process::id().to_string());
        match Pidfile::acquire(&path) {
            Err(PidfileError::Running { pid, .. }) => {
                assert_eq!(pid, std::process::id().to_string())
            }
            other => panic!("expected Running, got {other:?}"),
        }
        drop(first);
        assert!(!path.exists());
        let _again = Pidfile::acquire(&path).unwrap();
    }
}
