//! The access log's fast path: one entry per request, encoded without tracing's per-event
//! machinery into a buffer that goes out when a runtime thread runs out of work (`flush`,
//! hooked to tokio's thread park), when it holds `FLUSH_BYTES`, or when its oldest entry is
//! `FLUSH_AGE` old. Under load that is one syscall for many requests instead of one each;
//! an idle server still writes at once. One buffer for all threads, written under its lock,
//! so entries keep the order in which they were logged.
//!
//! On stderr the line is the one `LineFormat` writes for the same event; in the journal the
//! entry has the fields tracing-journald gave it, sent in one sendmmsg(2) per batch. With an
//! access file (gatehouse's `server.access_log_file`) the stderr line goes to that file
//! instead, one write(2) per batch: journald spends more CPU on an entry than gatehouse on
//! the request (gatehouse's bench/deployed.sh), a file line costs a few hundred bytes of an
//! appending write.

use super::escape::{write_escaped, Style};
use super::line_format::{needs_quotes, write_timestamp, write_value};
use crate::access::AccessEntry as Entry;
use crate::journal::{EntryBatch, JournalSocket};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const FLUSH_BYTES: usize = 32 * 1024;
/// Path plus host bytes above which an entry is left to tracing (see `access_direct`): the
/// journal entry carries the path twice and must fit one datagram.
pub(super) const DIRECT_MAX: usize = 16 * 1024;
const FLUSH_AGE: Duration = Duration::from_millis(200);

/// Where access entries go; set once at start-up, unset while tracing handles them.
enum Sink {
    Stderr,
    /// journald, with the SYSLOG_IDENTIFIER of the other entries.
    Journal(JournalSocket, String),
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// The access file, when set: it takes the entries instead of `SINK`. Locked after
/// `PENDING` whenever both are held.
static FILE: Mutex<Option<std::fs::File>> = Mutex::new(None);
static TO_FILE: AtomicBool = AtomicBool::new(false);

struct Pending {
    text: String,
    journal: EntryBatch,
    /// The journal entry's MESSAGE, built here to spare an allocation per entry.
    message: String,
    /// When the oldest buffered entry was logged (since the Unix epoch).
    oldest: Duration,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    text: String::new(),
    journal: EntryBatch::new(),
    message: String::new(),
    oldest: Duration::ZERO,
});

fn pending() -> MutexGuard<'static, Pending> {
    // A panic while holding the lock leaves at worst a half-written entry: keep logging.
    PENDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn file() -> MutexGuard<'static, Option<std::fs::File>> {
    FILE.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The access log's file, opened (appending, created 0640) but not yet in use (see
/// [`use_access_file`](super::use_access_file)): a reload opens it before it commits, so a
/// path it cannot open leaves the old log in place.
#[derive(Debug)]
pub struct AccessFile(Option<std::fs::File>);

impl AccessFile {
    /// Opens `path` for appending, creating it `0640`; `None`: no file (entries go to the
    /// journal or stderr).
    pub fn open(path: Option<&std::path::Path>) -> std::io::Result<AccessFile> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let Some(path) = path else {
            return Ok(AccessFile(None));
        };
        let file = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .open(path)?;
        Ok(AccessFile(Some(file)))
    }
}

/// Entries from now on go to `file` (or, for none, back to the journal or stderr); those
/// buffered so far go where they were meant to. Reopening the same path after logrotate
/// moved it starts a new file.
pub(super) fn use_file(opened: AccessFile) {
    let mut pending = pending();
    write_pending(SINK.get(), &mut pending);
    let mut current = file();
    TO_FILE.store(opened.0.is_some(), Ordering::Relaxed);
    *current = opened.0;
}

/// Access entries go to stderr as lines.
pub(super) fn use_stderr() {
    let _ = SINK.set(Sink::Stderr);
}

/// Access entries go to journald on `socket`.
pub(super) fn use_journal(socket: JournalSocket, identifier: String) {
    let _ = SINK.set(Sink::Journal(socket, identifier));
}

pub(super) fn to_file() -> bool {
    TO_FILE.load(Ordering::Relaxed)
}

pub(super) fn direct() -> bool {
    TO_FILE.load(Ordering::Relaxed) || SINK.get().is_some()
}

