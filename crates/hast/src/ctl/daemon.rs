//! The hastctl subcommands that talk to hastd: `role`, `status`, `list`.

use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use hast_core::config::{Address, Config};
use hast_core::control::{Reply, Request, ResourceReply, ResourceStatus};
use hast_core::metadata::Role;
use hast_core::sysexits;
use hast_core::units::humanize;

use crate::control::{call, CallError};

/// How long hastctl waits for hastd. Longer than the daemon's own role-change wait, so
/// the daemon's "still in progress" answer arrives rather than a timeout here.
const REPLY_TIMEOUT: Duration = Duration::from_secs(40);

/// Sends `request` and returns the reply, or the exit code after printing why not.
fn exchange(config: &Config, request: &Request) -> Result<Reply, u8> {
    let Address::Unix(socket) = &config.control else {
        eprintln!(
            "hastctl: control address {} is not a UNIX socket",
            config.control
        );
        return Err(sysexits::EX_CONFIG);
    };
    match call(Path::new(socket), request, REPLY_TIMEOUT) {
        Ok(reply) => match &reply.error {
            Some(err) => {
                eprintln!("hastctl: hastd refused the request: {}", err.message);
                Err(sysexits::EX_SOFTWARE)
            }
            None => Ok(reply),
        },
        Err(err @ CallError::Connect(_)) => {
            eprintln!(
                "hastctl: {err} (control socket {}); is hastd running?",
                socket.display()
            );
            Err(sysexits::EX_OSERR)
        }
        Err(err) => {
            eprintln!("hastctl: {err}");
            Err(sysexits::EX_UNAVAILABLE)
        }
    }
}

/// Exit status of a reply: the first per-resource error code, printing every message.
fn report_errors(reply: &Reply) -> u8 {
    let mut code = 0;
    for res in &reply.resources {
        if let Some(err) = &res.error {
            eprintln!("hastctl: {}", err.message);
            if code == 0 {
                code = err.code.value();
            }
        }
    }
    code
}

/// `hastctl role [-f] <role> all | name...`
pub fn role(config: &Config, role: Role, names: &[String], force: bool) -> u8 {
    let request = Request::SetRole {
        role,
        resources: names.to_vec(),
        force,
    };
    match exchange(config, &request) {
        Ok(reply) => {
            for res in &reply.resources {
                if let Some(previous) = res.previous_role.filter(|p| *p != role) {
                    tracing::debug!(
                        "{}: role changed from {} to {}",
                        res.name,
                        previous.as_str(),
                        role.as_str()
                    );
                }
            }
            report_errors(&reply)
        }
        Err(code) => code,
    }
}

/// Output form of `status` and `list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `hastctl status`: one line per resource.
    Terse,
    /// `hastctl list`: every field.
    Verbose,
    /// `--json`: one JSON array of status records.
    Json,
}

/// `hastctl status|list [--json] [all | name...]`
pub fn status(config: &Config, names: &[String], format: Format) -> u8 {
    let request = Request::Status {
        resources: names.to_vec(),
    };
    let reply = match exchange(config, &request) {
        Ok(reply) => reply,
        Err(code) => return code,
    };
    let text = match format {
        Format::Terse => format_status(&reply.resources),
        Format::Verbose => format_list(&reply.resources),
        Format::Json => {
            let records: Vec<&ResourceStatus> = reply
                .resources
                .iter()
                .filter_map(|r| r.status.as_ref())
                .collect();
            match serde_json::to_string_pretty(&records) {
                Ok(json) => json + "\n",
                Err(e) => {
                    eprintln!("hastctl: cannot encode JSON: {e}");
                    return sysexits::EX_SOFTWARE;
                }
            }
        }
    };
    print!("{text}");
    report_errors(&reply)
}

/// FreeBSD's `hastctl status` layout (hast-reference.md §3.4).
pub fn format_status(resources: &[ResourceReply]) -> String {
    let mut out = String::new();
    if !resources.is_empty() {
        out.push_str("Name\tStatus\t Role\t\tComponents\n");
    }
    for res in resources {
        let _ = write!(out, "{}\t", res.name);
        match (&res.error, &res.status) {
            (Some(err), _) => {
                let _ = writeln!(out, "ERR{}", err.code.value());
            }
            (None, Some(st)) => {
                let health = st.status.map(|s| s.as_str()).unwrap_or("-");
                let _ = writeln!(
                    out,
                    "{health:<9}{:<15}{}\t{}",
                    st.role.as_str(),
                    st.localpath,
                    st.remoteaddr
                );
            }
            (None, None) => out.push_str("-\n"),
        }
    }
    out
}

