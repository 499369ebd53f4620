//! Escaping of logged values on the stderr target: a client controls paths, hosts and
//! header-derived text, and must not be able to forge a line (`\n`), hide or reorder text
//! in a terminal (bidi overrides, C1 controls such as CSI), or split a line for readers that
//! treat U+2028 as a line break. Unsafe characters are written as the `\xHH` escapes of their
//! UTF-8 bytes, as nginx writes them; a backslash is doubled so an escape cannot be faked.
//! A message (our own text, which may quote others') keeps its line breaks but indents every
//! continuation line, so nothing in it can start a line of its own: entries start at column 0.

use std::fmt::{self, Write};

/// A character a log line must not carry as it is: C0 and C1 controls, DEL, the line and
/// paragraph separators, and the bidirectional formatting characters. (For a service's own
/// output that a client's text reaches, such as a directory listing.)
pub fn is_unsafe_char(c: char) -> bool {
    matches!(c,
        '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        | '\u{61c}'
        | '\u{200e}' | '\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2066}'..='\u{2069}')
}

/// Whether `s` can be written as it is: printable ASCII other than `\`, the case of nearly
/// every request's path and host. Checked eight bytes at a time (this runs several times per
/// access-log line).
pub(crate) fn is_plain(s: &str) -> bool {
    let mut chunks = s.as_bytes().chunks_exact(8);
    for chunk in &mut chunks {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        if !plain_word(u64::from_le_bytes(word)) {
            return false;
        }
    }
    chunks
        .remainder()
        .iter()
        .all(|&b| (0x20..0x7f).contains(&b) && b != b'\\')
}

/// No byte of `x` is >= 0x80, < 0x20, 0x7f or `\` (the classic has-zero-byte bit tricks).
fn plain_word(x: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let has_zero = |v: u64| v.wrapping_sub(ONES) & !v & HIGH != 0;
    // With no byte >= 0x80, "x - 0x20 per byte" borrows into the high bit exactly where a
    // byte is below 0x20.
    x & HIGH == 0
        && x.wrapping_sub(0x20 * ONES) & !x & HIGH == 0
        && !has_zero(x ^ (0x7f * ONES))
        && !has_zero(x ^ (u64::from(b'\\') * ONES))
}

/// How a value is written.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Style {
    Bare,
    /// Inside quotes the caller writes: `"` is escaped too.
    Quoted,
    /// A message: line breaks stay, each followed by an indent.
    Message,
}

/// Writes `s` with unsafe characters escaped.
pub(crate) fn write_escaped(out: &mut impl Write, s: &str, style: Style) -> fmt::Result {
    let quoted = style == Style::Quoted;
    if is_plain(s) && !(quoted && s.contains('"')) {
        return out.write_str(s);
    }
    let mut plain_from = 0;
    for (i, c) in s.char_indices() {
        let escape = c == '\\' || (quoted && c == '"') || is_unsafe_char(c);
        if !escape {
            continue;
        }
        out.write_str(&s[plain_from..i])?;
        plain_from = i + c.len_utf8();
        match c {
            '\\' => out.write_str("\\\\")?,
            '"' => out.write_str("\\\"")?,
            '\n' if style == Style::Message => out.write_str("\n    ")?,
            c => {
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    write!(out, "\\x{b:02X}")?;
                }
            }
        }
    }
    out.write_str(&s[plain_from..])
}

/// `fmt::Write` adaptor that escapes everything written through it (for `Debug`/`Display`
/// values, which arrive in pieces).
pub(crate) struct Escaping<'a, W: Write> {
    pub(crate) out: &'a mut W,
    pub(crate) style: Style,
}

impl<W: Write> Write for Escaping<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        write_escaped(self.out, s, self.style)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn esc(s: &str, quoted: bool) -> String {
        let mut out = String::new();
        let style = if quoted { Style::Quoted } else { Style::Bare };
        write_escaped(&mut out, s, style).unwrap();
        out
    }

    #[test]
    fn controls_bidi_and_separators_become_byte_escapes() {
        assert_eq!(esc("/a b", false), "/a b");
        assert_eq!(esc("/x\n2026 INFO GET /", false), "/x\\x0A2026 INFO GET /");
        assert_eq!(esc("\u{9b}31m", false), "\\xC2\\x9B31m");
        assert_eq!(
            esc("a\u{2028}b\u{202e}c", false),
            "a\\xE2\\x80\\xA8b\\xE2\\x80\\xAEc"
        );
        assert_eq!(esc("café", false), "café");
        assert_eq!(esc("a\\x0A", false), "a\\\\x0A");
        assert_eq!(esc("say \"hi\"", true), "say \\\"hi\\\"");
        assert_eq!(esc("say \"hi\"", false), "say \"hi\"");
        let mut out = String::new();
        write_escaped(&mut out, "invalid:\nfile:1:2: x\u{202e}", Style::Message).unwrap();
        assert_eq!(out, "invalid:\n    file:1:2: x\\xE2\\x80\\xAE");
    }

    #[test]
    fn the_word_at_a_time_check_agrees_with_the_byte_rule() {
        let plain = |b: u8| (0x20..0x7f).contains(&b) && b != b'\\';
        for bad in 0..=255u8 {
            for at in 0..11 {
                let mut s = vec![b'a'; 11];
                s[at] = bad;
                let expect = s.iter().all(|&b| plain(b));
                let text = String::from_utf8_lossy(&s);
                if text.as_bytes() == s.as_slice() {
                    assert_eq!(is_plain(&text), expect, "byte {bad:#x} at {at}");
                } else {
                    assert!(!is_plain(&text), "byte {bad:#x} at {at}");
                }
            }
        }
        assert!(is_plain("/static/app.js?v=1"));
        assert!(!is_plain("/static/app\u{202e}.js"));
    }

    #[test]
    fn pieces_written_through_the_adaptor_are_escaped() {
        let mut out = String::new();
        let error = std::io::Error::other("x\ry");
        write!(
            Escaping {
                out: &mut out,
                style: Style::Bare
            },
            "{error} / {:?}",
            "\u{2029}"
        )
        .unwrap();
        assert_eq!(out, "x\\x0Dy / \"\\\\u{2029}\"");
    }
}
