//! The `proxy` route kind: forwards requests to upstream app servers over TCP or unix
//! sockets, with pooled keep-alive connections, balancing, passive and active health,
//! connect retries that hide app restarts, timeouts, and WebSocket upgrades.
//!
//! A request: `handle` checks framing and size, rewrites the head (`headers`), reads the
//! body whole (`spool`), picks an upstream (`balance`), sends through that upstream's
//! pooled client (`connector`), retries connects that fail, and passes the answer back,
//! read ahead of a slow client (`buffer`) or streamed (`body`, `upgrade`).

pub(crate) mod app;
pub(crate) mod balance;
pub(crate) mod body;
pub(crate) mod buffer;
pub(crate) mod connector;
mod file_work;
pub(crate) mod headers;
pub(crate) mod health;
pub(crate) mod lean;
pub(crate) mod pool;
mod replay;
mod retry;
pub(crate) mod spool;
pub(crate) mod upgrade;

pub(crate) use crate::config::proxy::ProxyConfig;
pub(crate) use health::Background;

use crate::http_base::{self, Body, RequestContext};
use balance::{InFlight, Pool, UpstreamState};
use body::{caused_by, Activity, BodyTooLarge, UpBody};
use http::header::{self, HeaderMap, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Method, Request, Response, StatusCode, Uri, Version};
use hyper::body::Incoming;
use replay::RequestBody;
use retry::{Attempts, Failure, Next, Pick};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::either::Either;

/// A configured proxy route with its upstream pool. Built during validation (no runtime
/// needed); health-check tasks start with the serving `Snapshot` (see [`start`]).
pub(crate) struct ProxyRoute {
    pub(crate) config: ProxyConfig,
    /// The fixed upstreams' pool (empty for an `app` route).
    pub(crate) pool: Arc<Pool>,
    /// `app = "..."`: requests go to the app's live instance instead.
    pub(crate) app: Option<app::AppRoute>,
}

impl std::fmt::Debug for ProxyRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyRoute")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl ProxyRoute {
    pub(crate) fn new(config: ProxyConfig) -> Arc<ProxyRoute> {
        Arc::new(ProxyRoute {
            pool: Arc::new(Pool::new(&config)),
            app: config.app.as_deref().cloned().map(app::AppRoute::new),
            config,
        })
    }
}

/// Starts the health checks of a generation's proxy routes; they stop when the result is
/// dropped.
pub(crate) fn start(routes: &[Arc<ProxyRoute>]) -> Background {
    let mut bg = Background::default();
    for p in routes {
        if let Some(a) = &p.app {
            // This configuration serves now: its app settings are the ones deploys use.
            a.register();
        }
        if let Some(h) = &p.config.health {
            bg.spawn(&p.pool, h);
        }
    }
    bg
}

/// Every upstream of the generation's proxy routes with whether it is up, for /metrics.
pub(crate) fn upstream_health(routes: &[Arc<ProxyRoute>]) -> Vec<(String, bool)> {
    routes
        .iter()
        .flat_map(|p| p.pool.upstreams.iter())
        .map(|u| (u.label.to_string(), u.is_up()))
        .collect()
}

/// `(up, total)` upstreams over all proxy routes, for STATUS=; `None` without proxy routes.
pub(crate) fn upstreams_up(routes: &[Arc<ProxyRoute>]) -> Option<(usize, usize)> {
    routes
        .iter()
        .filter(|p| p.app.is_none())
        .map(|p| (p.pool.up_count(), p.pool.upstreams.len()))
        .reduce(|a, b| (a.0 + b.0, a.1 + b.1))
}

/// Why a send failed.
enum SendError {
    /// No response head within `response_header_timeout` of the last request byte.
    Timeout,
    Client(pool::SendError),
}

/// Forwards one request. The head is checked and rewritten synchronously first: done
/// inside the async part, the request, its parts and its header map would each keep a slot
/// in the future (a moved-from local keeps its room across awaits), and hyper reserves the
/// handler's future in every client connection, idle or not (`server::future_sizes` asserts
/// that future's size).
pub(crate) fn handle<'a>(
    route: &'a ProxyRoute,
    prefix: &str,
    req: Request<Incoming>,
    cx: &'a RequestContext<'a>,
) -> impl std::future::Future<Output = Response<Body>> + 'a {
    let prepared = prepare(route, prefix, req, cx);
    async move {
        match prepared {
            Prepared::Forward(f) => forward(route, f, cx).await,
            Prepared::Answer(resp) => resp,
        }
    }
}

/// The synchronous part's outcome: a request to forward, or its answer already.
enum Prepared {
    Forward(Forwarding),
    Answer(Response<Body>),
}

