//! The HTTP vocabulary every handler shares: the response body type and its constructors,
//! gatehouse's own error responses, `Connection` header helpers, and what a handler knows
//! about the request beyond the request itself. It sits below every route kind (`proxy`,
//! `static_files`) and the dispatcher (`handlers`), which all use it.

use crate::log::Remote;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: fixed bytes (`respond`, errors) or a stream (files, upstreams).
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Whether a `Connection` header lists `token` (case-insensitive, comma-separated).
pub fn connection_lists(headers: &http::HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// What a handler may know about the request beyond the request itself.
pub struct RequestContext<'a> {
    pub remote: Remote,
    /// `remote` as text (the IP alone), formatted once per connection.
    pub remote_text: &'a str,
    /// The `[[listener]]` the connection arrived on.
    pub listener: &'a str,
    /// Normalised host (lower case, no port); empty for HTTP/1.0 without Host.
    pub host: &'a str,
    /// The canonical path (decoded, normalised: see `request_path`) the route matched.
    pub path: &'a str,
    /// The connection is TLS (for X-Forwarded-Proto and the like).
    pub tls: bool,
    /// When the request's head was handed over: a time already read, for handlers' timers.
    pub started: std::time::Instant,
    /// Set by a proxy route to the upstream it forwarded to: the access log's UPSTREAM.
    pub upstream: &'a std::sync::OnceLock<std::sync::Arc<str>>,
    /// The connection's place in the open count: a WebSocket tunnel takes it over.
    pub connection: &'a crate::connections::ConnSlot,
}

/// Marks a response as gatehouse's own error, which a site's `error_pages` may replace.
#[derive(Debug, Clone, Copy)]
pub struct GeneratedError;

/// nginx's 499 "client closed request" (http has no constant for it): the status the access
/// log gives a request whose client went away before the answer.
pub fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// A small plain-text error page, e.g. "404 Not Found".
pub fn error(status: StatusCode) -> Response<Body> {
    let text = match status.as_u16() {
        // The common ones without formatting: 404s come by the thousand from scanners.
        400 => Bytes::from_static(b"400 Bad Request\n"),
        403 => Bytes::from_static(b"403 Forbidden\n"),
        404 => Bytes::from_static(b"404 Not Found\n"),
        405 => Bytes::from_static(b"405 Method Not Allowed\n"),
        // nginx's name for it; http has none.
        499 => Bytes::from_static(b"499 Client Closed Request\n"),
        502 => Bytes::from_static(b"502 Bad Gateway\n"),
        504 => Bytes::from_static(b"504 Gateway Timeout\n"),
        code => Bytes::from(format!(
            "{code} {}\n",
            status.canonical_reason().unwrap_or("Error")
        )),
    };
    let mut resp = Response::new(full(text));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp.extensions_mut().insert(GeneratedError);
    resp
}
