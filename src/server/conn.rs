//! One client connection: HTTP/1.1 (keep-alive) or HTTP/2 (ALPN or prior knowledge, told by
//! its first bytes), served until the client leaves or a drain asks it to finish.

use super::fin_merge::HoldTail;
use super::listener::Stream;
use super::read_ahead::{FirstRead, Protocol};
use super::request;
use crate::log::Remote;
use crate::sendfile;
use crate::sendfile::SendFile;
use crate::shared::Shared;
use gatehouse_kit::connections::{ConnGuard, ConnSlot};
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

pub(crate) async fn serve(
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
        snapshot.acceptor(&listener).map(|t| {
            (
                t.acceptor.clone(),
                snapshot.config.server.header_read_timeout,
            )
        })
    };
    // Dropped with the connection, unless a tunnel took it over.
    let slot = ConnSlot::new(guard);
    match (stream, tls) {
        (Stream::Tcp(s), None) => serve_io(shared, s, remote, listener, None, slot).await,
        (Stream::Unix(s), None) => serve_io(shared, s, remote, listener, None, slot).await,
        // A TLS session is kilobytes. Boxed, the whole TLS path leaves a plaintext
        // connection's task (sized for the largest future it may hold) small
        // (asserted by `server::future_sizes`).
        (Stream::Tcp(s), Some((acceptor, timeout))) => {
            Box::pin(async move {
                let handshake = crate::tls::handshake_tcp(&acceptor, s, timeout, &listener);
                if let Some(s) = handshake.await {
                    serve_tls(shared, s, remote, listener, slot).await;
                }
            })
            .await
        }
        (Stream::Unix(s), Some((acceptor, timeout))) => {
            Box::pin(async move {
                let handshake = crate::tls::handshake(&acceptor, s, timeout, &listener);
                if let Some(s) = handshake.await {
                    serve_tls(shared, s, remote, listener, slot).await;
                }
            })
            .await
        }
    }
}

async fn serve_tls<I>(
    shared: Arc<Shared>,
    s: tokio_rustls::server::TlsStream<I>,
    remote: Remote,
    listener: Arc<str>,
    slot: ConnSlot,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    tokio_rustls::server::TlsStream<I>: HoldTail + SendFile,
{
    let alpn = alpn_protocol(s.get_ref().1.alpn_protocol());
    serve_io(shared, s, remote, listener, Some(alpn), slot).await;
}

/// The protocol a TLS client chose by ALPN; `None`: it chose none, so its first bytes tell.
fn alpn_protocol(alpn: Option<&[u8]>) -> Option<Protocol> {
    match alpn {
        Some(b"h2") => Some(Protocol::Http2),
        Some(b"http/1.1") => Some(Protocol::Http1),
        _ => None,
    }
}

/// `tls`: `None` for plaintext, else the protocol ALPN settled (if any).
async fn serve_io<I>(
    shared: Arc<Shared>,
    io: I,
    remote: Remote,
    listener: Arc<str>,
    tls: Option<Option<Protocol>>,
    slot: ConnSlot,
) where
    I: AsyncRead + HoldTail + SendFile + Send + 'static,
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
        tls: tls.is_some(),
        slot,
        watch: Default::default(),
        file_regions: Default::default(),
    });
    let mut io = ClientIo {
        inner: io,
        ctx: ctx.clone(),
        first_read: FirstRead::default(),
    };
    let protocol = match tls.flatten() {
        Some(p) => p,
        None => {
            let timeout = snapshot.config.server.header_read_timeout;
            match first_bytes(&mut io, timeout, drain.as_mut()).await {
                Some(p) => p,
                None => return,
            }
        }
    };
    let conn_ctx = ctx.clone();
    let io = TokioIo::new(io);
    // Each connection is built inside `drive`: built here and moved in, it would take room
    // in this task's future twice (a moved-from local keeps its slot across the await).
    // HTTP/2's is boxed: rarer, and much larger than HTTP/1's.
    let http = &snapshot.http;
    let server = &snapshot.config.server;
    match protocol {
        Protocol::Http1 => {
            if I::SENDS_FILES {
                let _ = conn_ctx.file_regions.set(Arc::default());
            }
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { request::handle(req, &ctx).await }
            });
            let conn = || http.h1.serve_connection(io, service).with_upgrades();
            // hyper's header_read_timeout bounds an idle HTTP/1 connection already.
            let timers = (server.send_timeout, None);
            drive(conn, |c| c.graceful_shutdown(), drain, &conn_ctx, timers).await;
        }
        Protocol::Http2 => {
            let service = service_fn(move |req| {
                let ctx = ctx.clone();
                async move { super::watch::serve_stream(req, &ctx).await }
            });
            let conn = || Box::pin(http.h2.serve_connection(io, service));
            let timers = (server.send_timeout, Some(server.header_read_timeout));
            drive(
                conn,
                |c| c.get_mut().as_mut().graceful_shutdown(),
                drain,
                &conn_ctx,
                timers,
            )
            .await;
        }
    }
}

