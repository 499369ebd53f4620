//! `Range: bytes=…` for one representation of `len` bytes (RFC 9110 §14).

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum RangeRequest {
    /// No usable Range header (absent, not bytes, malformed, or several ranges): whole body.
    Full,
    /// One satisfiable range, inclusive bounds.
    Single { start: u64, end: u64 },
    /// No range overlaps the representation: 416.
    Unsatisfiable,
}

pub(crate) fn parse(header: Option<&str>, len: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    let parts: Vec<&str> = spec.split(',').map(str::trim).collect();
    let mut satisfiable = Vec::new();
    for part in &parts {
        let Some((a, b)) = part.split_once('-') else {
            return RangeRequest::Full;
        };
        let (a, b) = (a.trim(), b.trim());
        let range = if a.is_empty() {
            // Suffix range: the last N bytes.
            let Ok(n) = b.parse::<u64>() else {
                return RangeRequest::Full;
            };
            if n == 0 || len == 0 {
                None
            } else {
                Some((len.saturating_sub(n), len - 1))
            }
        } else {
            let Ok(start) = a.parse::<u64>() else {
                return RangeRequest::Full;
            };
            let end = if b.is_empty() {
                u64::MAX
            } else {
                match b.parse::<u64>() {
                    Ok(e) if e >= start => e,
                    _ => return RangeRequest::Full,
                }
            };
            (start < len).then(|| (start, end.min(len - 1)))
        };
        if let Some(r) = range {
            satisfiable.push(r);
        }
    }
    match satisfiable.as_slice() {
        [] => RangeRequest::Unsatisfiable,
        [(start, end)] if parts.len() == 1 => RangeRequest::Single {
            start: *start,
            end: *end,
        },
        // Several ranges: answered with the whole representation (200), as the README says.
        _ => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RangeRequest::*;

    #[test]
    fn ranges() {
        assert_eq!(parse(None, 10), Full);
        assert_eq!(parse(Some("bytes=0-4"), 10), Single { start: 0, end: 4 });
        assert_eq!(parse(Some("bytes=5-"), 10), Single { start: 5, end: 9 });
        assert_eq!(parse(Some("bytes=-3"), 10), Single { start: 7, end: 9 });
        assert_eq!(parse(Some("bytes=-30"), 10), Single { start: 0, end: 9 });
        assert_eq!(parse(Some("bytes=8-100"), 10), Single { start: 8, end: 9 });
        assert_eq!(parse(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(parse(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(parse(Some("bytes=5-2"), 10), Full);
        assert_eq!(parse(Some("items=0-1"), 10), Full);
        assert_eq!(parse(Some("bytes=x-1"), 10), Full);
        assert_eq!(parse(Some("bytes=0-0"), 0), Unsatisfiable);
    }
}
