//! The socket side of `crate::sendfile`: how each kind of stream sends part of a
//! file. Plain sockets (clients and upstreams) call sendfile(2) when writable; TLS never
//! gets a mapped body.

use std::fs::File;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::Interest;
use tokio::net::{TcpStream, UnixStream};

pub(crate) trait SendFile {
    /// Whether `poll_send_file` works: only then does a connection get mapped file bodies.
    const SENDS_FILES: bool = false;

    /// Sends up to `len` bytes of `file` from `offset`; Ok(0) if the file ended early.
    fn poll_send_file(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        _file: &File,
        _offset: u64,
        _len: usize,
    ) -> Poll<io::Result<usize>> {
        Poll::Ready(Err(io::ErrorKind::Unsupported.into()))
    }
}

macro_rules! send_file_on_socket {
    ($stream:ty) => {
        impl SendFile for $stream {
            const SENDS_FILES: bool = true;

            fn poll_send_file(
                self: Pin<&mut Self>,
                cx: &mut Context<'_>,
                file: &File,
                offset: u64,
                len: usize,
            ) -> Poll<io::Result<usize>> {
                let stream = self.get_mut();
                loop {
                    std::task::ready!(stream.poll_write_ready(cx))?;
                    let sent = stream.try_io(Interest::WRITABLE, || {
                        super::send(&*stream, file, offset, len)
                    });
                    match sent {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                        result => return Poll::Ready(result),
                    }
                }
            }
        }
    };
}

send_file_on_socket!(TcpStream);
send_file_on_socket!(UnixStream);

/// rustls encrypts what it sends: connections over TLS get no mapped bodies.
impl<S> SendFile for tokio_rustls::server::TlsStream<S> {}
