//! The signals a systemd service handles: SIGHUP (reload, `ExecReload=kill -HUP $MAINPID`
//! or `Type=notify-reload`), SIGTERM (stop: drain, then exit) and SIGINT (the same, from a
//! terminal). A second SIGTERM/SIGINT during a drain means "exit now".
//!
//! SIGHUP's default action kills the process. A reload requested while the service is
//! still starting (before the handlers below exist) must not do that, so
//! [`crate::Environment::take`] installs a first handler at once that only records the
//! signal; [`Signals::install`] then reports it as a pending reload.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::signal::unix::{signal, SignalKind};

/// A signal the service acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGHUP: reload.
    Hangup,
    /// SIGTERM: stop (systemctl stop, restart, shutdown).
    Terminate,
    /// SIGINT: stop (Ctrl-C when run by hand).
    Interrupt,
}

impl Signal {
    /// `SIGHUP`, `SIGTERM` or `SIGINT`.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Hangup => "SIGHUP",
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        }
    }
}

impl std::fmt::Display for Signal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

static EARLY_HUP: AtomicBool = AtomicBool::new(false);
static EARLY_GUARD: AtomicBool = AtomicBool::new(false);

extern "C" fn record_early_hup(_: libc::c_int) {
    EARLY_HUP.store(true, Ordering::Relaxed);
}

/// Makes a SIGHUP that arrives before [`Signals::install`] a pending reload instead of
/// death. Leaves a SIGHUP that a parent set to ignored (nohup) alone. Idempotent.
pub fn guard_early_hangup() {
    if EARLY_GUARD.swap(true, Ordering::AcqRel) {
        return;
    }
    // SAFETY: a zeroed sigaction is valid; the handler only stores to an atomic, which is
    // async-signal-safe.
    unsafe {
        let mut old: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGHUP, std::ptr::null(), &mut old) != 0
            || old.sa_sigaction != libc::SIG_DFL
        {
            return;
        }
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = record_early_hup as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGHUP, &action, std::ptr::null_mut());
    }
}

/// The service's signal streams. Must be created inside the tokio runtime.
pub struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    pending_reload: bool,
}

impl Signals {
    /// Installs the handlers; a SIGHUP recorded by [`guard_early_hangup`] becomes the first
    /// [`Signal::Hangup`] that [`recv`](Self::recv) returns.
    pub fn install() -> io::Result<Signals> {
        let signals = Signals {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            pending_reload: false,
        };
        Ok(Signals {
            pending_reload: EARLY_HUP.swap(false, Ordering::AcqRel),
            ..signals
        })
    }

    /// The next signal.
    pub async fn recv(&mut self) -> Signal {
        if std::mem::take(&mut self.pending_reload) {
            return Signal::Hangup;
        }
        tokio::select! {
            _ = self.hup.recv() => Signal::Hangup,
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
        }
    }

    /// The next SIGTERM or SIGINT (a SIGHUP during a stop is ignored).
    pub async fn recv_stop(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Terminate,
            _ = self.int.recv() => Signal::Interrupt,
        }
    }
}
