//! Header rewriting between client and upstream: hop-by-hop stripping (both ways), the
//! X-Forwarded-* and RFC 7239 `Forwarded` headers, and the framing checks that keep a
//! malformed request from ever reaching an upstream.

use super::config::Trusted;
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
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Is this an HTTP/1.1 upgrade request (WebSocket)? `Connection: upgrade` + `Upgrade: x`.
pub fn wants_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    if !crate::handlers::connection_lists(headers, "upgrade") {
        return None;
    }
    headers.get(header::UPGRADE).cloned()
}

/// Framing checks hyper's parser does not already make. hyper rejects (400) invalid header
/// names, obs-fold, bad or conflicting Content-Length and a Transfer-Encoding whose last
/// coding is not chunked; it accepts "gzip, chunked", "chunked, chunked" and several
/// Transfer-Encoding lines, which upstream parsers disagree about, so those stop here.
pub fn check_framing(headers: &HeaderMap) -> Result<(), StatusCode> {
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
pub struct ClientInfo<'a> {
    pub remote: Remote,
    /// The client's IP as `Remote`'s Display writes it (IPv4-mapped IPv6 as IPv4): formatted
    /// once per connection, not twice per request.
    pub remote_text: &'a str,
    /// The Host the client asked for (raw, with port), if any.
    pub host: Option<&'a HeaderValue>,
    pub proto: &'static str,
}

/// Sets X-Forwarded-For/-Proto/-Host and `Forwarded`. Values the client sent are kept (and
/// appended to) only when the client is one of `trusted`; otherwise they are replaced, so a
/// client cannot forge its address.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientInfo<'_>, trusted: &[Trusted]) {
    let is_trusted = match client.remote {
        Remote::Tcp(addr) => trusted.iter().any(|t| t.contains(addr.ip())),
        Remote::Unix => trusted.contains(&Trusted::Unix),
    };
    if !is_trusted {
        for name in [
            &X_FORWARDED_FOR,
            &X_FORWARDED_PROTO,
            &X_FORWARDED_HOST,
            &FORWARDED,
        ] {
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
        set_forwarded(&mut h, &client, &[]);
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
        assert_eq!(h["x-forwarded-host"], "example.com:8080");
        assert_eq!(
            h["forwarded"],
            "for=127.0.0.1;host=\"example.com:8080\";proto=http"
        );

        let mut h = map(&[("x-forwarded-for", "6.6.6.6")]);
        set_forwarded(&mut h, &client, &["127.0.0.0/8".parse().unwrap()]);
        assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1");
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
