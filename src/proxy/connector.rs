//! Opens connections to one upstream, over TCP or a unix socket, for its pool (`pool`).

use crate::config::Upstream;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
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
pub struct Connector {
    target: Arc<Target>,
    timeout: Duration,
}

impl Connector {
    pub fn new(upstream: &Upstream, timeout: Duration) -> Connector {
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
pub enum ConnectError {
    Timeout(Duration),
    Io(io::Error),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Timeout(d) => write!(f, "connect timed out after {d:?}"),
            ConnectError::Io(e) => write!(f, "connect failed: {e}"),
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
    pub async fn connect(&self) -> Result<UpstreamStream, ConnectError> {
        let connect = async {
            match &*self.target {
                Target::Tcp(authority) => connect_tcp(authority).await,
                Target::Unix(path) => UnixStream::connect(path).await.map(UpstreamStream::Unix),
            }
        };
        match tokio::time::timeout(self.timeout, connect).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(ConnectError::Io(e)),
            Err(_) => Err(ConnectError::Timeout(self.timeout)),
        }
    }
}

async fn connect_tcp(authority: &str) -> io::Result<UpstreamStream> {
    let mut last = None;
    // "localhost:8001" may resolve to ::1 and 127.0.0.1; try each in order.
    for addr in tokio::net::lookup_host(authority).await? {
        match TcpStream::connect(addr).await {
            Ok(s) => {
                // Requests are written whole; Nagle would only delay small ones.
                let _ = s.set_nodelay(true);
                return Ok(UpstreamStream::Tcp(s));
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address")))
}

pub enum UpstreamStream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl AsyncRead for UpstreamStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            UpstreamStream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            UpstreamStream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            UpstreamStream::Unix(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_flush(cx),
            UpstreamStream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            UpstreamStream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            UpstreamStream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
