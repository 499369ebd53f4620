//! Header rewriting between client and upstream: hop-by-hop stripping (both ways), the
//! X-Forwarded-* and RFC 7239 `Forwarded` headers, and the framing checks that keep a
//! malformed request from ever reaching an upstream.

use crate::config::proxy::Trusted;
use crate::log::Remote;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::StatusCode;

static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");

/// Removes the headers that describe one connection, not the message (RFC 9110 §7.6.1):
/// Connection and every header it names, Keep-Alive, Proxy-*, TE, Trailer,
/// Transfer-Encoding and Upgrade.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none, or only Connection: one pass over the few names is cheaper
    // than hashing each of the names below (this runs twice per proxied request).
    let mut found = headers.keys().filter(|k| is_hop_by_hop(k));
    let only_connection = match (found.next(), found.next()) {
        (None, _) => return,
        (Some(k), None) => *k == header::CONNECTION,
        _ => false,
    };
    if only_connection && connection_names_only_standard(headers) {
        headers.remove(header::CONNECTION);
        return;
    }
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        &header::CONNECTION,
        &KEEP_ALIVE,
        &header::TE,
        &header::TRAILER,
        &header::TRANSFER_ENCODING,
        &header::UPGRADE,
    ] {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    *name == header::CONNECTION
        || *name == KEEP_ALIVE
        || *name == header::TE
        || *name == header::TRAILER
        || *name == header::TRANSFER_ENCODING
        || *name == header::UPGRADE
        || name.as_str().starts_with("proxy-")
}

/// Connection names only "keep-alive" / "close" / "upgrade" (no other header to drop).
fn connection_names_only_standard(headers: &HeaderMap) -> bool {
    headers.get_all(header::CONNECTION).iter().all(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',').all(|t| {
                let t = t.trim();
                t.eq_ignore_ascii_case("keep-alive")
                    || t.eq_ignore_ascii_case("close")
                    || t.eq_ignore_ascii_case("upgrade")
            })
        })
    })
}

/// The protocols of an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade: x`) that
/// the route allows, as the `Upgrade` value to forward; `None` if it asks for none of them.
/// Anything else goes upstream as a plain request: a tunnel escapes routing, header
/// rewriting and the access log (`h2c` would carry requests for any path).
pub(crate) fn allowed_upgrade(headers: &HeaderMap, allowed: &[String]) -> Option<HeaderValue> {
    if allowed.is_empty() || !crate::http_base::connection_lists(headers, "upgrade") {
        return None;
    }
    let offered = headers.get(header::UPGRADE)?.to_str().ok()?;
    let mut kept = offered
        .split(',')
        .map(str::trim)
        .filter(|p| upgrade_allowed(p, allowed));
    let first = kept.next()?;
    match kept.next() {
        // The usual single protocol: the client's value as it was.
        None if first.len() == offered.len() => headers.get(header::UPGRADE).cloned(),
        None => HeaderValue::from_str(first).ok(),
        Some(second) => {
            let all: Vec<&str> = [first, second].into_iter().chain(kept).collect();
            HeaderValue::from_str(&all.join(", ")).ok()
        }
    }
}

/// `protocol` ("websocket", "WebSocket", "foo/2") is one of `allowed` (lower-case names, or
/// name/version).
pub(crate) fn upgrade_allowed(protocol: &str, allowed: &[String]) -> bool {
    let name = protocol.split('/').next().unwrap_or(protocol);
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(protocol) || a.eq_ignore_ascii_case(name))
}

/// Framing checks hyper's parser does not already make. hyper rejects (400) invalid header
/// names, obs-fold, bad or conflicting Content-Length and a Transfer-Encoding whose last
/// coding is not chunked; it accepts "gzip, chunked", "chunked, chunked" and several
/// Transfer-Encoding lines, which upstream parsers disagree about, so those stop here.
pub(crate) fn check_framing(headers: &HeaderMap) -> Result<(), StatusCode> {
    let mut te = headers.get_all(header::TRANSFER_ENCODING).iter();
    match (te.next(), te.next()) {
        (None, _) => {}
        (Some(v), None) if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"chunked") => {}
        _ => return Err(StatusCode::BAD_REQUEST),
    }
    // hyper merges repeated identical Content-Length lines and rejects differing ones or a
    // list; this only guards against that ever changing.
    let mut cl = headers.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(_), Some(_)) = (cl.next(), cl.next()) {
        return Err(StatusCode::BAD_REQUEST);
    }
    Ok(())
}

/// What the proxy knows about the client, for the forwarding headers.
pub(crate) struct ClientInfo<'a> {
    pub(crate) remote: Remote,
    /// The client's IP as `Remote`'s Display writes it (IPv4-mapped IPv6 as IPv4): formatted
    /// once per connection, not twice per request.
    pub(crate) remote_text: &'a str,
    /// The Host the client asked for (raw, with port), if any.
    pub(crate) host: Option<&'a HeaderValue>,
    pub(crate) proto: &'static str,
}

