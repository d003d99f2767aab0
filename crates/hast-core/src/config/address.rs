//! Address syntax of hast.conf (hast-reference.md §1.6). Host names are kept as written:
//! resolving them is I/O and belongs to the daemon.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;

use super::model::{Address, Family, DEFAULT_PORT};

/// Longest UNIX socket path Linux accepts: `sun_path` is 108 bytes including the NUL.
pub const MAX_UNIX_PATH: usize = 107;

/// Default TCP port of an `export` address: the IANA NBD port, so that a TCP export
/// without a port does not collide with the replication listener on 8457.
pub const DEFAULT_NBD_PORT: u16 = 10809;

/// Why an address could not be parsed. Every message says what a valid one looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Nothing was written.
    #[error("empty address")]
    Empty,
    /// `xyz://…` with an unsupported scheme.
    #[error(
        "unknown address scheme '{0}://' (expected tcp://, tcp4://, tcp6://, unix:// or uds://)"
    )]
    UnknownScheme(String),
    /// `tcp://:8457`, `tcp://`.
    #[error("address '{0}' has no host (write host, host:port or [ipv6]:port)")]
    MissingHost(String),
    /// A port that is not a number from 1 to 65535.
    #[error("port '{0}' is not a number from 1 to 65535")]
    BadPort(String),
    /// `[…` without `]`, or text after `]` other than `:port`.
    #[error("IPv6 address '{0}' must be written [address] or [address]:port")]
    BadBrackets(String),
    /// Not a valid IPv6 literal.
    #[error("'{0}' is not a valid IPv6 address (a port after an IPv6 address needs brackets: [address]:port)")]
    BadIpv6(String),
    /// Digits and dots that are not a valid IPv4 address.
    #[error("'{0}' is not a valid IPv4 address")]
    BadIpv4(String),
    /// A host name with characters no host name has.
    #[error("'{0}' is not a valid host name or address")]
    BadHost(String),
    /// `tcp4://` with an IPv6 literal or `tcp6://` with an IPv4 literal.
    #[error("'{host}' is not an {family} address, but the scheme is {scheme}://")]
    FamilyMismatch {
        /// The host as written.
        host: String,
        /// `IPv4` or `IPv6`.
        family: &'static str,
        /// The scheme as written.
        scheme: String,
    },
    /// `unix://relative/path`: sockets must have absolute paths, the daemon runs in `/`.
    #[error("UNIX socket path '{0}' must be absolute (unix:///path or /path)")]
    RelativePath(String),
    /// Longer than `sun_path` allows.
    #[error("UNIX socket path '{0}' is too long ({len} bytes, at most {MAX_UNIX_PATH})", len = .0.len())]
    PathTooLong(String),
}

/// Parses an address as written in hast.conf: `tcp://`, `tcp4://`, `tcp6://` (scheme
/// case-insensitive), a bare `host[:port]`, `[v6][:port]`, an unbracketed IPv6 literal,
/// or `unix://`, `uds://` or an absolute path for a UNIX socket. The port defaults to
/// [`DEFAULT_PORT`].
pub fn parse_address(text: &str) -> Result<Address, AddressError> {
    parse_with_port(text, DEFAULT_PORT, false)
}

/// Like [`parse_address`], for a `source` (local bind) address: the port defaults to 0
/// and may be 0, meaning any port.
pub fn parse_source_address(text: &str) -> Result<Address, AddressError> {
    parse_with_port(text, 0, true)
}

/// Like [`parse_address`], for an `export` address: the port defaults to the NBD port.
pub fn parse_export_address(text: &str) -> Result<Address, AddressError> {
    parse_with_port(text, DEFAULT_NBD_PORT, false)
}

/// Checks a UNIX socket path; shared with the default export path, which is built, not written.
pub fn unix_socket_path(path: &str) -> Result<Address, AddressError> {
    if !path.starts_with('/') {
        return Err(AddressError::RelativePath(path.to_string()));
    }
    if path.len() > MAX_UNIX_PATH {
        return Err(AddressError::PathTooLong(path.to_string()));
    }
    Ok(Address::Unix(PathBuf::from(path)))
}

