//! Keep-alive connections to one upstream, on hyper's connection-level client API.
//!
//! hyper-util's legacy `Client` did this job with more machinery per request than the job
//! needs when every pool serves exactly one upstream: a HashMap keyed by (scheme, authority)
//! hashed with SipHash, a checkout racing a connect, a boxed future and several large
//! future moves per request (≈ 7k instructions of a 57k proxied GET). Here an idle HTTP/1
//! connection is a `SendRequest` on a stack; HTTP/2 shares one `SendRequest`.
//!
//! Each connection is still driven by its own task (hyper's design): it notices an upstream
//! that closes an idle connection, so a dead connection is rarely handed out.

use super::body::UpBody;
use super::connector::{ConnectError, Connector};
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

/// Idle HTTP/1 connections kept per upstream; more are closed when they become idle.
const MAX_IDLE: usize = 256;

pub struct ConnPool {
    connector: Connector,
    http2: bool,
    /// Idle connections are closed after this long (before the app's own keep-alive timeout
    /// could close one under a request).
    keepalive: Duration,
    idle: Mutex<Idle>,
}

#[derive(Default)]
struct Idle {
    /// Most recently used last: reusing the warmest connection lets the others expire.
    h1: Vec<(http1::SendRequest<UpBody>, Instant)>,
    h2: Option<http2::SendRequest<UpBody>>,
    /// A task closes expired idle connections while there are any.
    reaper: bool,
}

/// Why a request got no response.
#[derive(Debug)]
pub enum SendError {
    /// No connection could be opened: the request was not sent.
    Connect(ConnectError),
    /// The HTTP/2 handshake failed: not sent either.
    Handshake(hyper::Error),
    /// Sent (at least partly), then the connection or the request body failed.
    Request(hyper::Error),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Connect(_) => f.write_str("connect error"),
            SendError::Handshake(_) => f.write_str("http2 handshake failed"),
            SendError::Request(_) => f.write_str("request failed"),
        }
    }
}

impl std::error::Error for SendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SendError::Connect(e) => Some(e),
            SendError::Handshake(e) | SendError::Request(e) => Some(e),
        }
    }
}

impl SendError {
    /// The request never left: it may go to another upstream whatever its method.
    pub fn is_connect(&self) -> bool {
        matches!(self, SendError::Connect(_) | SendError::Handshake(_))
    }
}

impl ConnPool {
    pub fn new(connector: Connector, http2: bool, keepalive: Duration) -> Arc<ConnPool> {
        Arc::new(ConnPool {
            connector,
            http2,
            keepalive,
            idle: Mutex::new(Idle::default()),
        })
    }

    pub fn is_http2(&self) -> bool {
        self.http2
    }

    fn lock(&self) -> MutexGuard<'_, Idle> {
        // The guarded data stays consistent whatever a panicking holder did.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends `req` on a pooled connection, or a new one. A request that a pooled connection
    /// closed before taking is sent again on another: it never left, so any method may be.
    /// `now` is the time the caller last read (no need to read the clock again here).
    pub async fn send(
        self: &Arc<Self>,
        req: Request<UpBody>,
        now: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        if self.http2 {
            self.send_h2(req).await
        } else {
            self.send_h1(req, now).await
        }
    }

    async fn send_h1(
        self: &Arc<Self>,
        mut req: Request<UpBody>,
        now: Instant,
    ) -> Result<Response<Incoming>, SendError> {
        loop {
            let (mut tx, reused) = match self.checkout_h1(now) {
                Some(tx) => (tx, true),
                // Boxed: connecting (name lookup, connect, timeout) is the rare path and
                // its future is large; hyper keeps room for the handler's future in every
                // client connection, idle or not.
                None => (Box::pin(self.connect_h1()).await?, false),
            };
            match tx.try_send_request(req).await {
                Ok(resp) => {
                    // Parked as of `now`: a little older than it is, so it expires early.
                    self.checkin_h1(tx, now);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(r) if reused => req = r,
                    _ => return Err(SendError::Request(e.into_error())),
                },
            }
        }
    }

    fn checkout_h1(&self, now: Instant) -> Option<http1::SendRequest<UpBody>> {
        let mut idle = self.lock();
        while let Some((tx, since)) = idle.h1.pop() {
            // Not ready: its connection closed (or is closing) since it was parked.
            if tx.is_ready() && now.saturating_duration_since(since) < self.keepalive {
                return Some(tx);
            }
        }
        None
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<UpBody>, SendError> {
        let io = self.connector.connect().await.map_err(SendError::Connect)?;
        // An HTTP/1 handshake does no I/O; it only sets the connection up.
        let (tx, conn) = http1::handshake(TokioIo::new(io))
            .await
            .map_err(SendError::Handshake)?;
        tokio::spawn(async move {
            // Upgrades: a 101 hands the socket to the WebSocket tunnel.
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(tx)
    }

    /// Parks a connection that has sent its request. It can take the next one once hyper
    /// has read this response to its end; a small response usually is by now.
    fn checkin_h1(self: &Arc<Self>, mut tx: http1::SendRequest<UpBody>, sent: Instant) {
        if tx.is_ready() {
            self.park_h1(tx, sent);
            return;
        }
        if tx.is_closed() {
            return;
        }
        let pool = Arc::downgrade(self);
        tokio::spawn(async move {
            // Resolves when the response body is done (or the connection gone).
            if tx.ready().await.is_ok() {
                if let Some(pool) = pool.upgrade() {
                    pool.park_h1(tx, Instant::now());
                }
            }
        });
    }

    fn park_h1(self: &Arc<Self>, tx: http1::SendRequest<UpBody>, since: Instant) {
        let mut idle = self.lock();
        if idle.h1.len() >= MAX_IDLE {
            return;
        }
        idle.h1.push((tx, since));
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

/// Closes idle connections older than `keepalive`; ends when none is left (or the pool is
/// gone with its configuration generation), and `park_h1` starts it again.
async fn reap(pool: Weak<ConnPool>, keepalive: Duration) {
    let every = (keepalive / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(every).await;
        let Some(pool) = pool.upgrade() else { return };
        let mut idle = pool.lock();
        idle.h1
            .retain(|(tx, since)| !tx.is_closed() && since.elapsed() < keepalive);
        if idle.h1.is_empty() {
            idle.reaper = false;
            return;
        }
    }
}
