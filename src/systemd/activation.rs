//! Socket activation: LISTEN_FDS / LISTEN_FDNAMES / LISTEN_PID, as sd_listen_fds_with_names(3).
//!
//! sd-notify's `listen_fds_with_names` is used because it is the one crate that both checks
//! LISTEN_PID strictly (listenfd accepts fds when LISTEN_PID is unset) and reads
//! LISTEN_FDNAMES (libsystemd returns nothing when it is absent). On top of it we verify that
//! each fd really is a listening stream socket before anything trusts it.

use socket2::{Domain, SockRef, Type};
use std::fmt;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A listening socket inherited from systemd. Owned: closing it never affects systemd's copy,
/// and we never shutdown() or unlink it.
#[derive(Debug)]
pub(crate) struct PassedSocket {
    pub(crate) fd: RawFd,
    pub(crate) name: String,
    pub(crate) listener: PassedListener,
}

#[derive(Debug)]
pub(crate) enum PassedListener {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl PassedSocket {
    /// The socket's local address, as a config file would write it.
    pub(crate) fn address(&self) -> String {
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

#[derive(Debug, thiserror::Error)]
pub(crate) enum ActivationError {
    #[error("invalid socket activation environment: {0}")]
    Environment(std::io::Error),
    #[error("fd {fd} (name {name:?}) passed by systemd is not a socket: {source}")]
    NotASocket {
        fd: RawFd,
        name: String,
        source: std::io::Error,
    },
    #[error("fd {fd} (name {name:?}) passed by systemd is a {kind} socket, not a stream socket; use ListenStream=, not ListenDatagram=/ListenSequentialPacket=")]
    NotStream {
        fd: RawFd,
        name: String,
        kind: String,
    },
    #[error("fd {fd} (name {name:?}) passed by systemd is a stream socket that is not listening; use Accept=no in the .socket unit")]
    NotListening { fd: RawFd, name: String },
    #[error("fd {fd} (name {name:?}) passed by systemd has unsupported address family {family}; expected TCP (IPv4/IPv6) or a unix socket")]
    Family {
        fd: RawFd,
        name: String,
        family: String,
    },
}

/// Takes the passed sockets out of the environment (and unsets LISTEN_PID/FDS/FDNAMES).
///
/// # Safety
/// Mutates the environment: the process must still be single-threaded.
pub(crate) unsafe fn take_passed_sockets() -> Result<Vec<PassedSocket>, ActivationError> {
    // sd-notify 0.5 ignores fds meant for another pid but still matches LISTEN_FDNAMES
    // against their (zero) count and fails; variables inherited from a socket-activated
    // parent are simply not ours, so check LISTEN_PID first.
    let ours = std::env::var("LISTEN_PID")
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
        .is_some_and(|p| p == std::process::id());
    if !ours {
        // SAFETY: single-threaded, as this function's contract requires.
        unsafe {
            std::env::remove_var("LISTEN_PID");
            std::env::remove_var("LISTEN_FDS");
            std::env::remove_var("LISTEN_FDNAMES");
        }
        return Ok(Vec::new());
    }
    // SAFETY: single-threaded (this function's contract); it unsets LISTEN_* too.
    let fds = unsafe { sd_notify::listen_fds_with_names_and_unset_env() }
        .map_err(ActivationError::Environment)?;
    let mut sockets = Vec::with_capacity(fds.len());
    let mut first_error = None;
    for (fd, name) in fds {
        // Take ownership of every fd, even after an error, so none leaks into a child.
        // SAFETY: systemd passed `fd` to this process (LISTEN_PID matched) and nothing else
        // owns it: sd-notify only reports the numbers.
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
    let borrowed: BorrowedFd<'_> = std::os::fd::AsFd::as_fd(&owned);
    let sock = SockRef::from(&borrowed);
    let ty = sock
        .r#type()
        .map_err(|source| ActivationError::NotASocket {
            fd,
            name: name.to_owned(),
            source,
        })?;
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
    let domain = sock
        .domain()
        .map_err(|source| ActivationError::NotASocket {
            fd,
            name: name.to_owned(),
            source,
        })?;
    // Passed sockets arrive in blocking mode; tokio requires non-blocking ones.
    sock.set_nonblocking(true)
        .map_err(|source| ActivationError::NotASocket {
            fd,
            name: name.to_owned(),
            source,
        })?;
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
