//! Everything that speaks systemd's protocols, and nothing else does.
//!
//! * `activation`: sockets passed with LISTEN_FDS / LISTEN_FDNAMES (sd_listen_fds(3)).
//! * `notify`: READY / STATUS / RELOADING / STOPPING / WATCHDOG datagrams (sd_notify(3)).
//! * `watchdog`: the WATCHDOG_USEC contract, pinging only while the server is alive.
//! * `journal`: JOURNAL_STREAM detection and the native journal protocol for logs.
//!
//! The environment variables are read and removed by [`take_environment`], which must run
//! before any thread exists (mutating the environment is unsound once threads run).

pub(crate) mod activation;
pub(crate) mod journal;
pub(crate) mod notify;
pub(crate) mod watchdog;

pub(crate) use activation::{ActivationError, PassedListener, PassedSocket};

use std::time::Duration;

/// What systemd handed this process at start.
#[derive(Debug)]
pub(crate) struct Environment {
    pub(crate) sockets: Result<Vec<PassedSocket>, ActivationError>,
    pub(crate) watchdog: Option<Duration>,
    /// Why NOTIFY_SOCKET cannot be used, to be logged once logging is up.
    pub(crate) notify_problem: Option<String>,
}

/// Reads LISTEN_*, NOTIFY_SOCKET and WATCHDOG_* and removes them from the environment so
/// that no child process can mistake them for its own.
///
/// # Safety
/// Must be called while the process has a single thread (before the tokio runtime starts).
pub(crate) unsafe fn take_environment() -> Environment {
    // SAFETY: single-threaded, as this function's contract requires.
    let sockets = unsafe { activation::take_passed_sockets() };
    // SAFETY: as above.
    let notify_problem = unsafe { notify::init_from_env() };
    // SAFETY: as above.
    let watchdog = unsafe { watchdog::take_interval() };
    Environment {
        sockets,
        watchdog,
        notify_problem,
    }
}
