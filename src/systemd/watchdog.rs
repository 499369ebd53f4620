//! The service watchdog (WatchdogSec=): WATCHDOG=1 every half interval, only while alive.

use std::future::Future;
use std::time::Duration;

/// Reads WATCHDOG_USEC (honouring WATCHDOG_PID) and removes both from the environment.
///
/// # Safety
/// Mutates the environment: the process must still be single-threaded.
pub(crate) unsafe fn take_interval() -> Option<Duration> {
    let interval = sd_notify::watchdog_enabled().filter(|d| !d.is_zero());
    // SAFETY: single-threaded, as this function's contract requires.
    unsafe {
        std::env::remove_var("WATCHDOG_USEC");
        std::env::remove_var("WATCHDOG_PID");
    }
    interval
}

/// Runs on the serving runtime: every `interval / 2` asks `probe` whether the server is alive
/// and pings only if it is. A wedged runtime cannot run this task, so the pings stop and
/// systemd restarts the service; a failing probe stops them too.
pub(crate) async fn run<F, Fut>(interval: Duration, mut probe: F)
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
                super::notify::watchdog();
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
