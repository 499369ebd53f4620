//! The access log as a tower layer, for any HTTP service (an axum `Router`, a tower-http
//! stack): wrap the outermost service so the status is the one the client gets.

use super::{duration_us, log_request, normalize_host, AccessEntry, Remote, ACCESS_TARGET};
use http::{header, Method, Request, Response, Uri};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// The peer of the connection a request arrived on, as a request extension.
/// [`crate::server::Server`] inserts it (and axum's `ConnectInfo<SocketAddr>` for TCP
/// peers, so the `ConnectInfo` extractor works); the layer writes it as `REMOTE_ADDR`.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// The peer.
    pub remote: Remote,
    /// Its `REMOTE_ADDR` text, formatted once per connection.
    pub text: Arc<str>,
}

impl ClientAddr {
    /// The extension for a connection from `remote`.
    pub fn new(remote: Remote) -> ClientAddr {
        ClientAddr {
            remote,
            text: Arc::from(remote.text()),
        }
    }
}

/// A tower layer that writes one access-log entry per request (see [`crate::access`]).
///
/// ```
/// use axum::{routing::get, Router};
/// use gatehouse_kit::access::AccessLogLayer;
/// let app: Router = Router::new()
///     .route("/", get(|| async { "hello" }))
///     .layer(AccessLogLayer::new());
/// ```
///
/// [`crate::server::Server`] applies it around the whole router by default; add it
/// yourself only when serving some other way.
#[derive(Debug, Clone, Copy, Default)]
pub struct AccessLogLayer {
    _private: (),
}

impl AccessLogLayer {
    /// The layer.
    pub fn new() -> AccessLogLayer {
        AccessLogLayer { _private: () }
    }
}

impl<S> tower_layer::Layer<S> for AccessLogLayer {
    type Service = AccessLog<S>;

    fn layer(&self, inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// The service [`AccessLogLayer`] makes.
#[derive(Debug, Clone)]
pub struct AccessLog<S> {
    inner: S,
}

impl<S> AccessLog<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> AccessLog<S> {
        AccessLog { inner }
    }
}

/// What the entry needs from the request, kept while the inner service runs.
struct Pending {
    start: Instant,
    method: Method,
    uri: Uri,
    host: Option<String>,
    remote: Option<Arc<str>>,
}

impl<S, B, R> tower_service::Service<Request<B>> for AccessLog<S>
where
    S: tower_service::Service<Request<B>, Response = Response<R>>,
{
    type Response = Response<R>;
    type Error = S::Error;
    type Future = AccessLogFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> AccessLogFuture<S::Future> {
        let host = req
            .uri()
            .authority()
            .map(|a| a.as_str())
            .or_else(|| req.headers().get(header::HOST)?.to_str().ok())
            .and_then(normalize_host);
        let remote = match req.extensions().get::<ClientAddr>() {
            Some(c) => Some(c.text.clone()),
            None => req
                .extensions()
                .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
                .map(|c| Arc::from(Remote::Tcp(c.0).text())),
        };
        let pending = Pending {
            start: Instant::now(),
            method: req.method().clone(),
            uri: req.uri().clone(),
            host,
            remote,
        };
        AccessLogFuture {
            inner: self.inner.call(req),
            pending: Some(pending),
        }
    }
}

pin_project! {
    /// The response future of [`AccessLog`]: logs when the response head is ready.
    pub struct AccessLogFuture<F> {
        #[pin]
        inner: F,
        pending: Option<Pending>,
    }
}

impl<F, R, E> Future for AccessLogFuture<F>
where
    F: Future<Output = Result<Response<R>, E>>,
{
    type Output = Result<Response<R>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        if let Some(p) = this.pending.take() {
            // An error from the service has no status: hyper drops the connection, which
            // the client sees as a failure, so log it as 500.
            let status = result.as_ref().map_or(500, |r| r.status().as_u16());
            log_request(&AccessEntry {
                method: p.method.as_str(),
                path: p.uri.path(),
                status,
                upstream: None,
                host: p.host.as_deref().unwrap_or("-"),
                duration_us: duration_us(p.start.elapsed()),
                remote: p.remote.as_deref().unwrap_or("-"),
                target: ACCESS_TARGET,
            });
        }
        Poll::Ready(result)
    }
}
