//! Streaming response bodies read from a file (or a compressor over it) in bounded chunks:
//! hyper asks for the next chunk only once the previous one is written, so memory per
//! connection stays at about one chunk however large the file or slow the client.

use crate::http_base::BoxError;
use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

const CHUNK: usize = 32 * 1024;

/// A byte range of a regular file, read with plain read(2) straight into each chunk.
///
/// No tokio::fs::File: it adds its own buffer and a thread hop per chunk. Regular-file reads
/// do not wait on the network, and from the page cache they cost about a memcpy (nginx reads
/// the same way unless told to use thread pools).
pub(crate) struct FileBody {
    file: std::fs::File,
    remaining: u64,
}

impl FileBody {
    pub(crate) fn new(file: std::fs::File, length: u64) -> FileBody {
        FileBody {
            file,
            remaining: length,
        }
    }
}

impl Body for FileBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        use std::io::Read;
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let want = usize::try_from(self.remaining).unwrap_or(CHUNK).min(CHUNK);
        let mut chunk = vec![0u8; want];
        let n = match self.file.read(&mut chunk) {
            Ok(0) => return Poll::Ready(Some(Err("file truncated while being sent".into()))),
            Ok(n) => n,
            Err(e) => return Poll::Ready(Some(Err(e.into()))),
        };
        chunk.truncate(n);
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(chunk)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

/// An async reader (a compressor over the file) streamed until EOF, one chunk at a time.
pub(crate) struct ReaderBody<R> {
    reader: R,
    buf: BytesMut,
    done: bool,
}

impl<R: AsyncRead + Unpin> ReaderBody<R> {
    pub(crate) fn new(reader: R) -> ReaderBody<R> {
        ReaderBody {
            reader,
            buf: BytesMut::new(),
            done: false,
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
        if this.done {
            return Poll::Ready(None);
        }
        if this.buf.capacity() < CHUNK {
            this.buf.reserve(CHUNK);
        }
        let mut read_buf = ReadBuf::uninit(&mut this.buf.spare_capacity_mut()[..CHUNK]);
        ready!(Pin::new(&mut this.reader).poll_read(cx, &mut read_buf))?;
        let n = read_buf.filled().len();
        if n == 0 {
            this.done = true;
            return Poll::Ready(None);
        }
        // SAFETY: `n` bytes of the spare capacity were just initialised by poll_read.
        unsafe { this.buf.set_len(n) };
        Poll::Ready(Some(Ok(Frame::data(this.buf.split().freeze()))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}
