//! Socket activation: `LISTEN_FDS` / `LISTEN_FDNAMES` / `LISTEN_PID`, as
//! [sd_listen_fds_with_names(3)](https://www.freedesktop.org/software/systemd/man/sd_listen_fds.html).
//!
//! sd-notify's `listen_fds_with_names` parses the variables because it is the one crate that
//! both checks `LISTEN_PID` strictly (listenfd accepts fds when `LISTEN_PID` is unset) and
//! reads `LISTEN_FDNAMES` (libsystemd returns nothing when it is absent); it also marks every
//! fd close-on-exec. On top of it we verify that each fd really is a listening stream socket
//! before anything trusts it, and make it non-blocking, as tokio requires.

use socket2::{Domain, SockRef, Type};
use std::collections::BTreeMap;
use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A listening socket inherited from systemd. Owned: closing it never affects systemd's
/// copy, which keeps listening (and queueing clients) after we exit; we never `shutdown()`
/// or unlink it.
#[derive(Debug)]
pub struct PassedSocket {
    /// The descriptor number it arrived on (3, 4, …), for messages.
    pub fd: RawFd,
    /// Its `FileDescriptorName=` (`LISTEN_FDNAMES` entry); systemd's default is the
    /// socket unit's name, e.g. `app.socket`.
    pub name: String,
    /// The socket itself.
    pub listener: PassedListener,
}

/// A passed listening socket, by address family.
#[derive(Debug)]
pub enum PassedListener {
    /// IPv4 or IPv6 (`ListenStream=80`, `ListenStream=[::1]:8080`).
    Tcp(std::net::TcpListener),
    /// A unix stream socket (`ListenStream=/run/app/app.sock`, or `@abstract`).
    Unix(std::os::unix::net::UnixListener),
}

impl PassedSocket {
    /// The socket's local address as a config file would write it: `127.0.0.1:80`,
    /// `unix:/run/app/app.sock`.
    pub fn address(&self) -> String {
        let addr = match &self.listener {
            PassedListener::Tcp(l) => l.local_addr().map(|a| a.to_string()).ok(),
            PassedListener::Unix(l) => l.local_addr().ok().map(|a| match a.as_pathname() {
                Some(p) => format!("unix:{}", p.display()),
                None => "unix:(unnamed)".into(),
            }),
        };
        addr.unwrap_or_else(|| "?".into())
    }
}

impl fmt::Display for PassedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "fd {} ({:?}, {})", self.fd, self.name, self.address())
    }
}

impl AsFd for PassedSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match &self.listener {
            PassedListener::Tcp(l) => l.as_fd(),
            PassedListener::Unix(l) => l.as_fd(),
        }
    }
}

/// Why the sockets systemd passed cannot be used. Every variant names the fd, so the
/// journal says which `ListenStream=` line to fix; a service should exit with
/// [`crate::EXIT_CONFIG`] (78) on any of them.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ActivationError {
    /// `LISTEN_FDS` / `LISTEN_FDNAMES` are malformed or disagree.
    #[error("invalid socket activation environment: {0}")]
    Environment(std::io::Error),
    /// The fd is not a socket at all (a file, a pipe).
    #[error("fd {fd} (name {name:?}) passed by systemd is not a socket: {source}")]
    NotASocket {
        /// The descriptor number.
        fd: RawFd,
        /// Its `FileDescriptorName=`.
        name: String,
        /// What the kernel said.
        source: std::io::Error,
    },
    /// A datagram or seqpacket socket where a stream socket is needed.
    #[error("fd {fd} (name {name:?}) passed by systemd is a {kind} socket, not a stream socket; use ListenStream=, not ListenDatagram=/ListenSequentialPacket=")]
    NotStream {
        /// The descriptor number.
        fd: RawFd,
        /// Its `FileDescriptorName=`.
        name: String,
        /// The socket type found.
        kind: String,
    },
    /// A connected stream socket (`Accept=yes` passes one connection per instance).
    #[error("fd {fd} (name {name:?}) passed by systemd is a stream socket that is not listening; use Accept=no in the .socket unit")]
    NotListening {
        /// The descriptor number.
        fd: RawFd,
        /// Its `FileDescriptorName=`.
        name: String,
    },
    /// Neither TCP nor unix (e.g. `ListenStream=vsock:…`).
    #[error("fd {fd} (name {name:?}) passed by systemd has unsupported address family {family}; expected TCP (IPv4/IPv6) or a unix socket")]
    Family {
        /// The descriptor number.
        fd: RawFd,
        /// Its `FileDescriptorName=`.
        name: String,
        /// The family found.
        family: String,
    },
    /// A socket whose name no role claims (see [`assign_roles`]).
    #[error("fd {fd} (name {name:?}) passed by systemd is not claimed by this service; it serves {known}; change FileDescriptorName= in the .socket unit")]
    Unclaimed {
        /// The descriptor number.
        fd: RawFd,
        /// Its `FileDescriptorName=`.
        name: String,
        /// The names the service claims, for the message.
        known: String,
    },
}

