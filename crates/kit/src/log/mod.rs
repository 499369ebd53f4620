//! Logging: native journald entries under systemd, readable lines on stderr otherwise, and
//! the fast path of the per-request access log.
//!
//! Under systemd, stderr is a stream into journald and every line becomes an entry with
//! nothing but `MESSAGE`. [`init`] detects that (`JOURNAL_STREAM`) and speaks journald's
//! native protocol instead, so fields stay fields: `journalctl -u app HTTP_STATUS=500`.
//! Run by hand, the same events are one line each on stderr:
//! `2026-11-22T05:00:00.123Z INFO GET /x 200 http_host=example.com http_duration_us=41 remote_addr=127.0.0.1`.
//!
//! ```no_run
//! use gatehouse_kit::log::{LogOptions, LogTarget};
//! gatehouse_kit::log::init(&LogOptions::new("app"));
//! tracing::info!(queue = "mail", "started");
//! ```

mod access;
mod line_format;

use crate::access::AccessEntry;
use crate::journal;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// Where log events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// journald when systemd connected stderr to the journal (`JOURNAL_STREAM`), else stderr.
    Auto,
    /// journald's native protocol, always.
    Journald,
    /// Lines on stderr, always.
    Stderr,
}

impl std::str::FromStr for LogTarget {
    type Err = String;

    fn from_str(s: &str) -> Result<LogTarget, String> {
        match s {
            "auto" => Ok(LogTarget::Auto),
            "journald" => Ok(LogTarget::Journald),
            "stderr" => Ok(LogTarget::Stderr),
            other => Err(format!(
                "unknown log target {other:?}; expected auto, journald or stderr"
            )),
        }
    }
}

/// What [`init`] sets up.
#[derive(Debug, Clone)]
pub struct LogOptions {
    /// `SYSLOG_IDENTIFIER` of the journal entries (`journalctl -t NAME`), and the prefix
    /// of the few messages written before logging works.
    pub identifier: String,
    /// A tracing filter (`info`, `app=debug,hyper=warn`); `None`: `RUST_LOG`, else `info`.
    pub filter: Option<String>,
    /// Where events go.
    pub target: LogTarget,
    /// The tracing target of access-log events (`TARGET=` in the journal; filter it off
    /// with `RUST_LOG=info,access=off`).
    pub access_target: &'static str,
}

impl LogOptions {
    /// Defaults for a service called `identifier`: `RUST_LOG` or `info`, journald when
    /// under systemd, the kit's access target.
    pub fn new(identifier: &str) -> LogOptions {
        LogOptions {
            identifier: identifier.to_owned(),
            filter: None,
            target: LogTarget::Auto,
            access_target: crate::access::ACCESS_TARGET,
        }
    }
}

/// Installs the global tracing subscriber (once per process; later calls do nothing).
pub fn init(opts: &LogOptions) {
    let filter = opts
        .filter
        .as_deref()
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let want_journal = match opts.target {
        LogTarget::Auto => journal::stderr_is_journal(),
        LogTarget::Journald => true,
        LogTarget::Stderr => false,
    };
    if want_journal {
        match journal::layer(&opts.identifier) {
            Ok(layer) => {
                let installed = tracing_subscriber::registry()
                    .with(filter)
                    .with(FlushAccessFirst)
                    .with(layer)
                    .try_init()
                    .is_ok();
                // Without a socket of our own the access log takes the tracing path.
                if let (true, Ok(socket)) = (installed, journal::JournalSocket::open()) {
                    access::use_journal(socket, opts.identifier.clone());
                }
                return;
            }
            Err(e) => eprintln!(
                "{}: journald unavailable ({e}); logging to stderr",
                opts.identifier
            ),
        }
    }
    let fmt = tracing_subscriber::fmt::layer()
        .with_writer(|| access::OrderedStderr)
        .with_ansi(false)
        .event_format(line_format::LineFormat {
            access_target: opts.access_target,
        });
    if tracing_subscriber::registry()
        .with(filter)
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

/// Writes the buffered access entries now. Runtimes made by
/// [`crate::lifecycle::build_runtime`] call it whenever a thread runs out of work; call it
/// before exiting.
pub fn flush_access() {
    access::flush();
}

/// Whether `entry` can take the fast path: [`init`] chose a sink, and the entry fits one
/// journal datagram (a huge path is left to tracing, whose journald layer passes what does
/// not fit in a memfd).
pub fn access_direct(entry: &AccessEntry<'_>) -> bool {
    access::direct() && entry.path.len() + entry.host.len() <= access::DIRECT_MAX
}

/// Buffers `entry` on the fast path: no tracing machinery per request, one write or one
/// sendmmsg(2) for many entries. The caller checked [`access_direct`] and that its access
/// target is enabled (`tracing::enabled!`).
pub fn write_access(entry: &AccessEntry<'_>) {
    access::write(entry);
}
