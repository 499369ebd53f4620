//! Streaming bodies between client and upstream, when they are not buffered (`spool`,
//! `buffer`): nothing is held beyond hyper's own frames; back-pressure flows through
//! `poll_frame`.
//!
//! - `UpBody` (client → upstream) enforces `max_body`, stalls out after `idle_timeout`, records
//!   when its last byte went (the response-header timer starts from there), and, if hyper
//!   never polled it, hands the client's body back on drop so a failed connect can be retried
//!   with the same body. A body read whole beforehand (`spool`) is sent from there.
//! - `DownBody` (upstream → client) stalls out after `idle_timeout`, lets go of the upstream
//!   when a client stops reading a large response for `idle_timeout`, and holds the
//!   upstream's in-flight count until the response is done.

use super::balance::{ms_of, now_ms, InFlight};
use super::lean::UpstreamBody;
use super::spool::{Replay, Spooled};
use crate::http_base::BoxError;
use bytes::Bytes;
use hyper::body::Incoming;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

#[derive(Debug)]
pub(crate) struct BodyTooLarge;

impl std::fmt::Display for BodyTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("request body larger than max_body")
    }
}
impl std::error::Error for BodyTooLarge {}

#[derive(Debug)]
pub(crate) struct IdleTimeout(pub Duration);

impl std::fmt::Display for IdleTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "no body data for {:?} (idle_timeout)", self.0)
    }
}
impl std::error::Error for IdleTimeout {}

/// The client's request body failed: malformed (bad chunked framing, oversized chunk
/// extensions, an HTTP/2 stream error such as a wrong content-length) or cut short by a
/// client that went away. A type of its
/// own so the handler can tell it from an upstream failure: the client's fault is a 400 (or,
/// for an abort, nginx's 499), never a 502 against the upstream's health and error count.
#[derive(Debug)]
pub(crate) struct ClientBodyError(pub hyper::Error);

impl std::fmt::Display for ClientBodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_abort() {
            "client closed the connection before its request body ended"
        } else {
            "malformed request body"
        })
    }
}

impl std::error::Error for ClientBodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

impl ClientBodyError {
    /// The client hung up or reset mid-body, rather than sending a malformed one.
    pub(crate) fn is_abort(&self) -> bool {
        if self.0.is_incomplete_message() {
            return true;
        }
        let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&self.0);
        while let Some(e) = cur {
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                use std::io::ErrorKind::*;
                return matches!(
                    io.kind(),
                    UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe
                );
            }
            if let Some(h2) = e.downcast_ref::<h2::Error>() {
                // A reset or GOAWAY the client sent, or its connection failing; a stream
                // error h2 found itself (a content-length mismatch) is malformed.
                return h2.is_remote() || h2.is_io();
            }
            cur = e.source();
        }
        false
    }

    /// What the access log records: 400, or 499 for an abort.
    pub(crate) fn status(&self) -> http::StatusCode {
        if self.is_abort() {
            crate::http_base::client_closed_request()
        } else {
            http::StatusCode::BAD_REQUEST
        }
    }
}

/// When the request (or a tunnel) last made progress, shared between the body that makes
/// it and the timer that watches it.
#[derive(Clone)]
pub(crate) enum Activity {
    /// No body: the request made its last progress when it was sent, at this `now_ms()`.
    Sent(u64),
    /// Progress recorded as it happens (each body frame, each tunnel read).
    Tracked(Arc<AtomicU64>),
}

impl Activity {
    /// Progress recorded from now on.
    pub(crate) fn tracked() -> Activity {
        Activity::Tracked(Arc::new(AtomicU64::new(now_ms())))
    }
    /// For a request without a body, sent at `at` (a time already read: no clock read).
    pub(crate) fn sent_at(at: std::time::Instant) -> Activity {
        Activity::Sent(ms_of(at))
    }
    pub(crate) fn touch(&self) {
        if let Activity::Tracked(last) = self {
            last.store(now_ms(), Ordering::Relaxed);
        }
    }
    /// Time since the last progress.
    pub(crate) fn idle(&self) -> Duration {
        let last = match self {
            Activity::Sent(at) => *at,
            Activity::Tracked(last) => last.load(Ordering::Relaxed),
        };
        Duration::from_millis(now_ms().saturating_sub(last))
    }
}

/// Where an unpolled body goes back to when hyper drops the request.
pub(crate) type Reclaim = Arc<Mutex<Option<Incoming>>>;

/// Re-arms a stall timer on progress; fires if a poll stays pending for `idle`.
pub(super) struct Stall {
    idle: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl Stall {
    pub(super) fn new(idle: Duration) -> Stall {
        Stall { idle, sleep: None }
    }
    pub(super) fn progress(&mut self) {
        if let Some(s) = &mut self.sleep {
            s.as_mut().reset(Instant::now() + self.idle);
        }
    }
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let idle = self.idle;
        let s = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(idle)));
        s.as_mut().poll(cx).is_ready()
    }
}

