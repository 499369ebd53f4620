//! sd_notify(3): state datagrams to the socket named by NOTIFY_SOCKET.
//!
//! sd-notify's `NotifyState` formats the messages; the socket is ours because sd-notify treats
//! an abstract NOTIFY_SOCKET ("@name") as a file path and reconnects for every message, and
//! knows nothing of the `vsock:` forms a VMM hands a guest.
//!
//! NOTIFY_SOCKET forms, as sd_notify(3) reads them: an absolute path, `@abstract`, or
//! `vsock:CID:PORT` (a datagram, or a sequential packet where the hypervisor has no datagrams)
//! and its `vsock-dgram:`, `vsock-seqpacket:`, `vsock-stream:` variants forcing the type. CID
//! is a number or `hypervisor`, `local`, `host`. Anything else (a relative path, say) is
//! refused with a log line, as libsystemd refuses it, instead of being sent somewhere else.

use sd_notify::NotifyState;
use socket2::{Domain, SockAddr, Socket, Type};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

#[derive(Debug)]
enum Notifier {
    Unix {
        socket: UnixDatagram,
        addr: SocketAddr,
    },
    /// Connected per message, as libsystemd does: a stream carries one message per connection.
    Vsock {
        cid: u32,
        port: u32,
        kind: VsockKind,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VsockKind {
    /// `vsock:`: a datagram, else a sequential packet.
    Auto,
    Dgram,
    SeqPacket,
    Stream,
}

static NOTIFIER: OnceLock<Option<(String, Notifier)>> = OnceLock::new();
/// The first failed send is logged as a warning, later ones at debug level.
static SEND_FAILED: AtomicBool = AtomicBool::new(false);

/// Reads NOTIFY_SOCKET and removes it from the environment. Returns why it cannot be used,
/// for the caller to log once logging is set up.
///
/// # Safety
/// Mutates the environment: the process must still be single-threaded.
pub(crate) unsafe fn init_from_env() -> Option<String> {
    let value = std::env::var_os("NOTIFY_SOCKET");
    // SAFETY: single-threaded, as this function's contract requires.
    unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    let Some(value) = value else {
        let _ = NOTIFIER.set(None);
        return None;
    };
    let text = value.to_string_lossy().into_owned();
    match parse(value.as_bytes()) {
        Ok(n) => {
            let _ = NOTIFIER.set(Some((text, n)));
            None
        }
        Err(why) => {
            let _ = NOTIFIER.set(None);
            Some(format!(
                "NOTIFY_SOCKET={text:?} is unusable ({why}): systemd gets no READY=1, STATUS= or WATCHDOG=1 from this process"
            ))
        }
    }
}

fn parse(bytes: &[u8]) -> Result<Notifier, String> {
    let unix = |addr: std::io::Result<SocketAddr>| {
        let addr = addr.map_err(|e| e.to_string())?;
        let socket = UnixDatagram::unbound().map_err(|e| e.to_string())?;
        Ok(Notifier::Unix { socket, addr })
    };
    match bytes.first() {
        Some(b'/') => unix(SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(
            bytes,
        ))),
        Some(b'@') => unix(SocketAddr::from_abstract_name(&bytes[1..])),
        _ => parse_vsock(bytes),
    }
}

/// `vsock[-dgram|-seqpacket|-stream]:CID:PORT`.
fn parse_vsock(bytes: &[u8]) -> Result<Notifier, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let not_absolute =
        || "not an absolute path, an abstract @name or a vsock:CID:PORT address".to_owned();
    let (scheme, rest) = text.split_once(':').ok_or_else(not_absolute)?;
    let kind = match scheme {
        "vsock" => VsockKind::Auto,
        "vsock-dgram" => VsockKind::Dgram,
        "vsock-seqpacket" => VsockKind::SeqPacket,
        "vsock-stream" => VsockKind::Stream,
        _ => return Err(not_absolute()),
    };
    let (cid, port) = rest
        .split_once(':')
        .ok_or_else(|| format!("{scheme}: needs CID:PORT"))?;
    let cid = match cid {
        "hypervisor" => libc::VMADDR_CID_HYPERVISOR,
        "local" => libc::VMADDR_CID_LOCAL,
        "host" => libc::VMADDR_CID_HOST,
        n => n
            .parse::<u32>()
            .ok()
            // sd_notify(3): the CID is mandatory and cannot be VMADDR_CID_ANY.
            .filter(|&c| c != libc::VMADDR_CID_ANY)
            .ok_or_else(|| format!("bad vsock CID {n:?}"))?,
    };
    let port = port
        .parse::<u32>()
        .map_err(|_| format!("bad vsock port {port:?}"))?;
    Ok(Notifier::Vsock { cid, port, kind })
}

