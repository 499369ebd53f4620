//! The HTTP vocabulary every handler shares: the response body type and its constructors,
//! gatehouse's own error responses, `Connection` header helpers, and what a handler knows
//! about the request beyond the request itself. It sits below every route kind (`proxy`,
//! `static_files`) and the dispatcher (`handlers`), which all use it.

use crate::log::Remote;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: fixed bytes (`respond`, errors) or a stream (files, upstreams).
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: Bytes) -> Body {
    boxed_full(Full::new(bytes))
}

/// A `Full` body made elsewhere (a mapped file: see `sendfile`), boxed as every body is.
pub(crate) fn boxed_full(body: Full<Bytes>) -> Body {
    body.map_err(|never| match never {}).boxed()
}

pub(crate) fn empty() -> Body {
    http_body_util::Empty::new()
        .map_err(|never| match never {})
        .boxed()
}

/// Whether a `Connection` header lists `token` (case-insensitive, comma-separated).
pub(crate) fn connection_lists(headers: &http::HeaderMap, token: &str) -> bool {
    headers.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

/// What a handler may know about the request beyond the request itself.
pub(crate) struct RequestContext<'a> {
    pub(crate) remote: Remote,
    /// `remote` as text (the IP alone), formatted once per connection.
    pub(crate) remote_text: &'a str,
    /// The canonical path (decoded, normalised: see `request_path`) the route matched.
    pub(crate) path: &'a str,
    /// The connection is TLS (for X-Forwarded-Proto and the like).
    pub(crate) tls: bool,
    /// When the request's head was handed over: a time already read, for handlers' timers.
    pub(crate) started: std::time::Instant,
    /// Set by a proxy route to the upstream it forwarded to: the access log's UPSTREAM.
    pub(crate) upstream: &'a std::sync::OnceLock<std::sync::Arc<str>>,
    /// The connection's place in the open count: a WebSocket tunnel takes it over.
    pub(crate) connection: &'a gatehouse_kit::connections::ConnSlot,
    /// The connection sends mapped file bodies with sendfile(2) (see `sendfile`).
    pub(crate) file_regions: Option<&'a std::sync::Arc<crate::sendfile::FileRegions>>,
}

/// Marks a response as gatehouse's own error, which a site's `error_pages` may replace.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GeneratedError;

/// nginx's 499 "client closed request" (http has no constant for it): the status the access
/// log gives a request whose client went away before the answer.
pub(crate) fn client_closed_request() -> StatusCode {
    StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST)
}

/// A small plain-text error page, e.g. "404 Not Found".
pub(crate) fn error(status: StatusCode) -> Response<Body> {
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
