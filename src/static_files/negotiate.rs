//! Accept-Encoding negotiation (RFC 9110 §12.5.3) among the encodings a route offers.

use crate::config::static_files::Encoding;

/// The offered encodings the client accepts, best first: by q-value, then by the order the
/// route lists them. Identity is always the implicit last resort.
pub(crate) fn acceptable(accept_encoding: Option<&str>, offered: &[Encoding]) -> Vec<Encoding> {
    let Some(header) = accept_encoding else {
        return Vec::new();
    };
    let mut prefs: Vec<(&str, f32)> = Vec::new();
    for item in header.split(',') {
        let mut parts = item.split(';');
        let token = parts.next().unwrap_or("").trim();
        if token.is_empty() {
            continue;
        }
        let mut q = 1.0f32;
        for p in parts {
            if let Some(v) = p
                .trim()
                .strip_prefix("q=")
                .or_else(|| p.trim().strip_prefix("Q="))
            {
                q = v.trim().parse().unwrap_or(0.0);
            }
        }
        prefs.push((token, q));
    }
    let q_of = |enc: Encoding| -> f32 {
        let exact = prefs.iter().find(|(t, _)| {
            t.eq_ignore_ascii_case(enc.token())
                || (enc == Encoding::Gzip && t.eq_ignore_ascii_case("x-gzip"))
        });
        match exact {
            Some((_, q)) => *q,
            None => prefs
                .iter()
                .find(|(t, _)| *t == "*")
                .map_or(0.0, |(_, q)| *q),
        }
    };
    let mut ranked: Vec<(usize, Encoding, f32)> = offered
        .iter()
        .enumerate()
        .map(|(i, &e)| (i, e, q_of(e)))
        .filter(|(_, _, q)| *q > 0.0)
        .collect();
    ranked.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
    ranked.into_iter().map(|(_, e, _)| e).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use Encoding::*;

    const ALL: [Encoding; 3] = [Brotli, Zstd, Gzip];

    #[test]
    fn q_values_then_route_order() {
        assert_eq!(acceptable(Some("gzip, br"), &ALL), vec![Brotli, Gzip]);
        assert_eq!(
            acceptable(Some("gzip;q=1, br;q=0.5"), &ALL),
            vec![Gzip, Brotli]
        );
        assert_eq!(acceptable(Some("br;q=0, *"), &ALL), vec![Zstd, Gzip]);
        assert_eq!(acceptable(Some("identity"), &ALL), vec![]);
        assert_eq!(acceptable(None, &ALL), vec![]);
        assert_eq!(acceptable(Some("x-gzip"), &ALL), vec![Gzip]);
        assert_eq!(acceptable(Some("gzip;q=0"), &ALL), vec![]);
    }
}
