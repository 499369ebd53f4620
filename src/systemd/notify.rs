//! sd_notify(3): state datagrams to the socket named by NOTIFY_SOCKET.
//!
//! sd-notify's `NotifyState` formats the messages; the socket is ours because sd-notify treats
//! an abstract NOTIFY_SOCKET ("@name") as a file path and reconnects for every message.

use sd_notify::NotifyState;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::OnceLock;
use std::time::Duration;

struct Notifier {
    socket: UnixDatagram,
    addr: SocketAddr,
}

static NOTIFIER: OnceLock<Option<Notifier>> = OnceLock::new();

/// Reads NOTIFY_SOCKET and removes it from the environment.
///
/// # Safety
/// Mutates the environment: the process must still be single-threaded.
pub unsafe fn init_from_env() {
    let path = std::env::var_os("NOTIFY_SOCKET");
    unsafe { std::env::remove_var("NOTIFY_SOCKET") };
    let notifier = path.and_then(|path| {
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name),
            None => SocketAddr::from_pathname(&path),
        };
        let socket = UnixDatagram::unbound();
        match (addr, socket) {
            (Ok(addr), Ok(socket)) => Some(Notifier { socket, addr }),
            (Err(e), _) | (_, Err(e)) => {
                eprintln!("gatehouse: NOTIFY_SOCKET {path:?} unusable: {e}");
                None
            }
        }
    });
    let _ = NOTIFIER.set(notifier);
}

/// Sends all `states` in one datagram; a no-op without NOTIFY_SOCKET.
pub fn send(states: &[NotifyState<'_>]) {
    let Some(Some(n)) = NOTIFIER.get() else {
        return;
    };
    let mut msg = String::with_capacity(64);
    for s in states {
        use std::fmt::Write;
        let _ = writeln!(msg, "{s}");
    }
    if let Err(e) = n.socket.send_to_addr(msg.as_bytes(), &n.addr) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

pub fn status(status: &str) {
    send(&[NotifyState::Status(status)]);
}

/// RELOADING=1 together with MONOTONIC_USEC, as Type=notify-reload requires.
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

pub fn stopping(status: &str) {
    send(&[NotifyState::Stopping, NotifyState::Status(status)]);
}

pub fn watchdog() {
    send(&[NotifyState::Watchdog]);
}

/// Asks for `extra` more time to finish the current operation (start, reload or stop).
pub fn extend_timeout(extra: Duration) {
    let usec = u32::try_from(extra.as_micros()).unwrap_or(u32::MAX);
    send(&[NotifyState::ExtendTimeoutUsec(usec)]);
}