/// A request ready to forward: its outgoing head and what `forward` needs of the rest.
struct Forwarding {
    out: Outgoing,
    body: Incoming,
    declared: Option<u64>,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
}

fn prepare(
    route: &ProxyRoute,
    prefix: &str,
    mut req: Request<Incoming>,
    cx: &RequestContext<'_>,
) -> Prepared {
    let cfg = &route.config;
    if let Err(status) = headers::check_framing(req.headers()) {
        return Prepared::Answer(closing(http_base::error(status)));
    }
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(max) = cfg.max_body {
        if declared.is_some_and(|n| n > max) {
            // Before reading anything: a client that sent Expect: 100-continue never gets
            // the 100 and need not send the body.
            return Prepared::Answer(closing(http_base::error(StatusCode::PAYLOAD_TOO_LARGE)));
        }
    }
    let upgrade_proto = headers::allowed_upgrade(req.headers(), &cfg.upgrades)
        .filter(|_| req.version() == Version::HTTP_11 && !cfg.http2);
    let client_upgrade = upgrade_proto.as_ref().map(|_| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let host_value: Option<HeaderValue> = match parts.uri.authority() {
        // absolute-form or HTTP/2: the target's authority is the host (RFC 9112 §3.2.2).
        Some(a) => HeaderValue::from_str(a.as_str()).ok(),
        None => parts.headers.get(header::HOST).cloned(),
    };
    // The upstream gets the canonical path the route matched (see `request_path`), and the
    // query as it came. Nearly always that is the request target as it came.
    let path = match parts.uri.path_and_query() {
        Some(pq) if !cfg.strip_prefix && cx.path == parts.uri.path() => pq.clone(),
        _ => match upstream_target(prefix, cfg.strip_prefix, cx.path, parts.uri.query()) {
            Ok(p) => p,
            Err(_) => return Prepared::Answer(http_base::error(StatusCode::BAD_REQUEST)),
        },
    };
    let mut head = parts.headers;
    headers::strip_hop_by_hop(&mut head);
    // We answer 100-continue ourselves (hyper sends it when the body is first read: before
    // an upstream is involved when the body is buffered, else once one is connected); the
    // upstream needs no Expect.
    head.remove(header::EXPECT);
    head.remove(header::HOST);
    // Room for the four forwarding headers and Host at once (each growth rehashes the
    // map), counted after the removals: hyper parses into the map of the connection's
    // previous response, which then usually has room enough.
    head.reserve(5);
    headers::set_forwarded(
        &mut head,
        &headers::ClientInfo {
            remote: cx.remote,
            remote_text: cx.remote_text,
            host: host_value.as_ref(),
            proto: if cx.tls { "https" } else { "http" },
        },
        headers::ForwardPolicy {
            trusted: &cfg.trusted_proxies,
            underscores: cfg.underscores_in_headers,
        },
    );
    if let Some(proto) = &upgrade_proto {
        head.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        head.insert(header::UPGRADE, proto.clone());
    }
    let host = cfg.rewrite_host.clone().or(host_value);
    if let (Some(h), false) = (&host, cfg.http2) {
        head.insert(header::HOST, h.clone());
    }
    let out = Outgoing {
        method: parts.method,
        path,
        headers: head,
        host,
        http2: cfg.http2,
    };
    Prepared::Forward(Forwarding {
        out,
        body,
        declared,
        client_upgrade,
    })
}

async fn forward(
    route: &ProxyRoute,
    request: Forwarding,
    cx: &RequestContext<'_>,
) -> Response<Body> {
    let cfg = &route.config;
    let Forwarding {
        mut out,
        body,
        declared,
        client_upgrade,
    } = request;
    let body =
        match RequestBody::prepare(body, declared, client_upgrade.is_some(), &mut out, cfg, cx)
            .await
        {
            Ok(body) => body,
            Err(answer) => return answer,
        };
    // A request without a body is sent as it came: the time request::handle read then
    // serves the timers and the pool (no clock read of its own).
    let mut ready_at = if body.bodiless {
        cx.started
    } else {
        std::time::Instant::now()
    };
    let mut attempts = Attempts::new(Instant::from_std(ready_at) + cfg.retry_connect_for);
    let mut first_attempt = true;
    // An app route's pool is its live instance's, taken anew for every attempt (after the
    // body was read): a switch meanwhile sends the request to the new instance.
    let mut app_pool: Option<Arc<Pool>> = None;
    let mut lease = None;

    loop {
        if !first_attempt {
            // A retry: later than the time read before the first attempt.
            ready_at = std::time::Instant::now();
        }
        first_attempt = false;
        if let Some(app) = &route.app {
            let Some((live, held)) = app.target(&route.config) else {
                return app::no_live_instance(app, cx.upstream);
            };
            if !app_pool.as_ref().is_some_and(|p| Arc::ptr_eq(p, &live)) {
                attempts.new_pool();
            }
            (app_pool, lease) = (Some(live), Some(held));
        }
        let pool: &Pool = app_pool.as_deref().unwrap_or(&route.pool);
        let idx = match attempts.pick(pool) {
            Pick::Upstream(i) => i,
            Pick::Wait(pause) => {
                tokio::time::sleep(pause).await;
                continue;
            }
            Pick::GiveUp => return failed(pool, cx.upstream, attempts.failure),
        };
        let u = &pool.upstreams[idx];
        let sending = match out.prepare(u, &body, cfg) {
            Ok(Some(sending)) => sending,
            // A streamed body already read from by a failed attempt.
            Ok(None) => return failed(pool, cx.upstream, attempts.failure),
            Err(_) => return failed(pool, cx.upstream, (StatusCode::BAD_REQUEST, Some(idx))),
        };
        let in_flight = InFlight::new(u).with_lease(lease.take());
        u.counters.requests.inc();
        let request = sending.start(u, ready_at);
        match send(
            request,
            cfg.response_header_timeout,
            &body.activity,
            ready_at,
        )
        .await
        {
            Ok(resp) => {
                u.mark_ok();
                return respond(resp, u, cfg, in_flight, client_upgrade, cx);
            }
            Err(SendError::Timeout) => {
                u.counters.errors.inc();
                u.eject(cfg.eject_for, "no response header in time");
                return failed(pool, cx.upstream, (StatusCode::GATEWAY_TIMEOUT, Some(idx)));
            }
            Err(SendError::Client(e)) => {
                if let Some(answer) = clients_fault(&e, &u.label, cx) {
                    return answer;
                }
                // From here on the upstream failed, not the client.
                u.counters.errors.inc();
                let body_back = body.can_resend();
                let failure = if e.is_connect() {
                    let timed_out = matches!(
                        e,
                        pool::SendError::Connect(connector::ConnectError::Timeout(_))
                    );
                    u.eject(cfg.eject_for, &e_chain(&e));
                    tracing::debug!(upstream = %u.label, error = %e_chain(&e), "connect failed");
                    Failure::Connect { timed_out }
                } else {
                    tracing::debug!(upstream = %u.label, error = %e_chain(&e), "upstream failed before responding");
                    Failure::BeforeResponse {
                        idempotent: pool::is_idempotent(&out.method),
                    }
                };
                match attempts.after(idx, failure, body_back) {
                    Next::Retry => continue,
                    Next::GiveUp => return failed(pool, cx.upstream, attempts.failure),
                }
            }
        }
    }
}

/// The outgoing request head, rebuilt for each attempt.
struct Outgoing {
    method: Method,
    path: PathAndQuery,
    headers: HeaderMap,
    host: Option<HeaderValue>,
    http2: bool,
}

/// One attempt's request, ready to send.
enum Sending<'a> {
    /// For the lean client (`ConnPool::takes_lean`): borrowed from `Outgoing`, which a retry
    /// reuses.
    Lean(lean::RequestHead<'a>),
    /// For hyper's client: built anew, since hyper takes the request.
    Built(Request<UpBody>),
}

impl<'a> Sending<'a> {
    /// The request's future for its client. hyper's is boxed: it is twice the lean client's,
    /// and the caller's future (which hyper keeps inline in every client connection) holds
    /// this one twice, once for the call and once moved into `send`.
    fn start(
        self,
        u: &'a UpstreamState,
        now: std::time::Instant,
    ) -> Either<impl Future<Output = Sent> + 'a, Pin<Box<impl Future<Output = Sent> + 'a>>> {
        match self {
            Sending::Lean(head) => Either::Left(lean::send(&u.conns, head, now)),
            Sending::Built(req) => Either::Right(Box::pin(u.conns.send(req, now))),
        }
    }
}

impl Outgoing {
    /// This attempt's request for the pool's client; `None` when the body cannot be sent
    /// again.
    fn prepare<'a>(
        &'a self,
        u: &UpstreamState,
        body: &'a RequestBody,
        cfg: &ProxyConfig,
    ) -> Result<Option<Sending<'a>>, http::Error> {
        let in_memory = body.in_memory();
        if !u
            .conns
            .takes_lean(&self.method, &self.headers, in_memory.is_some())
        {
            let Some(up_body) = body.take(cfg) else {
                return Ok(None);
            };
            return self.build(u, up_body).map(|r| Some(Sending::Built(r)));
        }
        Ok(Some(Sending::Lean(lean::RequestHead {
            method: &self.method,
            path: self.path.as_str(),
            headers: &self.headers,
            // HTTP/1.0 without Host: name the upstream (as `build` does).
            host: match self.host {
                None => HeaderValue::from_str(u.authority.as_str()).ok(),
                Some(_) => None,
            },
            body: in_memory.unwrap_or_default(),
            activity: Some(&body.activity),
        })))
    }

    fn build(&self, u: &UpstreamState, body: UpBody) -> Result<Request<UpBody>, http::Error> {
        let mut headers = self.headers.clone();
        let (authority, version) = if self.http2 {
            // HTTP/2 carries the host as :authority, taken from the URI.
            let a = self
                .host
                .as_ref()
                .and_then(|h| h.to_str().ok())
                .and_then(|h| h.parse::<Authority>().ok())
                .unwrap_or_else(|| u.authority.clone());
            (a, Version::HTTP_2)
        } else {
            if self.host.is_none() {
                // HTTP/1.0 without Host: name the upstream.
                if let Ok(h) = HeaderValue::from_str(u.authority.as_str()) {
                    headers.insert(header::HOST, h);
                }
            }
            // HTTP/1 sends the origin form: the path alone.
            let mut req = Request::new(body);
            *req.method_mut() = self.method.clone();
            *req.uri_mut() = Uri::from(self.path.clone());
            *req.headers_mut() = headers;
            return Ok(req);
        };
        let mut uri = http::uri::Parts::default();
        uri.scheme = Some(Scheme::HTTP);
        uri.authority = Some(authority);
        uri.path_and_query = Some(self.path.clone());
        let mut req = Request::builder()
            .method(self.method.clone())
            .uri(Uri::from_parts(uri)?)
            .version(version)
            .body(body)?;
        *req.headers_mut() = headers;
        Ok(req)
    }
}

