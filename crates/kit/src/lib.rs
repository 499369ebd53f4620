//! # gatehouse-kit: the systemd contract for Rust services
//!
//! A service that systemd starts on its first connection (`app.socket`), supervises with a
//! watchdog, stops gracefully and whose logs are fields in the journal, with none of it
//! written by hand: the systemd code of gatehouse, the systemd-native front web server,
//! lifted into a library.
//!
//! With the `axum` feature, an axum `Router` is served the systemd way in a few lines:
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use gatehouse_kit::server::Server;
//! use std::time::Duration;
//!
//! fn main() -> std::process::ExitCode {
//!     let app = Router::new().route("/", get(|| async { "hello\n" }));
//!     Server::new("hello")
//!         .fallback_listen("127.0.0.1:3000") // run by hand: no socket from systemd
//!         .idle_exit_after(Duration::from_secs(60))
//!         .run(app)
//! }
//! ```
//!
//! That process takes the sockets systemd passed (or binds the fallback address), sends
//! `READY=1` once they accept, pings the watchdog while its runtime is alive, drains
//! open requests on SIGTERM (telling systemd it needs more time), exits when idle, raises
//! its open-file limit, and logs each request to the journal as `HTTP_METHOD`,
//! `HTTP_PATH`, `HTTP_STATUS`, … fields. See [`server::Server`].
//!
//! The parts are usable on their own, for a service that is not HTTP or has its own
//! accept loops:
//!
//! | module | what |
//! |---|---|
//! | [`activation`] | sockets passed by `LISTEN_FDS`: strict `LISTEN_PID`, names to roles, type checks |
//! | [`notify`] | `READY`, `STATUS`, `RELOADING`+`MONOTONIC_USEC`, `STOPPING`, `EXTEND_TIMEOUT_USEC`, `WATCHDOG`; path, abstract and vsock sockets |
//! | [`watchdog`], [`liveness`] | `WATCHDOG=1` only while the runtime and every registered loop are alive |
//! | [`signals`], [`lifecycle`] | SIGHUP reload, SIGTERM drain with `EXTEND_TIMEOUT_USEC`, second signal exits now, idle exit |
//! | [`connections`] | open-connection count, limit, drain signal |
//! | [`journal`], [`log`], [`access`] | journald's native protocol, the access log (journal, stderr or a file of its own) |
//! | [`rlimit`] | the soft `RLIMIT_NOFILE` raised to the hard limit |
#![deny(missing_docs)]

pub mod access;
pub mod activation;
pub mod connections;
pub mod journal;
pub mod lifecycle;
pub mod liveness;
pub mod log;
pub mod notify;
pub mod rlimit;
#[cfg(feature = "axum")]
pub mod server;
pub mod signals;
pub mod watchdog;

pub use activation::{ActivationError, PassedListener, PassedSocket};
pub use lifecycle::EXIT_CONFIG;

use std::time::Duration;

/// What systemd handed this process at start.
#[derive(Debug)]
pub struct Environment {
    /// The sockets passed with `LISTEN_FDS` (empty when run by hand), or why they are
    /// unusable (exit with [`EXIT_CONFIG`]).
    pub sockets: Result<Vec<PassedSocket>, ActivationError>,
    /// `WatchdogSec=` as passed in `WATCHDOG_USEC`, if it is for this process.
    pub watchdog: Option<Duration>,
    /// Problems to log once logging is set up (an unusable `NOTIFY_SOCKET`, variables left
    /// in the environment).
    pub warnings: Vec<String>,
}

impl Environment {
    /// Reads `LISTEN_*`, `NOTIFY_SOCKET` and `WATCHDOG_*`, sets up [`notify`], makes an
    /// early SIGHUP harmless (see [`signals`]) and removes the variables so that no child
    /// process mistakes them for its own.
    ///
    /// Call it first thing in `main`, before any thread exists (before a tokio runtime,
    /// so not under `#[tokio::main]`): changing the environment is unsound once other
    /// threads may read it, so with threads running the variables are left in place (and
    /// [`warnings`](Self::warnings) says so). Only the first call of a process finds the
    /// sockets.
    pub fn take() -> Environment {
        signals::guard_early_hangup();
        let mut warnings = Vec::new();
        let single = threads_in_process() == Some(1);
        let (sockets, notify_problem, watchdog) = if single {
            // SAFETY: this process has one thread, this one: nothing reads the environment
            // concurrently.
            unsafe {
                (
                    activation::take_passed_sockets(),
                    notify::init_from_env(),
                    watchdog::take_interval(),
                )
            }
        } else {
            warnings.push(
                "LISTEN_*, NOTIFY_SOCKET and WATCHDOG_* left in the environment (child processes inherit them): take the environment before starting threads"
                    .to_owned(),
            );
            (
                activation::read_passed_sockets(),
                notify::init(std::env::var_os("NOTIFY_SOCKET").as_deref()),
                watchdog::read_interval(),
            )
        };
        warnings.extend(notify_problem);
        Environment {
            sockets,
            watchdog,
            warnings,
        }
    }
}

/// The number of threads of this process (`Threads:` in /proc/self/status).
fn threads_in_process() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))?
        .trim()
        .parse()
        .ok()
}
