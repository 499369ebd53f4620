//! The service watchdog (`WatchdogSec=`): `WATCHDOG=1` every half interval, only while the
//! service is alive.
//!
//! A timer thread that pings unconditionally would keep a wedged service "alive" forever.
//! The pings are sent from a task on the serving runtime, and only after a liveness probe
//! passes (see [`crate::liveness`]): a runtime that cannot run tasks, or a probe that
//! fails, stops the pings, and systemd kills and restarts the service.

use std::future::Future;
use std::time::Duration;

/// Reads `WATCHDOG_USEC` (honouring `WATCHDOG_PID`: a watchdog meant for another process is
/// not ours) and removes both from the environment. Usually called through
/// [`crate::Environment::take`].
///
/// # Safety
/// Mutates the environment: the process must still be single-threaded.
pub unsafe fn take_interval() -> Option<Duration> {
    let interval = read_interval();
    unsafe {
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
    }
    interval
}

/// [`take_interval`] without touching the environment.
pub fn read_interval() -> Option<Duration> {
    sd_notify::watchdog_enabled().filter(|d| !d.is_zero())
}

/// Runs on the serving runtime: every `interval / 2` asks `probe` whether the service is
/// alive and pings only if it is. A wedged runtime cannot run this task, so the pings stop
/// and systemd restarts the service; a failing probe stops them too. Logs once when the
/// probe starts failing and once when it recovers.
pub async fn run<F, Fut>(interval: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let mut tick = tokio::time::interval(interval / 2);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut healthy = true;
    loop {
        tick.tick().await;
        match probe().await {
            Ok(()) => {
                if !healthy {
                    tracing::info!("liveness restored; watchdog pings resumed");
                }
                healthy = true;
                crate::notify::watchdog();
            }
            Err(why) => {
                if healthy {
                    tracing::error!(reason = %why, "liveness probe failed; withholding watchdog pings");
                }
                healthy = false;
            }
        }
    }
}
