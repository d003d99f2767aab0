//! The control socket: where `hastctl` talks to the daemon. One request per connection,
//! read with a timeout (a client that sends nothing cannot hold a task forever), the
//! socket mode 0600 (the control protocol can change roles).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use hast_core::config::Address;
use hast_core::control::{ControlError, ErrorCode, Reply, Request};
use tokio::io::BufReader;
use tokio::net::{UnixListener, UnixStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::control::{read_async, write_async};

/// How long a control connection may take to send its request.
const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Binds the control socket, refusing to steal it from a live daemon.
pub async fn bind(addr: &Address) -> anyhow::Result<(UnixListener, PathBuf)> {
    let Address::Unix(path) = addr else {
        bail!("control address {addr} must be a UNIX socket (unix:///path)");
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    if UnixStream::connect(path).await.is_ok() {
        bail!("another hastd is already listening on {}", path.display());
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .with_context(|| format!("cannot listen on control socket {}", path.display()))?;
    set_mode(path, 0o600)?;
    Ok((listener, path.clone()))
}

fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set permissions of {}", path.display()))
}

/// Serves the control socket until `stop` is cancelled: each connection sends one request,
/// `handler` answers it.
pub async fn serve<H, F>(handler: H, listener: UnixListener, stop: CancellationToken)
where
    H: Fn(Request) -> F + Clone + Send + 'static,
    F: Future<Output = Reply> + Send,
{
    loop {
        let stream = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    warn!("control socket accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let handler = handler.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut read = BufReader::new(read);
            let request =
                match tokio::time::timeout(REQUEST_READ_TIMEOUT, read_async(&mut read)).await {
                    Ok(Ok(req)) => req,
                    Ok(Err(e)) => {
                        warn!("control request refused: {e}");
                        let reply = Reply {
                            error: Some(ControlError {
                                code: ErrorCode::Invalid,
                                message: e.to_string(),
                            }),
                            resources: Vec::new(),
                        };
                        let _ = write_async(&mut write, &reply).await;
                        return;
                    }
                    Err(_) => {
                        warn!(
                            "control client sent no request within {}s",
                            REQUEST_READ_TIMEOUT.as_secs()
                        );
                        return;
                    }
                };
            debug!("control request: {request:?}");
            let reply = handler(request).await;
            if let Err(e) = write_async(&mut write, &reply).await {
                debug!("control reply not delivered: {e}");
            }
        });
    }
}
