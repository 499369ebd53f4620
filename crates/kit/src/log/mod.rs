//! Logging: native journald entries under systemd, readable lines on stderr otherwise, and
//! the fast path of the per-request access log.
//!
//! Under systemd, stderr is a stream into journald and every line becomes an entry with
//! nothing but `MESSAGE`. [`init`] detects that (`JOURNAL_STREAM`) and speaks journald's
//! native protocol instead, so fields stay fields: `journalctl -u app HTTP_STATUS=500`.
//! Run by hand, the same events are one line each on stderr:
//! `2026-11-22T05:00:00.123Z INFO GET /x 200 http_host=example.com http_duration_us=41 remote_addr=127.0.0.1`,
//! with what a client could use to forge or hide a line (controls, bidi overrides, line
//! separators) written as `\xHH` escapes, as nginx does.
//!
//! Access entries take a fast path (no tracing machinery per request, one write or one
//! sendmmsg(2) for many entries); with [`use_access_file`] they go to a file of their own
//! instead, in the stderr format.
//!
//! ```no_run
//! use gatehouse_kit::log::{LogOptions, LogTarget};
//! gatehouse_kit::log::init(&LogOptions::new("app"));
//! tracing::info!(queue = "mail", "started");
//! ```

mod access;
mod escape;
mod line_format;

pub use access::AccessFile;
pub use escape::is_unsafe_char;

use crate::access::AccessEntry;
use crate::journal;
use tracing_subscriber::layer::{Identity, Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

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
    init_with_layer(opts, |_| Identity::new());
}

/// [`init`] with a layer of the service's own between the filter and the output (one that
/// counts or holds back some events, say); `make` gets the filter in use.
pub fn init_with_layer<L>(opts: &LogOptions, make: impl FnOnce(&EnvFilter) -> L)
where
    L: Layer<Layered<EnvFilter, Registry>> + Send + Sync + 'static,
{
    let filter = opts
        .filter
        .as_deref()
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let own = make(&filter);
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
                    .with(own)
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
        .with(own)
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

/// Whether `entry` can take the fast path: [`init`] chose a sink (or an access file is in
/// use), and the entry fits one journal datagram (a huge path is left to tracing, whose
/// journald layer passes what does not fit in a memfd; a file takes any size).
pub fn access_direct(entry: &AccessEntry<'_>) -> bool {
    access::direct()
        && (access::to_file() || entry.path.len() + entry.host.len() <= access::DIRECT_MAX)
}

/// Access entries from now on go to `file` (for [`AccessFile::open`]`(None)`: back to the
/// journal or stderr); those buffered so far go where they were meant to. Reopening the
/// same path after logrotate moved it starts a new file. Open the new file before
/// committing a reload, so a path that cannot be opened leaves the old one in use.
pub fn use_access_file(file: AccessFile) {
    access::use_file(file);
}

/// Buffers `entry` on the fast path: no tracing machinery per request, one write or one
/// sendmmsg(2) for many entries. The caller checked [`access_direct`] and that its access
/// target is enabled (`tracing::enabled!`).
pub fn write_access(entry: &AccessEntry<'_>) {
    access::write(entry);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry<'a>(path: &'a str, host: &'a str) -> AccessEntry<'a> {
        AccessEntry {
            method: "GET",
            path,
            status: 200,
            upstream: Some("app"),
            host,
            duration_us: 41,
            remote: "192.0.2.7",
            target: crate::access::ACCESS_TARGET,
        }
    }

    #[test]
    fn an_access_file_gets_batched_escaped_lines_of_any_size() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("access.log");
        let huge = format!("/{}", "a".repeat(access::DIRECT_MAX));
        assert!(!access_direct(&entry(&huge, "h")), "no sink chosen yet");
        use_access_file(AccessFile::open(Some(&path)).unwrap());
        assert!(access_direct(&entry(&huge, "h")), "a file takes any size");
        write_access(&entry("/x\n2026 INFO forged", "example.com"));
        write_access(&entry(&huge, "two words"));
        // Batched: nothing is written until a flush (or 32 KiB, or 200 ms).
        let before = std::fs::read_to_string(&path).unwrap();
        flush_access();
        let text = std::fs::read_to_string(&path).unwrap();
        use_access_file(AccessFile::open(None).unwrap());
        assert!(
            !access_direct(&entry("/", "h")),
            "no file and no sink: the tracing path again"
        );

        assert!(before.len() < text.len(), "{before:?}");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].ends_with(
                " INFO GET /x\\x0A2026 INFO forged 200 via app http_host=example.com http_duration_us=41 remote_addr=192.0.2.7"
            ),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains(&huge), "{}", &lines[1][..80]);
        assert!(
            lines[1].contains(" http_host=\"two words\" "),
            "{}",
            lines[1]
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o137, 0, "created 0640 at most: {mode:o}");
    }
}
