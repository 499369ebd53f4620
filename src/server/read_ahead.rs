//! A connection's first bytes: which protocol they open, read once.
//!
//! A connection speaks HTTP/2 with prior knowledge when it opens with the 24-byte HTTP/2
//! preface, HTTP/1 otherwise. hyper-util's detection read exactly those 24 bytes, and hyper
//! then read the rest: two recvfrom calls for every new connection where nginx makes one,
//! and hyper's 8 KiB read buffer, no longer empty when it first asked for 8 KiB, doubled to
//! 16 KiB for the life of every connection. `FirstRead::poll_sniff` reads up to
//! `FIRST_READ` bytes at once, decides, and keeps the bytes; the connection's IO wrapper
//! (`conn::ClientIo`) then serves hyper's first reads from them.

use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, ReadBuf};

/// As large as hyper's own first read: a whole request head, or a good piece of a body.
const FIRST_READ: usize = 16 * 1024;

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Protocol {
    Http1,
    Http2,
}

#[derive(Default)]
pub(crate) enum FirstRead {
    /// Read ahead, not yet handed out: `buf[pos..]`.
    Holding { buf: Vec<u8>, pos: usize },
    /// Reads go straight to the connection.
    #[default]
    PassThrough,
}

impl FirstRead {
    fn held(&self) -> &[u8] {
        match self {
            FirstRead::Holding { buf, pos } => &buf[*pos..],
            FirstRead::PassThrough => &[],
        }
    }

    /// Reads until the bytes either start with the HTTP/2 preface or cannot, keeping them
    /// for the following reads. A client that closes first is HTTP/1: hyper then sees the
    /// end of the stream and ends the connection quietly.
    pub(crate) fn poll_sniff<I: AsyncRead + Unpin>(
        &mut self,
        inner: &mut I,
        cx: &mut Context<'_>,
    ) -> Poll<std::io::Result<Protocol>> {
        loop {
            let held = self.held();
            if held.len() >= H2_PREFACE.len() || !H2_PREFACE.starts_with(held) {
                return Poll::Ready(Ok(if held.starts_with(H2_PREFACE) {
                    Protocol::Http2
                } else {
                    Protocol::Http1
                }));
            }
            // Read onto the stack: a connection that sends nothing holds no buffer, and
            // what arrived is kept in an exact-size Vec until hyper takes it.
            let mut stack = [MaybeUninit::<u8>::uninit(); FIRST_READ];
            let mut read = ReadBuf::uninit(&mut stack);
            std::task::ready!(Pin::new(&mut *inner).poll_read(cx, &mut read))?;
            let got = read.filled();
            if got.is_empty() {
                return Poll::Ready(Ok(Protocol::Http1));
            }
            match self {
                FirstRead::Holding { buf, .. } => buf.extend_from_slice(got),
                FirstRead::PassThrough => {
                    *self = FirstRead::Holding {
                        buf: got.to_vec(),
                        pos: 0,
                    }
                }
            }
        }
    }

    pub(crate) fn poll_read<I: AsyncRead + Unpin>(
        &mut self,
        inner: &mut I,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self {
            FirstRead::PassThrough => Pin::new(inner).poll_read(cx, out),
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

    /// A sniff that waits for bytes that will not come fails the test instead of hanging it.
    async fn sniff(first: &mut FirstRead, io: &mut DuplexStream) -> Protocol {
        let sniff = std::future::poll_fn(|cx| first.poll_sniff(io, cx));
        tokio::time::timeout(std::time::Duration::from_secs(5), sniff)
            .await
            .expect("decided without more bytes")
            .unwrap()
    }

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
    async fn the_sniffed_bytes_and_the_rest_are_read_whole_and_in_order() {
        let sent: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        client.write_all(&sent).await.unwrap();
        drop(client);
        let mut first = FirstRead::default();
        assert_eq!(sniff(&mut first, &mut server).await, Protocol::Http1);
        assert!(matches!(first, FirstRead::Holding { pos: 0, .. }));
        let mut got = Vec::new();
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
    async fn a_request_head_is_held_whole_for_hypers_first_read() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let mut first = FirstRead::default();
        assert_eq!(sniff(&mut first, &mut server).await, Protocol::Http1);
        let got = read(&mut first, &mut server, 8192).await;
        assert_eq!(got, b"GET / HTTP/1.1\r\n\r\n");
        assert!(matches!(first, FirstRead::PassThrough));
    }

    #[tokio::test]
    async fn a_preface_split_over_reads_is_http2_and_kept() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut first = FirstRead::default();
        let sniffing = tokio::spawn(async move {
            let p = sniff(&mut first, &mut server).await;
            (p, read(&mut first, &mut server, 8192).await)
        });
        client.write_all(&H2_PREFACE[..5]).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        client.write_all(&H2_PREFACE[5..]).await.unwrap();
        client.write_all(b"frames").await.unwrap();
        let (protocol, got) = sniffing.await.unwrap();
        assert_eq!(protocol, Protocol::Http2);
        assert!(got.starts_with(H2_PREFACE));
    }

    #[tokio::test]
    async fn a_short_http1_start_is_decided_without_waiting_for_24_bytes() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(b"GET").await.unwrap();
        let mut first = FirstRead::default();
        // "G" already rules the preface out: no second read, which would wait forever.
        assert_eq!(sniff(&mut first, &mut server).await, Protocol::Http1);
        assert_eq!(read(&mut first, &mut server, 8192).await, b"GET");
    }

    #[tokio::test]
    async fn a_client_that_closes_at_once_is_http1_with_nothing_held() {
        let (client, mut server) = tokio::io::duplex(1024);
        drop(client);
        let mut first = FirstRead::default();
        assert_eq!(sniff(&mut first, &mut server).await, Protocol::Http1);
        assert!(matches!(first, FirstRead::PassThrough));
    }
}