/// Sends all `states` in one message; a no-op without NOTIFY_SOCKET.
pub(crate) fn send(states: &[NotifyState<'_>]) {
    let Some(Some((address, n))) = NOTIFIER.get() else {
        return;
    };
    let mut msg = String::with_capacity(64);
    for s in states {
        use std::fmt::Write;
        let _ = writeln!(msg, "{s}");
    }
    let result = match n {
        Notifier::Unix { socket, addr } => socket.send_to_addr(msg.as_bytes(), addr).map(drop),
        Notifier::Vsock { cid, port, kind } => send_vsock(*cid, *port, *kind, msg.as_bytes()),
    };
    if let Err(e) = result {
        if SEND_FAILED.swap(true, Ordering::Relaxed) {
            tracing::debug!(error = %e, "sd_notify failed");
        } else {
            tracing::warn!(
                notify_socket = %address,
                error = %e,
                "sd_notify failed: the service manager may not hear READY=1, STATUS= or WATCHDOG=1 (further failures are logged at debug level)"
            );
        }
    }
}

fn send_vsock(cid: u32, port: u32, kind: VsockKind, msg: &[u8]) -> std::io::Result<()> {
    let addr = SockAddr::vsock(cid, port);
    let connect = |ty: Type| -> std::io::Result<Socket> {
        let s = Socket::new(Domain::VSOCK, ty, None)?;
        s.connect(&addr)?;
        Ok(s)
    };
    let socket = match kind {
        VsockKind::Dgram => connect(Type::DGRAM)?,
        VsockKind::SeqPacket => connect(Type::SEQPACKET)?,
        VsockKind::Stream => connect(Type::STREAM)?,
        VsockKind::Auto => connect(Type::DGRAM).or_else(|_| connect(Type::SEQPACKET))?,
    };
    let sent = socket.send(msg)?;
    if sent < msg.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "message cut short",
        ));
    }
    Ok(())
}

pub(crate) fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub(crate) fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// RELOADING=1 together with MONOTONIC_USEC, as Type=notify-reload requires.
pub(crate) fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading"),
        ]),
        Err(_) => send(&[NotifyState::Reloading, NotifyState::Status("reloading")]),
    }
}

pub(crate) fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub(crate) fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Asks for `extra` more time to finish the current operation (start, reload or stop).
pub(crate) fn extend_timeout(extra: Duration) {
    let usec = u32::try_from(extra.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vsock(text: &str) -> Option<(u32, u32, VsockKind)> {
        match parse(text.as_bytes()) {
            Ok(Notifier::Vsock { cid, port, kind }) => Some((cid, port, kind)),
            _ => None,
        }
    }

    #[test]
    fn vsock_forms_of_sd_notify() {
        assert_eq!(vsock("vsock:2:8888"), Some((2, 8888, VsockKind::Auto)));
        assert_eq!(
            vsock("vsock-stream:host:1"),
            Some((2, 1, VsockKind::Stream))
        );
        assert_eq!(vsock("vsock-dgram:local:7"), Some((1, 7, VsockKind::Dgram)));
        assert_eq!(
            vsock("vsock-seqpacket:hypervisor:9"),
            Some((0, 9, VsockKind::SeqPacket))
        );
        assert_eq!(vsock("vsock:4294967295:1"), None, "VMADDR_CID_ANY");
        assert_eq!(vsock("vsock::1"), None, "the CID is mandatory");
        assert_eq!(vsock("vsock:2"), None);
        assert_eq!(vsock("vsock:2:x"), None);
        assert_eq!(vsock("vsock-raw:2:1"), None);
    }

    #[test]
    fn paths_must_be_absolute_or_abstract() {
        assert!(matches!(
            parse(b"/run/systemd/notify"),
            Ok(Notifier::Unix { .. })
        ));
        assert!(matches!(
            parse(b"@gatehouse/notify"),
            Ok(Notifier::Unix { .. })
        ));
        for relative in ["notify.sock", "run/notify", "./notify", ""] {
            let err = parse(relative.as_bytes()).expect_err(relative);
            assert!(err.contains("not an absolute path"), "{relative}: {err}");
        }
    }
}
