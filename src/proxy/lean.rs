//! A purpose-built HTTP/1.1 client for the upstream requests that need no more than one:
//! any request without an upgrade whose body, if it has one, is already whole in memory
//! (`spool` read it first: the default for bodies up to 64 KiB), to an HTTP/1 upstream.
//! Everything else (streamed and spooled-to-file bodies, upgrades, HTTP/2) goes through
//! hyper's client (`pool`).
//!
//! Why: a fifth of a proxied GET's instructions were hyper's client machinery (the
//! connection task, its dispatch channel, `Incoming`), bench/RESULTS.md 2026-12-07 16:33.
//! Here the request's own task writes the head and reads the response; the connection
//! waits between requests on a list, with no task. A POST of 64 KiB took 55k instructions
//! through hyper's client (its dispatch, its response parser, `Incoming`).
//!
//! What a reader of upstream bytes must get right lives in `crates/upstream-h1`: the head
//! and the body's framing (RFC 9112 §6.3, refusing what nginx refuses) and chunked
//! decoding, with the desync corpus and the fuzz target. This module only moves bytes:
//! the head out, the response in, and the connection back to the pool when its response
//! ended exactly where its framing said, with nothing after it.

use super::body::Activity;
use super::connector::UpstreamStream;
use super::pool::{self, ConnPool, SendError};
use crate::http_base::BoxError;
use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::future::poll_fn;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tokio::io::AsyncWrite;
use upstream_h1::chunked::Decoder;
use upstream_h1::{take_head, Framing, Head, Limits};

/// What hyper's client accepts (its `DEFAULT_MAX_HEADERS` and default read-buffer limit),
/// so a GET, read here, and a POST, read by hyper, fail on the same heads.
const LIMITS: Limits = Limits {
    max_head: 8192 + 4096 * 100,
    max_headers: 100,
};

/// Bytes asked of the socket by the first read: a whole small response, head and body.
const READ_SIZE: usize = 8 * 1024;
/// A body's reads double while they fill the space offered, up to this: a large response
/// goes through in few reads, and few frames for the client's writes (hyper's client
/// reads up to ~400 KiB at a time; 64 KiB made a 1 MiB response 22 reads and 17 writes).
const READ_MAX: usize = 256 * 1024;

/// Buffers handed to one writev(2): a body of many small frames goes out in several calls
/// rather than over the kernel's IOV_MAX (1024), which would fail.
const MAX_IOVECS: usize = 64;

/// Whether a request can go through this client: no upgrade (and no CONNECT, a tunnel),
/// and no body unless it is whole in memory.
pub(super) fn takes(method: &Method, headers: &HeaderMap, body_in_memory: bool) -> bool {
    *method != Method::CONNECT && body_in_memory && !headers.contains_key(header::UPGRADE)
}

/// What this client sends, borrowed: the proxy sends a request without copying its head
/// for each attempt (it keeps it for a retry).
pub(super) struct RequestHead<'a> {
    pub(super) method: &'a Method,
    /// The origin form: path and query.
    pub(super) path: &'a str,
    pub(super) headers: &'a HeaderMap,
    /// A Host line to add after `headers` (which then have none).
    pub(super) host: Option<HeaderValue>,
    /// The body whole, as the frames it came in (its Content-Length is in `headers`);
    /// empty for none.
    pub(super) body: &'a [Bytes],
    /// Touched once the body is written: the response-header timeout runs from there.
    pub(super) activity: Option<&'a Activity>,
}

impl<'a> RequestHead<'a> {
    pub(super) fn of<B>(req: &'a Request<B>) -> RequestHead<'a> {
        RequestHead {
            method: req.method(),
            path: req.uri().path_and_query().map_or("/", |p| p.as_str()),
            headers: req.headers(),
            host: None,
            body: &[],
            activity: None,
        }
    }
}

/// An upstream response's body: from hyper's client, or from this one.
pub(crate) enum UpstreamBody {
    Hyper(Incoming),
    Lean(LeanBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Lean(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Lean(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Lean(b) => b.size_hint(),
        }
    }
}

/// Why this client got no usable response.
#[derive(Debug)]
pub(crate) enum LeanError {
    Io(io::Error),
    /// The head, or a chunked body's framing, was refused.
    Framing(Box<dyn std::error::Error + Send + Sync>),
    /// The connection closed before the response's head, or its body, was complete.
    Incomplete,
}

impl std::fmt::Display for LeanError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeanError::Io(e) => e.fmt(f),
            LeanError::Framing(e) => e.fmt(f),
            LeanError::Incomplete => f.write_str("upstream closed the connection mid-response"),
        }
    }
}