/// The body of a request on its way to an upstream. Boxed, and absent for the many requests
/// without one: the request is moved several times on its way out and queued in hyper's
/// channel to the connection, and every byte of it is copied each time.
pub(crate) struct UpBody(Option<Box<UpState>>);

impl UpBody {
    pub(crate) fn empty() -> UpBody {
        UpBody(None)
    }

    pub(crate) fn new(
        inner: Incoming,
        limit: Option<u64>,
        idle: Duration,
        activity: Activity,
        reclaim: Reclaim,
    ) -> UpBody {
        UpBody(Some(Box::new(UpState::new(
            inner, limit, idle, activity, reclaim,
        ))))
    }

    /// A body already read; every attempt gets its own (cheap) clone.
    pub(crate) fn full(frames: &[Bytes], activity: Activity) -> UpBody {
        if frames.iter().all(|f| f.is_empty()) {
            return UpBody::empty();
        }
        UpBody(Some(Box::new(UpState::full(frames, activity))))
    }

    /// A body read whole beforehand, in memory or in a temporary file.
    pub(crate) fn spooled(body: &Spooled, activity: Activity) -> UpBody {
        match body {
            Spooled::Memory(frames) => UpBody::full(frames, activity),
            Spooled::File { file, len } => {
                let mut state = UpState::full(&[], activity);
                state.file = Some(Replay::new(file.clone(), *len));
                UpBody(Some(Box::new(state)))
            }
        }
    }
}

impl Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.0 {
            Some(state) => state.poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.as_ref().is_none_or(|s| s.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.0
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |s| s.size_hint())
    }
}

struct UpState {
    inner: Option<Incoming>,
    /// A body read whole beforehand (small, with a Content-Length), as the frames it came
    /// in: all ready at once, so hyper writes them in one writev, without copying them.
    full: std::collections::VecDeque<Bytes>,
    /// A body read whole into a temporary file, sent after `full`.
    file: Option<Replay>,
    limit: Option<u64>,
    seen: u64,
    polled: bool,
    reclaim: Option<Reclaim>,
    activity: Option<Activity>,
    stall: Stall,
}

impl UpState {
    fn new(
        inner: Incoming,
        limit: Option<u64>,
        idle: Duration,
        activity: Activity,
        reclaim: Reclaim,
    ) -> UpState {
        UpState {
            inner: Some(inner),
            full: Default::default(),
            file: None,
            limit,
            seen: 0,
            polled: false,
            reclaim: Some(reclaim),
            activity: Some(activity),
            stall: Stall::new(idle),
        }
    }

    fn full(frames: &[Bytes], activity: Activity) -> UpState {
        UpState {
            inner: None,
            full: frames.iter().filter(|f| !f.is_empty()).cloned().collect(),
            file: None,
            limit: None,
            seen: 0,
            polled: false,
            reclaim: None,
            activity: Some(activity),
            // Never armed: every frame is ready.
            stall: Stall::new(Duration::from_secs(60)),
        }
    }

    fn touch(&self) {
        if let Some(a) = &self.activity {
            a.touch();
        }
    }

    // `UpBody`'s `Body` methods, on the boxed state.

    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(data) = self.full.pop_front() {
            self.touch();
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(file) = &mut self.file {
            match ready!(file.poll_chunk(cx)) {
                Some(Ok(data)) => {
                    self.touch();
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(Box::new(e)))),
                None => self.file = None,
            }
        }
        let Some(inner) = self.inner.as_mut() else {
            return Poll::Ready(None);
        };
        self.polled = true;
        match Pin::new(inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.seen += data.len() as u64;
                    if self.limit.is_some_and(|l| self.seen > l) {
                        return Poll::Ready(Some(Err(Box::new(BodyTooLarge))));
                    }
                }
                self.touch();
                self.stall.progress();
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(ClientBodyError(e))))),
            Poll::Ready(None) => {
                self.touch();
                Poll::Ready(None)
            }
            Poll::Pending => {
                if self.stall.poll_expired(cx) {
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(self.stall.idle)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.full.is_empty()
            && self.file.as_ref().is_none_or(|f| f.remaining() == 0)
            && self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let file = self.file.as_ref().map_or(0, Replay::remaining);
        match &self.inner {
            _ if !self.full.is_empty() || file > 0 => {
                SizeHint::with_exact(self.full.iter().map(|f| f.len() as u64).sum::<u64>() + file)
            }
            Some(b) => b.size_hint(),
            None => SizeHint::with_exact(0),
        }
    }
}

