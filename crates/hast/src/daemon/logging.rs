//! Where hastd's log lines go: stderr in the foreground (and until a background daemon is
//! ready, so start-up errors reach the terminal), syslog's `/dev/log` once it runs in the
//! background (stderr is /dev/null then). A service manager running `hastd -F` gets stderr.

use std::io::{self, Write};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

static TO_SYSLOG: AtomicBool = AtomicBool::new(false);
static SYSLOG: OnceLock<Option<UnixDatagram>> = OnceLock::new();

/// Sets up logging; `debug` is the number of `-d` flags. `RUST_LOG` overrides the level.
pub fn init(debug: u8) {
    let level = match debug {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("hast={level},hastd={level}")));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(LogWriter)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// From now on, log lines go to syslog (if `/dev/log` exists) instead of stderr.
pub fn switch_to_syslog() {
    let socket = SYSLOG.get_or_init(|| {
        let sock = UnixDatagram::unbound().ok()?;
        sock.connect("/dev/log").ok()?;
        Some(sock)
    });
    TO_SYSLOG.store(socket.is_some(), Ordering::SeqCst);
}

struct LogWriter;

/// One log line on its way out; syslog gets it as one datagram when dropped.
pub struct LineWriter {
    severity: u8,
    buf: Vec<u8>,
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            severity: 6,
            buf: Vec::new(),
        }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        let severity = match *meta.level() {
            Level::ERROR => 3,
            Level::WARN => 4,
            Level::INFO => 6,
            Level::DEBUG | Level::TRACE => 7,
        };
        LineWriter {
            severity,
            buf: Vec::new(),
        }
    }
}

impl Write for LineWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if TO_SYSLOG.load(Ordering::Relaxed) {
            if let Some(Some(sock)) = SYSLOG.get() {
                // Facility daemon (3); the timestamp is added by the syslog daemon.
                let pri = 3 * 8 + self.severity;
                let text = String::from_utf8_lossy(&self.buf);
                let msg = format!("<{pri}>hastd[{}]: {}", std::process::id(), text.trim_end());
                let _ = sock.send(msg.as_bytes());
                return;
            }
        }
        let _ = io::stderr().write_all(&self.buf);
    }
}
