//! Open-connection accounting: the `max_connections` limit, the count that STATUS, idle exit
//! and drain read, and the signal that asks every connection to finish.
//!
//! An accept loop [`reserve`](Connections::reserve)s a permit before it accepts, so at the
//! limit clients wait in the kernel backlog (systemd's, for a passed socket) instead of
//! being refused; each connection task holds a [`ConnGuard`] for as long as it is open and
//! races its work against [`drain_wait`](Connections::drain_wait).
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use gatehouse_kit::connections::Connections;
//! use std::sync::Arc;
//! let conns = Arc::new(Connections::new(10_000));
//! let guard = conns.opened(conns.reserve(false).await);
//! assert_eq!(conns.open(), 1);
//! drop(guard); // the connection closed
//! assert!(conns.idle_for().is_some());
//! conns.all_closed().await;
//! # }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::futures::Notified;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

/// The open connections of a service and its limits.
pub struct Connections {
    open: AtomicUsize,
    accepted: AtomicU64,
    /// Milliseconds since `epoch` of the last open or close.
    last_change_ms: AtomicU64,
    epoch: Instant,
    all_closed: Notify,
    /// `max_connections`: public connections (and whatever else a service counts against
    /// it, such as HTTP/2 streams beyond a connection's first).
    limit: Budget,
    /// Admin listeners have their own, so that clients of the public listeners cannot leave
    /// monitoring without an answer.
    admin_limit: Budget,
    draining: AtomicBool,
    drain_started: Notify,
}

/// A limit that a reload may change.
struct Budget {
    permits: Arc<Semaphore>,
    value: Mutex<usize>,
}

impl Budget {
    fn new(max: usize) -> Budget {
        Budget {
            permits: Arc::new(Semaphore::new(max)),
            value: Mutex::new(max),
        }
    }

    async fn reserve(&self) -> OwnedSemaphorePermit {
        match self.permits.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => std::future::pending().await,
        }
    }

    /// Lowering the limit closes nothing: permits held by open connections are retired as
    /// those close.
    fn set(&self, new: usize) {
        let mut current = self.value.lock().unwrap_or_else(|e| e.into_inner());
        if new > *current {
            self.permits.add_permits(new - *current);
        } else if new < *current {
            // Permits held by open connections cannot be revoked; take them as they return.
            let shrink = u32::try_from(*current - new).unwrap_or(u32::MAX);
            let sem = self.permits.clone();
            tokio::spawn(async move {
                if let Ok(p) = sem.acquire_many_owned(shrink).await {
                    p.forget();
                }
            });
        }
        *current = new;
    }
}

impl Connections {
    /// At most `max` connections open at once (and, apart, `max` on admin listeners).
    pub fn new(max: usize) -> Connections {
        Connections::with_admin_limit(max, max)
    }

    /// At most `max` public connections and `admin_max` admin ones open at once.
    pub fn with_admin_limit(max: usize, admin_max: usize) -> Connections {
        Connections {
            open: AtomicUsize::new(0),
            accepted: AtomicU64::new(0),
            last_change_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            all_closed: Notify::new(),
            limit: Budget::new(max),
            admin_limit: Budget::new(admin_max),
            draining: AtomicBool::new(false),
            drain_started: Notify::new(),
        }
    }

    fn budget(&self, admin: bool) -> &Budget {
        match admin {
            false => &self.limit,
            true => &self.admin_limit,
        }
    }

    /// Waits for room under the limit (the admin one if `admin`). Until then the accept
    /// loop does not call accept(), so extra clients wait in the kernel backlog rather than
    /// being refused.
    pub async fn reserve(&self, admin: bool) -> OwnedSemaphorePermit {
        self.budget(admin).reserve().await
    }

    /// Room for one more unit of work on a connection that is open already (an HTTP/2
    /// stream beyond its first, which can hold a file or an upstream connection as a
    /// connection does), if there is any.
    pub fn try_reserve_stream(&self, admin: bool) -> Option<OwnedSemaphorePermit> {
        self.budget(admin).permits.clone().try_acquire_owned().ok()
    }

