//! A [`Backend`] over a plain file, for tests and benchmarks of the NBD front end
//! without replication.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use hast_core::nbd::{ExportInfo, NbdErrno};
use rustix::fs::{fallocate, FallocateFlags};

use super::backend::Backend;

/// Serves a regular file: pread/pwrite on the blocking pool, fdatasync for FLUSH and FUA,
/// hole punching for TRIM. One file handle is shared by every connection, so FLUSH on
/// one covers writes from all: multi-conn is safe and advertised.
#[derive(Debug)]
pub struct FileBackend {
    file: Arc<File>,
    info: ExportInfo,
}

impl FileBackend {
    /// Opens `path`; the export's size is the file's size at open time.
    pub fn open(path: &Path, read_only: bool) -> io::Result<FileBackend> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let mut info = ExportInfo::new(file.metadata()?.len());
        info.read_only = read_only;
        info.can_multi_conn = true;
        info.description = format!("file {}", path.display());
        Ok(FileBackend {
            file: Arc::new(file),
            info,
        })
    }

    /// The properties advertised to clients, to adjust before serving (e.g. a larger
    /// `min_block` to exercise alignment checks).
    pub fn info_mut(&mut self) -> &mut ExportInfo {
        &mut self.info
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, NbdErrno>
    where
        T: Send + 'static,
        F: FnOnce(&File) -> io::Result<T> + Send + 'static,
    {
        let file = Arc::clone(&self.file);
        match tokio::task::spawn_blocking(move || f(&file)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e
                .raw_os_error()
                .map_or(NbdErrno::Eio, NbdErrno::from_os_errno)),
            Err(_) => Err(NbdErrno::Eio),
        }
    }
}

fn punch(file: &File, offset: u64, len: u32) -> io::Result<()> {
    let mode = FallocateFlags::PUNCH_HOLE | FallocateFlags::KEEP_SIZE;
    fallocate(file, mode, offset, u64::from(len)).map_err(io::Error::from)
}

fn write_zero_bytes(file: &File, offset: u64, len: u32) -> io::Result<()> {
    let zeroes = vec![0u8; (len as usize).min(1 << 20)];
    let mut done = 0u64;
    while done < u64::from(len) {
        let n = (u64::from(len) - done).min(zeroes.len() as u64) as usize;
        file.write_all_at(&zeroes[..n], offset + done)?;
        done += n as u64;
    }
    Ok(())
}

fn unsupported(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Unsupported || e.raw_os_error() == Some(95)
}

impl Backend for FileBackend {
    fn info(&self) -> ExportInfo {
        self.info.clone()
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, NbdErrno> {
        self.blocking(move |f| {
            let mut buf = vec![0u8; len as usize];
            f.read_exact_at(&mut buf, offset)?;
            Ok(buf)
        })
        .await
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), NbdErrno> {
        self.blocking(move |f| {
            f.write_all_at(&data, offset)?;
            if fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<(), NbdErrno> {
        self.blocking(|f| f.sync_data()).await
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), NbdErrno> {
        self.blocking(move |f| {
            match punch(f, offset, len) {
                // TRIM is a hint: a filesystem without hole punching just keeps the data.
                Err(e) if unsupported(&e) => {}
                r => r?,
            }
            if fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), NbdErrno> {
        self.blocking(move |f| {
            let fast = if may_trim {
                punch(f, offset, len)
            } else {
                let mode = FallocateFlags::ZERO_RANGE | FallocateFlags::KEEP_SIZE;
                fallocate(f, mode, offset, u64::from(len)).map_err(io::Error::from)
            };
            match fast {
                Err(e) if unsupported(&e) => write_zero_bytes(f, offset, len)?,
                r => r?,
            }
            if fua {
                f.sync_data()?;
            }
            Ok(())
        })
        .await
    }
}
