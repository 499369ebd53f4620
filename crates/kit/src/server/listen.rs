//! Listening sockets — passed by systemd or bound from the fallback address — and their
//! accept loops.

use super::conn::{self, ConnShared};
use crate::access::Remote;
use crate::activation::{PassedListener, PassedSocket};
use crate::liveness::Heartbeat;
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::{JoinHandle, JoinSet};

/// An address to listen on when systemd passed no socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    /// `127.0.0.1:3000`, `[::1]:3000`.
    Tcp(std::net::SocketAddr),
    /// `unix:/run/app.sock`.
    Unix(PathBuf),
}

impl std::str::FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<ListenAddr, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("{s:?}: a unix socket path must be absolute"));
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        s.parse().map(ListenAddr::Tcp).map_err(|_| {
            format!("{s:?} is not an address; expected IP:PORT ([::1]:3000) or unix:/PATH")
        })
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

pub(super) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// A listening socket and where it came from.
pub(super) struct OpenListener {
    pub listener: Listener,
    /// For messages: `127.0.0.1:80 (fd 3 from systemd)`.
    pub description: String,
    /// A unix socket file we bound, removed when we stop (systemd's never are).
    pub remove_on_stop: Option<PathBuf>,
}

/// Must run inside the tokio runtime.
pub(super) fn adopt(passed: PassedSocket) -> io::Result<OpenListener> {
    let description = format!(
        "{} (fd {} {:?} from systemd)",
        passed.address(),
        passed.fd,
        passed.name
    );
    let listener = match passed.listener {
        PassedListener::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
        PassedListener::Unix(l) => Listener::Unix(UnixListener::from_std(l)?),
    };
    Ok(OpenListener {
        listener,
        description,
        remove_on_stop: None,
    })
}

const BACKLOG: i32 = 4096;

/// Binds `addr`. Must run inside the tokio runtime.
pub(super) fn bind(addr: &ListenAddr) -> io::Result<OpenListener> {
    let (listener, remove_on_stop) = match addr {
        ListenAddr::Tcp(sa) => {
            let domain = socket2::Domain::for_address(*sa);
            let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            if sa.is_ipv6() {
                // "[::]:80" is IPv6 only, so "0.0.0.0:80" can be bound beside it.
                sock.set_only_v6(true)?;
            }
            sock.set_nonblocking(true)?;
            sock.bind(&(*sa).into())?;
            sock.listen(BACKLOG)?;
            (Listener::Tcp(TcpListener::from_std(sock.into())?), None)
        }
        ListenAddr::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
            sock.set_nonblocking(true)?;
            sock.bind(&socket2::SockAddr::unix(path)?)?;
            sock.listen(BACKLOG)?;
            (
                Listener::Unix(UnixListener::from_std(sock.into())?),
                Some(path.clone()),
            )
        }
    };
    Ok(OpenListener {
        listener,
        description: addr.to_string(),
        remove_on_stop,
    })
}

/// A socket file left by a previous run is replaced; one that a live process answers on is not.
fn remove_stale_unix_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(io::Error::new(
                    io::ErrorKind::AddrInUse,
                    "another process is listening on this socket",
                ));
            }
            std::fs::remove_file(path)
        }
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a file that is not a socket is in the way",
        )),
    }
}

/// The accept loops that are running.
#[derive(Default)]
pub(super) struct Listeners {
    running: Vec<Running>,
}

struct Running {
    description: String,
    stop: oneshot::Sender<()>,
    task: JoinHandle<JoinSet<()>>,
}

impl Listeners {
    pub fn start(&mut self, shared: &Arc<ConnShared>, open: OpenListener, heartbeat: Heartbeat) {
        let (stop, stopped) = oneshot::channel();
        let description = open.description.clone();
        tracing::info!(address = %description, "listening");
        let task = tokio::spawn(accept_loop(shared.clone(), open, stopped, heartbeat));
        self.running.push(Running {
            description,
            stop,
            task,
        });
    }

    pub fn descriptions(&self) -> impl Iterator<Item = &str> {
        self.running.iter().map(|r| r.description.as_str())
    }

    /// Stops every accept loop; their open connections carry on. Returns the connection
    /// tasks: dropping them ends those connections.
    pub async fn stop_all(&mut self) -> Vec<JoinSet<()>> {
        let mut tasks = Vec::new();
        for r in self.running.drain(..) {
            let _ = r.stop.send(());
            if let Ok(set) = r.task.await {
                tasks.push(set);
            }
            tracing::info!(address = %r.description, "stopped listening");
        }
        tasks
    }
}

async fn accept_loop(
    shared: Arc<ConnShared>,
    open: OpenListener,
    mut stop: oneshot::Receiver<()>,
    heartbeat: Heartbeat,
) -> JoinSet<()> {
    let mut beat = tokio::time::interval(heartbeat.period());
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    let mut permit = None;
    loop {
        if permit.is_none() {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = beat.tick() => { heartbeat.beat(); continue; }
                Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
                p = shared.conns.reserve(false) => permit = Some(p),
            }
        }
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = beat.tick() => { heartbeat.beat(); continue; }
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            a = accept(&open.listener) => a,
        };
        match accepted {
            Ok((stream, remote)) => {
                if let Some(p) = permit.take() {
                    let guard = shared.conns.opened(p);
                    tasks.spawn(conn::serve(shared.clone(), stream, remote, guard));
                }
            }
            Err(e) if is_per_connection_error(&e) => {
                tracing::debug!(error = %e, "accept failed for one connection");
            }
            Err(e) => {
                // Out of fds or memory: back off instead of spinning.
                tracing::warn!(address = %open.description, error = %e, "accept failed; retrying in 100ms");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    if let Some(path) = &open.remove_on_stop {
        // Our own socket file: remove it. Sockets passed by systemd are never unlinked.
        drop(open.listener);
        let _ = std::fs::remove_file(path);
    }
    tasks
}

pub(super) enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> io::Result<(Stream, Remote)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            // Responses are written whole; Nagle would only delay the last segment.
            let _ = s.set_nodelay(true);
            Ok((Stream::Tcp(s), Remote::Tcp(addr)))
        }
        Listener::Unix(l) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), Remote::Unix))
        }
    }
}

fn is_per_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    ) || matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EPROTO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_addresses_parse() {
        assert_eq!(
            "127.0.0.1:3000".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:3000".parse().unwrap())
        );
        assert_eq!(
            "unix:/run/app.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/run/app.sock".into())
        );
        assert!("unix:app.sock"
            .parse::<ListenAddr>()
            .unwrap_err()
            .contains("absolute"));
        assert!("localhost:80".parse::<ListenAddr>().is_err());
    }
}
