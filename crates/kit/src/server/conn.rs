//! One client connection: HTTP/1.1 (with upgrades) or HTTP/2 (prior knowledge), served by
//! hyper until the client leaves or a drain asks it to finish.

use super::listen::Stream;
use crate::access::{AccessLog, ClientAddr, Remote};
use crate::connections::{ConnGuard, Connections};
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use pin_project_lite::pin_project;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a draining server waits for the first request of a connection it has just
/// accepted: the client connected to send one, and closing now would fail it.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// What every connection of a server shares.
pub(super) struct ConnShared {
    pub conns: Arc<Connections>,
    pub router: Router,
    pub access_log: bool,
    pub http: auto::Builder<TokioExecutor>,
    pub requests: AtomicU64,
    /// Why the last reload failed, for `STATUS=`; `None` after a successful one.
    pub reload_error: std::sync::Mutex<Option<String>>,
}

pub(super) async fn serve(
    shared: Arc<ConnShared>,
    stream: Stream,
    remote: Remote,
    guard: ConnGuard,
) {
    match stream {
        Stream::Tcp(s) => serve_io(shared, Counted::new(s, guard), remote).await,
        Stream::Unix(s) => serve_io(shared, Counted::new(s, guard), remote).await,
    }
}

async fn serve_io<I>(shared: Arc<ConnShared>, io: Counted<I>, remote: Remote)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let started = Arc::new(AtomicBool::new(false));
    let client = ClientAddr::new(remote);
    let service = {
        let shared = shared.clone();
        let started = started.clone();
        hyper::service::service_fn(move |req: http::Request<Incoming>| {
            started.store(true, Ordering::Release);
            shared.requests.fetch_add(1, Ordering::Relaxed);
            let (mut parts, body) = req.into_parts();
            parts.extensions.insert(client.clone());
            if let Remote::Tcp(addr) = client.remote {
                // axum's ConnectInfo extractor works as under axum::serve.
                parts.extensions.insert(axum::extract::ConnectInfo(addr));
            }
            let req = http::Request::from_parts(parts, axum::body::Body::new(body));
            let router = shared.router.clone();
            let access_log = shared.access_log;
            async move {
                let result: Result<_, Infallible> = if access_log {
                    tower_service::Service::call(&mut AccessLog::new(router), req).await
                } else {
                    tower_service::Service::call(&mut { router }, req).await
                };
                result
            }
        })
    };
    let drain = shared.conns.drain_wait();
    tokio::pin!(drain);
    let conn = shared
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        // The connection first: it is what wakes this task nearly every time.
        biased;
        result = conn.as_mut() => return log_connection_end(result),
        () = &mut drain => {}
    }
    if !started.load(Ordering::Acquire) {
        if let Some(result) = first_request_grace(conn.as_mut(), &started).await {
            return log_connection_end(result);
        }
    }
    conn.as_mut().graceful_shutdown();
    log_connection_end(conn.await);
}

type ConnResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// A connection accepted just before a drain has not sent its request yet: give it
/// `FIRST_REQUEST_GRACE` to start one. `Some`: the connection ended meanwhile.
async fn first_request_grace<C>(mut conn: Pin<&mut C>, started: &AtomicBool) -> Option<ConnResult>
where
    C: std::future::Future<Output = ConnResult>,
{
    let grace = tokio::time::sleep(FIRST_REQUEST_GRACE);
    tokio::pin!(grace);
    let mut poll = tokio::time::interval(Duration::from_millis(10));
    loop {
        tokio::select! {
            result = conn.as_mut() => return Some(result),
            _ = &mut grace => return None,
            _ = poll.tick() => if started.load(Ordering::Acquire) { return None },
        }
    }
}

fn log_connection_end(result: ConnResult) {
    if let Err(e) = result {
        // Clients hanging up, timing out or speaking garbage are routine, not server errors.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}

pin_project! {
    /// A client connection that counts as open for as long as it exists. hyper keeps the
    /// IO inside an upgraded connection (a WebSocket), so a tunnel counts until it closes:
    /// idle exit waits for it and a drain gives it the shutdown timeout, like a request.
    struct Counted<I> {
        #[pin]
        io: I,
        _guard: ConnGuard,
    }
}

impl<I> Counted<I> {
    fn new(io: I, guard: ConnGuard) -> Counted<I> {
        Counted { io, _guard: guard }
    }
}

impl<I: AsyncRead> AsyncRead for Counted<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.project().io.poll_read(cx, buf)
    }
}

impl<I: AsyncWrite> AsyncWrite for Counted<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.project().io.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.project().io.poll_shutdown(cx)
    }
}
