//! The stderr line format: `2026-11-22T05:00:00.123Z INFO GET /x 200 http_host=… remote_addr=…`.
//!
//! tracing-subscriber's default formatter quotes every string with Debug, styles every
//! level with ANSI machinery even when colours are off, and formats the date anew for each
//! line; for the access log that was half of a request's instructions. This one writes
//! values as they are, numbers with itoa, and the timestamp once per second.

use super::escape::{write_escaped, Escaping, Style};
use std::cell::RefCell;
use std::fmt::{self, Write as _};
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The stderr format of every event; `access_target` is the tracing target whose events are
/// access-log entries (written `GET /path 200 key=value…`).
pub(super) struct LineFormat {
    pub(super) access_target: &'static str,
}

/// A `key=value` value is quoted only when it would otherwise be ambiguous on one line.
/// A byte scan: cheaper than str::contains with a char array.
pub(super) fn needs_quotes(value: &str) -> bool {
    value.is_empty()
        || value
            .bytes()
            .any(|b| matches!(b, b' ' | b'"' | b'\n' | b'='))
}

thread_local! {
    /// (unix second, its RFC 3339 text without the zone) of the last line this thread wrote.
    static STAMP: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Writes the line's timestamp for `now`: `2026-11-22T05:00:00.123Z`.
pub(super) fn write_timestamp(w: &mut impl fmt::Write, now: SystemTime) -> fmt::Result {
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    STAMP.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != secs {
            let text = humantime::format_rfc3339_seconds(now).to_string();
            *cached = (secs, text.trim_end_matches('Z').to_owned());
        }
        w.write_str(&cached.1)
    })?;
    let millis = since.subsec_millis();
    let digits = [
        b'0' + (millis / 100) as u8,
        b'0' + (millis / 10 % 10) as u8,
        b'0' + (millis % 10) as u8,
    ];
    w.write_char('.')?;
    w.write_str(std::str::from_utf8(&digits).unwrap_or("000"))?;
    w.write_char('Z')
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        write_timestamp(&mut writer, SystemTime::now())?;
        writer.write_char(' ')?;
        writer.write_str(event.metadata().level().as_str())?;
        let mut visitor = LineVisitor {
            writer: &mut writer,
            access: event.metadata().target() == self.access_target,
            result: Ok(()),
        };
        event.record(&mut visitor);
        visitor.result?;
        writer.write_char('\n')
    }
}

struct LineVisitor<'a, 'w> {
    writer: &'a mut Writer<'w>,
    /// An access entry: its message repeats method, path and status, which lead the event's
    /// fields; print those bare instead of formatting the message.
    access: bool,
    result: fmt::Result,
}

impl LineVisitor<'_, '_> {
    /// Also `log.file`, `log.line`, … that events from the `log` crate carry: a library's
    /// source location on the build machine says nothing to whoever reads this line.
    fn skip(&self, field: &Field) -> bool {
        (self.access && field.name() == "message") || field.name().starts_with("log.")
    }

    fn bare(&self, field: &Field) -> bool {
        field.name() == "message"
            || (self.access && matches!(field.name(), "http_method" | "http_path" | "http_status"))
    }

    /// Written as they are even with spaces: the message and the access line's leading parts.
    fn unquoted(&self, field: &Field) -> bool {
        self.bare(field) || (self.access && field.name() == "upstream")
    }

    fn key(&mut self, field: &Field) -> fmt::Result {
        self.writer.write_char(' ')?;
        if self.access && field.name() == "upstream" {
            self.writer.write_str("via ")?;
        } else if !self.bare(field) {
            self.writer.write_str(field.name())?;
            self.writer.write_char('=')?;
        }
        Ok(())
    }
}

impl Visit for LineVisitor<'_, '_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if self.result.is_err() || self.skip(field) {
            return;
        }
        let quoted = !self.unquoted(field) && needs_quotes(value);
        let message = field.name() == "message";
        self.result = self.key(field).and_then(|()| match message {
            true => write_escaped(self.writer, value, Style::Message),
            false => write_value(self.writer, value, quoted),
        });
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        if self.result.is_err() || self.skip(field) {
            return;
        }
        self.result = self
            .key(field)
            .and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        if self.result.is_err() || self.skip(field) {
            return;
        }
        self.result = self
            .key(field)
            .and_then(|()| self.writer.write_str(itoa::Buffer::new().format(value)));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() || self.skip(field) {
            return;
        }
        // `%display` and `?debug` values (errors, paths) are escaped like strings; they
        // are not quoted, as before.
        self.result = self.key(field).and_then(|()| {
            let style = match field.name() {
                "message" => Style::Message,
                _ => Style::Bare,
            };
            let mut escaping = Escaping {
                out: &mut *self.writer,
                style,
            };
            write!(escaping, "{value:?}")
        });
    }
}

/// A value with unsafe characters escaped (see `escape`), in quotes if `quoted`.
pub(super) fn write_value(out: &mut impl fmt::Write, value: &str, quoted: bool) -> fmt::Result {
    if quoted {
        out.write_char('"')?;
    }
    let style = if quoted { Style::Quoted } else { Style::Bare };
    write_escaped(out, value, style)?;
    if quoted {
        out.write_char('"')?;
    }
    Ok(())
}