impl std::error::Error for LeanError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            LeanError::Io(e) => Some(e),
            LeanError::Framing(e) => Some(e.as_ref()),
            LeanError::Incomplete => None,
        }
    }
}

/// Sends `req` (which `takes` accepted) and reads the response head. A parked connection
/// found closed is replaced by a new one, and the request sent again, when that is safe: no
/// byte of it was taken, or no byte came back and the method is idempotent (RFC 9110
/// §9.2.2). A request that may not go twice first asks the kernel whether the parked
/// connection's upstream has closed it, as hyper's path does (see `pool`).
pub(super) async fn send(
    pool: &Arc<ConnPool>,
    req: RequestHead<'_>,
    now: Instant,
) -> Result<Response<UpstreamBody>, SendError> {
    let request_head = encode(&req);
    let resendable = pool::is_idempotent(req.method);
    loop {
        let (mut io, reused) = match pool.checkout_lean(now, !resendable) {
            Some(io) => (io, true),
            None => (Box::pin(pool.connect()).await?, false),
        };
        match exchange(&mut io, &request_head, &req).await {
            Ok(answer) => return Ok(response(pool, io, answer)),
            Err(f) if reused && (f.unsent || (resendable && f.nothing_back)) => {
                tracing::debug!("parked upstream connection was closed; sending again");
            }
            Err(f) => return Err(SendError::Lean(f.error)),
        }
    }
}

/// The request head in HTTP/1.1's origin form. Names and values are valid already: the
/// `http` crate admits no CR, LF or NUL into either.
fn encode(req: &RequestHead<'_>) -> Vec<u8> {
    let lines = || {
        let host = req.host.as_ref().map(|h| (&header::HOST, h));
        req.headers.iter().chain(host)
    };
    // Sized up front: one allocation, no regrowth for a head longer than a guess.
    // "METHOD PATH HTTP/1.1\r\n", "name: value\r\n" per line, "\r\n".
    let size = req.method.as_str().len()
        + 1
        + req.path.len()
        + b" HTTP/1.1\r\n".len()
        + lines()
            .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
            .sum::<usize>()
        + 2;
    let mut head = Vec::with_capacity(size);
    head.extend_from_slice(req.method.as_str().as_bytes());
    head.push(b' ');
    head.extend_from_slice(req.path.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in lines() {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    head.extend_from_slice(b"\r\n");
    head
}

/// The final response head, and what came after it.
struct Answer {
    head: Head,
    /// Bytes read past the head: the body's start.
    rest: BytesMut,
    /// The last read filled all the space it was offered (see `LeanBody::filled`).
    filled: bool,
    /// The whole request went out (not so when the upstream answered before taking all of
    /// the body): else the connection cannot carry another.
    whole_request: bool,
}

/// Why an exchange failed, and what that allows.
struct Failed {
    error: LeanError,
    /// No byte of a response came back.
    nothing_back: bool,
    /// No byte of the request was taken: it can go again whatever its method.
    unsent: bool,
}

/// Writes the request and reads up to the final response head.
async fn exchange(
    io: &mut UpstreamStream,
    request_head: &[u8],
    req: &RequestHead<'_>,
) -> Result<Answer, Failed> {
    let mut reading = Reading::default();
    let mut written = false;
    let outcome = {
        let mut single;
        let mut several;
        let parts: &mut [IoSlice<'_>] = if req.body.is_empty() {
            single = [IoSlice::new(request_head)];
            &mut single
        } else {
            several = std::iter::once(IoSlice::new(request_head))
                .chain(req.body.iter().map(|frame| IoSlice::new(frame)))
                .collect::<Vec<_>>();
            &mut several
        };
        write_request(io, parts, &mut written, &mut reading, req.method).await
    };
    let failed = |error, reading: &Reading| Failed {
        error,
        nothing_back: !reading.got_any,
        unsent: !written,
    };
    let (head, whole_request) = match outcome {
        Ok(Written::Whole) => {
            if let Some(activity) = req.activity {
                activity.touch();
            }
            let head = poll_fn(|cx| reading.poll_final_head(io, cx, req.method)).await;
            (head.map_err(|e| failed(e, &reading))?, true)
        }
        Ok(Written::Early(head)) => (head, false),
        // A unix socket's peer that answered and closed makes the next write fail (EPIPE)
        // with its answer still there to read.
        Ok(Written::Broken(e)) => {
            match poll_fn(|cx| reading.poll_final_head(io, cx, req.method)).await {
                Ok(head) => (head, false),
                Err(_) => return Err(failed(LeanError::Io(e), &reading)),
            }
        }
        Err(e) => return Err(failed(e, &reading)),
    };
    Ok(Answer {
        head,
        rest: reading.buf,
        filled: reading.filled,
        whole_request,
    })
}

enum Written {
    Whole,
    /// The upstream's final head came before it took the whole request.
    Early(Head),
    /// Writing failed.
    Broken(io::Error),
}

/// Writes `parts` (the head, then the body's frames). Whenever the upstream takes no more
/// for now, reads what it has sent: an app may answer before reading the body (a 413),
/// and waiting for it to take the rest would last until the response-header timeout.
async fn write_request(
    io: &mut UpstreamStream,
    mut parts: &mut [IoSlice<'_>],
    written: &mut bool,
    reading: &mut Reading,
    method: &Method,
) -> Result<Written, LeanError> {
    poll_fn(|cx| loop {
        if parts.is_empty() {
            return Poll::Ready(Ok(Written::Whole));
        }
        let batch = &parts[..parts.len().min(MAX_IOVECS)];
        match Pin::new(&mut *io).poll_write_vectored(cx, batch) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Ok(Written::Broken(io::ErrorKind::WriteZero.into())))
            }
            Poll::Ready(Ok(n)) => {
                *written = true;
                IoSlice::advance_slices(&mut parts, n);
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Ok(Written::Broken(e))),
            Poll::Pending => {
                ready!(reading.poll_read(&mut *io, cx))?;
                if let Some(head) = reading.take_final_head(method)? {
                    return Poll::Ready(Ok(Written::Early(head)));
                }
            }
        }
    })
    .await
}