/// Buffers the entry for the sink chosen at start-up.
pub(super) fn write(entry: &Entry<'_>) {
    let to_file = TO_FILE.load(Ordering::Relaxed);
    let sink = SINK.get();
    if !to_file && sink.is_none() {
        return;
    }
    let now = SystemTime::now();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut pending = pending();
    if pending.text.is_empty() && pending.journal.is_empty() {
        pending.oldest = since_epoch;
    }
    match sink {
        Some(Sink::Journal(_, identifier)) if !to_file => {
            let Pending {
                journal, message, ..
            } = &mut *pending;
            journal_entry(journal, message, identifier, entry);
        }
        // Writing into a String cannot fail.
        _ => drop(format_line(&mut pending.text, now, entry)),
    }
    // A wall clock stepped back makes the age unknowable: flush rather than hold on.
    if pending.text.len() + pending.journal.queued_bytes() >= FLUSH_BYTES
        || since_epoch < pending.oldest
        || since_epoch - pending.oldest >= FLUSH_AGE
    {
        write_pending(sink, &mut pending);
    }
}

fn format_line(out: &mut String, now: SystemTime, e: &Entry<'_>) -> std::fmt::Result {
    write_timestamp(out, now)?;
    out.push_str(" INFO ");
    // The journal's MESSAGE keeps the bytes as they came; a terminal line must not.
    write_escaped(out, e.method, Style::Bare)?;
    out.push(' ');
    write_escaped(out, e.path, Style::Bare)?;
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(e.status));
    if let Some(upstream) = e.upstream {
        out.push_str(" via ");
        write_escaped(out, upstream, Style::Bare)?;
    }
    out.push_str(" http_host=");
    write_value(out, e.host, needs_quotes(e.host))?;
    out.push_str(" http_duration_us=");
    out.push_str(itoa::Buffer::new().format(e.duration_us));
    out.push_str(" remote_addr=");
    out.push_str(e.remote);
    out.push('\n');
    Ok(())
}

/// MESSAGE, and the start of the stderr line: "GET /path 200 via UPSTREAM".
fn push_message(out: &mut String, e: &Entry<'_>) {
    out.push_str(e.method);
    out.push(' ');
    out.push_str(e.path);
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(e.status));
    if let Some(upstream) = e.upstream {
        out.push_str(" via ");
        out.push_str(upstream);
    }
}

/// The fields tracing-journald writes for the access event (see `journal::layer`).
fn journal_entry(batch: &mut EntryBatch, message: &mut String, identifier: &str, e: &Entry<'_>) {
    message.clear();
    push_message(message, e);
    batch.field("PRIORITY", "6");
    batch.field("SYSLOG_IDENTIFIER", identifier);
    batch.field("TARGET", e.target);
    batch.field("MESSAGE", message);
    batch.field("HTTP_METHOD", e.method);
    batch.field("HTTP_PATH", e.path);
    batch.field("HTTP_STATUS", itoa::Buffer::new().format(e.status));
    if let Some(upstream) = e.upstream {
        batch.field("UPSTREAM", upstream);
    }
    batch.field("HTTP_HOST", e.host);
    batch.field(
        "HTTP_DURATION_US",
        itoa::Buffer::new().format(e.duration_us),
    );
    batch.field("REMOTE_ADDR", e.remote);
    batch.end_entry();
}

/// Writes the buffered access entries. Called when a runtime thread parks or stops, before
/// any other log line (to keep the order), and at exit.
pub(super) fn flush() {
    let sink = SINK.get();
    if sink.is_none() && !TO_FILE.load(Ordering::Relaxed) {
        return;
    }
    let mut pending = pending();
    if !pending.text.is_empty() || !pending.journal.is_empty() {
        write_pending(sink, &mut pending);
    }
}

fn write_pending(sink: Option<&Sink>, pending: &mut Pending) {
    match sink {
        Some(sink) => write_out(sink, pending),
        None => write_text(&mut pending.text),
    }
}

fn write_out(sink: &Sink, pending: &mut Pending) {
    if !pending.text.is_empty() {
        write_text(&mut pending.text);
    }
    if let Sink::Journal(socket, _) = sink {
        if !pending.journal.is_empty() {
            pending.journal.send(socket);
        }
    }
}

/// Lines to the access file when there is one, else to stderr. A full disk or a closed
/// stderr loses the lines, as it would lose any other log line.
fn write_text(text: &mut String) {
    match &mut *file() {
        Some(file) => drop(file.write_all(text.as_bytes())),
        None => drop(std::io::stderr().lock().write_all(text.as_bytes())),
    }
    text.clear();
    // A burst must not pin a large buffer for the life of the process.
    if text.capacity() > 2 * FLUSH_BYTES {
        text.shrink_to(FLUSH_BYTES);
    }
}

/// stderr for the other log lines: flushes the access lines first so the output keeps
/// the order in which things happened.
pub(super) struct OrderedStderr;

impl std::io::Write for OrderedStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        flush();
        std::io::stderr().write(buf)
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        flush();
        std::io::stderr().write_all(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
