//! [sd_notify(3)](https://www.freedesktop.org/software/systemd/man/sd_notify.html): state
//! messages to the service manager at `NOTIFY_SOCKET`.
//!
//! sd-notify's [`NotifyState`] formats the messages; the socket is ours because sd-notify
//! treats an abstract `NOTIFY_SOCKET` ("@name") as a file path, reconnects for every
//! message, and knows nothing of the `vsock:` forms a VM's service manager uses.
//!
//! Supported addresses, as systemd's own `sd_notify()`:
//! * an absolute path (`/run/systemd/notify`): one datagram per message;
//! * an abstract name (`@/org/freedesktop/systemd1/notify/…`): the same;
//! * `vsock:CID:PORT`, `vsock-dgram:`, `vsock-seqpacket:`, `vsock-stream:` (CID a number or
//!   `hypervisor`, `local`, `host`): a datagram where the hypervisor supports one, else a
//!   seqpacket or stream connection per message, ended by a shutdown and the peer's EOF.
//!
//! Anything else (a relative path, a vsock address without a CID) is refused with a message
//! saying why, instead of messages silently going nowhere.

pub use sd_notify::NotifyState;

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

/// Where `NOTIFY_SOCKET` points.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyAddress {
    /// A unix datagram socket: a path or an abstract name (leading `@` in the variable).
    Unix {
        /// The name without the `@` for an abstract socket.
        name: Vec<u8>,
        /// An abstract socket (the variable began with `@`).
        abstract_name: bool,
    },
    /// An `AF_VSOCK` address (a service in a VM notifying the host's manager).
    Vsock {
        /// The context id (2 = host).
        cid: u32,
        /// The port.
        port: u32,
        /// `vsock-stream:` etc.; `None` for plain `vsock:` (datagram, falling back).
        kind: Option<VsockKind>,
    },
}

impl std::fmt::Display for NotifyAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NotifyAddress::Unix {
                name,
                abstract_name,
            } => {
                let at = if *abstract_name { "@" } else { "" };
                write!(f, "{at}{}", String::from_utf8_lossy(name))
            }
            NotifyAddress::Vsock { cid, port, kind } => {
                let prefix = match kind {
                    None => "vsock",
                    Some(VsockKind::Datagram) => "vsock-dgram",
                    Some(VsockKind::SeqPacket) => "vsock-seqpacket",
                    Some(VsockKind::Stream) => "vsock-stream",
                };
                write!(f, "{prefix}:{cid}:{port}")
            }
        }
    }
}

/// The socket type a `vsock-…:` prefix asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VsockKind {
    /// `vsock-dgram:`
    Datagram,
    /// `vsock-seqpacket:`
    SeqPacket,
    /// `vsock-stream:`
    Stream,
}

/// Why a `NOTIFY_SOCKET` value of no known form is refused.
const NOT_AN_ADDRESS: &str =
    "a relative path, not an absolute path, an abstract @name or a vsock:CID:PORT address";

/// A `NOTIFY_SOCKET` value this process cannot use.
#[derive(Debug, thiserror::Error)]
#[error("NOTIFY_SOCKET={value:?} is unusable ({reason}): systemd gets no READY=1, STATUS= or WATCHDOG=1 from this process")]
pub struct NotifyAddressError {
    /// The variable's value.
    pub value: String,
    /// Why it is refused.
    pub reason: String,
}