/// What either client answers: the response head, or why there is none.
type Sent = Result<Response<lean::UpstreamBody>, pool::SendError>;

/// Waits for the response head to a request that went out at `now` (`Sending::start`).
async fn send(
    fut: impl Future<Output = Sent>,
    response_header_timeout: Duration,
    activity: &Activity,
    now: std::time::Instant,
) -> Result<Response<lean::UpstreamBody>, SendError> {
    tokio::pin!(fut);
    // The timer runs from the last request byte sent, so a long upload is not cut short;
    // a stalled upload is the body's idle_timeout's business. The request starts going out
    // now: the first wait is whole.
    let mut deadline = Instant::from_std(now) + response_header_timeout;
    loop {
        tokio::select! {
            r = &mut fut => return r.map_err(SendError::Client),
            _ = tokio::time::sleep_until(deadline) => {}
        }
        let wait = response_header_timeout.saturating_sub(activity.idle());
        if wait.is_zero() {
            return Err(SendError::Timeout);
        }
        deadline = Instant::now() + wait;
    }
}

fn respond(
    mut resp: Response<lean::UpstreamBody>,
    u: &UpstreamState,
    cfg: &ProxyConfig,
    in_flight: InFlight,
    client_upgrade: Option<hyper::upgrade::OnUpgrade>,
    cx: &RequestContext<'_>,
) -> Response<Body> {
    let used = cx.upstream;
    let idle = cfg.idle_timeout;
    let upstream_upgrade =
        (resp.status() == StatusCode::SWITCHING_PROTOCOLS).then(|| hyper::upgrade::on(&mut resp));
    let (parts, body) = resp.into_parts();
    let mut headers = parts.headers;
    let upgrade_to = headers.get(header::UPGRADE).cloned();
    headers::strip_hop_by_hop(&mut headers);
    // An upstream may only switch to a protocol this route allows.
    let allowed = upgrade_to
        .as_ref()
        .and_then(|p| p.to_str().ok())
        .is_some_and(|p| headers::upgrade_allowed(p.trim(), &cfg.upgrades));
    let body = match (upstream_upgrade, client_upgrade) {
        (Some(_), Some(_)) if !allowed => {
            return tag(used, http_base::error(StatusCode::BAD_GATEWAY), &u.label);
        }
        (Some(up), Some(client)) => {
            if let Some(proto) = upgrade_to {
                headers.insert(header::UPGRADE, proto);
            }
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            // The tunnel is the client's connection from now on: it keeps its place in the
            // open count and under max_connections.
            let connection = cx.connection.take();
            upgrade::spawn_tunnel(client, up, idle, u.label.to_string(), in_flight, connection);
            http_base::full(bytes::Bytes::new())
        }
        // 101 to a request that asked for no upgrade: nothing sane to forward.
        (Some(_), None) => {
            return tag(used, http_base::error(StatusCode::BAD_GATEWAY), &u.label);
        }
        _ => buffer::response_body(body, &mut headers, cfg, in_flight),
    };
    let mut out = Response::new(body);
    *out.status_mut() = parts.status;
    *out.headers_mut() = headers;
    tag(used, out, &u.label)
}

