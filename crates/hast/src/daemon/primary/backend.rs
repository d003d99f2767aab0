//! The NBD export of a primary: each request becomes an input of the event loop, and its
//! answer comes back on a oneshot. The only shaping done here is what NBD needs and the
//! machine should not care about: TRIM shrunk to whole sectors, and large TRIM or
//! WRITE_ZEROES split into pieces.

use std::sync::Arc;

use hast_core::nbd::NbdErrno;
use hast_core::replication::WriteOp;
use tokio::sync::{mpsc, oneshot};

use super::input::{Answer, ClientOp, Input};
use super::Shared;
use crate::daemon::stats::bump;
use crate::nbd::{Backend, ExportInfo};
use crate::storage::LocalStore;

/// Largest TRIM or WRITE_ZEROES sent as one piece: a 4 GiB request as one frame could
/// keep the secondary busy past the watchdog's `timeout`.
const ZERO_PIECE: u64 = hast_core::proto::MAX_IO as u64;

/// The pieces `(offset, len, fua)` of a large TRIM or WRITE_ZEROES; only the last carries
/// the client's FUA (the pieces are done one after the other, so its flush covers the
/// earlier ones on each node).
fn pieces(offset: u64, len: u64, fua: bool) -> impl Iterator<Item = (u64, u64, bool)> {
    let end = offset + len;
    (offset..end).step_by(ZERO_PIECE as usize).map(move |at| {
        let n = ZERO_PIECE.min(end - at);
        (at, n, fua && at + n == end)
    })
}

/// The export's side of a primary.
pub struct PrimaryBackend {
    shared: Arc<Shared>,
    inputs: mpsc::UnboundedSender<Input>,
    datasize: u64,
    sector: u64,
}

impl PrimaryBackend {
    pub fn new(
        shared: Arc<Shared>,
        inputs: mpsc::UnboundedSender<Input>,
        store: &LocalStore,
    ) -> PrimaryBackend {
        PrimaryBackend {
            shared,
            inputs,
            datasize: store.datasize(),
            sector: u64::from(store.sector_size().max(1)),
        }
    }

    async fn call(&self, op: ClientOp) -> Answer {
        let (reply, answer) = oneshot::channel();
        if self.inputs.send(Input::Client { op, reply }).is_err() {
            return Err(NbdErrno::Eshutdown);
        }
        answer.await.unwrap_or(Err(NbdErrno::Eshutdown))
    }

    async fn modify(&self, offset: u64, len: u64, fua: bool, op: WriteOp) -> Result<(), NbdErrno> {
        for (at, n, fua) in pieces(offset, len, fua) {
            let op = ClientOp::Write {
                offset: at,
                len: n,
                fua,
                op,
                data: None,
            };
            self.call(op).await?;
        }
        Ok(())
    }
}

impl Backend for PrimaryBackend {
    fn info(&self) -> ExportInfo {
        let mut info = ExportInfo::new(self.datasize);
        info.can_multi_conn = true;
        info.description = format!("hast resource {}", self.shared.name);
        info
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Vec<u8>, NbdErrno> {
        bump(&self.shared.stats.reads);
        let op = ClientOp::Read {
            offset,
            len: len.into(),
        };
        match self.call(op).await? {
            Some(data) => Ok(data),
            // A read answered without bytes is a bug of the loop, not data.
            None => Err(NbdErrno::Eio),
        }
    }

    async fn write(&self, offset: u64, data: Vec<u8>, fua: bool) -> Result<(), NbdErrno> {
        bump(&self.shared.stats.writes);
        let op = ClientOp::Write {
            offset,
            len: data.len() as u64,
            fua,
            op: WriteOp::Data,
            data: Some(Arc::new(data)),
        };
        self.call(op).await.map(|_| ())
    }

    async fn flush(&self) -> Result<(), NbdErrno> {
        bump(&self.shared.stats.flushes);
        self.call(ClientOp::Flush).await.map(|_| ())
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), NbdErrno> {
        bump(&self.shared.stats.deletes);
        // Block devices discard whole sectors only. TRIM is advisory, so shrink the range
        // to the sectors it covers entirely; both nodes get the same range.
        let start = offset.div_ceil(self.sector) * self.sector;
        let end = (offset + u64::from(len)) / self.sector * self.sector;
        if end <= start {
            return Ok(());
        }
        self.modify(start, end - start, fua, WriteOp::Trim).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        may_trim: bool,
        fua: bool,
    ) -> Result<(), NbdErrno> {
        bump(&self.shared.stats.writes);
        self.modify(offset, len.into(), fua, WriteOp::Zeroes { may_trim })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_range_and_only_the_last_has_fua() {
        let len = 2 * ZERO_PIECE + 7;
        let p: Vec<_> = pieces(100, len, true).collect();
        assert_eq!(p.len(), 3);
        assert_eq!(p.iter().map(|x| x.1).sum::<u64>(), len);
        assert_eq!(p[0].0, 100);
        assert_eq!(p[1].0, 100 + ZERO_PIECE);
        assert_eq!(p.iter().filter(|x| x.2).count(), 1);
        assert!(p[2].2);
        assert!(pieces(0, 10, false).all(|x| !x.2));
    }
}
