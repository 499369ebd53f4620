//! A plaintext connection's first read, made large.
//!
//! hyper-util's HTTP/1-or-2 detection first reads exactly 24 bytes (the length of the
//! HTTP/2 preface), and hyper then reads the rest of the request: two recvfrom calls for
//! every new connection where nginx makes one. This wrapper turns the first small read into
//! one of `FIRST_READ` bytes and serves the following reads from it until it is used up.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// As large as hyper's own first read: a whole request head, or a good piece of a body.
const FIRST_READ: usize = 16 * 1024;

pub struct ReadAhead<I> {
    inner: I,
    state: State,
}

enum State {
    /// Nothing read yet.
    Fresh,
    /// Read ahead, not yet handed out: `buf[pos..]`.
    Holding { buf: Vec<u8>, pos: usize },
    /// Reads go straight to the connection.
    PassThrough,
}

impl<I> ReadAhead<I> {
    pub fn new(inner: I) -> ReadAhead<I> {
        ReadAhead {
            inner,
            state: State::Fresh,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ReadAhead<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if let State::Fresh = this.state {
            if out.remaining() >= FIRST_READ {
                this.state = State::PassThrough;
            } else {
                // Read onto the stack: a connection that sends nothing holds no buffer, and
                // only what does not fit the caller's buffer is kept, in an exact-size Vec
                // (a 16 KiB heap buffer per connection cost more in malloc than it saved).
                let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_READ];
                let mut read = ReadBuf::uninit(&mut stack);
                std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
                let got = read.filled();
                let now = out.remaining().min(got.len());
                out.put_slice(&got[..now]);
                this.state = if now < got.len() {
                    State::Holding {
                        buf: got[now..].to_vec(),
                        pos: 0,
                    }
                } else {
                    State::PassThrough
                };
                return Poll::Ready(Ok(()));
            }
        }
        if let State::Holding { buf, pos } = &mut this.state {
            let n = out.remaining().min(buf.len() - *pos);
            out.put_slice(&buf[*pos..*pos + n]);
            *pos += n;
            if *pos == buf.len() {
                this.state = State::PassThrough;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, out)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ReadAhead<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn small_reads_then_large_ones_see_every_byte_in_order() {
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut conn = ReadAhead::new(server);
        // The HTTP/2 preface check's read, then reads of the sizes hyper uses.
        let mut got = vec![0u8; 24];
        conn.read_exact(&mut got).await.unwrap();
        assert!(matches!(conn.state, State::Holding { pos: 0, .. }));
        let mut rest = Vec::new();
        let mut chunk = vec![0u8; 8192];
        loop {
            let n = conn.read(&mut chunk).await.unwrap();
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&chunk[..n]);
        }
        got.extend_from_slice(&rest);
        assert_eq!(got, sent);
        assert!(matches!(conn.state, State::PassThrough));
    }

    #[tokio::test]
    async fn a_large_first_read_goes_straight_through() {
        let (mut client, server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut conn = ReadAhead::new(server);
        let mut buf = vec![0u8; FIRST_READ];
        let n = conn.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(conn.state, State::PassThrough));
    }
}
