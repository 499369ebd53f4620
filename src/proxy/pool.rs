//! Keep-alive connections to one upstream: requests to an HTTP/1 upstream without an
//! upgrade, and with no body or one whole in memory, on the lean client's connections
//! (`lean`: parked on a list, no task, checked for anything that arrived while idle),
//! everything else on hyper's connection-level client API, as below.
//!
//! hyper-util's legacy `Client` did this job with more machinery per request than the job
//! needs when every pool serves exactly one upstream: a HashMap keyed by (scheme, authority)
//! hashed with SipHash, a checkout racing a connect, a boxed future and several large
//! future moves per request (≈ 7k instructions of a 57k proxied GET). Here an idle HTTP/1
//! connection is a `SendRequest` on a stack; HTTP/2 shares one `SendRequest`.
//!
//! Each connection is still driven by its own task (hyper's design), which watches an idle
//! connection for the upstream's close, as nginx's keepalive module does on the read event.
//! That task may run late on a busy runtime, so before handing a connection out to a request
//! that could not be sent again (`is_resendable`), a checkout also asks the kernel
//! (`PeerWatch`: one poll(2) on the socket). Requests that can be re-sent skip that syscall
//! (~0.8 µs, 4 % of a proxied GET here): on a connection found dead they go out again, and
//! the client sees nothing. A connection that carried a 5xx response is not reused: an app
//! that failed a request often closes the connection a moment later without saying so
//! (uvicorn after an unhandled exception), and a request written into that moment is lost.

use super::body::UpBody;
use super::connector::{ConnectError, Connector, PeerWatch, UpstreamStream};
use super::lean::{self, LeanError, UpstreamBody};
use http::{HeaderMap, Method, Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Idle HTTP/1 connections kept per upstream; more are closed when they become idle.
const MAX_IDLE: usize = 256;

pub(crate) struct ConnPool {
    connector: Connector,
    http2: bool,
    /// Idle connections are closed after this long (before the app's own keep-alive timeout
    /// could close one under a request).
    keepalive: Duration,
    idle: Mutex<Idle>,
}

/// An HTTP/1 connection between requests.
struct H1Conn {
    tx: http1::SendRequest<UpBody>,
    watch: PeerWatch,
}

#[derive(Default)]
struct Idle {
    /// Most recently used last: reusing the warmest connection lets the others expire.
    h1: Vec<(H1Conn, Instant)>,
    h2: Option<http2::SendRequest<UpBody>>,
    /// Connections of the lean client (`lean`) between requests, most recent last.
    lean: Vec<(UpstreamStream, Instant)>,
    /// A task closes expired idle connections while there are any.
    reaper: bool,
}

/// Why a request got no response.
#[derive(Debug)]
pub(crate) enum SendError {
    /// No connection could be opened: the request was not sent.
    Connect(ConnectError),
    /// The HTTP/2 handshake failed: not sent either.
    Handshake(hyper::Error),
    /// Sent (at least partly), then the connection or the request body failed.
    Request(hyper::Error),
    /// The lean client's request failed, or its response head was refused.
    Lean(LeanError),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            // Says "connect failed" or "connect timed out" itself.
            SendError::Connect(e) => e.fmt(f),
            SendError::Handshake(_) => f.write_str("http2 handshake failed"),
            SendError::Request(_) | SendError::Lean(_) => f.write_str("request failed"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => e.source(),
            SendError::Handshake(e) | SendError::Request(e) => Some(e),
            SendError::Lean(e) => Some(e),
        }
    }
}

impl SendError {
    /// The request never left: it may go to another upstream whatever its method.
    pub(crate) fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::Handshake(_))
    }
}

impl ConnPool {
    pub(crate) fn new(connector: Connector, http2: bool, keepalive: Duration) -> Arc<ConnPool> {
        Arc::new(ConnPool {
            connector,
            http2,
            keepalive,
            idle: Mutex::new(Idle::default()),
        })
    }

