//! The per-request pipeline: decide what the request gets (`decide`: host, refusals,
//! redirects, route), run it, then finish every answer the same way (`finish`: error pages,
//! HSTS, counters, the access log).

use crate::handlers;
use crate::http_base::{self, Body, RequestContext};
use crate::log::{self, Remote};
use crate::metrics::RouteCounters;
use crate::router::{normalize_host, Handler, Lookup, Route, Router, Site};
use crate::shared::Shared;
use http::{header, Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use std::borrow::Cow;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub(crate) struct ConnContext {
    pub(crate) shared: Arc<Shared>,
    pub(crate) listener: Arc<str>,
    pub(crate) remote: Remote,
    /// `remote` as the access log writes it, formatted once per connection.
    pub(crate) remote_text: Box<str>,
    /// Set once the connection has started a request (see the drain grace in `conn`).
    pub(crate) started: AtomicBool,
    /// The response being written is the connection's last, and none of it waits on a
    /// peer: its final segment may wait for the FIN (see `fin_merge`).
    pub(crate) last_response: AtomicBool,
    /// Arrived on a `role = "admin"` listener: admin endpoints only.
    pub(crate) admin: bool,
    /// The connection is TLS.
    pub(crate) tls: bool,
    /// The connection's place in the count; a WebSocket tunnel takes it over.
    pub(crate) slot: gatehouse_kit::connections::ConnSlot,
    /// What the connection's send and idle timers look at (see `watch`).
    pub(crate) watch: Arc<super::watch::ConnWatch>,
    /// Set on plaintext HTTP/1 connections: large files go out with sendfile(2).
    pub(crate) file_regions: std::sync::OnceLock<Arc<crate::sendfile::FileRegions>>,
}

/// What a request gets, decided before anything runs: every refusal and the routing, in the
/// order they apply. [`handle`] then runs it and finishes the answer in one place.
enum Decision<'a> {
    /// The CA's HTTP-01 check: answered before every route and redirect.
    AcmeAnswer(Response<Body>),
    /// 308 to https (the listener's `redirect_https`, or the site's), counted here.
    RedirectHttps(&'a str, &'a RouteCounters),
    /// Refused before routing: a bad or missing host, an oversized head, a refused method
    /// (400, 405, 431), or a path that cannot be made canonical (400).
    BadRequest(StatusCode, &'a RouteCounters),
    /// A route of the site for this host.
    Route(&'a Route, &'a Site),
    /// The site exists but none of its routes matches the path: 404 (or its error page).
    NoRoute(&'a Site),
    /// No site claims the host: 404. `None`: the listener has no router (no site at all).
    NoSite(Option<&'a RouteCounters>),
}

/// Decides what `uri` gets. `host` is the request's normalised host, or why it has none;
/// `path` its canonical path (see `request_path`).
fn decide<'a>(
    uri: &Uri,
    host: &'a Result<String, StatusCode>,
    path: &'a Result<Cow<'_, str>, crate::request_path::Invalid>,
    router: Option<&'a Router>,
    tls: bool,
) -> Decision<'a> {
    if let Some(answer) = crate::acme::challenge::http01_response(uri.path()) {
        return Decision::AcmeAnswer(answer);
    }
    let Some(router) = router else {
        return Decision::NoSite(None);
    };
    let host = match host {
        Ok(host) => host,
        Err(status) => return Decision::BadRequest(*status, &router.no_site),
    };
    if !tls && router.redirect_https && router.https_ready(host) {
        return Decision::RedirectHttps(host, &router.no_site);
    }
    let Ok(path) = path else {
        return Decision::BadRequest(StatusCode::BAD_REQUEST, &router.no_site);
    };
    match router.route(host, path) {
        Lookup::Route(_, site) | Lookup::NoRoute(site) if site.tls.redirects(tls) => {
            Decision::RedirectHttps(host, &site.no_route)
        }
        Lookup::Route(route, site) => Decision::Route(route, site),
        Lookup::NoRoute(site) => Decision::NoRoute(site),
        Lookup::NoSite => Decision::NoSite(Some(&router.no_site)),
    }
}

pub(crate) async fn handle(
    req: Request<Incoming>,
    ctx: &ConnContext,
) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    ctx.started.store(true, Ordering::Release);
    if ctx.admin {
        let from_unix = matches!(ctx.remote, Remote::Unix);
        return Ok(crate::admin::handle(req, &ctx.shared, from_unix).await);
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
    // The one path routing and every handler use (see `request_path`).
    let path = crate::request_path::canonicalize(uri.path());
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
    let decision = decide(&uri, &host, &path, snapshot.router(&ctx.listener), ctx.tls);
    // The answer, and the site (for its error pages and HSTS) and counters it belongs to.
    let (response, site, counters) = match decision {
        Decision::AcmeAnswer(answer) => (answer, None, None),
        Decision::RedirectHttps(host, counters) => (
            crate::tls::redirect::redirect_https(host, &uri),
            None,
            Some(counters),
        ),
        Decision::BadRequest(status, counters) => (bad_request(status), None, Some(counters)),
        Decision::Route(route, site) => {
            if matches!(route.handler, Handler::Proxy(_)) {
                // An upstream may pause mid-body; a held tail would wait with it.
                client_closes = false;
            }
            let cx = RequestContext {
                remote: ctx.remote,
                remote_text: &ctx.remote_text,
                path: canonical(&path),
                tls: ctx.tls,
                started: start,
                upstream: &upstream,
                connection: &ctx.slot,
                file_regions: ctx.file_regions.get(),
            };
            let response = handlers::dispatch(route, req, &cx).await;
            (response, Some(site), Some(&route.counters))
        }
        Decision::NoRoute(site) => (
            http_base::error(StatusCode::NOT_FOUND),
            Some(site),
            Some(&site.no_route),
        ),
        Decision::NoSite(counters) => (http_base::error(StatusCode::NOT_FOUND), None, counters),
    };
    let server = &snapshot.config.server;
    let finished = Finished {
        site,
        counters,
        client_closes,
    };
    Ok(finish(ctx, server, response, finished, &mut unanswered))
}

/// What the finishing step needs to know about how a request was answered.
struct Finished<'a> {
    /// The site whose error pages and HSTS apply (none for redirects and refusals).
    site: Option<&'a Site>,
    counters: Option<&'a RouteCounters>,
    /// The client asked to close the connection after this response.
    client_closes: bool,
}

