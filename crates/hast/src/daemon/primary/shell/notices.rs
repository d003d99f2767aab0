//! What the machine's notices become: log lines (the texts tests and operators grep)
//! and `exec` hooks.

use tracing::{error, info, warn};

use super::Shell;
use crate::daemon::hooks::Event as Hook;
use hast_core::replication::primary::Notice;

impl Shell {
    pub(super) fn notice(&mut self, n: Notice) {
        let name = self.shared.name.clone();
        match n {
            Notice::LocalcntRaised { to } => info!(
                resource = %name,
                "localcnt raised to {to}: writes were acknowledged that the secondary does not have (yet)"
            ),
            Notice::Connected {
                syncsrc,
                detail,
                owed,
            } => info!(
                resource = %name,
                "handshake: {detail}, sync from {syncsrc:?}, {owed} bytes to synchronise"
            ),
            Notice::Disconnected => {
                let remote = self.shared.config().remote_text.clone();
                info!(resource = %name, "disconnected from {remote}");
                self.shared.fire(Hook::Disconnect);
                if let Some(s) = self.up.take() {
                    if let Some(session) = self.sessions.remove(&s) {
                        session.stop.cancel();
                    }
                    self.shared.session_ended(s);
                }
            }
            Notice::Stale => warn!(
                resource = %name,
                "the secondary has newer data: this copy is stale until the sync completes \
                 (reads of unsynchronized extents go to the secondary)"
            ),
            Notice::UpToDate => {
                self.refusing = false;
                info!(resource = %name, "the local copy is up to date again");
            }
            Notice::SyncStarted { bytes, source } => {
                info!(resource = %name, "synchronization started ({source:?} is the source): {bytes} bytes to go");
                self.shared.fire(Hook::SyncStart);
            }
            Notice::InSync => info!(resource = %name, "nodes are in sync"),
            Notice::SyncComplete { bytes, ms } => {
                let secs = (ms as f64 / 1000.0).max(0.001);
                info!(
                    resource = %name,
                    "synchronization complete: {bytes} bytes synchronized in {secs:.1}s ({:.0} bytes/s)",
                    bytes as f64 / secs
                );
                self.shared.fire(Hook::SyncDone);
            }
            Notice::SyncInterrupted { bytes, ms } => {
                info!(
                    resource = %name,
                    "synchronization interrupted after {:.1}s: {bytes} bytes synchronized so far",
                    ms as f64 / 1000.0
                );
                self.shared.fire(Hook::SyncIntr);
            }
            Notice::SyncChunkFailed { offset, what } => {
                warn!(resource = %name, "sync chunk at {offset} failed: {what}; retrying");
            }
            Notice::SplitBrain => {
                error!(
                    resource = %name,
                    "split-brain condition: both nodes were written while apart; \
                     nothing will be synchronised until an operator discards one side"
                );
                self.shared.fire(Hook::SplitBrain);
            }
            Notice::PeerFailed { offset, len, errno } => {
                if len == 0 {
                    warn!(
                        resource = %name,
                        "flush on the secondary failed (errno {errno}): dropping the connection \
                         (writes it had confirmed may be lost there; the sync repairs it)"
                    );
                } else {
                    warn!(
                        resource = %name,
                        "the secondary failed a request at {offset} (+{len}): errno {errno}; \
                         dropping the connection (its copy may lack writes it confirmed; the sync repairs it)"
                    );
                }
            }
            Notice::LocalFailed { offset, len, errno } => {
                warn!(resource = %name, "local write at {offset} (+{len}) failed: errno {errno}; the extent stays owed");
            }
            Notice::RefusedStale => {
                if !self.refusing {
                    self.refusing = true;
                    warn!(
                        resource = %name,
                        "refusing requests on stale extents (EIO): this copy is stale there and the \
                         secondary, which has the good data, is not connected"
                    );
                }
            }
            Notice::Fencing => warn!(
                resource = %name,
                "no secondary: writes wait while the fence program runs (reads go on)"
            ),
            Notice::Fenced => warn!(
                resource = %name,
                "the peer is fenced: writes go on without the secondary"
            ),
            Notice::FenceFailed { timed_out } => error!(
                resource = %name,
                "fencing {}: writes fail (EIO) until the secondary is connected again",
                if timed_out { "timed out" } else { "failed" }
            ),
            Notice::NoDiscard => {
                info!(resource = %name, "provider does not support discard; TRIM becomes a no-op");
            }
        }
    }
}
