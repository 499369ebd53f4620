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

mod response_body;

pub(crate) use response_body::LeanBody;

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
use upstream_h1::{take_head, Head, Limits};

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
    /// Touched by each write after a wait and once the body is written: the
    /// response-header timeout runs from the last byte sent.
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
        write_request(io, parts, &mut written, &mut reading, req).await
    };
    let failed = |error, reading: &Reading| Failed {
        error,
        nothing_back: !reading.got_any,
        unsent: !written,
    };
    let (head, whole_request) = match outcome {
        Ok(Written::Whole(early)) => {
            if let Some(activity) = req.activity {
                activity.touch();
            }
            let head = match early {
                Some(head) => head,
                None => poll_fn(|cx| reading.poll_final_head(io, cx, req.method))
                    .await
                    .map_err(|e| failed(e, &reading))?,
            };
            (head, true)
        }
        Ok(Written::Early(head)) => (head, false),
        // Nothing of this request left: whatever is there to read is not its answer.
        Ok(Written::Broken(e)) if !written => return Err(failed(LeanError::Io(e), &reading)),
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
    /// All of it; with the final head when that came while it went out.
    Whole(Option<Head>),
    /// The upstream answered before taking the whole request, and the rest will not go:
    /// its answer refuses it (`refuses_the_rest`), or more of the answer came meanwhile
    /// than `EARLY_KEPT`, or the connection failed after the answer.
    Early(Head),
    /// Writing failed before any answer.
    Broken(io::Error),
}

/// Response bytes kept while the request still goes out after an early final head that
/// does not refuse it (an app that streams its answer as it reads the body). Beyond them
/// the rest of the body is given up, as nginx gives it up once the response is on its way.
const EARLY_KEPT: usize = READ_MAX;

/// An early answer that says the rest of the request is not wanted: an error, a
/// connection the upstream closes, or a switch of protocol nobody asked for.
fn refuses_the_rest(head: &Head) -> bool {
    head.status.as_u16() >= 400
        || !head.keep_alive
        || head.status == http::StatusCode::SWITCHING_PROTOCOLS
}

/// Writes `parts` (the head, then the body's frames). Whenever the upstream takes no more
/// for now, reads what it has sent: an app may answer before reading the body (a 413),
/// and waiting for it to take the rest would last until the response-header timeout; an
/// app that answers as it reads gets the rest. Each write after a wait touches the
/// request's activity: the response-header timeout runs from the last byte sent.
async fn write_request(
    io: &mut UpstreamStream,
    mut parts: &mut [IoSlice<'_>],
    written: &mut bool,
    reading: &mut Reading,
    req: &RequestHead<'_>,
) -> Result<Written, LeanError> {
    let mut early: Option<Head> = None;
    let mut waited = false;
    // A failure after an early answer delivers the answer.
    let broken = |early: &mut Option<Head>, e: io::Error| match early.take() {
        Some(head) => Written::Early(head),
        None => Written::Broken(e),
    };
    poll_fn(|cx| loop {
        if parts.is_empty() {
            return Poll::Ready(Ok(Written::Whole(early.take())));
        }
        let batch = &parts[..parts.len().min(MAX_IOVECS)];
        match Pin::new(&mut *io).poll_write_vectored(cx, batch) {
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Ok(broken(&mut early, io::ErrorKind::WriteZero.into())))
            }
            Poll::Ready(Ok(n)) => {
                *written = true;
                if std::mem::take(&mut waited) {
                    if let Some(activity) = req.activity {
                        activity.touch();
                    }
                }
                IoSlice::advance_slices(&mut parts, n);
            }
            Poll::Ready(Err(e)) => return Poll::Ready(Ok(broken(&mut early, e))),
            Poll::Pending => {
                waited = true;
                if let Some(head) = early.take_if(|_| reading.buf.len() >= EARLY_KEPT) {
                    return Poll::Ready(Ok(Written::Early(head)));
                }
                if let Err(e) = ready!(reading.poll_read(&mut *io, cx)) {
                    return Poll::Ready(early.take().map(Written::Early).ok_or(e));
                }
                if early.is_none() {
                    early = reading.take_final_head(req.method)?;
                    if let Some(head) = early.take_if(|h| refuses_the_rest(h)) {
                        return Poll::Ready(Ok(Written::Early(head)));
                    }
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
    // A 5xx: the app may be closing this connection (see pool's module doc); a 101 to a
    // request that asked for no upgrade leaves a connection in an unknown protocol.
    let reuse = head.keep_alive
        && whole_request
        && !head.status.is_server_error()
        && head.status != http::StatusCode::SWITCHING_PROTOCOLS;
    let body = LeanBody::new(io, pool.clone(), head.framing, rest, filled, reuse);
    let mut resp = Response::new(UpstreamBody::Lean(body));
    *resp.status_mut() = head.status;
    *resp.version_mut() = head.version;
    // Transfer-Encoding and Connection go with the other hop-by-hop headers in `respond`.
    *resp.headers_mut() = head.headers;
    resp
}
