//! What a route does with a request. Each route kind lives in its own module with its own
//! config section; `dispatch` picks it. Adding a kind = a `RouteAction` variant, its raw
//! config in `config/raw.rs`, its validation arm in `config/validate.rs`, and an arm here.

use crate::config::RespondConfig;
use crate::log::Remote;
use crate::router::{Handler, Route};
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: fixed bytes now, streams for later route kinds.
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
    pub connection: &'a crate::server::connections::ConnSlot,
}

pub async fn dispatch(
    route: &Route,
    req: Request<Incoming>,
    cx: &RequestContext<'_>,
) -> Response<Body> {
    match &route.handler {
        Handler::Respond(r) => respond(r, req),
        Handler::Static(s) => crate::static_files::serve(s, &route.path, cx.path, req).await,
        Handler::Proxy(p) => crate::proxy::handle(p, &route.path, req, cx).await,
    }
}

/// A `respond` route: the configured status, content type and body (none for HEAD, which
/// hyper strips while keeping Content-Length).
fn respond(r: &RespondConfig, _req: Request<Incoming>) -> Response<Body> {
    let mut resp = Response::new(full(r.body.clone()));
    *resp.status_mut() = r.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, r.content_type.clone());
    resp
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

/// Replaces gatehouse's own error response with the site's page for that status, if the
/// page is served by one of the site's `static` routes.
pub fn apply_error_page(site: &crate::router::Site, response: Response<Body>) -> Response<Body> {
    if response.extensions().get::<GeneratedError>().is_none() {
        return response;
    }
    let status = response.status();
    // A URL path as written in the file: made canonical like a request's.
    let Some(Ok(page)) = site
        .error_page(status.as_u16())
        .map(crate::request_path::canonicalize)
    else {
        return response;
    };
    let found = match site.route(&page) {
        Some(Route {
            handler: Handler::Static(route),
            path,
            ..
        }) => crate::static_files::error_page(route, path, &page),
        _ => None,
    };
    let Some((body, content_type)) = found else {
        return response;
    };
    // Only the body and its type change: status, Allow, Location, UPSTREAM and whatever
    // else the handler set stay as they were.
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(header::CONTENT_TYPE, content_type);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(body))
}
