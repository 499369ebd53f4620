//! The per-request pipeline: find the host, route it, run the handler, write the access log.

use crate::handlers;
use crate::http_base::{self, Body, RequestContext};
use crate::log::{self, Remote};
use crate::router::{normalize_host, Handler, Lookup};
use crate::shared::Shared;
use http::{header, Method, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct ConnContext {
    pub shared: Arc<Shared>,
    pub listener: Arc<str>,
    pub remote: Remote,
    /// `remote` as the access log writes it, formatted once per connection.
    pub remote_text: Box<str>,
    /// Set once the connection has started a request (see the drain grace in `conn`).
    pub started: AtomicBool,
    /// The response being written is the connection's last, and none of it waits on a
    /// peer: its final segment may wait for the FIN (see `fin_merge`).
    pub last_response: AtomicBool,
    /// Arrived on a `role = "admin"` listener: admin endpoints only.
    pub admin: bool,
    /// The connection is TLS.
    pub tls: bool,
    /// The connection's place in the count; a WebSocket tunnel takes it over.
    pub slot: crate::connections::ConnSlot,
    /// What the connection's send and idle timers look at (see `watch`).
    pub watch: Arc<super::watch::ConnWatch>,
}

pub async fn handle(
    req: Request<Incoming>,
    ctx: &ConnContext,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    ctx.started.store(true, Ordering::Release);
    if ctx.admin {
        return Ok(crate::admin::handle(req, &ctx.shared).await);
    }
    let snapshot = ctx.shared.snapshot.load_full();

    let host = if head_too_large(&req, snapshot.config.server.max_header_size) {
        Err(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)
    } else if let Some(status) = refused(&req) {
        Err(status)
    } else {
        request_host(&req)
    };
    let mut client_closes = closes_connection(&req);
    // The handler consumes the request; keep what the access log needs (cheap clones).
    let method = req.method().clone();
    let uri = req.uri().clone();
    let router = snapshot.router(&ctx.listener);
    let listener_redirect = !ctx.tls && router.is_some_and(|r| r.redirect_https);
    // The one path routing and every handler use (see `request_path`).
    let path = crate::request_path::canonicalize(uri.path());
    // The CA's HTTP-01 check comes before every route and redirect.
    let acme_answer = crate::acme::challenge::http01_response(uri.path());
    let upstream = std::sync::OnceLock::new();
    let mut unanswered = Unanswered {
        method: &method,
        path: uri.path(),
        host: &host,
        upstream: &upstream,
        start,
        remote: &ctx.remote_text,
        access_log: snapshot.config.server.access_log,
        armed: true,
    };
    let (response, counters) = match (&host, router, acme_answer) {
        (_, _, Some(answer)) => (answer, None),
        (Ok(host), Some(router), None) if listener_redirect && router.https_ready(host) => (
            crate::tls::redirect::redirect_https(host, &uri),
            Some(&router.no_site),
        ),
        (_, None, None) => (http_base::error(StatusCode::NOT_FOUND), None),
        (Err(status), Some(router), None) => {
            let mut response = http_base::error(*status);
            if *status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
                // As hyper does for its own 431: the rest of this head was never read.
                response.headers_mut().insert(
                    header::CONNECTION,
                    header::HeaderValue::from_static("close"),
                );
            }
            (response, Some(&router.no_site))
        }
        (Ok(_), Some(router), None) if path.is_err() => (
            http_base::error(StatusCode::BAD_REQUEST),
            Some(&router.no_site),
        ),
        (Ok(host), Some(router), None) => match router.route(host, canonical(&path)) {
            Lookup::Route(_, site) | Lookup::NoRoute(site) if site.tls.redirects(ctx.tls) => (
                crate::tls::redirect::redirect_https(host, &uri),
                Some(&site.no_route),
            ),
            Lookup::Route(route, site) => {
                if matches!(route.handler, Handler::Proxy(_)) {
                    // An upstream may pause mid-body; a held tail would wait with it.
                    client_closes = false;
                }
                let cx = RequestContext {
                    remote: ctx.remote,
                    remote_text: &ctx.remote_text,
                    listener: &ctx.listener,
                    host,
                    path: canonical(&path),
                    tls: ctx.tls,
                    started: start,
                    upstream: &upstream,
                    connection: &ctx.slot,
                };
                let response = handlers::dispatch(route, req, &cx).await;
                (
                    site.tls
                        .finish(ctx.tls, handlers::apply_error_page(site, response)),
                    Some(&route.counters),
                )
            }
            Lookup::NoRoute(site) => (
                site.tls.finish(
                    ctx.tls,
                    handlers::apply_error_page(site, http_base::error(StatusCode::NOT_FOUND)),
                ),
                Some(&site.no_route),
            ),
            Lookup::NoSite => (
                http_base::error(StatusCode::NOT_FOUND),
                Some(&router.no_site),
            ),
        },
    };

    // (Responses that say `Connection: close` themselves are rare errors: not worth a
    // header lookup on every response.)
    if client_closes {
        ctx.last_response.store(true, Ordering::Relaxed);
    }
    ctx.shared.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(c) = counters {
        c.count(response.status().as_u16());
    }
    let elapsed = start.elapsed();
    ctx.shared.metrics.duration.observe(elapsed.as_secs_f64());
    unanswered.armed = false;
    let server = &snapshot.config.server;
    if log::access_wanted(
        server.access_log,
        server.access_log_sample,
        response.status(),
    ) {
        log::access(
            &method,
            uri.path(),
            host.as_deref().unwrap_or("-"),
            response.status(),
            upstream.get().map(|u| &**u),
            elapsed,
            &ctx.remote_text,
        );
    }
    Ok(response)
}