/// The response as it is read, up to its final head.
#[derive(Default)]
struct Reading {
    buf: BytesMut,
    got_any: bool,
    /// The last read filled all the space it was offered.
    filled: bool,
}

impl Reading {
    /// One read into `buf`; the end of the stream is an error here (the head is not
    /// complete, or it would have been taken).
    fn poll_read(
        &mut self,
        io: &mut UpstreamStream,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(), LeanError>> {
        self.buf.reserve(READ_SIZE);
        let offered = self.buf.capacity() - self.buf.len();
        match ready!(tokio_util::io::poll_read_buf(
            Pin::new(io),
            cx,
            &mut self.buf
        )) {
            Ok(0) => Poll::Ready(Err(LeanError::Incomplete)),
            Ok(n) => {
                (self.got_any, self.filled) = (true, n == offered);
                Poll::Ready(Ok(()))
            }
            Err(e) => Poll::Ready(Err(LeanError::Io(e))),
        }
    }

    /// The final head, if `buf` holds it whole; 1xx heads other than 101 before it are
    /// dropped. Inlined: a call returned the head through two more moves, ~1 % of a GET.
    #[inline(always)]
    fn take_final_head(&mut self, method: &Method) -> Result<Option<Head>, LeanError> {
        while !self.buf.is_empty() {
            match take_head(&mut self.buf, method, &LIMITS) {
                Ok(Some(head))
                    if head.status.is_informational()
                        && head.status != http::StatusCode::SWITCHING_PROTOCOLS => {}
                Ok(head) => return Ok(head),
                Err(e) => return Err(LeanError::Framing(Box::new(e))),
            }
        }
        Ok(None)
    }

    fn poll_final_head(
        &mut self,
        io: &mut UpstreamStream,
        cx: &mut Context<'_>,
        method: &Method,
    ) -> Poll<Result<Head, LeanError>> {
        loop {
            if let Some(head) = self.take_final_head(method)? {
                return Poll::Ready(Ok(head));
            }
            ready!(self.poll_read(io, cx))?;
        }
    }
}

fn response(pool: &Arc<ConnPool>, io: UpstreamStream, answer: Answer) -> Response<UpstreamBody> {
    let Answer {
        head,
        rest,
        filled,
        whole_request,
    } = answer;
    let state = match head.framing {
        Framing::Empty => State::Done,
        Framing::Length(n) => State::Length(n),
        Framing::Chunked => State::Chunked(Box::default()),
        Framing::UntilClose => State::UntilClose,
    };
    // A 5xx: the app may be closing this connection (see pool's module doc); a 101 to a
    // request that asked for no upgrade leaves a connection in an unknown protocol.
    let reuse = head.keep_alive
        && whole_request
        && !head.status.is_server_error()
        && head.status != http::StatusCode::SWITCHING_PROTOCOLS;
    let mut body = LeanBody {
        io: Some(io),
        read_size: READ_SIZE,
        filled,
        buf: rest,
        state,
        reuse,
        pool: pool.clone(),
    };
    if matches!(body.state, State::Done | State::Length(0)) {
        body.finish();
    }
    let mut resp = Response::new(UpstreamBody::Lean(body));
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    // Transfer-Encoding and Connection go with the other hop-by-hop headers in `respond`.
    *resp.headers_mut() = head.headers;
    resp
}

enum State {
    Length(u64),
    Chunked(Box<Decoder>),
    UntilClose,
    Done,
}

/// A response body read by this client; its connection goes back to the pool when the
/// body ended exactly where its framing said.
pub(crate) struct LeanBody {
    io: Option<UpstreamStream>,
    /// What the next read asks for.
    read_size: usize,
    /// The last read filled all the space it was offered: more may be waiting, and tokio
    /// still counts the socket readable.
    filled: bool,
    /// Bytes read but not yet handed out.
    buf: BytesMut,
    state: State,
    reuse: bool,
    pool: Arc<ConnPool>,
}

impl LeanBody {
    fn finish(&mut self) {
        self.state = State::Done;
        // Bytes beyond the body's end: the upstream does not frame as we read it.
        let clean = self.buf.is_empty() && (!self.filled || self.drained());
        if let (true, true, Some(io)) = (self.reuse, clean, self.io.take()) {
            self.pool.checkin_lean(io, Instant::now());
        }
        self.io = None;
    }