fn parse_with_port(text: &str, default_port: u16, zero_ok: bool) -> Result<Address, AddressError> {
    if text.is_empty() {
        return Err(AddressError::Empty);
    }
    let (family, rest) = match text.find("://") {
        Some(at) => {
            let scheme = &text[..at];
            let rest = &text[at + 3..];
            match scheme.to_ascii_lowercase().as_str() {
                "tcp" => (Family::Any, rest),
                "tcp4" => (Family::V4, rest),
                "tcp6" => (Family::V6, rest),
                "unix" | "uds" => return unix_socket_path(rest),
                _ => return Err(AddressError::UnknownScheme(scheme.to_string())),
            }
        }
        None if text.starts_with('/') => return unix_socket_path(text),
        None => (Family::Any, text),
    };
    let (host, port) = split_host_port(rest)?;
    if host.is_empty() {
        return Err(AddressError::MissingHost(text.to_string()));
    }
    let port = match port {
        None => default_port,
        Some(p) => parse_port(p, zero_ok)?,
    };
    check_host(host, family, text)?;
    Ok(Address::Tcp {
        family,
        host: host.to_string(),
        port,
    })
}

/// Splits `host[:port]`, `[v6][:port]` and unbracketed IPv6 (more than one `:` means
/// the whole text is the host, as FreeBSD's proto_tcp does).
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), AddressError> {
    if let Some(inner) = text.strip_prefix('[') {
        let Some(close) = inner.find(']') else {
            return Err(AddressError::BadBrackets(text.to_string()));
        };
        let host = &inner[..close];
        let after = &inner[close + 1..];
        if after.is_empty() {
            return Ok((host, None));
        }
        return match after.strip_prefix(':') {
            Some(port) => Ok((host, Some(port))),
            None => Err(AddressError::BadBrackets(text.to_string())),
        };
    }
    match text.matches(':').count() {
        0 => Ok((text, None)),
        1 => Ok(text
            .split_once(':')
            .map_or((text, None), |(h, p)| (h, Some(p)))),
        _ => Ok((text, None)),
    }
}

fn parse_port(text: &str, zero_ok: bool) -> Result<u16, AddressError> {
    let bad = || AddressError::BadPort(text.to_string());
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    match text.parse::<u16>() {
        Ok(0) if !zero_ok => Err(bad()),
        Ok(port) => Ok(port),
        Err(_) => Err(bad()),
    }
}