/// FreeBSD's `hastctl list` layout (hast-reference.md §3.3), plus our extra lines
/// (`export`, `error`, sync progress) where FreeBSD has nothing to say.
pub fn format_list(resources: &[ResourceReply]) -> String {
    let mut out = String::new();
    for res in resources {
        let _ = writeln!(out, "{}:", res.name);
        let st = match (&res.error, &res.status) {
            (Some(err), _) => {
                let _ = writeln!(out, "  error: {}", err.code.value());
                continue;
            }
            (None, Some(st)) => st,
            (None, None) => continue,
        };
        let _ = writeln!(out, "  role: {}", st.role.as_str());
        let _ = writeln!(out, "  provname: {}", st.provname);
        let _ = writeln!(out, "  localpath: {}", st.localpath);
        let _ = writeln!(
            out,
            "  extentsize: {} ({})",
            st.extentsize,
            humanize(st.extentsize.into())
        );
        let _ = writeln!(out, "  keepdirty: {}", st.keepdirty);
        let _ = writeln!(out, "  remoteaddr: {}", st.remoteaddr);
        if let Some(source) = &st.sourceaddr {
            let _ = writeln!(out, "  sourceaddr: {source}");
        }
        let _ = writeln!(out, "  replication: {}", st.replication);
        if let Some(health) = st.status {
            let _ = writeln!(out, "  status: {}", health.as_str());
        }
        if let Some(error) = &st.error {
            let _ = writeln!(out, "  error: {error}");
        }
        let _ = writeln!(out, "  export: {}", st.export);
        let _ = writeln!(out, "  dirty: {} ({})", st.dirty, humanize(st.dirty));
        if let Some(sync) = &st.sync {
            let eta = sync
                .eta_seconds
                .map(|s| format!("{s}s"))
                .unwrap_or_else(|| "-".into());
            let _ = writeln!(
                out,
                "  synchronization: {} done, {} to go, {}/s, eta {eta}",
                humanize(sync.synced_bytes),
                humanize(sync.remaining_bytes),
                humanize(sync.rate_bytes_per_sec)
            );
        }
        let s = &st.statistics;
        let _ = writeln!(out, "  statistics:");
        let _ = writeln!(out, "    reads: {}", s.reads);
        let _ = writeln!(out, "    writes: {}", s.writes);
        let _ = writeln!(out, "    deletes: {}", s.deletes);
        let _ = writeln!(out, "    flushes: {}", s.flushes);
        let _ = writeln!(out, "    activemap updates: {}", s.activemap_updates);
        let _ = writeln!(
            out,
            "    local errors: read: {}, write: {}, delete: {}, flush: {}",
            s.read_errors, s.write_errors, s.delete_errors, s.flush_errors
        );
        let q = &st.queues;
        let _ = writeln!(
            out,
            "    queues: local: {}, send: {}, recv: {}",
            q.local, q.send, q.recv
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hast_core::config::{Checksum, Compression, ReplicationMode};
    use hast_core::control::{ControlError, ErrorCode, LinkState};

    fn sample(name: &str, role: Role, health: Option<LinkState>) -> ResourceReply {
        ResourceReply {
            name: name.into(),
            error: None,
            previous_role: None,
            status: Some(ResourceStatus {
                name: name.into(),
                role,
                provname: name.into(),
                localpath: "/dev/vdb".into(),
                remoteaddr: "10.0.0.2".into(),
                sourceaddr: None,
                export: format!("unix:///run/hast/{name}.sock"),
                replication: ReplicationMode::Memsync,
                checksum: Checksum::None,
                compression: Compression::Hole,
                status: health,
                error: None,
                extentsize: 2 << 20,
                keepdirty: 64,
                datasize: 1 << 30,
                dirty: 4 << 20,
                resuid: 7,
                localcnt: 1,
                remotecnt: 0,
                sync: None,
                inconsistent: None,
                fence: None,
                queues: Default::default(),
                statistics: Default::default(),
            }),
        }
    }

    #[test]
    fn status_matches_freebsd_layout() {
        let missing = ResourceReply {
            name: "nope".into(),
            error: Some(ControlError {
                code: ErrorCode::NoEntry,
                message: "x".into(),
            }),
            previous_role: None,
            status: None,
        };
        let text = format_status(&[
            sample("shared", Role::Primary, Some(LinkState::Complete)),
            sample("r1", Role::Init, None),
            missing,
        ]);
        assert_eq!(
            text,
            "Name\tStatus\t Role\t\tComponents\n\
             shared\tcomplete primary        /dev/vdb\t10.0.0.2\n\
             r1\t-        init           /dev/vdb\t10.0.0.2\n\
             nope\tERR1\n"
        );
        assert_eq!(format_status(&[]), "");
    }

    #[test]
    fn list_has_freebsd_fields_in_order() {
        let text = format_list(&[sample("shared", Role::Primary, Some(LinkState::Degraded))]);
        let keys: Vec<&str> = text
            .lines()
            .map(|l| l.trim_start().split(':').next().unwrap_or(""))
            .collect();
        assert_eq!(
            keys,
            [
                "shared",
                "role",
                "provname",
                "localpath",
                "extentsize",
                "keepdirty",
                "remoteaddr",
                "replication",
                "status",
                "export",
                "dirty",
                "statistics",
                "reads",
                "writes",
                "deletes",
                "flushes",
                "activemap updates",
                "local errors",
                "queues"
            ]
        );
        assert!(text.contains("  extentsize: 2097152 (2.0M)\n"));
        assert!(text.contains("  dirty: 4194304 (4.0M)\n"));
    }
}