/// The one finishing step of every answer: the site's error page and HSTS, the connection's
/// last-response flag, the counters, the duration histogram and the access log.
fn finish(
    ctx: &ConnContext,
    server: &crate::config::ServerSettings,
    response: Response<Body>,
    how: Finished<'_>,
    unanswered: &mut Unanswered<'_>,
) -> Response<Body> {
    let response = match how.site {
        Some(site) => site
            .tls
            .finish(ctx.tls, handlers::apply_error_page(site, response)),
        None => response,
    };
    // (Responses that say `Connection: close` themselves are rare errors: not worth a
    // header lookup on every response.)
    if how.client_closes {
        ctx.last_response.store(true, Ordering::Relaxed);
    }
    ctx.shared.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(c) = how.counters {
        c.count(response.status().as_u16());
    }
    let elapsed = unanswered.start.elapsed();
    ctx.shared.metrics.duration.observe(elapsed.as_secs_f64());
    unanswered.armed = false;
    if log::access_wanted(
        server.access_log,
        server.access_log_sample,
        response.status(),
    ) {
        log::access(
            unanswered.method,
            unanswered.path,
            unanswered.host.as_deref().unwrap_or("-"),
            response.status(),
            unanswered.upstream.get().map(|u| &**u),
            elapsed,
            unanswered.remote,
        );
    }
    response
}

/// gatehouse's own answer to a request refused before routing.
fn bad_request(status: StatusCode) -> Response<Body> {
    let mut response = http_base::error(status);
    if status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
        // As hyper does for its own 431: the rest of this head was never read.
        response.headers_mut().insert(
            header::CONNECTION,
            header::HeaderValue::from_static("close"),
        );
    }
    response
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