    /// After a read that filled its buffer: one more, which must find nothing waiting
    /// (and so clears tokio's readiness, which `checkout_lean` looks at).
    fn drained(&mut self) -> bool {
        let Some(io) = self.io.as_mut() else {
            return false;
        };
        let mut probe = BytesMut::with_capacity(1);
        let mut cx = Context::from_waker(std::task::Waker::noop());
        tokio_util::io::poll_read_buf(Pin::new(io), &mut cx, &mut probe).is_pending()
    }

    fn fail(&mut self, e: LeanError) -> Poll<Option<Result<Frame<Bytes>, LeanError>>> {
        self.state = State::Done;
        self.io = None;
        Poll::Ready(Some(Err(e)))
    }

    /// Reads more into `buf`: the number of bytes, 0 at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Ok(0));
        };
        self.buf.reserve(self.read_size);
        let offered = self.buf.capacity() - self.buf.len();
        let n = ready!(tokio_util::io::poll_read_buf(
            Pin::new(io),
            cx,
            &mut self.buf
        ))?;
        self.filled = n == offered;
        if self.filled {
            self.read_size = (self.read_size * 2).min(READ_MAX);
        }
        Poll::Ready(Ok(n))
    }
}

impl Body for LeanBody {
    type Data = Bytes;
    type Error = LeanError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, LeanError>>> {
        let this = self.get_mut();
        loop {
            match &mut this.state {
                State::Done => return Poll::Ready(None),
                State::Length(left) if !this.buf.is_empty() => {
                    let n = this
                        .buf
                        .len()
                        .min(usize::try_from(*left).unwrap_or(usize::MAX));
                    *left -= n as u64;
                    let data = this.buf.split_to(n).freeze();
                    if *left == 0 {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                State::Chunked(decoder) => match decoder.decode(&mut this.buf) {
                    Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(None) if decoder.is_done() => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(None) => {}
                    Err(e) => return this.fail(LeanError::Framing(Box::new(e))),
                },
                State::UntilClose if !this.buf.is_empty() => {
                    return Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))));
                }
                State::Length(_) | State::UntilClose => {}
            }
            match ready!(this.poll_fill(cx)) {
                Ok(0) if matches!(this.state, State::UntilClose) => {
                    this.state = State::Done;
                    this.io = None;
                    return Poll::Ready(None);
                }
                Ok(0) => return this.fail(LeanError::Incomplete),
                Ok(_) => {}
                Err(e) => return this.fail(LeanError::Io(e)),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, State::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.state {
            State::Length(n) => SizeHint::with_exact(n),
            State::Done => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }
}