impl NotifyAddress {
    /// Parses a `NOTIFY_SOCKET` value.
    pub fn parse(value: &OsStr) -> Result<NotifyAddress, NotifyAddressError> {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(value);
        let refuse = |reason: &str| NotifyAddressError {
            value: value.to_string_lossy().into_owned(),
            reason: reason.to_owned(),
        };
        if let Some(name) = bytes.strip_prefix(b"@") {
            return Ok(NotifyAddress::Unix {
                name: name.to_vec(),
                abstract_name: true,
            });
        }
        if bytes.starts_with(b"/") {
            return Ok(NotifyAddress::Unix {
                name: bytes.to_vec(),
                abstract_name: false,
            });
        }
        let text = std::str::from_utf8(bytes).map_err(|_| refuse("not UTF-8"))?;
        let Some((prefix, rest)) = text.split_once(':') else {
            return Err(refuse(NOT_AN_ADDRESS));
        };
        let kind = match prefix {
            "vsock" => None,
            "vsock-dgram" => Some(VsockKind::Datagram),
            "vsock-seqpacket" => Some(VsockKind::SeqPacket),
            "vsock-stream" => Some(VsockKind::Stream),
            _ => return Err(refuse(NOT_AN_ADDRESS)),
        };
        let (cid, port) = rest
            .split_once(':')
            .ok_or_else(|| refuse("vsock address without a port; expected vsock:CID:PORT"))?;
        let cid = match cid {
            "" => return Err(refuse("vsock address without a CID")),
            "hypervisor" => 0,
            "local" => 1,
            "host" => 2,
            n => n.parse().map_err(|_| refuse("vsock CID is not a number"))?,
        };
        let port = port
            .parse::<u32>()
            .ok()
            .filter(|p| *p != u32::MAX)
            .ok_or_else(|| refuse("vsock port is not a number"))?;
        Ok(NotifyAddress::Vsock { cid, port, kind })
    }
}

/// A sender of state messages to one address.
pub struct Notifier {
    target: Target,
    /// The address as NOTIFY_SOCKET wrote it, for messages.
    address: String,
    /// The first failed send is logged as a warning, the rest at debug level.
    warned: AtomicBool,
}

enum Target {
    Unix {
        socket: UnixDatagram,
        addr: SocketAddr,
    },
    Vsock {
        cid: u32,
        port: u32,
        kind: Option<VsockKind>,
    },
}

/// vsock sends block the calling thread (a connection per message, as systemd does); a
/// hypervisor that does not answer must not hold it for long.
const VSOCK_TIMEOUT: Duration = Duration::from_secs(2);

impl Notifier {
    /// A notifier for `address`.
    pub fn new(address: &NotifyAddress) -> io::Result<Notifier> {
        let target = match address {
            NotifyAddress::Unix {
                name,
                abstract_name,
            } => {
                let addr = if *abstract_name {
                    SocketAddr::from_abstract_name(name)?
                } else {
                    SocketAddr::from_pathname(std::path::Path::new(
                        <OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name),
                    ))?
                };
                Target::Unix {
                    socket: UnixDatagram::unbound()?,
                    addr,
                }
            }
            NotifyAddress::Vsock { cid, port, kind } => Target::Vsock {
                cid: *cid,
                port: *port,
                kind: *kind,
            },
        };
        Ok(Notifier {
            target,
            address: address.to_string(),
            warned: AtomicBool::new(false),
        })
    }

    /// Sends `message` (newline-separated `KEY=value` lines) as one notification.
    pub fn send_raw(&self, message: &str) -> io::Result<()> {
        match &self.target {
            Target::Unix { socket, addr } => {
                socket.send_to_addr(message.as_bytes(), addr).map(drop)
            }
            Target::Vsock { cid, port, kind } => send_vsock(*cid, *port, *kind, message),
        }
    }

    /// Sends all `states` in one message, logging (not returning) a failure.
    pub fn send(&self, states: &[NotifyState<'_>]) {
        let message = format_states(states);
        if let Err(e) = self.send_raw(&message) {
            let to = &self.address;
            if self.warned.swap(true, Ordering::Relaxed) {
                tracing::debug!(notify_socket = %to, error = %e, "sd_notify failed");
            } else {
                tracing::warn!(
                    notify_socket = %to,
                    error = %e,
                    "sd_notify failed: the service manager may not hear READY=1, STATUS= or WATCHDOG=1 (further failures are logged at debug level)"
                );
            }
        }
    }
}

