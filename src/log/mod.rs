//! Logging: native journald entries under systemd, readable lines on stderr otherwise, and
//! the per-request access log with its journal fields.

mod access;
mod escape;
mod line_format;
mod peer_noise;

pub(crate) use escape::is_unsafe_char;

pub(crate) use access::flush as flush_access;
pub(crate) use access::{use_file as use_access_file, AccessFile};
pub(crate) use peer_noise::summarize as summarize_peer_noise;

use gatehouse_kit::journal;
use std::net::SocketAddr;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum LogTarget {
    /// journald when systemd connected stderr to the journal (JOURNAL_STREAM), else stderr.
    Auto,
    Journald,
    Stderr,
}

/// Installs the global subscriber. `level` is a tracing filter ("info", "gatehouse=debug");
/// without it RUST_LOG is used, then "info".
pub(crate) fn init(level: Option<&str>, target: LogTarget) {
    let filter = level
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let peer_noise = peer_noise::PeerNoise::new(&filter.to_string());
    let want_journal = match target {
        LogTarget::Auto => journal::stderr_is_journal(),
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
    };
    if want_journal {
        match journal::layer("gatehouse") {
            Ok(layer) => {
                let installed = tracing_subscriber::registry()
                    .with(filter)
                    .with(peer_noise)
                    .with(FlushAccessFirst)
                    .with(layer)
                    .try_init()
                    .is_ok();
                // Without a socket of our own the access log takes the tracing path.
                if let (true, Ok(socket)) = (installed, journal::JournalSocket::open()) {
                    access::use_journal(socket);
                }
                return;
            }
            Err(e) => eprintln!("gatehouse: journald unavailable ({e}); logging to stderr"),
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| access::OrderedStderr)
        .with_ansi(false)
        .event_format(line_format::LineFormat);
    if tracing_subscriber::registry()
        .with(filter)
        .with(peer_noise)
        .with(fmt)
        .try_init()
        .is_ok()
    {
        access::use_stderr();
    }
}

/// Sends the batched access entries before any other event reaches the journal, so the
/// journal keeps the order in which things happened.
struct FlushAccessFirst;

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for FlushAccessFirst {
    fn on_event(&self, _: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        access::flush();
    }
}

/// Where a request came from, for REMOTE_ADDR.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Remote {
    Tcp(SocketAddr),
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
    /// core::fmt, which took ~1.4k instructions of a new connection's ~39k.
    pub(crate) fn text(&self) -> Box<str> {
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

/// Requests answered below 400 since start, for `access_log_sample`.
static SAMPLED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether a request answered `status` gets an access entry under `server.access_log` and
/// `server.access_log_sample`. Errors (400 and above) are never sampled away.
pub(crate) fn access_wanted(
    mode: crate::config::AccessLog,
    sample: u32,
    status: http::StatusCode,
) -> bool {
    use crate::config::AccessLog;
    let error = status.as_u16() >= 400;
    match mode {
        AccessLog::Off => false,
        AccessLog::Errors => error,
        AccessLog::All if error || sample <= 1 => true,
        AccessLog::All => {
            SAMPLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % u64::from(sample) == 0
        }
    }
}

/// The tracing target of access-log events.
pub(crate) const ACCESS_TARGET: &str = "gatehouse::access";

/// One access-log entry. The field names are a public interface: journalctl filters on
/// HTTP_METHOD, HTTP_PATH, HTTP_HOST, HTTP_STATUS, HTTP_DURATION_US, REMOTE_ADDR and UPSTREAM
/// (only proxied requests have an `upstream`; tracing records an Option field only if Some).
pub(crate) fn access(
    method: &http::Method,
    path: &str,
    host: &str,
    status: http::StatusCode,
    upstream: Option<&str>,
    elapsed: Duration,
    remote: &str,
) {
    let duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
    let method = method.as_str();
    let status = status.as_u16();
    // Huge entries (a raised max_header_size) take the tracing path, whose journald
    // layer passes what does not fit a datagram in a memfd; a file takes any size.
    if access::direct() && (access::to_file() || path.len() + host.len() <= access::DIRECT_MAX) {
        // The filter still decides (RUST_LOG=gatehouse::access=off silences it).
        if tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
            access::write(&access::Entry {
                method,
                path,
                status,
                upstream,
                host,
                duration_us,
                remote,
            });
        }
        return;
    }
    // Field order matters to the stderr format: "GET /path 200 via UPSTREAM host=…".
    tracing::info!(
        target: ACCESS_TARGET,
        http_method = method,
        http_path = path,
        http_status = status,
        upstream,
        http_host = host,
        http_duration_us = duration_us,
        remote_addr = remote,
        "{method} {path} {status}{}",
        Via(upstream)
    );
}

/// " via UPSTREAM" in the access message of a proxied request, nothing otherwise.
struct Via<'a>(Option<&'a str>);

impl std::fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(u) => write!(f, " via {u}"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Remote;

    #[test]
    fn remote_text_matches_its_display() {
        for addr in [
            "127.0.0.1:80",
            "10.200.3.45:1",
            "0.0.0.0:0",
            "255.255.255.255:65535",
            "[::ffff:192.0.2.7]:8080",
            "[2001:db8::1]:443",
            "[::1]:80",
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
}