    pub(crate) fn is_http2(&self) -> bool {
        self.http2
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        // The guarded data stays consistent whatever a panicking holder did.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` on a pooled connection, or a new one. A request that a pooled connection
    /// closed before taking is sent again on another: it never left, so any method may be.
    /// `now` is the time the caller last read (no need to read the clock again here).
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<UpBody>,
        now: Instant,
    ) -> Result<Response<UpstreamBody>, SendError> {
        // A body here is hyper's to stream; the lean client takes only requests without.
        let bodiless = hyper::body::Body::is_end_stream(req.body());
        let resp = if self.takes_lean(req.method(), req.headers(), bodiless) {
            return lean::send(self, lean::RequestHead::of(&req), now).await;
        } else if self.http2 {
            self.send_h2(req).await
        } else {
            self.send_h1(req, now).await
        };
        resp.map(|r| r.map(UpstreamBody::Hyper))
    }

    /// Whether a request goes through the lean client (`lean::takes`) on this pool: the
    /// proxy asks before building one (`Outgoing::prepare`), `send` for any other caller.
    pub(super) fn takes_lean(
        &self,
        method: &Method,
        headers: &HeaderMap,
        body_in_memory: bool,
    ) -> bool {
        !self.http2 && lean::takes(method, headers, body_in_memory)
    }

    pub(super) async fn connect(&self) -> Result<UpstreamStream, SendError> {
        self.connector.connect().await.map_err(SendError::Connect)
    }

    /// The most recently parked lean connection that has not expired and on which nothing
    /// arrived while it waited (no task reads an idle lean connection: bytes there would be
    /// taken for the next request's response). Its upstream may still have closed it
    /// unseen by the reactor: `lean::send` finds that out and sends again if it may, and
    /// with `probe` the kernel is asked first, as `checkout_h1` does.
    pub(super) fn checkout_lean(&self, now: Instant, probe: bool) -> Option<UpstreamStream> {
        loop {
            // Not holding the lock for the poll(2).
            let (io, since) = self.lock().lean.pop()?;
            if now.saturating_duration_since(since) < self.keepalive
                && !io.readable_while_idle()
                && !(probe && io.peer_closed())
            {
                return Some(io);
            }
        }
    }

