//! The access log's stderr fast path: one line per request, formatted without tracing's
//! per-event machinery into a buffer that goes out in one `write` when a runtime thread
//! runs out of work (`flush`, hooked to tokio's thread park), when it holds `FLUSH_BYTES`,
//! or when its oldest line is `FLUSH_AGE` old. Under load that is one syscall for many
//! requests instead of one each; an idle server still writes at once. One buffer for all
//! threads, written under its lock, so lines keep the order in which they were logged.
//!
//! The line is the one `LineFormat` writes for the same event, so readers see no change.

use super::line_format::{needs_quotes, write_timestamp};
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Set once at start-up when access lines go to stderr in the line format.
static DIRECT: AtomicBool = AtomicBool::new(false);

const FLUSH_BYTES: usize = 32 * 1024;
const FLUSH_AGE: Duration = Duration::from_millis(200);

struct Pending {
    text: String,
    /// When the oldest buffered line was logged (since the Unix epoch).
    oldest: Duration,
}

static PENDING: Mutex<Pending> = Mutex::new(Pending {
    text: String::new(),
    oldest: Duration::ZERO,
});

fn pending() -> std::sync::MutexGuard<'static, Pending> {
    // A panic while holding the lock leaves at worst a half-written line: keep logging.
    PENDING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub(super) fn enable_direct() {
    DIRECT.store(true, Ordering::Relaxed);
}

pub(super) fn direct() -> bool {
    DIRECT.load(Ordering::Relaxed)
}

/// One access entry, as its fields appear in the journal.
pub(super) struct Entry<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub status: u16,
    pub upstream: Option<&'a str>,
    pub host: &'a str,
    pub duration_us: u64,
    pub remote: &'a str,
}

/// Buffers the entry's stderr line.
pub(super) fn write_line(entry: &Entry<'_>) {
    let now = SystemTime::now();
    let since_epoch = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let mut pending = pending();
    if pending.text.is_empty() {
        pending.oldest = since_epoch;
    }
    // Writing into a String cannot fail.
    let _ = format_line(&mut pending.text, now, entry);
    if pending.text.len() >= FLUSH_BYTES || since_epoch.saturating_sub(pending.oldest) >= FLUSH_AGE
    {
        write_out(&mut pending);
    }
}

fn format_line(out: &mut String, now: SystemTime, e: &Entry<'_>) -> std::fmt::Result {
    write_timestamp(out, now)?;
    out.push_str(" INFO ");
    out.push_str(e.method);
    out.push(' ');
    out.push_str(e.path);
    out.push(' ');
    out.push_str(itoa::Buffer::new().format(e.status));
    if let Some(upstream) = e.upstream {
        out.push_str(" via ");
        out.push_str(upstream);
    }
    out.push_str(" http_host=");
    if needs_quotes(e.host) {
        write!(out, "{:?}", e.host)?;
    } else {
        out.push_str(e.host);
    }
    out.push_str(" http_duration_us=");
    out.push_str(itoa::Buffer::new().format(e.duration_us));
    out.push_str(" remote_addr=");
    out.push_str(e.remote);
    out.push('\n');
    Ok(())
}

/// Writes the buffered access lines. Called when a runtime thread parks or stops, before
/// any other log line (to keep the order), and at exit.
pub fn flush() {
    let mut pending = pending();
    if !pending.text.is_empty() {
        write_out(&mut pending);
    }
}

fn write_out(pending: &mut Pending) {
    // A closed or full stderr loses the lines, as it would lose any other log line.
    let _ = std::io::stderr().lock().write_all(pending.text.as_bytes());
    pending.text.clear();
    // A burst must not pin a large buffer for the life of the process.
    if pending.text.capacity() > 2 * FLUSH_BYTES {
        pending.text.shrink_to(FLUSH_BYTES);
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