/// Waits for the connection's first bytes and tells its protocol by them; `None` when they
/// did not come within `header_read_timeout` (the slowloris guard covers a client that
/// sends nothing at all, too) or could not be read. A drain leaves the client
/// `FIRST_REQUEST_GRACE` to start.
async fn first_bytes<I: AsyncRead + Unpin>(
    io: &mut ClientIo<I>,
    timeout: Duration,
    mut drain: Pin<&mut gatehouse_kit::connections::DrainWait<'_>>,
) -> Option<Protocol> {
    let deadline = tokio::time::Instant::now() + timeout;
    let ClientIo {
        inner, first_read, ..
    } = io;
    let sniff = std::future::poll_fn(|cx| first_read.poll_sniff(inner, cx));
    let sniff = tokio::time::timeout_at(deadline, sniff);
    tokio::pin!(sniff);
    let outcome = tokio::select! {
        biased;
        r = &mut sniff => r,
        () = &mut drain => {
            let grace = tokio::time::Instant::now() + FIRST_REQUEST_GRACE;
            match tokio::time::timeout_at(grace.min(deadline), &mut sniff).await {
                Ok(r) => r,
                Err(_) => return None,
            }
        }
    };
    match outcome {
        Ok(Ok(p)) => Some(p),
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "connection ended before its first request");
            None
        }
        Err(_) => {
            tracing::debug!("no request within header_read_timeout");
            None
        }
    }
}

/// Serves one hyper connection until it ends; a drain lets a request in flight finish
/// (and a connection that has not begun its first request start it) before `shutdown`.
/// `timers`: the send timeout, and the idle timeout hyper does not apply itself (HTTP/2).
async fn drive<C>(
    conn: impl FnOnce() -> C,
    shutdown: impl FnOnce(Pin<&mut C>),
    mut drain: Pin<&mut gatehouse_kit::connections::DrainWait<'_>>,
    ctx: &request::ConnContext,
    timers: (Duration, Option<Duration>),
) where
    C: std::future::Future<Output = Result<(), hyper::Error>>,
{
    let conn = conn();
    tokio::pin!(conn);
    let mut shutdown = Some(shutdown);
    let watch = ctx.watch.watch(timers.0, timers.1);
    tokio::pin!(watch);
    loop {
        tokio::select! {
            // The connection first: it is what wakes this task nearly every time.
            biased;
            result = conn.as_mut() => {
                log_connection_end(result);
                return;
            }
            () = &mut drain, if shutdown.is_some() => break,
            verdict = &mut watch => {
                if verdict == super::watch::Verdict::Close {
                    tracing::debug!("client took nothing of a response for send_timeout: closing");
                    return;
                }
                tracing::debug!("HTTP/2 connection idle: GOAWAY");
                if let Some(shutdown) = shutdown.take() {
                    shutdown(conn.as_mut());
                }
                // Still watched for the send timeout while its streams finish.
                watch.set(ctx.watch.watch(timers.0, None));
            }
        }
    }
    if !ctx.started.load(Ordering::Acquire) {
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
                _ = poll.tick() => if ctx.started.load(Ordering::Acquire) { break },
            }
        }
    }
    if let Some(shutdown) = shutdown.take() {
        shutdown(conn.as_mut());
    }
    // Draining: the send timeout still applies; idleness no longer matters.
    watch.set(ctx.watch.watch(timers.0, None));
    tokio::select! {
        result = conn.as_mut() => log_connection_end(result),
        _ = &mut watch => tracing::debug!("client took nothing of a response for send_timeout: closing"),
    }
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

impl<I: HoldTail + SendFile> AsyncWrite for ClientIo<I> {
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
        let mapped = this.ctx.file_regions.get().and_then(|r| r.find(bufs));
        let result = if let Some(write) = mapped {
            match write {
                // The head (or whatever precedes the file) waits for the file's first
                // segment, as nginx's tcp_nopush makes it.
                sendfile::Write::Before(n) => inner.poll_write_hold_tail(cx, &bufs[..n]),
                sendfile::Write::File { file, offset, len } => {
                    inner.poll_send_file(cx, &file, offset, len)
                }
            }
        } else if hold_tail {
            inner.poll_write_hold_tail(cx, bufs)
        } else {
            inner.poll_write_vectored(cx, bufs)
        };
        self.ctx.watch.write_result(result.is_pending());
        self.count_out(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // TLS holds records back until the socket takes them: a flush can wait too. (A
        // completed flush is no sign of progress: a TCP flush always completes.)
        let result = Pin::new(&mut self.inner).poll_flush(cx);
        if result.is_pending() {
            self.ctx.watch.write_result(true);
        }
        result
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn log_connection_end(result: Result<(), hyper::Error>) {
    if let Err(e) = result {
        // Clients hanging up, timing out or speaking garbage are routine, not server errors.
        tracing::debug!(error = %e, "connection ended with an error");
    }
}
