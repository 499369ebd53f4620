//! Validators (ETag, Last-Modified) and conditional requests, in RFC 9110 §13.2.2 order.

use super::path::Stat;
use http::{header, HeaderMap, HeaderValue, Method};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The validators of one representation (a file, or its precompressed sibling).
pub(crate) struct Validators {
    /// Strong ETag, quoted: size, mtime to the nanosecond, inode, and the encoding.
    pub(crate) etag: String,
    /// Whole seconds, as HTTP dates carry.
    pub(crate) modified: SystemTime,
}

impl Validators {
    pub(crate) fn of(meta: &Stat, encoding: Option<&str>) -> Validators {
        let secs = u64::try_from(meta.mtime()).unwrap_or(0);
        let nanos = u64::try_from(meta.mtime_nsec()).unwrap_or(0);
        // "size-mtime.nanos-inode[-encoding]" in hex, built as bytes without the formatting
        // machinery and checked as UTF-8 once.
        let mut etag = Vec::with_capacity(64);
        etag.push(b'"');
        for (i, n) in [meta.size(), secs, nanos, meta.ino()]
            .into_iter()
            .enumerate()
        {
            if i > 0 {
                etag.push(if i == 2 { b'.' } else { b'-' });
            }
            push_hex(&mut etag, n);
        }
        if let Some(enc) = encoding {
            etag.push(b'-');
            etag.extend_from_slice(enc.as_bytes());
        }
        etag.push(b'"');
        // ASCII digits and a &str: always UTF-8.
        let etag = String::from_utf8(etag).unwrap_or_default();
        Validators {
            etag,
            modified: UNIX_EPOCH + Duration::from_secs(secs),
        }
    }

    pub(crate) fn last_modified(&self) -> HeaderValue {
        thread_local! {
            // Hot files repeat: remember the last date this thread formatted.
            static LAST: std::cell::RefCell<Option<(SystemTime, HeaderValue)>> =
                const { std::cell::RefCell::new(None) };
        }
        LAST.with(|cell| {
            let mut last = cell.borrow_mut();
            if let Some((t, v)) = last.as_ref() {
                if *t == self.modified {
                    return v.clone();
                }
            }
            let v = HeaderValue::from_str(&httpdate::fmt_http_date(self.modified))
                .unwrap_or(HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"));
            *last = Some((self.modified, v.clone()));
            v
        })
    }
}

fn push_hex(out: &mut Vec<u8>, n: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut buf = [0u8; 16];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = DIGITS[(n & 0xf) as usize];
        n >>= 4;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

pub(crate) enum Precondition {
    Proceed,
    NotModified,
    Failed,
}

/// Evaluates If-Match, If-Unmodified-Since, If-None-Match and If-Modified-Since.
pub(crate) fn evaluate(method: &Method, headers: &HeaderMap, v: &Validators) -> Precondition {
    if let Some(im) = header_str(headers, &header::IF_MATCH) {
        if !etag_list_matches(im, &v.etag, false) {
            return Precondition::Failed;
        }
    } else if let Some(date) = header_date(headers, &header::IF_UNMODIFIED_SINCE) {
        if v.modified > date {
            return Precondition::Failed;
        }
    }
    let get_or_head = method == Method::GET || method == Method::HEAD;
    if let Some(inm) = header_str(headers, &header::IF_NONE_MATCH) {
        if etag_list_matches(inm, &v.etag, true) {
            return if get_or_head {
                Precondition::NotModified
            } else {
                Precondition::Failed
            };
        }
    } else if get_or_head {
        if let Some(date) = header_date(headers, &header::IF_MODIFIED_SINCE) {
            if v.modified <= date {
                return Precondition::NotModified;
            }
        }
    }
    Precondition::Proceed
}

/// If-Range: true when a Range header may be honoured.
pub(crate) fn if_range_allows(headers: &HeaderMap, v: &Validators) -> bool {
    let Some(value) = header_str(headers, &header::IF_RANGE) else {
        return true;
    };
    let value = value.trim();
    if value.starts_with('"') {
        // Strong comparison only (RFC 9110 §13.1.5).
        return value == v.etag;
    }
    if value.starts_with("W/") {
        return false;
    }
    httpdate::parse_http_date(value).is_ok_and(|d| d == v.modified)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &header::HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn header_date(headers: &HeaderMap, name: &header::HeaderName) -> Option<SystemTime> {
    header_str(headers, name).and_then(|s| httpdate::parse_http_date(s).ok())
}

/// `*` or a comma-separated list of entity tags; weak comparison ignores `W/`.
fn etag_list_matches(list: &str, etag: &str, weak: bool) -> bool {
    list.split(',').map(str::trim).any(|candidate| {
        if candidate == "*" {
            return true;
        }
        match candidate.strip_prefix("W/") {
            Some(c) => weak && c == etag,
            None => candidate == etag,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex() {
        let mut s = Vec::new();
        for n in [0u64, 1, 0xabc, u64::MAX] {
            push_hex(&mut s, n);
            s.push(b',');
        }
        assert_eq!(s, b"0,1,abc,ffffffffffffffff,");
    }

    #[test]
    fn etag_lists() {
        assert!(etag_list_matches("\"a\", \"b\"", "\"b\"", false));
        assert!(etag_list_matches("*", "\"b\"", false));
        assert!(!etag_list_matches("W/\"b\"", "\"b\"", false));
        assert!(etag_list_matches("W/\"b\"", "\"b\"", true));
        assert!(!etag_list_matches("\"c\"", "\"b\"", true));
    }
}