impl Drop for UpState {
    fn drop(&mut self) {
        if self.polled {
            return;
        }
        if let (Some(slot), Some(inner)) = (&self.reclaim, self.inner.take()) {
            *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(inner);
        }
    }
}

pub(crate) struct DownBody {
    inner: Down,
    stall: Stall,
    _in_flight: InFlight,
}

enum Down {
    /// Small or finished responses: the kernel's socket buffers absorb them whatever the
    /// client does.
    Direct(UpstreamBody),
    /// Larger responses: a watchdog releases the upstream if the client stops reading.
    Watched(Arc<Watched>),
}

/// A response body a watchdog task may take away. hyper polls a response body only while
/// the client reads, so a client that stops reading would otherwise keep the upstream
/// connection (and an app worker behind it) busy until it goes away.
struct Watched {
    inner: Mutex<Option<UpstreamBody>>,
    /// `now_ms()` of the last frame handed to the client.
    delivered: AtomicU64,
}

/// Responses declaring at most this many bytes get no watchdog.
const WATCH_ABOVE: u64 = 64 * 1024;

impl DownBody {
    pub(crate) fn new(inner: UpstreamBody, idle: Duration, in_flight: InFlight) -> DownBody {
        let small =
            inner.is_end_stream() || inner.size_hint().exact().is_some_and(|n| n <= WATCH_ABOVE);
        let inner = if small || tokio::runtime::Handle::try_current().is_err() {
            Down::Direct(inner)
        } else {
            let watched = Arc::new(Watched {
                inner: Mutex::new(Some(inner)),
                delivered: AtomicU64::new(now_ms()),
            });
            tokio::spawn(watchdog(Arc::downgrade(&watched), idle));
            Down::Watched(watched)
        };
        DownBody {
            inner,
            stall: Stall::new(idle),
            _in_flight: in_flight,
        }
    }
}

/// Drops the upstream body once no frame reached the client for `idle`. Holds only a Weak,
/// so a finished or abandoned response is freed at once, not at the next wake-up.
async fn watchdog(body: std::sync::Weak<Watched>, idle: Duration) {
    let idle_ms = u64::try_from(idle.as_millis()).unwrap_or(u64::MAX);
    loop {
        let since = match body.upgrade() {
            None => return,
            Some(w) => {
                let since = now_ms().saturating_sub(w.delivered.load(Ordering::Relaxed));
                if since >= idle_ms {
                    let taken = w.inner.lock().unwrap_or_else(|e| e.into_inner()).take();
                    if taken.is_some() {
                        tracing::debug!("client stopped reading for {idle:?}; upstream released");
                    }
                    return;
                }
                since
            }
        };
        tokio::time::sleep(Duration::from_millis(idle_ms - since)).await;
    }
}

pub(super) fn poll_incoming<B>(
    inner: &mut B,
    stall: &mut Stall,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BoxError>>>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    match Pin::new(inner).poll_frame(cx) {
        Poll::Pending => {
            if stall.poll_expired(cx) {
                return Poll::Ready(Some(Err(Box::new(IdleTimeout(stall.idle)))));
            }
            Poll::Pending
        }
        ready => {
            stall.progress();
            let r = ready!(ready);
            Poll::Ready(r.map(|f| f.map_err(Into::into)))
        }
    }
}

impl Body for DownBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match &mut this.inner {
            Down::Direct(inner) => poll_incoming(inner, &mut this.stall, cx),
            Down::Watched(w) => {
                let mut guard = w.inner.lock().unwrap_or_else(|e| e.into_inner());
                let Some(inner) = guard.as_mut() else {
                    return Poll::Ready(Some(Err(Box::new(IdleTimeout(this.stall.idle)))));
                };
                let r = poll_incoming(inner, &mut this.stall, cx);
                if r.is_ready() {
                    w.delivered.store(now_ms(), Ordering::Relaxed);
                }
                r
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Down::Direct(b) => b.is_end_stream(),
            Down::Watched(w) => w
                .inner
                .lock()
                // Taken by the watchdog: not ended, so the next poll reports the error
                // instead of hyper finishing a truncated response as if it were whole.
                .map(|b| b.as_ref().is_some_and(|b| b.is_end_stream()))
                .unwrap_or(false),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Down::Direct(b) => b.size_hint(),
            Down::Watched(w) => w
                .inner
                .lock()
                .ok()
                .and_then(|b| b.as_ref().map(|b| b.size_hint()))
                .unwrap_or_default(),
        }
    }
}

/// Is `T` somewhere in this error's source chain?
pub(crate) fn caused_by<T: std::error::Error + 'static>(
    e: &(dyn std::error::Error + 'static),
) -> bool {
    cause::<T>(e).is_some()
}

/// The first `T` in this error's source chain.
pub(crate) fn cause<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(t) = err.downcast_ref::<T>() {
            return Some(t);
        }
        cur = err.source();
    }
    None
}