/// The canonical path once it is known to be valid.
fn canonical<'a>(
    path: &'a Result<std::borrow::Cow<'_, str>, crate::request_path::Invalid>,
) -> &'a str {
    path.as_deref().unwrap_or("/")
}

/// The access line of a request whose client went away before its answer (an HTTP/2 stream
/// reset, an HTTP/1 connection closed): hyper then drops the handler's future, and this,
/// dropped with it, logs 499 as nginx does ("client closed request").
struct Unanswered<'a> {
    method: &'a Method,
    path: &'a str,
    host: &'a Result<String, StatusCode>,
    upstream: &'a std::sync::OnceLock<Arc<str>>,
    start: Instant,
    remote: &'a str,
    access_log: crate::config::AccessLog,
    armed: bool,
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let status = http_base::client_closed_request();
        // An error status: `access_log_sample` never drops it.
        if !self.armed || !log::access_wanted(self.access_log, 1, status) {
            return;
        }
        log::access(
            self.method,
            self.path,
            self.host.as_deref().unwrap_or("-"),
            status,
            self.upstream.get().map(|u| &**u),
            self.start.elapsed(),
            self.remote,
        );
    }
}

/// Whether hyper closes the connection once it has answered `req` (RFC 9112 §9.3).
fn closes_connection(req: &Request<Incoming>) -> bool {
    match req.version() {
        Version::HTTP_11 => http_base::connection_lists(req.headers(), "close"),
        Version::HTTP_10 => !http_base::connection_lists(req.headers(), "keep-alive"),
        _ => false,
    }
}

/// An HTTP/1 head larger than `max`, counted as it was sent (less optional whitespace).
/// hyper refuses heads only beyond its read buffer, which is larger (`READ_BUF_MAX`);
/// HTTP/2 has its own limit (`max_header_list_size`).
fn head_too_large(req: &Request<Incoming>, max: usize) -> bool {
    if req.version() > Version::HTTP_11 {
        return false;
    }
    // "METHOD target HTTP/1.1\r\n" … "\r\n"
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri
            .authority()
            .map_or(0, |a| a.as_str().len() + "http://".len());
    let mut size = req.method().as_str().len() + target + 13;
    for (name, value) in req.headers() {
        size += name.as_str().len() + value.len() + 4;
    }
    size > max
}

/// Requests refused whatever the route, as nginx refuses them: TRACE (a reflected request
/// hands cookies and auth headers to a script, "cross-site tracing") and CONNECT (this is no
/// forward proxy) → 405; the asterisk form (`OPTIONS *`: no server-wide resource here) → 400.
fn refused(req: &Request<Incoming>) -> Option<StatusCode> {
    match *req.method() {
        Method::TRACE | Method::CONNECT => Some(StatusCode::METHOD_NOT_ALLOWED),
        _ if req.uri().path() == "*" => Some(StatusCode::BAD_REQUEST),
        _ => None,
    }
}

/// The normalised target host: the URI authority (HTTP/2, absolute-form) or the Host header.
/// Several Host headers, an invalid one, or HTTP/1.1 without one → 400 (RFC 9112 §3.2),
/// absolute-form included: its authority then wins over the Host header (§3.2.2).
fn request_host(req: &Request<Incoming>) -> Result<String, StatusCode> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let host_header = match (hosts.next(), hosts.next()) {
        (Some(h), None) => Some(
            h.to_str()
                .ok()
                .and_then(normalize_host)
                .ok_or(StatusCode::BAD_REQUEST)?,
        ),
        (Some(_), Some(_)) => return Err(StatusCode::BAD_REQUEST),
        (None, _) => None,
    };
    if let Some(authority) = req.uri().authority() {
        if host_header.is_none() && req.version() == Version::HTTP_11 {
            return Err(StatusCode::BAD_REQUEST);
        }
        return normalize_host(authority.as_str()).ok_or(StatusCode::BAD_REQUEST);
    }
    match host_header {
        Some(host) => Ok(host),
        // HTTP/1.0 may omit Host: it is served by the default site.
        None if req.version() < Version::HTTP_11 => Ok(String::new()),
        None => Err(StatusCode::BAD_REQUEST),
    }
}
