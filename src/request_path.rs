//! The canonical request path: decided once per request, before routing, and the only path
//! anything after routing sees. Routes match it, `static` routes look files up by it, and
//! `proxy` routes send it upstream (re-encoded, see [`encode`]), so a route and the app
//! behind it cannot disagree about which path a request is for.
//!
//! Canonical means: percent-decoded exactly once (`%2F` is a `/`, like every WSGI and ASGI
//! server decodes it), `.` and `..` segments resolved (plain or encoded), repeated slashes
//! merged, valid UTF-8. What cannot be made canonical safely is refused with 400: `..` above
//! the root, an encoded NUL, a malformed `%` escape, bytes that are not UTF-8 (overlong
//! forms of `.` and `/` among them), and dot segments with `;` parameters (`..;/`, which
//! servlet containers resolve as `..`). Like nginx, `\` and `;` are ordinary characters.

use std::borrow::Cow;

/// Why a path has no canonical form; answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Invalid {
    /// `..` would climb above `/`.
    AboveRoot,
    /// `%` not followed by two hex digits.
    BadEscape,
    /// `%00`.
    Nul,
    /// Decoded bytes that are not UTF-8.
    NotUtf8,
    /// `.;x` or `..;x`.
    DotWithParameters,
}

/// The canonical form of `raw` (a request's path as sent, still percent-encoded). Borrows
/// `raw` when it is canonical already, as nearly every request's path is.
pub(crate) fn canonicalize(raw: &str) -> Result<Cow<'_, str>, Invalid> {
    // `*` (OPTIONS) and the empty path of authority-form requests are no paths: no route
    // matches them.
    if !raw.starts_with('/') || is_canonical(raw) {
        return Ok(Cow::Borrowed(raw));
    }
    let decoded = decode(raw)?;
    let decoded = String::from_utf8(decoded).map_err(|_| Invalid::NotUtf8)?;
    let mut segments: Vec<&str> = Vec::new();
    // Whether the result ends in '/': a last segment that is empty, `.` or `..` leaves one
    // (RFC 3986 §5.2.4: "/a/b/.." is "/a/").
    let mut trailing_slash = false;
    for segment in decoded.split('/').skip(1) {
        trailing_slash = false;
        match segment {
            "" | "." => trailing_slash = true,
            ".." => {
                segments.pop().ok_or(Invalid::AboveRoot)?;
                trailing_slash = true;
            }
            s if matches!(s.split(';').next(), Some("." | "..")) => {
                return Err(Invalid::DotWithParameters)
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if trailing_slash || segments.is_empty() {
        out.push('/');
    }
    Ok(Cow::Owned(out))
}

/// No escape, no empty segment and no segment starting with a dot: nothing to do.
fn is_canonical(raw: &str) -> bool {
    let b = raw.as_bytes();
    !b.contains(&b'%')
        && !b
            .windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
}

fn decode(raw: &str) -> Result<Vec<u8>, Invalid> {
    let b = raw.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'%' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let hex = |c: Option<&u8>| c.and_then(|c| (*c as char).to_digit(16));
        match (hex(b.get(i + 1)), hex(b.get(i + 2))) {
            (Some(0), Some(0)) => return Err(Invalid::Nul),
            (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
            _ => return Err(Invalid::BadEscape),
        }
        i += 3;
    }
    Ok(out)
}

/// Bytes that stay as they are in a path sent upstream: RFC 3986's unreserved characters,
/// sub-delims, ':', '@' and '/'. Everything else is sent as `%XX` (upper-case hex).
fn is_path_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/".contains(&b)
}

/// A canonical path as a request target for an upstream: the canonical path percent-encoded
/// where it must be, so that decoding it once gives the canonical path back.
pub(crate) fn encode(canonical: &str) -> Cow<'_, str> {
    if canonical.bytes().all(is_path_char) {
        return Cow::Borrowed(canonical);
    }
    let mut out = String::with_capacity(canonical.len() + 16);
    for &b in canonical.as_bytes() {
        if is_path_char(b) {
            out.push(b as char);
        } else {
            const HEX: &[u8; 16] = b"0123456789ABCDEF";
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(raw: &str) -> Result<String, Invalid> {
        canonicalize(raw).map(Cow::into_owned)
    }

    #[test]
    fn canonical_paths_are_borrowed() {
        for raw in [
            "/", "/admin/x", "/a.b/c.d", "/x;y", "/a\\b", "/a-b_c~d", "*", "",
        ] {
            assert!(
                matches!(canonicalize(raw), Ok(Cow::Borrowed(p)) if p == raw),
                "{raw}"
            );
        }
    }

    #[test]
    fn the_corpus_decodes_to_one_form() {
        for (raw, want) in [
            ("/%61dmin/x", "/admin/x"),
            ("/%61DMIN/x", "/aDMIN/x"),
            ("/admin%2fx", "/admin/x"),
            ("/admin%2Fx", "/admin/x"),
            ("//admin//x", "/admin/x"),
            ("/./admin/x", "/admin/x"),
            ("/x/%2e%2e/admin/x", "/admin/x"),
            ("/x/%2E%2e/admin/x", "/admin/x"),
            ("/foo/../admin/x", "/admin/x"),
            ("/foo/..%2fadmin/x", "/admin/x"),
            ("/foo%2f..%2fadmin%2fx", "/admin/x"),
            ("/admin/x/.", "/admin/x/"),
            ("/admin/x/..", "/admin/"),
            ("/admin/.", "/admin/"),
            ("/caf%C3%A9", "/café"),
            ("/%252e%252e/x", "/%2e%2e/x"),
            ("/a%3Fb%23c", "/a?b#c"),
            ("/admin;jsessionid=1/x", "/admin;jsessionid=1/x"),
            ("/admin%5cx", "/admin\\x"),
            ("/.well-known/x", "/.well-known/x"),
            ("/x/..", "/"),
        ] {
            assert_eq!(canon(raw).as_deref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn what_cannot_be_made_canonical_is_refused() {
        for (raw, why) in [
            ("/..", Invalid::AboveRoot),
            ("/../admin/x", Invalid::AboveRoot),
            ("/x/../../admin", Invalid::AboveRoot),
            ("/%2e%2e/admin", Invalid::AboveRoot),
            ("/..%2f", Invalid::AboveRoot),
            ("/admin%00.html", Invalid::Nul),
            ("/a%zz", Invalid::BadEscape),
            ("/a%2", Invalid::BadEscape),
            ("/100%", Invalid::BadEscape),
            ("/%c0%ae%c0%ae/admin", Invalid::NotUtf8),
            ("/%c0%af", Invalid::NotUtf8),
            ("/%ff", Invalid::NotUtf8),
            ("/public/..;/admin/x", Invalid::DotWithParameters),
            ("/public/.;x/admin", Invalid::DotWithParameters),
        ] {
            assert_eq!(canon(raw), Err(why), "{raw}");
        }
    }

    #[test]
    fn encoding_for_upstreams_round_trips() {
        assert!(matches!(encode("/admin/x;y=1:@!"), Cow::Borrowed(_)));
        assert_eq!(
            encode("/a b/café?#%\"\\"),
            "/a%20b/caf%C3%A9%3F%23%25%22%5C"
        );
        for raw in ["/a%20b", "/caf%C3%A9", "/a%3Fb", "/%2525", "/x%5Cy"] {
            let canonical = canon(raw).unwrap();
            assert_eq!(encode(&canonical), raw);
            assert_eq!(canon(&encode(&canonical)).unwrap(), canonical);
        }
    }
}
