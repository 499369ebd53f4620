//! Opens connections to one upstream, over TCP or a unix socket, for its pool (`pool`). Their
//! writer sends request bodies spooled to a temporary file with sendfile(2) (`spool`).

use super::spool::SPOOLED_FILES;
use crate::config::Upstream;
use crate::sendfile::{SendFile, Write};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

#[derive(Debug)]
enum Target {
    Tcp(String),
    Unix(PathBuf),
}

#[derive(Clone, Debug)]
pub(crate) struct Connector {
    target: Arc<Target>,
    timeout: Duration,
}

impl Connector {
    pub(crate) fn new(upstream: &Upstream, timeout: Duration) -> Connector {
        let target = match upstream {
            Upstream::Http { authority } => Target::Tcp(authority.clone()),
            Upstream::Unix(path) => Target::Unix(path.clone()),
        };
        Connector {
            target: Arc::new(target),
            timeout,
        }
    }
}

/// Why a connection could not be opened; the handler tells 502 from 504 by it.
#[derive(Debug)]
pub(crate) enum ConnectError {
    Timeout(Duration),
    Io(io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout(d) => write!(f, "connect timed out after {d:?}"),
            // The cause is the source: a chain printed whole says it once.
            ConnectError::Io(_) => f.write_str("connect failed"),
        }
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ConnectError::Io(e) => Some(e),
            ConnectError::Timeout(_) => None,
        }
    }
}

impl Connector {
    /// A new connection, within the connect timeout.
    pub(crate) async fn connect(&self) -> Result<UpstreamStream, ConnectError> {
        let connect = async {
            match &*self.target {
                Target::Tcp(authority) => connect_tcp(authority).await.map(Socket::Tcp),
                Target::Unix(path) => UnixStream::connect(path).await.map(Socket::Unix),
            }
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(socket)) => Ok(UpstreamStream { socket, gate: None }),
            Ok(Err(e)) => Err(ConnectError::Io(e)),
            Err(_) => Err(ConnectError::Timeout(self.timeout)),
        }
    }
}

async fn connect_tcp(authority: &str) -> io::Result<TcpStream> {
    let mut last = None;
    // "localhost:8001" may resolve to ::1 and 127.0.0.1; try each in order.
    for addr in tokio::net::lookup_host(authority).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Requests are written whole; Nagle would only delay small ones.
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

pub(crate) struct UpstreamStream {
    socket: Socket,
    /// Set once a [`PeerWatch`] was handed out: closed before the socket is.
    gate: Option<Arc<FdGate>>,
}

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The socket's descriptor while it is open, -1 from the moment it is closing. A watch polls
/// the descriptor only while holding the lock, and the stream takes the lock to close the
/// gate before the descriptor closes, so a poll never lands on a descriptor number that was
/// closed and reused meanwhile.
struct FdGate(Mutex<RawFd>);

impl UpstreamStream {
    /// A way to ask the kernel, from outside the task that drives this connection, whether
    /// the peer has closed it (see `pool`).
    pub(crate) fn watch(&mut self) -> PeerWatch {
        let gate = Arc::new(FdGate(Mutex::new(self.raw_fd())));
        self.gate = Some(gate.clone());
        PeerWatch(gate)
    }

    /// `PeerWatch::peer_closed` from the task that holds the connection: asks the kernel,
    /// which knows of a close the reactor may not have processed yet.
    pub(crate) fn peer_closed(&self) -> bool {
        readable_now(self.raw_fd())
    }

    fn raw_fd(&self) -> RawFd {
        match &self.socket {
            Socket::Tcp(s) => s.as_raw_fd(),
            Socket::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Whether the reactor has seen this idle connection turn readable: the peer closed or
    /// reset it, or sent bytes nobody asked for. No syscall: it is what tokio learned from
    /// epoll (a close it has not processed yet fails the next exchange, which the lean
    /// client then sends again). A last read that filled its buffer exactly leaves the
    /// connection marked readable too: it is dropped, never misread.
    pub(crate) fn readable_while_idle(&self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match &self.socket {
            Socket::Tcp(s) => s.poll_read_ready(&mut cx).is_ready(),
            Socket::Unix(s) => s.poll_read_ready(&mut cx).is_ready(),
        }
    }
}

impl Drop for UpstreamStream {
    fn drop(&mut self) {
        // Runs before the socket field is dropped (and its descriptor closed).
        if let Some(gate) = &self.gate {
            *gate.0.lock().unwrap_or_else(|e| e.into_inner()) = -1;
        }
    }
}

/// Tells whether an idle connection can still carry a request; "closed" once the
/// connection itself is gone.
pub(crate) struct PeerWatch(Arc<FdGate>);

impl PeerWatch {
    /// One poll(2), no waiting: anything readable on an idle HTTP/1 connection (end of
    /// stream, a reset, or bytes nobody asked for) or an error means it cannot be reused.
    /// The kernel knows of a close before the connection's task has run to see it, which on
    /// a busy runtime can be long after.
    pub(crate) fn peer_closed(&self) -> bool {
        let fd = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        // The held gate keeps the descriptor open while it is polled.
        *fd < 0 || readable_now(*fd)
    }
}

/// One poll(2), no waiting: whether `fd` (open for the call) has anything to read, an end
/// of stream or an error.
fn readable_now(fd: RawFd) -> bool {
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd for one call.
    let ready = unsafe { libc::poll(&mut pollfd, 1, 0) };
    ready != 0
}

impl Socket {
    fn poll_write_vectored(
        &mut self,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self {
            Socket::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Socket::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match &mut self.get_mut().socket {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().socket {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let socket = &mut self.get_mut().socket;
        match SPOOLED_FILES.find(bufs) {
            None => socket.poll_write_vectored(cx, bufs),
            Some(Write::Before(n)) => socket.poll_write_vectored(cx, &bufs[..n]),
            Some(Write::File { file, offset, len }) => match socket {
                Socket::Tcp(s) => Pin::new(s).poll_send_file(cx, &file, offset, len),
                Socket::Unix(s) => Pin::new(s).poll_send_file(cx, &file, offset, len),
            },
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().socket {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().socket {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