/// One line per state. A newline inside a STATUS text would start a new assignment, so it
/// becomes a space.
fn format_states(states: &[NotifyState<'_>]) -> String {
    let mut msg = String::with_capacity(64);
    for s in states {
        match s {
            NotifyState::Status(text) if text.contains('\n') => {
                let _ = writeln!(msg, "STATUS={}", text.replace('\n', " "));
            }
            _ => {
                let _ = writeln!(msg, "{s}");
            }
        }
    }
    msg
}

fn send_vsock(cid: u32, port: u32, kind: Option<VsockKind>, message: &str) -> io::Result<()> {
    use socket2::{Domain, SockAddr, Socket, Type};
    let wanted = match kind {
        None | Some(VsockKind::Datagram) => Type::DGRAM,
        Some(VsockKind::SeqPacket) => Type::SEQPACKET,
        Some(VsockKind::Stream) => Type::STREAM,
    };
    let mut opened = Socket::new(Domain::VSOCK, wanted, None).map(|s| (s, wanted));
    // As sd_notify(): plain "vsock:" prefers datagrams, but hypervisors (QEMU) often lack
    // them (ENODEV); then a seqpacket, then a stream connection.
    if kind.is_none() {
        for fallback in [Type::SEQPACKET, Type::STREAM] {
            match &opened {
                Err(e) if unsupported(e) => {
                    opened = Socket::new(Domain::VSOCK, fallback, None).map(|s| (s, fallback));
                }
                _ => break,
            }
        }
    }
    let (socket, ty) = opened?;
    bind_privileged_port(&socket)?;
    let addr = SockAddr::vsock(cid, port);
    if ty == Type::DGRAM {
        socket.set_write_timeout(Some(VSOCK_TIMEOUT))?;
        socket.send_to(message.as_bytes(), &addr)?;
        return Ok(());
    }
    socket.connect_timeout(&addr, VSOCK_TIMEOUT)?;
    socket.set_write_timeout(Some(VSOCK_TIMEOUT))?;
    socket.set_read_timeout(Some(VSOCK_TIMEOUT))?;
    let mut rest = message.as_bytes();
    while !rest.is_empty() {
        let n = socket.send(rest)?;
        if ty != Type::STREAM && n < rest.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short vsock send"));
        }
        rest = &rest[n..];
    }
    // The end of the message is the end of the connection: shut down our side and wait
    // for the manager to close its own.
    socket.shutdown(std::net::Shutdown::Write)?;
    let mut byte = [std::mem::MaybeUninit::<u8>::uninit()];
    match socket.recv(&mut byte)? {
        0 => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "unexpected data on the vsock notify socket",
        )),
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(
            libc::ENODEV
                | libc::EAFNOSUPPORT
                | libc::ESOCKTNOSUPPORT
                | libc::EPROTONOSUPPORT
                | libc::EOPNOTSUPP
        )
    )
}