/// Records the upstream that answered `resp` (the access log's UPSTREAM).
/// The answer when a failed send was the client's doing: a body over `max_body` (413), one
/// that stalled (408), or one the client broke off.
fn clients_fault(
    e: &pool::SendError,
    upstream: &Arc<str>,
    cx: &RequestContext<'_>,
) -> Option<Response<Body>> {
    let status = if caused_by::<BodyTooLarge>(e) {
        StatusCode::PAYLOAD_TOO_LARGE
    } else if caused_by::<body::IdleTimeout>(e) {
        StatusCode::REQUEST_TIMEOUT
    } else {
        return body::cause::<body::ClientBodyError>(e)
            .map(|fault| client_fault(fault, Some(upstream), cx));
    };
    Some(closing(tag(
        cx.upstream,
        http_base::error(status),
        upstream,
    )))
}

fn tag(used: &OnceLock<Arc<str>>, resp: Response<Body>, label: &Arc<str>) -> Response<Body> {
    let _ = used.set(label.clone());
    resp
}

fn failed(
    pool: &Pool,
    used: &OnceLock<Arc<str>>,
    (status, idx): (StatusCode, Option<usize>),
) -> Response<Body> {
    match idx.and_then(|i| pool.upstreams.get(i)) {
        Some(u) => tag(used, http_base::error(status), &u.label),
        None => tag(used, http_base::error(status), &Arc::from("-")),
    }
}

