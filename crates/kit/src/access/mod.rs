//! The access log: one entry per request, with the journal fields gatehouse writes, so one
//! `journalctl` query reads the front server and the apps behind it alike:
//!
//! | field | example |
//! |---|---|
//! | `MESSAGE` | `GET /api/items 200` |
//! | `HTTP_METHOD` | `GET` |
//! | `HTTP_PATH` | `/api/items` (no query string: it may carry secrets) |
//! | `HTTP_HOST` | `example.com` (lower case, no port) |
//! | `HTTP_STATUS` | `200` |
//! | `HTTP_DURATION_US` | `1520`: until the response head was ready |
//! | `REMOTE_ADDR` | `192.0.2.7`, or `unix` behind a front server on a unix socket |
//! | `UPSTREAM` | only where a request was proxied |
//!
//! `journalctl -u app HTTP_STATUS=500`, `journalctl -u app -o json`. Without the journal
//! the entry is a line on stderr: `… INFO GET /api/items 200 http_host=example.com …`.
//!
//! With the `axum` feature, [`AccessLogLayer`] writes these entries as a tower layer.

#[cfg(feature = "axum")]
mod layer;
#[cfg(feature = "axum")]
pub use layer::{AccessLog, AccessLogFuture, AccessLogLayer, ClientAddr};

use std::net::SocketAddr;
use std::time::Duration;

/// The tracing target of the kit's access-log events (`TARGET=access` in the journal;
/// `RUST_LOG=info,access=off` silences them).
pub const ACCESS_TARGET: &str = "access";

/// One access-log entry, as its fields appear in the journal.
#[derive(Debug, Clone, Copy)]
pub struct AccessEntry<'a> {
    /// `HTTP_METHOD`.
    pub method: &'a str,
    /// `HTTP_PATH`.
    pub path: &'a str,
    /// `HTTP_STATUS`.
    pub status: u16,
    /// `UPSTREAM`, only for a proxied request.
    pub upstream: Option<&'a str>,
    /// `HTTP_HOST`, normalised (see [`normalize_host`]); `-` when there was none.
    pub host: &'a str,
    /// `HTTP_DURATION_US`.
    pub duration_us: u64,
    /// `REMOTE_ADDR` (see [`Remote::text`]).
    pub remote: &'a str,
    /// The tracing target (`TARGET=`): [`ACCESS_TARGET`] for the kit's entries.
    pub target: &'static str,
}

/// Writes one entry under [`ACCESS_TARGET`]: the fast path when [`crate::log::init`]
/// chose the sink, a tracing event otherwise (so a subscriber of the app's own, such as
/// tracing-journald with `with_field_prefix(None)`, gets the same fields).
pub fn log_request(entry: &AccessEntry<'_>) {
    if crate::log::access_direct(entry) {
        // The filter still decides (RUST_LOG=access=off silences it).
        if tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
            crate::log::write_access(entry);
        }
        return;
    }
    let e = entry;
    // Field order matters to the stderr format: "GET /path 200 via UPSTREAM host=…".
    tracing::info!(
        target: ACCESS_TARGET,
        http_method = e.method,
        http_path = e.path,
        http_status = e.status,
        upstream = e.upstream,
        http_host = e.host,
        http_duration_us = e.duration_us,
        remote_addr = e.remote,
        "{} {} {}{}",
        e.method,
        e.path,
        e.status,
        Via(e.upstream)
    );
}

/// `" via UPSTREAM"` in the message of a proxied request, nothing otherwise (for an access
/// event of a service's own tracing target).
pub struct Via<'a>(pub Option<&'a str>);

impl std::fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(u) => write!(f, " via {u}"),
            None => Ok(()),
        }
    }
}

/// `elapsed` in whole microseconds, as `HTTP_DURATION_US` carries it.
pub fn duration_us(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// Where a request came from, for `REMOTE_ADDR`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Remote {
    /// A TCP peer.
    Tcp(SocketAddr),
    /// A unix-socket peer (a front server such as gatehouse).
    Unix,
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d; log them as a.b.c.d
            // so `journalctl REMOTE_ADDR=…` finds them.
            Remote::Tcp(a) => write!(f, "{}", a.ip().to_canonical()),
            Remote::Unix => f.write_str("unix"),
        }
    }
}

impl Remote {
    /// The Display text, once per connection. IPv4 (the common case) is written without
    /// core::fmt, which took ~1.4k instructions of a new connection's ~39k in gatehouse.
    pub fn text(&self) -> Box<str> {
        if let Remote::Tcp(addr) = self {
            if let std::net::IpAddr::V4(v4) = addr.ip().to_canonical() {
                let mut text = String::with_capacity(15);
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        text.push('.');
                    }
                    text.push_str(itoa::Buffer::new().format(octet));
                }
                return text.into_boxed_str();
            }
        }
        self.to_string().into_boxed_str()
    }
}

/// A Host header or URI authority as `HTTP_HOST` carries it: lower case, without the port
/// or a trailing dot; `None` when it is not a valid host (or carries userinfo).
pub fn normalize_host(raw: &str) -> Option<String> {
    let (name, port) = match raw.rsplit_once(':') {
        // "[::1]:80" and "[::1]" keep their brackets; a bare IPv6 literal is not a host.
        Some((name, port)) if !port.contains(']') => (name, Some(port)),
        _ => (raw, None),
    };
    if port.is_some_and(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit())) {
        return None;
    }
    if name.contains('@') || name.is_empty() {
        return None;
    }
    let valid = if let Some(inner) = name.strip_prefix('[') {
        inner
            .strip_suffix(']')
            .is_some_and(|ip| ip.parse::<std::net::Ipv6Addr>().is_ok())
    } else {
        name.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    };
    let host = name.trim_end_matches('.');
    (valid && !host.is_empty()).then(|| host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_text_matches_its_display() {
        for addr in [
            "127.0.0.1:80",
            "10.200.3.45:1",
            "[::ffff:192.0.2.7]:8080",
            "[2001:db8::1]:443",
        ] {
            let remote = Remote::Tcp(addr.parse().unwrap());
            assert_eq!(&*remote.text(), remote.to_string(), "{addr}");
        }
        assert_eq!(&*Remote::Unix.text(), "unix");
        assert_eq!(
            &*Remote::Tcp("[::ffff:192.0.2.7]:1".parse().unwrap()).text(),
            "192.0.2.7"
        );
    }

    #[test]
    fn hosts_are_normalised_as_gatehouse_logs_them() {
        for (raw, want) in [
            ("example.com", Some("example.com")),
            ("Example.COM:8080", Some("example.com")),
            ("example.com.", Some("example.com")),
            ("127.0.0.1:80", Some("127.0.0.1")),
            ("[::1]:8080", Some("[::1]")),
            ("[::1]", Some("[::1]")),
            ("user@example.com", None),
            ("example.com:", None),
            ("exa mple.com", None),
            ("", None),
        ] {
            assert_eq!(normalize_host(raw).as_deref(), want, "{raw:?}");
        }
    }
}
