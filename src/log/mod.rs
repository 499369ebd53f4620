//! Logging: gatehouse's choices on top of gatehouse-kit's `log` (native journald entries
//! under systemd, readable lines on stderr otherwise, the access log's batched sinks and
//! its file): the CLI's `--log-target`, the peer-noise filter, access-log sampling, and
//! the access entry with its journal fields.

mod peer_noise;

pub(crate) use gatehouse_kit::access::Remote;
pub(crate) use gatehouse_kit::log::is_unsafe_char;
pub(crate) use gatehouse_kit::log::{flush_access, use_access_file, AccessFile};
pub(crate) use peer_noise::summarize as summarize_peer_noise;

use gatehouse_kit::access::AccessEntry;
use std::time::Duration;

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
    let options = gatehouse_kit::log::LogOptions {
        identifier: "gatehouse".to_owned(),
        filter: level.map(str::to_owned),
        target: match target {
            LogTarget::Auto => gatehouse_kit::log::LogTarget::Auto,
            LogTarget::Journald => gatehouse_kit::log::LogTarget::Journald,
            LogTarget::Stderr => gatehouse_kit::log::LogTarget::Stderr,
        },
        access_target: ACCESS_TARGET,
    };
    gatehouse_kit::log::init_with_layer(&options, |filter| {
        peer_noise::PeerNoise::new(&filter.to_string())
    });
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
    let duration_us = gatehouse_kit::access::duration_us(elapsed);
    let method = method.as_str();
    let status = status.as_u16();
    let entry = AccessEntry {
        method,
        path,
        status,
        upstream,
        host,
        duration_us,
        remote,
        target: ACCESS_TARGET,
    };
    // Huge entries (a raised max_header_size) take the tracing path, whose journald
    // layer passes what does not fit a datagram in a memfd; a file takes any size.
    if gatehouse_kit::log::access_direct(&entry) {
        // The filter still decides (RUST_LOG=gatehouse::access=off silences it).
        if tracing::enabled!(target: ACCESS_TARGET, tracing::Level::INFO) {
            gatehouse_kit::log::write_access(&entry);
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
        gatehouse_kit::access::Via(upstream)
    );
}