/// The client's body failed: 400, or 499 in the log for a client that went away; the
/// upstream's health and error count are left alone.
fn client_fault(
    fault: &body::ClientBodyError,
    upstream: Option<&Arc<str>>,
    cx: &RequestContext<'_>,
) -> Response<Body> {
    tracing::debug!(error = %e_chain(fault), "request body failed");
    let resp = closing(http_base::error(fault.status()));
    match upstream {
        Some(label) => tag(cx.upstream, resp, label),
        None => resp,
    }
}

/// Asks hyper to close the connection after this response (the request body was not
/// read, or the request was malformed).
fn closing(mut resp: Response<Body>) -> Response<Body> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// "a: b: c" for an error and its sources: hyper-util's top-level message alone says little.
fn e_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(err) = cur {
        s.push_str(": ");
        s.push_str(&err.to_string());
        cur = err.source();
    }
    s
}

/// The request target for the upstream: the canonical path (prefix stripped if asked)
/// percent-encoded again, and the query.
fn upstream_target(
    prefix: &str,
    strip: bool,
    canonical: &str,
    query: Option<&str>,
) -> Result<PathAndQuery, http::uri::InvalidUri> {
    let stripped;
    let path = if strip {
        stripped = strip_prefix(prefix, canonical);
        &stripped
    } else {
        canonical
    };
    let mut target = crate::request_path::encode(path).into_owned();
    if let Some(q) = query {
        target.push('?');
        target.push_str(q);
    }
    target.parse()
}

/// Removes the route prefix from a path (query kept). A prefix ending in '/' keeps that
/// slash: "/api/" + "/api/users" → "/users"; "/api" + "/api" → "/".
pub(crate) fn strip_prefix(prefix: &str, path_and_query: &str) -> String {
    let keep = prefix.strip_suffix('/').unwrap_or(prefix).len();
    let rest = path_and_query.get(keep..).unwrap_or("");
    if rest.starts_with('/') {
        rest.to_owned()
    } else {
        format!("/{rest}")
    }
}

#[cfg(test)]
mod tests {
    use super::strip_prefix;

    #[test]
    fn prefixes_strip_on_segment_boundaries() {
        assert_eq!(strip_prefix("/api/", "/api/users?x=1"), "/users?x=1");
        assert_eq!(strip_prefix("/api/", "/api/"), "/");
        assert_eq!(strip_prefix("/api", "/api"), "/");
        assert_eq!(strip_prefix("/api", "/api?q"), "/?q");
        assert_eq!(strip_prefix("/api", "/api/x"), "/x");
        assert_eq!(strip_prefix("/", "/x/y"), "/x/y");
    }
}
