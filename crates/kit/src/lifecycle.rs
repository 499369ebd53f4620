//! The generic parts of a service's life under systemd: the runtime, idle exit, reload, and
//! the stop that drains open connections while telling systemd it needs more time.
//!
//! [`Server`](crate::server::Server) (feature `axum`) strings these together; a service with its own accept loops
//! uses them directly:
//!
//! ```no_run
//! # async fn serve(conns: std::sync::Arc<gatehouse_kit::connections::Connections>) -> std::io::Result<()> {
//! use gatehouse_kit::lifecycle::{self, StopReason};
//! use gatehouse_kit::signals::{Signal, Signals};
//! use std::time::Duration;
//! let mut signals = Signals::install()?;
//! // … start accept loops that count connections in `conns` …
//! gatehouse_kit::notify::ready("serving");
//! let reason = loop {
//!     tokio::select! {
//!         s = signals.recv() => match s {
//!             Signal::Hangup => { lifecycle::reload(async { Ok(()) }, |_| "serving".into()).await; }
//!             stop => break StopReason::Signal(stop),
//!         },
//!         idle = lifecycle::idle_elapsed(&conns, Some(Duration::from_secs(60))) => {
//!             break StopReason::Idle(idle);
//!         }
//!     }
//! };
//! lifecycle::begin_stop(&conns, &reason.to_string());
//! // … stop the accept loops …
//! lifecycle::wait_drained(&conns, &mut signals, Duration::from_secs(30), &reason.to_string()).await;
//! # Ok(()) }
//! ```

use crate::connections::Connections;
use crate::notify;
use crate::signals::{Signal, Signals};
use std::future::Future;
use std::time::{Duration, Instant};

/// `EX_CONFIG` from sysexits.h: the configuration (or the sockets systemd passed) is wrong.
/// A unit's `RestartPreventExitStatus=78` keeps systemd from restarting into the same error.
pub const EXIT_CONFIG: u8 = 78;

/// The tokio runtime for a service. One worker → a current-thread runtime: no
/// work-stealing machinery or cross-thread wake-ups, the cheapest way to use one CPU.
/// `0` → one worker per CPU. Buffered access-log entries go out whenever a thread runs out
/// of work (see [`crate::log`]).
pub fn build_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = match workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    builder
        .enable_all()
        .on_thread_park(crate::log::flush_access)
        .on_thread_stop(crate::log::flush_access)
        .build()
}

/// Why a service stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// SIGTERM or SIGINT.
    Signal(Signal),
    /// No connection was open for this long.
    Idle(Duration),
}

impl std::fmt::Display for StopReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StopReason::Signal(s) => f.write_str(s.name()),
            StopReason::Idle(d) => {
                write!(f, "no connection for {}", humantime::format_duration(*d))
            }
        }
    }
}

/// Resolves once no connection has been open for `idle_after` (never if `None`). An exit
/// on idleness loses nothing: systemd keeps the socket and starts the service again on the
/// next connection.
pub async fn idle_elapsed(conns: &Connections, idle_after: Option<Duration>) -> Duration {
    let Some(idle_after) = idle_after else {
        return std::future::pending().await;
    };
    let poll = (idle_after / 10).clamp(Duration::from_millis(10), Duration::from_millis(250));
    loop {
        tokio::time::sleep(poll).await;
        if conns.idle_for().is_some_and(|idle| idle >= idle_after) {
            return idle_after;
        }
    }
}

/// A reload: `RELOADING=1` with `MONOTONIC_USEC=`, then `work`, then `READY=1` with the
/// status `status_after` writes for the outcome. READY=1 ends the reload for systemd
/// either way; a failed one keeps the service running on its old state and says so in
/// the log and (by the caller's status line) in `systemctl status`.
pub async fn reload<Fut>(
    work: Fut,
    status_after: impl FnOnce(&Result<(), String>) -> String,
) -> Result<(), String>
where
    Fut: Future<Output = Result<(), String>>,
{
    notify::reloading();
    tracing::info!("reloading");
    let result = work.await;
    match &result {
        Ok(()) => tracing::info!("reloaded"),
        Err(e) => tracing::error!("reload refused, still running the previous state:\n{e}"),
    }
    notify::ready(&status_after(&result));
    result
}

/// The first step of a stop: every connection is asked to finish ([`Connections::start_drain`],
/// first, so health checks already answer "stopping" when systemd learns it), then
/// `STOPPING=1`. Next the caller stops accepting: closing our copies of systemd's sockets
/// leaves them listening in systemd, so clients that connect now wait in the backlog for
/// the next instance. Then [`wait_drained`].
pub fn begin_stop(conns: &Connections, reason: &str) {
    conns.start_drain();
    notify::stopping(&format!(
        "stopping ({reason}): draining {} connections",
        conns.open()
    ));
    tracing::info!(reason, open = conns.open(), "stopping");
}

/// How a drain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrainEnd {
    /// Every connection closed.
    AllClosed,
    /// The timeout passed with this many still open.
    TimedOut(usize),
    /// A second SIGTERM/SIGINT asked to exit at once.
    Interrupted(Signal),
}

/// Waits up to `timeout` for the open connections to close. Every second it sends
/// `EXTEND_TIMEOUT_USEC=` ("expect another message within this time"), so systemd waits
/// for a drain longer than the unit's `TimeoutStopSec=` instead of killing it, and a
/// `STATUS=` with the count left. A second SIGTERM or SIGINT ends the wait at once.
pub async fn wait_drained(
    conns: &Connections,
    signals: &mut Signals,
    timeout: Duration,
    reason: &str,
) -> DrainEnd {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            tracing::warn!(
                open = conns.open(),
                "shutdown_timeout reached; closing the remaining connections"
            );
            return DrainEnd::TimedOut(conns.open());
        }
        tokio::select! {
            _ = conns.all_closed() => return DrainEnd::AllClosed,
            _ = tick.tick() => {
                notify::extend_timeout(remaining.min(Duration::from_secs(3)) + Duration::from_secs(2));
                notify::status(&format!("stopping ({reason}): draining {} connections", conns.open()));
            }
            _ = tokio::time::sleep(remaining) => {}
            s = signals.recv_stop() => {
                tracing::warn!("second {s}: exiting now");
                return DrainEnd::Interrupted(s);
            }
        }
    }
}