/// The host side may trust only privileged source ports; binding one needs privileges we
/// may lack, which is fine.
fn bind_privileged_port(socket: &socket2::Socket) -> io::Result<()> {
    for port in (1..=1023u32).rev() {
        match socket.bind(&socket2::SockAddr::vsock(libc::VMADDR_CID_ANY, port)) {
            Ok(()) => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => continue,
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPERM | libc::EACCES)) => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

/// Reads `NOTIFY_SOCKET` and removes it from the environment; returns the problem (for the
/// log) when it is set but unusable. Usually called through [`crate::Environment::take`].
///
/// # Safety
/// Mutates the environment: the process must still be single-threaded.
pub unsafe fn init_from_env() -> Option<String> {
    let value = std::env::var_os("NOTIFY_SOCKET");
    unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    init(value.as_deref())
}

/// Sets the process-wide notifier from a `NOTIFY_SOCKET` value (`None`: not under a
/// service manager); returns the problem when the value is unusable. Only the first call
/// of a process takes effect.
pub fn init(value: Option<&OsStr>) -> Option<String> {
    let mut problem = None;
    let notifier = value.and_then(|value| {
        let made = NotifyAddress::parse(value)
            .map_err(|e| e.to_string())
            .and_then(|address| {
                Notifier::new(&address)
                    .map(|mut n| {
                        // Messages name the address as the service manager wrote it.
                        n.address = value.to_string_lossy().into_owned();
                        n
                    })
                    .map_err(|e| {
                        NotifyAddressError {
                            value: value.to_string_lossy().into_owned(),
                            reason: e.to_string(),
                        }
                        .to_string()
                    })
            });
        made.map_err(|e| problem = Some(e)).ok()
    });
    let _ = NOTIFIER.set(notifier);
    problem
}

/// Whether a usable `NOTIFY_SOCKET` was found.
pub fn enabled() -> bool {
    matches!(NOTIFIER.get(), Some(Some(_)))
}

/// Sends all `states` in one message; a no-op without `NOTIFY_SOCKET`.
pub fn send(states: &[NotifyState<'_>]) {
    if let Some(Some(n)) = NOTIFIER.get() {
        n.send(states);
    }
}

/// `READY=1` with a `STATUS=` line: start-up (or a reload) is complete.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STATUS=`: the one-line state `systemctl status` shows.
pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// `RELOADING=1` together with `MONOTONIC_USEC=`, as `Type=notify-reload` requires
/// (systemd ≥ 253 fails a reload without the timestamp). End the reload with [`ready`].
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

/// `STOPPING=1` with a `STATUS=` line: the service has begun to shut down.
pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

/// `WATCHDOG=1`: the service is alive (see [`crate::watchdog`]).
pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// `EXTEND_TIMEOUT_USEC=`: asks for `extra` more time to finish the current operation
/// (start, reload or stop) beyond the unit's `Timeout…Sec=`.
pub fn extend_timeout(extra: Duration) {
    let usec = u32::try_from(extra.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NotifyAddress, NotifyAddressError> {
        NotifyAddress::parse(OsStr::new(s))
    }

    #[test]
    fn addresses_parse_as_systemd_writes_them() {
        assert_eq!(
            parse("/run/systemd/notify").unwrap(),
            NotifyAddress::Unix {
                name: b"/run/systemd/notify".to_vec(),
                abstract_name: false
            }
        );
        assert_eq!(
            parse("@/org/freedesktop/systemd1/notify/42").unwrap(),
            NotifyAddress::Unix {
                name: b"/org/freedesktop/systemd1/notify/42".to_vec(),
                abstract_name: true
            }
        );
        assert_eq!(
            parse("vsock:2:9999").unwrap(),
            NotifyAddress::Vsock {
                cid: 2,
                port: 9999,
                kind: None
            }
        );
        assert_eq!(
            parse("vsock-stream:host:1").unwrap(),
            NotifyAddress::Vsock {
                cid: 2,
                port: 1,
                kind: Some(VsockKind::Stream)
            }
        );
        assert_eq!(
            parse("vsock-seqpacket:hypervisor:7").unwrap(),
            NotifyAddress::Vsock {
                cid: 0,
                port: 7,
                kind: Some(VsockKind::SeqPacket)
            }
        );
    }

    #[test]
    fn unusable_addresses_say_why() {
        for (value, reason) in [
            ("notify.sock", "relative path"),
            ("run/notify:x", "relative path"),
            ("vsock::9999", "without a CID"),
            ("vsock:2", "without a port"),
            ("vsock:two:1", "CID is not a number"),
            ("vsock:2:4294967295", "port is not a number"),
        ] {
            let err = parse(value).unwrap_err().to_string();
            assert!(
                err.contains(reason) && err.contains(value),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn a_multi_line_status_stays_one_assignment() {
        let msg = format_states(&[NotifyState::Ready, NotifyState::Status("a\nb")]);
        assert_eq!(msg, "READY=1\nSTATUS=a b\n");
    }

    #[test]
    fn path_and_abstract_sockets_receive_datagrams() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(&parse(path.to_str().unwrap()).unwrap()).unwrap();
        n.send(&[NotifyState::Ready]);
        let mut buf = [0u8; 64];
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\n");

        let name = format!("gatehouse-kit-test-{}", std::process::id());
        let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
        let n = Notifier::new(&parse(&format!("@{name}")).unwrap()).unwrap();
        n.send(&[NotifyState::Watchdog]);
        let len = rx.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1\n");
    }

    #[test]
    fn an_unreachable_vsock_manager_is_an_error_not_silence() {
        // CID 1 is the local machine; no manager listens on this port there (or no vsock at
        // all on this host): either way the send must fail, not claim success.
        let n = Notifier::new(&parse("vsock-stream:local:4294967294").unwrap()).unwrap();
        assert!(n.send_raw("READY=1\n").is_err());
    }
}
