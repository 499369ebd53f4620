//! A plaintext connection's first read, made large.
//!
//! hyper-util's HTTP/1-or-2 detection first reads exactly 24 bytes (the length of the
//! HTTP/2 preface), and hyper then reads the rest of the request: two recvfrom calls for
//! every new connection where nginx makes one. `FirstRead` turns the first small read into
//! one of `FIRST_READ` bytes and serves the following reads from it until it is used up.
//! The connection's IO wrapper (`conn::ClientIo`) routes its reads through it.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// As large as hyper's own first read: a whole request head, or a good piece of a body.
const FIRST_READ: usize = 16 * 1024;

pub enum FirstRead {
    /// Nothing read yet.
    Fresh,
    /// Read ahead, not yet handed out: `buf[pos..]`.
    Holding { buf: Vec<u8>, pos: usize },
    /// Reads go straight to the connection.
    PassThrough,
}

impl FirstRead {
    /// `enabled` false: every read passes through (TLS streams, whose first read comes out
    /// of rustls' buffer anyway).
    pub fn new(enabled: bool) -> FirstRead {
        if enabled {
            FirstRead::Fresh
        } else {
            FirstRead::PassThrough
        }
    }

    pub fn poll_read<I: AsyncRead + Unpin>(
        &mut self,
        inner: &mut I,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self {
            FirstRead::PassThrough => Pin::new(inner).poll_read(cx, out),
            FirstRead::Fresh if out.remaining() >= FIRST_READ => {
                *self = FirstRead::PassThrough;
                Pin::new(inner).poll_read(cx, out)
            }
            FirstRead::Fresh => {
                // Read onto the stack: a connection that sends nothing holds no buffer, and
                // only what does not fit the caller's buffer is kept, in an exact-size Vec.
                let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_READ];
                let mut read = ReadBuf::uninit(&mut stack);
                std::task::ready!(Pin::new(inner).poll_read(cx, &mut read))?;
                let got = read.filled();
                let now = out.remaining().min(got.len());
                out.put_slice(&got[..now]);
                *self = if now < got.len() {
                    FirstRead::Holding {
                        buf: got[now..].to_vec(),
                        pos: 0,
                    }
                } else {
                    FirstRead::PassThrough
                };
                Poll::Ready(Ok(()))
            }
            FirstRead::Holding { buf, pos } => {
                let n = out.remaining().min(buf.len() - *pos);
                out.put_slice(&buf[*pos..*pos + n]);
                *pos += n;
                if *pos == buf.len() {
                    *self = FirstRead::PassThrough;
                }
                Poll::Ready(Ok(()))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncWriteExt, DuplexStream};

    async fn read(first: &mut FirstRead, io: &mut DuplexStream, size: usize) -> Vec<u8> {
        let mut buf = vec![0u8; size];
        let n = std::future::poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf);
            first
                .poll_read(io, cx, &mut rb)
                .map_ok(|()| rb.filled().len())
        })
        .await
        .unwrap();
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn small_reads_then_large_ones_see_every_byte_in_order() {
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut first = FirstRead::new(true);
        // The HTTP/2 preface check's read, then reads of the sizes hyper uses.
        let mut got = read(&mut first, &mut server, 24).await;
        assert_eq!(got.len(), 24);
        assert!(matches!(first, FirstRead::Holding { pos: 0, .. }));
        loop {
            let chunk = read(&mut first, &mut server, 8192).await;
            if chunk.is_empty() {
                break;
            }
            got.extend_from_slice(&chunk);
        }
        assert_eq!(got, sent);
        assert!(matches!(first, FirstRead::PassThrough));
    }

    #[tokio::test]
    async fn a_large_first_read_goes_straight_through() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut first = FirstRead::new(true);
        let got = read(&mut first, &mut server, FIRST_READ).await;
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(first, FirstRead::PassThrough));
    }
}
