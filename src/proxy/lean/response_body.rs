//! The lean client's response body: read from the connection as its framing says, and the
//! connection back to the pool when the body ended exactly there.

use super::{LeanError, READ_MAX, READ_SIZE};
use crate::proxy::connector::UpstreamStream;
use crate::proxy::pool::ConnPool;
use bytes::{Bytes, BytesMut};
use hyper::body::{Body, Frame, SizeHint};
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use upstream_h1::chunked::Decoder;
use upstream_h1::Framing;

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
    /// The body after a response head with `framing`; `rest` holds what was read past the
    /// head, `filled` whether that last read filled its buffer. The connection goes back
    /// to `pool` at the body's end if `reuse`.
    pub(super) fn new(
        io: UpstreamStream,
        pool: Arc<ConnPool>,
        framing: Framing,
        rest: BytesMut,
        filled: bool,
        reuse: bool,
    ) -> LeanBody {
        let state = match framing {
            Framing::Empty => State::Done,
            Framing::Length(n) => State::Length(n),
            Framing::Chunked => State::Chunked(Box::default()),
            Framing::UntilClose => State::UntilClose,
        };
        let mut body = LeanBody {
            io: Some(io),
            read_size: READ_SIZE,
            filled,
            buf: rest,
            state,
            reuse,
            pool,
        };
        if matches!(body.state, State::Done | State::Length(0)) {
            body.finish();
        }
        body
    }

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
