//! A closing connection's last response leaves in the same TCP segment as its FIN.
//!
//! hyper writes the response, then shuts the socket down: with TCP_NODELAY that is a data
//! segment and then a separate FIN, ten segments per one-request connection where nginx
//! (which corks) sends nine. Writing the last response with MSG_MORE lets the kernel hold
//! its final partial segment; the shutdown that follows tacks the FIN onto it and sends
//! both at once. Full segments still go at once, so only a tail waits, and only until the
//! next write or the shutdown. `request::handle` decides which responses may be held.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::{TcpStream, UnixStream};

pub(crate) trait HoldTail: AsyncWrite + Unpin {
    /// Writes `bufs`, letting the kernel hold a final partial segment until the next write
    /// or the FIN. Streams without segments write as usual.
    fn poll_write_hold_tail(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, bufs)
    }
}

impl HoldTail for TcpStream {
    fn poll_write_hold_tail(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let stream = self.get_mut();
        loop {
            std::task::ready!(stream.poll_write_ready(cx))?;
            let sent = stream.try_io(Interest::WRITABLE, || {
                socket2::SockRef::from(&*stream)
                    .send_vectored_with_flags(bufs, libc::MSG_MORE | libc::MSG_NOSIGNAL)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }
}

impl HoldTail for UnixStream {}

/// rustls writes records of its own; its shutdown sends close_notify before the FIN.
impl<S: AsyncRead + AsyncWrite + Unpin> HoldTail for tokio_rustls::server::TlsStream<S> {}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn held_bytes_arrive_with_the_shutdown() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (mut server, _) = listener.accept().await.unwrap();
        server.set_nodelay(true).unwrap();
        let bufs = [
            IoSlice::new(b"HTTP/1.1 200 OK\r\n\r\n"),
            IoSlice::new(b"body"),
        ];
        let n = std::future::poll_fn(|cx| Pin::new(&mut server).poll_write_hold_tail(cx, &bufs))
            .await
            .unwrap();
        assert_eq!(n, 23);
        // Held: nothing has reached the client yet.
        let mut byte = [0u8; 1];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(100),
            client.peek(&mut byte),
        )
        .await;
        assert!(early.is_err(), "the tail was sent before the FIN");
        tokio::io::AsyncWriteExt::shutdown(&mut server)
            .await
            .unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"HTTP/1.1 200 OK\r\n\r\nbody");
    }
}
