//! The timers a connection needs that hyper does not have: a send timeout for every response
//! (a client that takes nothing of it for `send_timeout` loses the connection, nginx's
//! `send_timeout`), and an idle timeout for HTTP/2 (hyper's HTTP/1 has `header_read_timeout`;
//! its HTTP/2 keeps a connection that answers pings open for ever). It also gives HTTP/2
//! streams beyond a connection's first a slot of `max_connections`: each may hold a file or
//! an upstream connection, as a connection does.
//!
//! Nothing here reads a clock per request on HTTP/1: a write that has to wait notes when it
//! began, and `watch`, one timer per connection, looks at the notes.

use super::request::{self, ConnContext};
use crate::http_base::{self, Body};
use crate::proxy::balance::now_ms;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::{Frame, Incoming, SizeHint};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;

/// What one connection's watchdog looks at.
#[derive(Default)]
pub(crate) struct ConnWatch {
    /// `now_ms()` when a write to the client first had to wait; 0 while writes go through.
    write_blocked_since: AtomicU64,
    /// HTTP/2: streams being answered (handler running or body being sent).
    open_streams: AtomicUsize,
    /// HTTP/2: `now_ms()` when a stream last began or ended.
    last_stream_change: AtomicU64,
    /// HTTP/2: the streams, for their send timeouts. Pruned by the watchdog.
    streams: Mutex<Vec<Weak<StreamWatch>>>,
}

/// One HTTP/2 stream: open while it lives.
pub(crate) struct StreamWatch {
    conn: Arc<ConnWatch>,
    /// `now_ms()` since when the body has handed hyper a frame (or the head) and hyper has
    /// not asked for the next one, i.e. the client has not taken it; 0 otherwise.
    held_since: AtomicU64,
    _slot: Option<OwnedSemaphorePermit>,
}

impl Drop for StreamWatch {
    fn drop(&mut self) {
        self.conn
            .last_stream_change
            .store(now_ms(), Ordering::Relaxed);
        self.conn.open_streams.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What the watchdog decided.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// A client took nothing of a response for `send_timeout`: close the connection.
    Close,
    /// HTTP/2 without a stream for the idle timeout: GOAWAY, let it finish.
    GoAway,
}

impl ConnWatch {
    /// Called by the client's I/O on every write: `waiting` when it could not write.
    pub(crate) fn write_result(&self, waiting: bool) {
        let blocked = self.write_blocked_since.load(Ordering::Relaxed);
        if waiting && blocked == 0 {
            self.write_blocked_since.store(now_ms(), Ordering::Relaxed);
        } else if !waiting && blocked != 0 {
            self.write_blocked_since.store(0, Ordering::Relaxed);
        }
    }

    /// Resolves when the connection must close (`send_timeout`) or, with `idle`, when an
    /// HTTP/2 connection has had no stream for that long.
    pub(crate) fn watch(&self, send_timeout: Duration, idle: Option<Duration>) -> Watchdog<'_> {
        // A connection that never opens a stream is idle from the start.
        let _ = self.last_stream_change.compare_exchange(
            0,
            now_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
        Watchdog {
            conn: self,
            send_ms: millis(send_timeout),
            idle_ms: idle.map(millis),
            armed: false,
            sleep: tokio::time::sleep(Duration::ZERO),
        }
    }

    /// The verdict if one is due at `now`, else when to look again.
    fn check(&self, now: u64, send_ms: u64, idle_ms: Option<u64>) -> Result<Verdict, u64> {
        // A stall that begins just after a look is due one `period` later at most, so a
        // look every `period` (when nothing is due sooner) sees every deadline on time.
        let period = idle_ms.map_or(send_ms, |i| i.min(send_ms));
        let mut next = now + period;
        let mut due = |since: u64, limit: u64| {
            since != 0 && {
                next = next.min(since + limit);
                now.saturating_sub(since) >= limit
            }
        };
        if due(self.write_blocked_since.load(Ordering::Relaxed), send_ms)
            || self.any_stream(|s| due(s.held_since.load(Ordering::Relaxed), send_ms))
        {
            return Ok(Verdict::Close);
        }
        if let Some(idle_ms) = idle_ms {
            if self.open_streams.load(Ordering::Acquire) == 0
                && due(self.last_stream_change.load(Ordering::Relaxed), idle_ms)
            {
                return Ok(Verdict::GoAway);
            }
        }
        Err(next)
    }

