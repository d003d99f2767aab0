//! What the NBD server serves: a [`Backend`] per export, grouped in an [`ExportSet`].

use std::future::Future;
use std::sync::Arc;

use hast_core::nbd::{ExportInfo, NbdErrno};

/// Storage behind one export. The server calls it only with requests that passed
/// `hast_core::nbd::validate`: in range, aligned to `info().min_block`, READ/WRITE no
/// longer than `info().max_payload`, never a write-like call on a read-only export, and
/// never a zero-length call (those are answered without the backend).
///
/// Many calls run at once (up to the connection's in-flight limit, times the number of
/// connections); the backend orders overlapping writes itself if it needs to.
///
/// Durability contract (the NBD spec's): a write, trim or write-zeroes with `fua` must be
/// persistent before its future resolves; [`flush`](Backend::flush) must make persistent
/// every write whose future already resolved. For hast, "persistent" means what the
/// resource's replication mode says (see docs/nbd.md).
pub trait Backend: Send + Sync + 'static {
    /// The export's size and capabilities, read once per connection at handshake time.
    fn info(&self) -> ExportInfo;

    /// Reads exactly `len` bytes at `offset`. A buffer of any other length is a backend
    /// bug and is reported to the client as EIO.
    fn read(&self, offset: u64, len: u32)
        -> impl Future<Output = Result<Vec<u8>, NbdErrno>> + Send;

    /// Writes `data` at `offset`.
    fn write(
        &self,
        offset: u64,
        data: Vec<u8>,
        fua: bool,
    ) -> impl Future<Output = Result<(), NbdErrno>> + Send;

    /// Makes every completed write persistent.
    fn flush(&self) -> impl Future<Output = Result<(), NbdErrno>> + Send;

    /// Discards a range; afterwards its contents are unspecified until written again.
    fn trim(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> impl Future<Output = Result<(), NbdErrno>> + Send;

    /// Makes a range read as zeroes; `may_trim` allows doing so by deallocating
    /// (`NBD_CMD_FLAG_NO_HOLE` absent).
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> impl Future<Output = Result<(), NbdErrno>> + Send;
}

/// The exports one listener serves, by name. The first one added is the default export,
/// what a client asking for the empty name gets. hastd serves one resource per listener,
/// named after the resource.
#[derive(Debug)]
pub struct ExportSet<B> {
    exports: Vec<(String, Arc<B>)>,
}

impl<B: Backend> ExportSet<B> {
    /// An empty set.
    pub fn new() -> ExportSet<B> {
        ExportSet {
            exports: Vec::new(),
        }
    }

    /// A set holding one export.
    pub fn single(name: impl Into<String>, backend: Arc<B>) -> ExportSet<B> {
        let mut set = ExportSet::new();
        set.insert(name, backend);
        set
    }

    /// Adds (or replaces) the export called `name`.
    pub fn insert(&mut self, name: impl Into<String>, backend: Arc<B>) {
        let name = name.into();
        match self.exports.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = backend,
            None => self.exports.push((name, backend)),
        }
    }

    /// The backend at `index`, in insertion order.
    pub(crate) fn get(&self, index: usize) -> Option<&Arc<B>> {
        self.exports.get(index).map(|(_, b)| b)
    }

    /// Names and current properties, in insertion order, for a new handshake.
    pub(crate) fn snapshot(&self) -> Vec<hast_core::nbd::NamedExport> {
        self.exports
            .iter()
            .map(|(name, b)| hast_core::nbd::NamedExport {
                name: name.clone(),
                info: b.info(),
            })
            .collect()
    }
}

impl<B: Backend> Default for ExportSet<B> {
    fn default() -> Self {
        ExportSet::new()
    }
}