/// Headers an app may read as asserted by the proxy in front of it (client address, scheme,
/// host, port, path prefix, original URL), lower case with `-`: every `x-forwarded-*`, and
/// these. From a client that is not a trusted proxy they are removed.
const PROXY_ASSERTED: &[&str] = &[
    "forwarded",
    "x-real-ip",
    "x-client-ip",
    "x-cluster-client-ip",
    "true-client-ip",
    "cf-connecting-ip",
    "fastly-client-ip",
    "x-original-url",
    "x-original-uri",
    "x-rewrite-url",
    "x-original-host",
    "x-scheme",
    "x-url-scheme",
    "front-end-https",
];

/// `name` (lower case, as http stores it) is proxy-asserted, in any spelling: CGI, WSGI and
/// Rack turn `X_Forwarded_For` and `X-Forwarded-For` into the same `HTTP_X_FORWARDED_FOR`.
fn is_proxy_asserted(name: &str) -> bool {
    let b = name.as_bytes();
    // Most names rule themselves out by their first byte.
    if !matches!(b.first(), Some(b'x' | b'f' | b't' | b'c')) {
        return false;
    }
    let same = |want: &str| {
        b.len() == want.len()
            && b.iter()
                .zip(want.bytes())
                .all(|(&c, w)| c == w || (c == b'_' && w == b'-'))
    };
    let prefix = b"x-forwarded-";
    (b.len() > prefix.len()
        && b.iter()
            .zip(prefix)
            .all(|(&c, &w)| c == w || (c == b'_' && w == b'-')))
        || PROXY_ASSERTED.iter().any(|w| same(w))
}

/// What `set_forwarded` may keep of the client's headers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ForwardPolicy<'a> {
    /// Peers whose proxy-asserted headers are kept (and appended to).
    pub(crate) trusted: &'a [Trusted],
    /// Keep header names with `_` (nginx's `underscores_in_headers`); proxy-asserted names
    /// spelled with `_` are dropped even so.
    pub(crate) underscores: bool,
}

/// Sets X-Forwarded-For/-Proto/-Host and `Forwarded`. Proxy-asserted headers (see
/// [`PROXY_ASSERTED`]) the client sent are kept (and appended to) only when the client is
/// trusted; otherwise they are removed, so a client cannot forge its address, scheme or
/// host. Names with `_` are removed unless `underscores` is set (nginx's default too).
pub(crate) fn set_forwarded(
    headers: &mut HeaderMap,
    client: &ClientInfo<'_>,
    policy: ForwardPolicy<'_>,
) {
    let is_trusted = match client.remote {
        Remote::Tcp(addr) => policy.trusted.iter().any(|t| t.contains(addr.ip())),
        Remote::Unix => policy.trusted.contains(&Trusted::Unix),
    };
    let goes = |name: &&HeaderName| {
        let underscore = name.as_str().contains('_');
        (underscore && !policy.underscores)
            || ((underscore || !is_trusted) && is_proxy_asserted(name.as_str()))
    };
    // One pass over the names; there is rarely anything to remove.
    if headers.keys().any(|name| goes(&name)) {
        let drop: smallvec::SmallVec<[HeaderName; 4]> =
            headers.keys().filter(goes).cloned().collect();
        for name in drop {
            headers.remove(name);
        }
    }

    let ip = match client.remote {
        Remote::Tcp(addr) => Some(addr.ip().to_canonical()),
        Remote::Unix => None,
    };
    if ip.is_some() {
        append_list(headers, &X_FORWARDED_FOR, client.remote_text);
    }
    if !headers.contains_key(&X_FORWARDED_PROTO) {
        headers.insert(&X_FORWARDED_PROTO, HeaderValue::from_static(client.proto));
    }
    if let Some(host) = client.host {
        if !headers.contains_key(&X_FORWARDED_HOST) {
            headers.insert(&X_FORWARDED_HOST, host.clone());
        }
    }

    // RFC 7239: for=1.2.3.4, IPv6 quoted in brackets, "unknown" for unix clients.
    let mut item = String::with_capacity(96);
    match ip {
        Some(std::net::IpAddr::V6(_)) => {
            item.push_str("for=\"[");
            item.push_str(client.remote_text);
            item.push_str("]\"");
        }
        Some(_) => {
            item.push_str("for=");
            item.push_str(client.remote_text);
        }
        None => item.push_str("for=unknown"),
    }
    if let Some(host) = client.host.and_then(|h| h.to_str().ok()) {
        item.push_str(";host=");
        push_quoted(&mut item, host);
    }
    item.push_str(";proto=");
    item.push_str(client.proto);
    append_list(headers, &FORWARDED, &item);
}

/// Appends `item` to a comma-separated header, merging repeated lines into one.
fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: &str) {
    // One hash of `name` whether or not the client sent the header.
    match headers.entry(name) {
        header::Entry::Vacant(slot) => {
            if let Ok(v) = HeaderValue::from_str(item) {
                slot.insert(v);
            }
        }
        header::Entry::Occupied(mut slot) => {
            let mut out = String::new();
            for v in slot.iter().filter_map(|v| v.to_str().ok()) {
                out.push_str(v);
                out.push_str(", ");
            }
            out.push_str(item);
            // from_maybe_shared takes the buffer as it is: no second copy.
            if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(out)) {
                slot.insert_mult(v);
            }
        }
    }
}