    /// Whether `f` holds for a live stream; forgets the ended ones.
    fn any_stream(&self, mut f: impl FnMut(&StreamWatch) -> bool) -> bool {
        let mut streams = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = false;
        streams.retain(|w| match w.upgrade() {
            Some(s) => {
                found = found || f(&s);
                true
            }
            None => false,
        });
        found
    }
}

pin_project_lite::pin_project! {
    /// A connection's watchdog: one timer, re-armed for the next deadline. It is polled on
    /// every wake-up of the connection's task, so a poll before its timer fires reads one
    /// flag and nothing else.
    pub(crate) struct Watchdog<'a> {
        conn: &'a ConnWatch,
        send_ms: u64,
        idle_ms: Option<u64>,
        armed: bool,
        #[pin]
        sleep: tokio::time::Sleep,
    }
}

impl std::future::Future for Watchdog<'_> {
    type Output = Verdict;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Verdict> {
        let mut this = self.project();
        if *this.armed && !this.sleep.is_elapsed() {
            return Poll::Pending;
        }
        loop {
            let now = now_ms();
            let next = match this.conn.check(now, *this.send_ms, *this.idle_ms) {
                Ok(verdict) => return Poll::Ready(verdict),
                Err(next) => next,
            };
            let wait = Duration::from_millis(next.saturating_sub(now).max(1));
            this.sleep
                .as_mut()
                .reset(tokio::time::Instant::now() + wait);
            if this.sleep.as_mut().poll(cx).is_pending() {
                *this.armed = true;
                return Poll::Pending;
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 2)
}

/// A response body that tells its stream's watchdog whether the client keeps taking it.
pub(crate) struct WatchedBody {
    inner: Body,
    stream: Arc<StreamWatch>,
}

impl hyper::body::Body for WatchedBody {
    type Data = Bytes;
    type Error = http_base::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        // Asked for a frame: the client took the previous one (hyper had room for it).
        self.stream.held_since.store(0, Ordering::Relaxed);
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = &polled {
            self.stream.held_since.store(now_ms(), Ordering::Relaxed);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves one HTTP/2 stream: counted open until its response is sent, watched for the send
/// timeout, and refused with 503 when `max_connections` has no room for it.
pub(crate) async fn serve_stream(
    req: Request<Incoming>,
    ctx: &ConnContext,
) -> Result<Response<WatchedBody>, Infallible> {
    let conn = &ctx.watch;
    // (No clock for `last_stream_change` here: idleness is not looked at while a stream is
    // open, and its end writes the time.)
    // The connection's own slot covers its first stream.
    let first = conn.open_streams.fetch_add(1, Ordering::AcqRel) == 0;
    let slot = match first {
        true => None,
        false => ctx.shared.conns.try_reserve_stream(ctx.admin),
    };
    let refused = !first && slot.is_none();
    let stream = Arc::new(StreamWatch {
        conn: conn.clone(),
        held_since: AtomicU64::new(0),
        _slot: slot,
    });
    {
        let mut streams = conn.streams.lock().unwrap_or_else(|e| e.into_inner());
        // Ended streams go before the list would grow: it stays near twice the open ones
        // however many requests the connection carries between two looks of the watchdog.
        if streams.len() == streams.capacity() {
            streams.retain(|w| w.strong_count() > 0);
        }
        streams.push(Arc::downgrade(&stream));
    }
    let response = if refused {
        refuse(req, ctx)
    } else {
        let Ok(response) = request::handle(req, ctx).await;
        response
    };
    // hyper asks the body for its first frame as soon as the head is out, before it waits
    // for any window: the stream counts as held from that frame on.
    Ok(response.map(|inner| WatchedBody { inner, stream }))
}

/// 503 for a stream beyond the budget: the client may retry once others have finished.
fn refuse(req: Request<Incoming>, ctx: &ConnContext) -> Response<Body> {
    let mut response = http_base::error(StatusCode::SERVICE_UNAVAILABLE);
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    let host = req
        .uri()
        .authority()
        .and_then(|a| crate::router::normalize_host(a.as_str()));
    crate::log::access(
        req.method(),
        req.uri().path(),
        host.as_deref().unwrap_or("-"),
        response.status(),
        None,
        Duration::ZERO,
        &ctx.remote_text,
    );
    response
}
