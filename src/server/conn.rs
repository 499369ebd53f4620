//! One client connection: HTTP/1.1 (keep-alive) or HTTP/2 prior knowledge, detected by hyper,
//! served until the client leaves or a drain asks it to finish.

use super::connections::ConnGuard;
use super::fin_merge::HoldTail;
use super::listener::Stream;
use super::read_ahead::FirstRead;
use super::request;
use super::Shared;
use crate::log::Remote;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// How long a draining server waits for the first request of a connection it has just
/// accepted: the client connected to send one, and closing now would fail it.
const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

pub async fn serve(
    shared: Arc<Shared>,
    stream: Stream,
    remote: Remote,
    listener: Arc<str>,
    guard: ConnGuard,
) {
    // The acceptor of the current generation: after a reload, new connections get the new
    // certificates while open ones keep their session.
    let tls = {
        let snapshot = shared.snapshot.load();
        snapshot
            .config
            .listener(&listener)
            .and_then(|l| l.tls.as_ref())
            .map(|t| {
                (
                    t.acceptor.clone(),
                    snapshot.config.server.header_read_timeout,
                )
            })
    };
    match (stream, tls) {
        (Stream::Tcp(s), None) => serve_io(shared, s, remote, listener, false).await,
        (Stream::Unix(s), None) => serve_io(shared, s, remote, listener, false).await,
        (Stream::Tcp(s), Some((acceptor, timeout))) => {
            if let Some(s) = crate::tls::handshake_tcp(&acceptor, s, timeout, &listener).await {
                serve_io(shared, s, remote, listener, true).await;
            }
        }
        (Stream::Unix(s), Some((acceptor, timeout))) => {
            if let Some(s) = crate::tls::handshake(&acceptor, s, timeout, &listener).await {
                serve_io(shared, s, remote, listener, true).await;
            }
        }
    }
    drop(guard);
}

async fn serve_io<I>(shared: Arc<Shared>, io: I, remote: Remote, listener: Arc<str>, tls: bool)
where
    I: AsyncRead + HoldTail + Send + 'static,
{
    let snapshot = shared.snapshot.load_full();
    let drain = shared.conns.drain_wait();
    tokio::pin!(drain);
    let admin = snapshot.config.is_admin_listener(&listener);
    let ctx = Arc::new(request::ConnContext {
        shared: shared.clone(),
        listener,
        remote,
        remote_text: remote.text(),
        started: AtomicBool::new(false),
        last_response: AtomicBool::new(false),
        admin,
        tls,
    });
    let io = ClientIo {
        inner: io,
        ctx: ctx.clone(),
        first_read: FirstRead::new(!tls),
    };
    let conn_ctx = ctx.clone();
    let service = service_fn(move |req| {
        let ctx = ctx.clone();
        async move { request::handle(req, &ctx).await }
    });
    let conn = snapshot
        .http
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    tokio::select! {
        // The connection first: it is what wakes this task nearly every time.
        biased;
        result = conn.as_mut() => {
            log_connection_end(result);
            return;
        }
        () = &mut drain => {}
    }
    if !conn_ctx.started.load(Ordering::Acquire) {
        let grace = tokio::time::sleep(FIRST_REQUEST_GRACE);
        tokio::pin!(grace);
        let mut poll = tokio::time::interval(Duration::from_millis(10));
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    log_connection_end(result);
                    return;
                }
                _ = &mut grace => break,
                _ = poll.tick() => if conn_ctx.started.load(Ordering::Acquire) { break },
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    log_connection_end(conn.await);
}

/// A client connection as hyper sees it: bytes counted for the metrics, a plaintext
/// connection's first read made large (see `read_ahead`), and its last response sent with
/// the FIN (see `fin_merge`).
struct ClientIo<I> {
    inner: I,
    ctx: Arc<request::ConnContext>,
    first_read: FirstRead,
}

impl<I> ClientIo<I> {
    fn count_out(&self, result: &Poll<std::io::Result<usize>>) {
        if let Poll::Ready(Ok(n)) = result {
            self.ctx.shared.metrics.bytes_out.inc_by(*n as u64);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let result = this.first_read.poll_read(&mut this.inner, cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.ctx.shared.metrics.bytes_in.inc_by(n as u64);
        }
        result
    }
}

impl<I: HoldTail> AsyncWrite for ClientIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.poll_write_vectored(cx, &[std::io::IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let this = &mut *self;
        let hold_tail = this.ctx.last_response.load(Ordering::Relaxed);
        let inner = Pin::new(&mut this.inner);
        let result = if hold_tail {
            inner.poll_write_hold_tail(cx, bufs)
        } else {
            inner.poll_write_vectored(cx, bufs)
        };
        self.count_out(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn log_connection_end(result: Result<(), Box<dyn std::error::Error + Send + Sync>>) {
    if let Err(e) = result {
        // Clients hanging up, timing out or speaking garbage are routine, not server errors.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