/// An RFC 7230 token stays bare; anything else becomes a quoted-string.
fn push_quoted(out: &mut String, s: &str) {
    let token = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if token {
        out.push_str(s);
        return;
    }
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_headers_and_what_connection_names_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-authorization", "x"),
            ("te", "trailers"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
    }

    #[test]
    fn a_lone_connection_header_goes_and_nothing_else() {
        let mut h = map(&[("connection", "keep-alive"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("x-kept"));
        let mut h = map(&[("connection", "x-secret"), ("x-secret", "1")]);
        strip_hop_by_hop(&mut h);
        assert!(h.is_empty());
        let mut h = map(&[("host", "a"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn forwarded_from_untrusted_client_is_replaced() {
        let mut h = map(&[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=6.6.6.6")]);
        let host = HeaderValue::from_static("example.com:8080");
        let client = ClientInfo {
            remote: Remote::Tcp("127.0.0.1:5000".parse().unwrap()),
            remote_text: "127.0.0.1",
            host: Some(&host),
            proto: "http",
        };
        let untrusted = ForwardPolicy {
            trusted: &[],
            underscores: false,
        };
        set_forwarded(&mut h, &client, untrusted);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "example.com:8080");
        assert_eq!(
            h["forwarded"],
            "for=127.0.0.1;host=\"example.com:8080\";proto=http"
        );

        let trusted = ["127.0.0.0/8".parse().unwrap()];
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x_forwarded_for", "7.7.7.7"),
        ]);
        let policy = ForwardPolicy {
            trusted: &trusted,
            underscores: true,
        };
        set_forwarded(&mut h, &client, policy);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
        assert!(!h.contains_key("x_forwarded_for"));
    }

    #[test]
    fn every_spelling_of_a_proxy_asserted_header_goes() {
        let client = ClientInfo {
            remote: Remote::Tcp("192.0.2.1:5000".parse().unwrap()),
            remote_text: "192.0.2.1",
            host: None,
            proto: "http",
        };
        let sent = [
            ("x_forwarded_for", "6.6.6.6"),
            ("x_forwarded_proto", "https"),
            ("x-forwarded-ssl", "on"),
            ("x-forwarded-port", "443"),
            ("x-forwarded-prefix", "/admin"),
            ("x-real-ip", "6.6.6.6"),
            ("x_real_ip", "6.6.6.6"),
            ("x-original-url", "/admin"),
            ("front_end_https", "on"),
            ("x-app_token", "kept only if asked"),
            ("x-kept", "yes"),
            ("xforwarded", "yes"),
        ];
        for underscores in [false, true] {
            let mut h = map(&sent);
            let policy = ForwardPolicy {
                trusted: &[],
                underscores,
            };
            set_forwarded(&mut h, &client, policy);
            let mut names: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            names.sort();
            let mut want = vec![
                "forwarded",
                "x-forwarded-for",
                "x-forwarded-proto",
                "x-kept",
                "xforwarded",
            ];
            if underscores {
                want.insert(1, "x-app_token");
            }
            assert_eq!(names, want);
            assert_eq!(h["x-forwarded-proto"], "http");
            assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        }
    }

    #[test]
    fn only_allowed_upgrades_are_offered_upstream() {
        let ws = vec!["websocket".to_owned()];
        let up = |v: &str| map(&[("connection", "Upgrade"), ("upgrade", v)]);
        assert_eq!(allowed_upgrade(&up("websocket"), &ws).unwrap(), "websocket");
        assert_eq!(allowed_upgrade(&up("WebSocket"), &ws).unwrap(), "WebSocket");
        assert_eq!(allowed_upgrade(&up("h2c"), &ws), None);
        assert_eq!(
            allowed_upgrade(&up("h2c, websocket"), &ws).unwrap(),
            "websocket"
        );
        assert_eq!(allowed_upgrade(&up("websocket"), &[]), None);
        let both = vec!["websocket".to_owned(), "h2c".to_owned()];
        assert_eq!(
            allowed_upgrade(&up("h2c, foo, websocket"), &both).unwrap(),
            "h2c, websocket"
        );
        assert_eq!(
            allowed_upgrade(&map(&[("upgrade", "websocket")]), &ws),
            None,
            "no Connection: upgrade"
        );
    }

    #[test]
    fn framing() {
        assert!(check_framing(&map(&[("transfer-encoding", "chunked")])).is_ok());
        assert!(check_framing(&map(&[("transfer-encoding", "gzip, chunked")])).is_err());
        assert!(check_framing(&map(&[
            ("transfer-encoding", "chunked"),
            ("transfer-encoding", "chunked")
        ]))
        .is_err());
    }
}