fn check_host(host: &str, family: Family, text: &str) -> Result<(), AddressError> {
    let literal = if host.contains(':') {
        Some((host.parse::<Ipv6Addr>().is_ok(), Family::V6))
    } else if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        Some((host.parse::<Ipv4Addr>().is_ok(), Family::V4))
    } else {
        None
    };
    let Some((valid, literal_family)) = literal else {
        let valid_name = host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
            && !host.starts_with(['.', '-']);
        return match valid_name {
            true => Ok(()),
            false => Err(AddressError::BadHost(host.to_string())),
        };
    };
    match (valid, literal_family, family) {
        (false, Family::V6, _) => Err(AddressError::BadIpv6(host.to_string())),
        (false, _, _) => Err(AddressError::BadIpv4(host.to_string())),
        (true, Family::V6, Family::V4) | (true, Family::V4, Family::V6) => {
            Err(AddressError::FamilyMismatch {
                host: host.to_string(),
                family: if family == Family::V4 { "IPv4" } else { "IPv6" },
                scheme: text.split("://").next().unwrap_or_default().to_string(),
            })
        }
        (true, _, _) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(family: Family, host: &str, port: u16) -> Address {
        Address::Tcp {
            family,
            host: host.to_string(),
            port,
        }
    }

    #[test]
    fn valid_addresses() {
        use Family::*;
        let table: &[(&str, Address)] = &[
            ("10.0.0.1", tcp(Any, "10.0.0.1", 8457)),
            ("10.0.0.1:1", tcp(Any, "10.0.0.1", 1)),
            ("alpha", tcp(Any, "alpha", 8457)),
            (
                "alpha.example.com:9000",
                tcp(Any, "alpha.example.com", 9000),
            ),
            ("tcp://0.0.0.0", tcp(Any, "0.0.0.0", 8457)),
            ("TCP://host:65535", tcp(Any, "host", 65535)),
            ("tcp4://192.168.50.1:8457", tcp(V4, "192.168.50.1", 8457)),
            ("Tcp4://alpha", tcp(V4, "alpha", 8457)),
            ("tcp6://[::]:8457", tcp(V6, "::", 8457)),
            ("tcp6://alpha", tcp(V6, "alpha", 8457)),
            ("tcp6://[fe80::1]", tcp(V6, "fe80::1", 8457)),
            ("[::1]", tcp(Any, "::1", 8457)),
            ("[::1]:7", tcp(Any, "::1", 7)),
            ("2001:db8::1", tcp(Any, "2001:db8::1", 8457)),
            ("tcp://2001:db8::1:99", tcp(Any, "2001:db8::1:99", 8457)),
            ("tcp://[2001:db8::1]:99", tcp(Any, "2001:db8::1", 99)),
            ("/var/run/hastctl", Address::Unix("/var/run/hastctl".into())),
            (
                "uds:///var/run/hastctl",
                Address::Unix("/var/run/hastctl".into()),
            ),
            (
                "unix:///run/hast/a.sock",
                Address::Unix("/run/hast/a.sock".into()),
            ),
            ("UNIX:///x", Address::Unix("/x".into())),
        ];
        for (text, want) in table {
            assert_eq!(parse_address(text).as_ref(), Ok(want), "{text}");
        }
    }

    #[test]
    fn invalid_addresses() {
        let table: &[(&str, &str)] = &[
            ("", "empty address"),
            ("udp://x", "unknown address scheme 'udp://'"),
            ("tcp://", "has no host"),
            ("tcp://:80", "has no host"),
            ("[]:80", "has no host"),
            ("host:0", "port '0' is not a number from 1 to 65535"),
            ("host:65536", "port '65536'"),
            ("host:", "port ''"),
            ("host:http", "port 'http'"),
            ("[::1]:x", "port 'x'"),
            ("[::1", "must be written [address]"),
            ("[::1]x", "must be written [address]"),
            (
                "2001:db8::1/64",
                "'2001:db8::1/64' is not a valid IPv6 address",
            ),
            ("[zz::1]", "'zz::1' is not a valid IPv6"),
            ("999.1.1.1", "'999.1.1.1' is not a valid IPv4 address"),
            ("a/b", "'a/b' is not a valid host name"),
            ("-x", "'-x' is not a valid host name"),
            (
                "tcp4://[::1]",
                "'::1' is not an IPv4 address, but the scheme is tcp4://",
            ),
            (
                "tcp6://10.0.0.1",
                "'10.0.0.1' is not an IPv6 address, but the scheme is tcp6://",
            ),
            ("unix://run/x", "'run/x' must be absolute"),
            ("uds://", "'' must be absolute"),
        ];
        for (text, want) in table {
            let err = parse_address(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
        let long = format!("/{}", "a".repeat(MAX_UNIX_PATH));
        assert!(matches!(
            parse_address(&long),
            Err(AddressError::PathTooLong(_))
        ));
        assert!(parse_address(&long[..MAX_UNIX_PATH]).is_ok());
    }

    #[test]
    fn source_and_export_ports() {
        assert_eq!(
            parse_source_address("10.0.0.1"),
            Ok(tcp(Family::Any, "10.0.0.1", 0))
        );
        assert_eq!(
            parse_source_address("10.0.0.1:0"),
            Ok(tcp(Family::Any, "10.0.0.1", 0))
        );
        assert_eq!(
            parse_export_address("tcp://127.0.0.1"),
            Ok(tcp(Family::Any, "127.0.0.1", DEFAULT_NBD_PORT))
        );
    }

    #[test]
    fn display_round_trips() {
        for text in [
            "tcp://a:1",
            "tcp4://10.0.0.1:8457",
            "tcp6://[::1]:9",
            "unix:///x/y",
        ] {
            let addr = parse_address(text).unwrap();
            assert_eq!(addr.to_string(), text);
            assert_eq!(parse_address(&addr.to_string()), Ok(addr));
        }
    }
}
