//! Streaming response bodies read from a file (or a compressor over it) in bounded chunks:
//! memory per connection stays at one chunk however large the file or slow the client.

use crate::handlers::BoxError;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

const CHUNK: usize = 64 * 1024;

pub struct ReaderBody<R> {
    reader: R,
    /// Bytes still to send; `None` = until EOF (compressed streams).
    remaining: Option<u64>,
    buf: BytesMut,
}

impl<R: AsyncRead + Unpin> ReaderBody<R> {
    pub fn new(reader: R, length: Option<u64>) -> ReaderBody<R> {
        ReaderBody {
            reader,
            remaining: length,
            buf: BytesMut::new(),
        }
    }
}

impl<R: AsyncRead + Unpin> Body for ReaderBody<R> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.remaining == Some(0) {
            return Poll::Ready(None);
        }
        let want = this
            .remaining
            .map_or(CHUNK, |r| usize::try_from(r).unwrap_or(CHUNK).min(CHUNK));
        if this.buf.capacity() < want {
            this.buf.reserve(want);
        }
        let spare = &mut this.buf.spare_capacity_mut()[..want];
        let mut read_buf = ReadBuf::uninit(spare);
        ready!(Pin::new(&mut this.reader).poll_read(cx, &mut read_buf))?;
        let n = read_buf.filled().len();
        if n == 0 {
            return match this.remaining {
                None => Poll::Ready(None),
                // The file shrank while we sent it: end the response as broken, not short.
                Some(_) => Poll::Ready(Some(Err("file truncated while being sent".into()))),
            };
        }
        // SAFETY: `n` bytes of the spare capacity were just initialised by poll_read.
        unsafe { this.buf.set_len(n) };
        if let Some(r) = &mut this.remaining {
            *r -= n as u64;
        }
        Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0)
    }

    fn size_hint(&self) -> SizeHint {
        match self.remaining {
            Some(r) => SizeHint::with_exact(r),
            None => SizeHint::default(),
        }
    }
}
