//! Listening sockets — passed by systemd or bound by us — and their accept loops.

use super::conn;
use crate::config::{BindAddr, Config};
use crate::log::Remote;
use crate::shared::Shared;
use gatehouse_kit::liveness::Heartbeat;
use gatehouse_kit::{PassedListener, PassedSocket};
use std::fmt;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// Where a listening socket came from; decides whether we may unlink it when done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Origin {
    Passed {
        fd: RawFd,
        /// LISTEN_FDNAMES entry (FileDescriptorName=).
        fd_name: String,
        addr: String,
    },
    Bound(BindAddr),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Passed { fd, addr, .. } => write!(f, "{addr} (fd {fd} from systemd)"),
            Origin::Bound(a) => write!(f, "{a}"),
        }
    }
}

pub(crate) struct OpenListener {
    /// The `[[listener]]` whose sites this socket serves.
    pub(crate) name: String,
    pub(crate) origin: Origin,
    pub(crate) listener: Listener,
}

/// Must run inside the tokio runtime.
pub(crate) fn adopt(passed: PassedSocket, name: String) -> io::Result<OpenListener> {
    let addr = passed.address();
    let listener = match passed.listener {
        PassedListener::Tcp(l) => Listener::Tcp(TcpListener::from_std(l)?),
        PassedListener::Unix(l) => Listener::Unix(UnixListener::from_std(l)?),
    };
    Ok(OpenListener {
        name,
        origin: Origin::Passed {
            fd: passed.fd,
            fd_name: passed.name,
            addr,
        },
        listener,
    })
}

const BACKLOG: i32 = 4096;

/// Binds `addr` for listener `name`. Must run inside the tokio runtime.
pub(crate) fn bind(name: &str, addr: &BindAddr) -> io::Result<OpenListener> {
    let listener = match addr {
        BindAddr::Tcp(sa) => {
            let domain = socket2::Domain::for_address(*sa);
            let sock = socket2::Socket::new(domain, socket2::Type::STREAM, None)?;
            sock.set_reuse_address(true)?;
            if sa.is_ipv6() {
                // Like nginx: "[::]:80" is IPv6 only, so "0.0.0.0:80" can be bound beside it.
                sock.set_only_v6(true)?;
            }
            sock.set_nonblocking(true)?;
            sock.bind(&(*sa).into())?;
            sock.listen(BACKLOG)?;
            Listener::Tcp(TcpListener::from_std(sock.into())?)
        }
        BindAddr::Unix(path) => {
            remove_stale_unix_socket(path)?;
            let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)?;
            sock.set_nonblocking(true)?;
            sock.bind(&socket2::SockAddr::unix(path)?)?;
            sock.listen(BACKLOG)?;
            Listener::Unix(UnixListener::from_std(sock.into())?)
        }
    };
    Ok(OpenListener {
        name: name.to_owned(),
        origin: Origin::Bound(addr.clone()),
        listener,
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
pub(crate) struct ListenerSet {
    running: Vec<Running>,
}

struct Running {
    name: String,
    origin: Origin,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl ListenerSet {
    pub(crate) fn start(&mut self, shared: &Arc<Shared>, open: OpenListener) {
        let (stop, stopped) = oneshot::channel();
        let heartbeat = shared
            .liveness
            .register(format!("listener {:?} on {}", open.name, open.origin));
        let name = open.name.clone();
        let origin = open.origin.clone();
        tracing::info!(listener = %name, address = %origin, "listening");
        let task = tokio::spawn(accept_loop(shared.clone(), open, stopped, heartbeat));
        self.running.push(Running {
            name,
            origin,
            stop,
            task,
        });
    }

    /// `(listener name, address)` of every socket we bound ourselves.
    pub(crate) fn bound(&self) -> impl Iterator<Item = (&str, &BindAddr)> {
        self.running.iter().filter_map(|r| match &r.origin {
            Origin::Bound(a) => Some((r.name.as_str(), a)),
            Origin::Passed { .. } => None,
        })
    }

    /// The FileDescriptorName= of every socket systemd passed.
    pub(crate) fn passed_fd_names(&self) -> impl Iterator<Item = &str> {
        self.running.iter().filter_map(|r| match &r.origin {
            Origin::Passed { fd_name, .. } => Some(fd_name.as_str()),
            Origin::Bound(_) => None,
        })
    }

    /// Stops the accept loops `remove` selects; their open connections carry on.
    pub(crate) async fn stop_where(&mut self, remove: impl Fn(&str, &Origin) -> bool) {
        let (stopping, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| remove(&r.name, &r.origin));
        self.running = keep;
        for r in stopping {
            let _ = r.stop.send(());
            let _ = r.task.await;
            tracing::info!(listener = %r.name, address = %r.origin, "stopped listening");
        }
    }

    pub(crate) async fn stop_all(&mut self) {
        self.stop_where(|_, _| true).await;
    }
}

/// Which `[[listener]]` a socket passed by systemd belongs to.
pub(crate) fn listener_for_passed<'c>(config: &'c Config, fd_name: &str) -> Option<&'c str> {
    if let Some(l) = config.listener(fd_name) {
        return Some(&l.name);
    }
    if config.claims_every_passed_socket() {
        return config.listeners.first().map(|l| l.name.as_str());
    }
    None
}

async fn accept_loop(
    shared: Arc<Shared>,
    open: OpenListener,
    mut stop: oneshot::Receiver<()>,
    heartbeat: Heartbeat,
) {
    let name: Arc<str> = Arc::from(open.name.as_str());
    let mut beat = tokio::time::interval(heartbeat.period());
    beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut permit = None;
    loop {
        // Admin listeners draw on their own budget, so monitoring still gets in while the
        // public listeners are full.
        let admin = shared.snapshot.load().config.is_admin_listener(&name);
        if permit.is_none() {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                _ = beat.tick() => { heartbeat.beat(); continue; }
                p = shared.conns.reserve(admin) => permit = Some(p),
            }
        }
        let accepted = tokio::select! {
            biased;
            _ = &mut stop => break,
            _ = beat.tick() => { heartbeat.beat(); continue; }
            a = accept(&open.listener) => a,
        };
        match accepted {
            Ok((stream, remote)) => {
                if let Some(p) = permit.take() {
                    shared.metrics.connections_accepted.inc();
                    let guard = if admin {
                        shared.conns.opened_admin(p)
                    } else {
                        shared.conns.opened(p)
                    };
                    // Boxed: the connection's state machine (hyper's connection inline) is
                    // kilobytes, and tokio moves a spawned future by value several times;
                    // unboxed that was ~6k of a new connection's ~39k instructions.
                    tokio::spawn(Box::pin(conn::serve(
                        shared.clone(),
                        stream,
                        remote,
                        name.clone(),
                        guard,
                    )));
                }
            }
            Err(e) => {
                if is_per_connection_error(&e) {
                    tracing::debug!(listener = %name, error = %e, "accept failed for one connection");
                } else {
                    // Out of fds or memory: back off instead of spinning.
                    tracing::warn!(listener = %name, error = %e, "accept failed; retrying in 100ms");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
    if let Origin::Bound(BindAddr::Unix(path)) = &open.origin {
        // Our own socket file: remove it. Sockets passed by systemd are never unlinked.
        drop(open.listener);
        let _ = std::fs::remove_file(path);
    }
}

pub(crate) enum Stream {
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