    pub(super) fn checkin_lean(self: &Arc<Self>, io: UpstreamStream, since: Instant) {
        let mut idle = self.lock();
        if idle.lean.len() >= MAX_IDLE {
            return;
        }
        idle.lean.push((io, since));
        self.start_reaper(&mut idle);
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<UpBody>,
        now: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        let probe = !is_resendable(&req);
        loop {
            let (mut conn, reused) = match self.checkout_h1(now, probe) {
                Some(conn) => (conn, true),
                // Boxed: connecting (name lookup, connect, timeout) is the rare path and
                // its future is large; hyper keeps room for the handler's future in every
                // client connection, idle or not.
                None => (Box::pin(self.connect_h1()).await?, false),
            };
            match conn.tx.try_send_request(req).await {
                Ok(resp) => {
                    // A 5xx: the app may be closing this connection (see the module doc).
                    if !resp.status().is_server_error() {
                        // Parked as of `now`: a little older than it is, so it expires early.
                        self.checkin_h1(conn, now);
                    }
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    /// The most recently parked connection that is still open; `probe`: checked with the
    /// kernel too.
    fn checkout_h1(&self, now: Instant, probe: bool) -> Option<H1Conn> {
        loop {
            // Not holding the lock for the poll(2): other requests check out meanwhile.
            let (conn, since) = self.lock().h1.pop()?;
            // Not ready: its task saw the connection close (or closing) since it was parked.
            if conn.tx.is_ready()
                && now.saturating_duration_since(since) < self.keepalive
                && !(probe && conn.watch.peer_closed())
            {
                return Some(conn);
            }
        }
    }

    async fn connect_h1(&self) -> Result<H1Conn, SendError> {
        let mut io = self.connector.connect().await.map_err(SendError::Connect)?;
        let watch = io.watch();
        // An HTTP/1 handshake does no I/O; it only sets the connection up.
        // writev: hyper queues body bytes instead of copying them into its buffer, so a
        // spooled body's mapped bytes reach the writer, which sends them with sendfile(2).
        let (tx, conn) = http1::Builder::new()
            .writev(true)
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            // Upgrades: a 101 hands the socket to the WebSocket tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(H1Conn { tx, watch })
    }

    /// Parks a connection that has sent its request. It can take the next one once hyper
    /// has read this response to its end; a small response usually is by now.
    fn checkin_h1(self: &Arc<Self>, mut conn: H1Conn, sent: Instant) {
        if conn.tx.is_ready() {
            self.park_h1(conn, sent);
            return;
        }
        if conn.tx.is_closed() {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            // Resolves when the response body is done (or the connection gone).
            if conn.tx.ready().await.is_ok() {
                if let Some(pool) = pool.upgrade() {
                    pool.park_h1(conn, Instant::now());
                }
            }
        });
    }

    fn park_h1(self: &Arc<Self>, conn: H1Conn, since: Instant) {
        let mut idle = self.lock();
        if idle.h1.len() >= MAX_IDLE {
            return;
        }
        idle.h1.push((conn, since));
        self.start_reaper(&mut idle);
    }

    fn start_reaper(self: &Arc<Self>, idle: &mut Idle) {
        if !idle.reaper {
            idle.reaper = true;
            tokio::spawn(reap(Arc::downgrade(self), self.keepalive));
        }
    }

    async fn send_h2(
        self: &Arc<Self>,
        mut req: Request<UpBody>,
    ) -> Result<Response<Incoming>, SendError> {
        loop {
            let shared = self.lock().h2.clone().filter(|tx| !tx.is_closed());
            let (mut tx, reused) = match shared {
                Some(tx) => (tx, true),
                None => (Box::pin(self.connect_h2()).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => {
                        // That connection is done: the next round opens another.
                        self.lock().h2 = None;
                        req = r;
                    }
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    async fn connect_h2(&self) -> Result<http2::SendRequest<UpBody>, SendError> {
        let io = self.connector.connect().await.map_err(SendError::Connect)?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        // Requests that raced to connect each made one; the last one stays shared.
        self.lock().h2 = Some(tx.clone());
        Ok(tx)
    }
}

/// Safe to send twice (RFC 9110 §9.2.2).
pub(crate) fn is_idempotent(m: &Method) -> bool {
    matches!(
        *m,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

/// A request the handler may send again if its connection dies before the response: an
/// idempotent one without a body (see `forward`'s re-sends).
fn is_resendable(req: &Request<UpBody>) -> bool {
    use hyper::body::Body as _;
    is_idempotent(req.method()) && req.body().is_end_stream()
}

/// Closes idle connections older than `keepalive`; ends when none is left (or the pool is
/// gone with its configuration generation), and `park_h1` starts it again.
async fn reap(pool: Weak<ConnPool>, keepalive: Duration) {
    let every = (keepalive / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.lock();
        idle.h1
            .retain(|(conn, since)| !conn.tx.is_closed() && since.elapsed() < keepalive);
        // Closed by the upstream (or sent bytes nobody asked for): its descriptor goes now,
        // not at the next checkout.
        idle.lean
            .retain(|(io, since)| !io.readable_while_idle() && since.elapsed() < keepalive);
        if idle.h1.is_empty() && idle.lean.is_empty() {
            idle.reaper = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstream;
    use http_body_util::BodyExt;
    use std::io::{Read, Write};

    /// Answers one request with a keep-alive 200, then closes the connection when told.
    fn one_answer_upstream() -> (
        String,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (close, closing) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "no request");
                head.extend_from_slice(&buf[..n]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                .unwrap();
            let _ = closing.recv();
        });
        (addr, close, server)
    }

    // One thread: while this test runs, no other task (the connection's) can.
    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_the_upstream_closed_is_not_handed_out_before_its_task_saw_it() {
        let (addr, close, server) = one_answer_upstream();
        let upstream = Upstream::Http { authority: addr };
        let connector = Connector::new(&upstream, Duration::from_secs(2));
        let pool = ConnPool::new(connector, false, Duration::from_secs(30));
        // A body in hyper's form: hyper's client (a bodiless request takes the lean one).
        let body = UpBody::full(
            &[bytes::Bytes::from_static(b"x")],
            super::super::body::Activity::sent_at(std::time::Instant::now()),
        );
        let req = Request::builder()
            .method(Method::POST)
            .uri("/")
            .header("host", "a")
            .body(body)
            .unwrap();
        let resp = pool.send(req, Instant::now()).await.unwrap();
        resp.into_body().collect().await.unwrap();
        for _ in 0..200 {
            if pool.lock().h1.len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Idle and open: handed out (and parked again).
        let conn = pool
            .checkout_h1(Instant::now(), true)
            .expect("the idle connection");
        pool.park_h1(conn, Instant::now());

        close.send(()).unwrap();
        server.join().unwrap();
        // The FIN has arrived, but the connection's task has not run since, so hyper still
        // calls the connection ready. Only the kernel knows.
        std::thread::sleep(Duration::from_millis(20));
        assert!(pool.lock().h1[0].0.tx.is_ready());
        assert!(pool.checkout_h1(Instant::now(), true).is_none());
    }

    /// A pool to `one_answer_upstream` that has sent one GET, through the lean client.
    async fn after_one_get(
        keepalive: Duration,
    ) -> (
        Arc<ConnPool>,
        std::sync::mpsc::Sender<()>,
        std::thread::JoinHandle<()>,
    ) {
        let (addr, close, server) = one_answer_upstream();
        let connector = Connector::new(&Upstream::Http { authority: addr }, Duration::from_secs(2));
        let pool = ConnPool::new(connector, false, keepalive);
        let req = Request::builder()
            .uri("/")
            .header("host", "a")
            .body(UpBody::empty())
            .unwrap();
        let resp = pool.send(req, Instant::now()).await.unwrap();
        resp.into_body().collect().await.unwrap();
        (pool, close, server)
    }

    // One thread: the reactor does not run while the test sleeps, so tokio has not seen
    // the close either.
    #[tokio::test(flavor = "current_thread")]
    async fn a_lean_connection_the_upstream_closed_is_not_handed_out_to_a_post() {
        let (pool, close, server) = after_one_get(Duration::from_secs(30)).await;
        close.send(()).unwrap();
        server.join().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        // A GET would take it (and, finding it closed, send again on a new one) ...
        let conn = pool.checkout_lean(Instant::now(), false).expect("parked");
        pool.checkin_lean(conn, Instant::now());
        // ... a POST, which could not go twice, asks the kernel first.
        assert!(pool.checkout_lean(Instant::now(), true).is_none());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_lean_connection_the_upstream_closed_is_reaped_before_it_expires() {
        // The reaper looks every 500 ms; the connection would expire only after 1 s.
        let (pool, close, server) = after_one_get(Duration::from_secs(1)).await;
        assert_eq!(
            pool.lock().lean.len(),
            1,
            "a GET's connection is parked for reuse"
        );
        close.send(()).unwrap();
        server.join().unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            pool.lock().lean.is_empty(),
            "closed, so reaped at the first look"
        );
    }

    #[test]
    fn only_bodiless_idempotent_requests_skip_the_kernel_check() {
        let req = |method: Method, body: UpBody| {
            let mut r = Request::new(body);
            *r.method_mut() = method;
            r
        };
        let full = || {
            UpBody::full(
                &[bytes::Bytes::from_static(b"{}")],
                super::super::body::Activity::sent_at(std::time::Instant::now()),
            )
        };
        assert!(is_resendable(&req(Method::GET, UpBody::empty())));
        assert!(is_resendable(&req(Method::DELETE, UpBody::empty())));
        assert!(!is_resendable(&req(Method::POST, UpBody::empty())));
        assert!(!is_resendable(&req(Method::PUT, full())));
    }
}