/// Takes the passed sockets out of the environment and unsets `LISTEN_PID`, `LISTEN_FDS`
/// and `LISTEN_FDNAMES`, so no child process can mistake them for its own.
///
/// Fds are ours only when `LISTEN_PID` is this process's pid: variables inherited from a
/// socket-activated parent are ignored (and still removed). Every fd is checked to be a
/// listening TCP or unix stream socket; it is already close-on-exec and is made
/// non-blocking. Usually called through [`crate::Environment::take`].
///
/// # Safety
/// Mutates the environment: the process must still be single-threaded.
pub unsafe fn take_passed_sockets() -> Result<Vec<PassedSocket>, ActivationError> {
    let result = read_passed_sockets();
    unsafe {
        std::env::remove_var("LISTEN_PID");
        std::env::remove_var("LISTEN_FDS");
        std::env::remove_var("LISTEN_FDNAMES");
    }
    result
}

/// [`take_passed_sockets`] without touching the environment (for a process that already
/// runs threads). Each fd is taken over at most once per process: a second call finds none.
pub fn read_passed_sockets() -> Result<Vec<PassedSocket>, ActivationError> {
    static TAKEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    // sd-notify 0.5 ignores fds meant for another pid but still matches LISTEN_FDNAMES
    // against their (zero) count and fails; variables inherited from a socket-activated
    // parent are simply not ours, so check LISTEN_PID first.
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !ours || TAKEN.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let fds = sd_notify::listen_fds_with_names().map_err(ActivationError::Environment)?;
    let mut sockets = Vec::with_capacity(fds.len());
    let mut first_error = None;
    for (fd, name) in fds {
        // Take ownership of every fd, even after an error, so none leaks into a child.
        // SAFETY: systemd passed this fd to us alone (LISTEN_PID matched) and nothing else
        // in the process has claimed it (TAKEN).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match classify(owned, fd, &name) {
            Ok(listener) => sockets.push(PassedSocket { fd, name, listener }),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    match first_error {
        Some(e) => Err(e),
        None => Ok(sockets),
    }
}

fn classify(owned: OwnedFd, fd: RawFd, name: &str) -> Result<PassedListener, ActivationError> {
    let sock = SockRef::from(&owned);
    let not_a_socket = |source| ActivationError::NotASocket {
        fd,
        name: name.to_owned(),
        source,
    };
    let ty = sock.r#type().map_err(not_a_socket)?;
    if ty != Type::STREAM {
        let kind = match ty {
            Type::DGRAM => "datagram (UDP or unix datagram)".to_owned(),
            Type::SEQPACKET => "seqpacket".to_owned(),
            other => format!("{other:?}"),
        };
        return Err(ActivationError::NotStream {
            fd,
            name: name.to_owned(),
            kind,
        });
    }
    if !sock.is_listener().unwrap_or(false) {
        return Err(ActivationError::NotListening {
            fd,
            name: name.to_owned(),
        });
    }
    let domain = sock.domain().map_err(not_a_socket)?;
    // Passed sockets arrive in blocking mode; tokio requires non-blocking ones.
    sock.set_nonblocking(true).map_err(not_a_socket)?;
    debug_assert_eq!(owned.as_raw_fd(), fd);
    if domain == Domain::IPV4 || domain == Domain::IPV6 {
        Ok(PassedListener::Tcp(std::net::TcpListener::from(owned)))
    } else if domain == Domain::UNIX {
        Ok(PassedListener::Unix(
            std::os::unix::net::UnixListener::from(owned),
        ))
    } else {
        Err(ActivationError::Family {
            fd,
            name: name.to_owned(),
            family: format!("{domain:?}"),
        })
    }
}

/// Sorts passed sockets into the roles a service has, by `FileDescriptorName=`: a service
/// with a public and an admin socket calls `assign_roles(sockets, &["http", "admin"])`.
/// Several sockets may share a name (several `ListenStream=` lines in one unit). A socket
/// whose name is not a role is an error naming it, so a typo in a unit file is found at
/// start, not when traffic is missing; a role that got no socket is simply absent.
pub fn assign_roles<'r>(
    sockets: Vec<PassedSocket>,
    roles: &[&'r str],
) -> Result<BTreeMap<&'r str, Vec<PassedSocket>>, ActivationError> {
    let mut by_role: BTreeMap<&'r str, Vec<PassedSocket>> = BTreeMap::new();
    for socket in sockets {
        match roles.iter().find(|r| **r == socket.name) {
            Some(role) => by_role.entry(role).or_default().push(socket),
            None => {
                return Err(ActivationError::Unclaimed {
                    fd: socket.fd,
                    name: socket.name.clone(),
                    known: roles
                        .iter()
                        .map(|r| format!("{r:?}"))
                        .collect::<Vec<_>>()
                        .join(", "),
                })
            }
        }
    }
    Ok(by_role)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn passed(name: &str) -> PassedSocket {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        PassedSocket {
            fd: l.as_raw_fd(),
            name: name.into(),
            listener: PassedListener::Tcp(l),
        }
    }

    #[test]
    fn roles_group_sockets_by_name_and_refuse_strangers() {
        let by_role = assign_roles(
            vec![passed("http"), passed("admin"), passed("http")],
            &["http", "admin", "metrics"],
        )
        .unwrap();
        assert_eq!(by_role["http"].len(), 2);
        assert_eq!(by_role["admin"].len(), 1);
        assert!(!by_role.contains_key("metrics"));

        let err = assign_roles(vec![passed("htp")], &["http"]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("\"htp\"") && msg.contains("serves \"http\""),
            "{msg}"
        );
    }

    #[test]
    fn a_connected_socket_is_not_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let fd = c.as_raw_fd();
        let err = classify(OwnedFd::from(c), fd, "http").unwrap_err();
        assert!(err.to_string().contains("Accept=no"), "{err}");
    }
}