    /// Applies new limits (after a reload). Lowering one closes nothing: permits held by
    /// open connections are retired as those close.
    pub fn set_limit(&self, max: usize, admin_max: usize) {
        self.limit.set(max);
        self.admin_limit.set(admin_max);
    }

    /// Counts a connection accepted with `permit` as open until the guard is dropped.
    pub fn opened(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> ConnGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        self.accepted.fetch_add(1, Ordering::Relaxed);
        self.touch();
        ConnGuard {
            conns: self.clone(),
            counted: true,
            _permit: permit,
        }
    }

    /// An admin connection: limited like any other, but invisible to the open count, idle
    /// exit and drain, so a metrics scraper neither keeps the server up nor holds a stop.
    pub fn opened_admin(self: &Arc<Self>, permit: OwnedSemaphorePermit) -> ConnGuard {
        ConnGuard {
            conns: self.clone(),
            counted: false,
            _permit: permit,
        }
    }

    /// Whether [`start_drain`](Self::start_drain) was called.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Connections open now (admin connections excluded).
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// Connections accepted since start (admin connections excluded).
    pub fn accepted(&self) -> u64 {
        self.accepted.load(Ordering::Relaxed)
    }

    /// How long there has been no open connection; `None` while one is open.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.open() > 0 {
            return None;
        }
        let last = Duration::from_millis(self.last_change_ms.load(Ordering::Acquire));
        Some(self.epoch.elapsed().saturating_sub(last))
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_change_ms.store(ms, Ordering::Release);
    }

    /// Asks every connection to finish its current request and close: resolves every
    /// [`drain_wait`](Self::drain_wait).
    pub fn start_drain(&self) {
        self.draining.store(true, Ordering::Release);
        self.drain_started.notify_waiters();
    }

    /// Resolves once a drain has started (at once if one has).
    pub fn drain_wait(&self) -> DrainWait<'_> {
        DrainWait {
            // Created before the flag is read: a drain that starts in between still wakes it.
            notified: self.drain_started.notified(),
            draining: &self.draining,
            registered: false,
        }
    }

    /// Resolves once no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

pin_project_lite::pin_project! {
    /// A connection's wait for the drain. It is polled each time its connection's task is,
    /// so after its first poll has left the task's waker with the `Notify`, a poll reads one
    /// flag instead of taking the `Notify`'s lock (a watch channel's `changed()` did that).
    pub struct DrainWait<'a> {
        // Pinned in place with the connection's future: no allocation per connection.
        #[pin]
        notified: Notified<'a>,
        draining: &'a AtomicBool,
        registered: bool,
    }
}

impl Future for DrainWait<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.draining.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if *this.registered {
            // A connection task's waker stays the same for its life: the one left at
            // registration is still the one to wake.
            return Poll::Pending;
        }
        *this.registered = true;
        this.notified.poll(cx)
    }
}

/// A connection's place in the open count and under the limit, kept where a request
/// handler can reach it so that an upgraded connection can take it over: a WebSocket
/// tunnel outlives the HTTP connection, and must count for idle exit, drain, the limit and
/// STATUS alike.
pub struct ConnSlot(Mutex<Option<ConnGuard>>);

impl ConnSlot {
    /// A slot holding `guard`.
    pub fn new(guard: ConnGuard) -> ConnSlot {
        ConnSlot(Mutex::new(Some(guard)))
    }

    /// Hands the place over (to a tunnel); the connection then holds none.
    pub fn take(&self) -> Option<ConnGuard> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).take()
    }
}

/// Held by a connection task for as long as the connection is open; moved into whatever
/// outlives the connection's HTTP exchange (an upgraded tunnel, see [`ConnSlot`]), so that
/// still counts.
pub struct ConnGuard {
    conns: Arc<Connections>,
    counted: bool,
    _permit: OwnedSemaphorePermit,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        self.conns.touch();
        if self.conns.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.conns.all_closed.notify_waiters();
        }
    }
}
