//! Liveness for the watchdog: the runtime must run a freshly spawned task promptly and every
//! accept loop must have ticked recently. Anything wedged stops the WATCHDOG=1 pings.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub(crate) struct Liveness {
    inner: Arc<Inner>,
}

struct Inner {
    epoch: Instant,
    period: Duration,
    next_id: AtomicU64,
    beats: Mutex<HashMap<u64, (String, Arc<AtomicU64>)>>,
}

impl Liveness {
    /// `period`: how often registered loops beat.
    pub(crate) fn new(period: Duration) -> Liveness {
        Liveness {
            inner: Arc::new(Inner {
                epoch: Instant::now(),
                period,
                next_id: AtomicU64::new(0),
                beats: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// The beat period that lets a watchdog of `interval` notice a stuck loop in time.
    pub(crate) fn period_for(watchdog: Option<Duration>) -> Duration {
        match watchdog {
            Some(w) => (w / 4).max(Duration::from_millis(10)),
            None => Duration::from_secs(3600),
        }
    }

    pub(crate) fn register(&self, what: String) -> Heartbeat {
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let last = Arc::new(AtomicU64::new(self.inner.now_ms()));
        self.inner.lock().insert(id, (what, last.clone()));
        Heartbeat {
            id,
            last,
            inner: self.inner.clone(),
        }
    }

    /// Ok when the runtime ran a probe task within `max_age` and every loop beat within it.
    pub(crate) async fn check(&self, max_age: Duration) -> Result<(), String> {
        let probe = tokio::spawn(async {});
        if tokio::time::timeout(max_age, probe).await.is_err() {
            return Err(format!(
                "runtime did not run a probe task within {max_age:?}"
            ));
        }
        let now = self.inner.now_ms();
        let max_ms = u64::try_from(max_age.as_millis()).unwrap_or(u64::MAX);
        for (what, last) in self.inner.lock().values() {
            let age = now.saturating_sub(last.load(Ordering::Acquire));
            if age > max_ms {
                return Err(format!("{what} has not run for {age} ms"));
            }
        }
        Ok(())
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (String, Arc<AtomicU64>)>> {
        self.beats.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Held by a loop that must keep running; unregisters itself when dropped.
pub(crate) struct Heartbeat {
    id: u64,
    last: Arc<AtomicU64>,
    inner: Arc<Inner>,
}

impl Heartbeat {
    pub(crate) fn beat(&self) {
        self.last.store(self.inner.now_ms(), Ordering::Release);
    }

    pub(crate) fn period(&self) -> Duration {
        self.inner.period
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.inner.lock().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_loop_fails_the_check_and_recovers_when_it_beats() {
        let l = Liveness::new(Duration::from_millis(10));
        let hb = l.register("loop".into());
        assert!(l.check(Duration::from_millis(200)).await.is_ok());
        tokio::time::sleep(Duration::from_millis(60)).await;
        let err = l.check(Duration::from_millis(50)).await.unwrap_err();
        assert!(err.contains("loop"), "{err}");
        hb.beat();
        assert!(l.check(Duration::from_millis(50)).await.is_ok());
        drop(hb);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(l.check(Duration::from_millis(50)).await.is_ok());
    }
}
