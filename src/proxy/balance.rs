//! The upstreams of one proxy route, their health state, and how a request picks one.

use super::connector::Connector;
use super::pool::ConnPool;
use crate::config::proxy::{Balance, ProxyConfig};
use crate::config::Upstream;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// One upstream address with its own connection pool and health.
pub(crate) struct UpstreamState {
    /// "unix:/run/app.sock" or "http://127.0.0.1:8001": the UPSTREAM journal field.
    /// Shared: every proxied response carries it to the access log.
    pub(crate) label: Arc<str>,
    /// The upstream's authority: the Host of requests that have none, and HTTP/2's
    /// :authority. "localhost" for unix sockets.
    pub(crate) authority: http::uri::Authority,
    /// Its keep-alive connections.
    pub(crate) conns: Arc<ConnPool>,
    pub(crate) in_flight: AtomicUsize,
    /// Passive health: milliseconds (see `now_ms`) until which this upstream is ejected.
    ejected_until: AtomicU64,
    /// Active health: false after a failed check, true after a passing one.
    active_up: AtomicBool,
    pub(crate) counters: crate::metrics::UpstreamCounters,
}

impl UpstreamState {
    fn new(upstream: &Upstream, cfg: &ProxyConfig) -> UpstreamState {
        let label: Arc<str> = match upstream {
            Upstream::Http { authority } => format!("http://{authority}"),
            Upstream::Unix(p) => format!("unix:{}", p.display()),
        }
        .into();
        let authority = match upstream {
            Upstream::Http { authority } => authority.parse().ok(),
            Upstream::Unix(_) => None,
        }
        .unwrap_or_else(|| http::uri::Authority::from_static("localhost"));
        UpstreamState {
            authority,
            conns: ConnPool::new(
                Connector::new(upstream, cfg.connect_timeout),
                cfg.http2,
                cfg.keepalive_timeout,
            ),
            in_flight: AtomicUsize::new(0),
            ejected_until: AtomicU64::new(0),
            active_up: AtomicBool::new(true),
            counters: crate::metrics::upstream_counters(&label),
            label,
        }
    }

    pub(crate) fn is_up(&self) -> bool {
        // 0: never ejected, or back in since (no clock read for the usual case).
        let until = self.ejected_until.load(Ordering::Relaxed);
        self.active_up.load(Ordering::Relaxed) && (until == 0 || until <= now_ms())
    }

    /// Passive health: a failed connect or a timeout keeps this upstream out of rotation for
    /// `for_`, unless every upstream is out.
    pub(crate) fn eject(&self, for_: Duration, why: &str) {
        let until = now_ms() + u64::try_from(for_.as_millis()).unwrap_or(u64::MAX / 2);
        let before = self.ejected_until.swap(until, Ordering::Relaxed);
        if before <= now_ms() && !for_.is_zero() {
            tracing::warn!(upstream = %self.label, "upstream ejected for {}: {why}", humantime::format_duration(for_));
        }
    }

    /// A request got a response: whatever passive state said, it works now.
    pub(crate) fn mark_ok(&self) {
        if self.ejected_until.load(Ordering::Relaxed) != 0 {
            self.ejected_until.store(0, Ordering::Relaxed);
        }
    }

    pub(crate) fn set_active(&self, up: bool) {
        let before = self.active_up.swap(up, Ordering::Relaxed);
        if before != up {
            if up {
                tracing::info!(upstream = %self.label, "upstream passed its health check: up");
            } else {
                tracing::warn!(upstream = %self.label, "upstream failed its health check: down");
            }
        }
    }
}

/// Milliseconds since the first call: a cheap monotonic clock for atomics.
pub(crate) fn now_ms() -> u64 {
    ms_of(Instant::now())
}

/// `now_ms()` for an `Instant` already read.
pub(super) fn ms_of(at: Instant) -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    let since = at.saturating_duration_since(*EPOCH.get_or_init(Instant::now));
    // Start at 1 so 0 can mean "never ejected".
    since.as_secs() * 1000 + u64::from(since.subsec_millis()) + 1
}

pub(crate) struct Pool {
    pub(crate) upstreams: Vec<Arc<UpstreamState>>,
    balance: Balance,
    next: AtomicUsize,
}

impl Pool {
    pub(crate) fn new(cfg: &ProxyConfig) -> Pool {
        Pool {
            upstreams: cfg
                .upstreams
                .iter()
                .map(|u| Arc::new(UpstreamState::new(u, cfg)))
                .collect(),
            balance: cfg.balance,
            next: AtomicUsize::new(0),
        }
    }

    pub(crate) fn up_count(&self) -> usize {
        self.upstreams.iter().filter(|u| u.is_up()).count()
    }

    /// Picks an upstream not in `tried`: a healthy one by the balance policy, else (every
    /// untried one is down) any untried one, as nginx does, since "down" may be stale.
    pub(crate) fn pick(&self, tried: &[usize]) -> Option<usize> {
        if self.upstreams.len() == 1 {
            // The usual route: one app server. Down or not, it is the one to try.
            return tried.is_empty().then_some(0);
        }
        let untried: Vec<usize> = (0..self.upstreams.len())
            .filter(|i| !tried.contains(i))
            .collect();
        if untried.is_empty() {
            return None;
        }
        let healthy: Vec<usize> = untried
            .iter()
            .copied()
            .filter(|&i| self.upstreams[i].is_up())
            .collect();
        let candidates = if healthy.is_empty() {
            &untried
        } else {
            &healthy
        };
        if candidates.len() == 1 {
            return Some(candidates[0]);
        }
        let load = |i: usize| self.upstreams[i].in_flight.load(Ordering::Relaxed);
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        Some(match self.balance {
            Balance::RoundRobin => candidates[turn % candidates.len()],
            Balance::LeastConn => {
                // Start the scan at a rotating offset so ties are spread, not all on the first.
                let n = candidates.len();
                (0..n)
                    .map(|k| candidates[(turn + k) % n])
                    .min_by_key(|&i| load(i))
                    .unwrap_or(candidates[0])
            }
            Balance::RandomTwo => {
                let n = candidates.len() as u64;
                let r = random();
                let a = (r % n) as usize;
                let mut b = ((r >> 32) % (n - 1)) as usize;
                if b >= a {
                    b += 1;
                }
                let (a, b) = (candidates[a], candidates[b]);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
        })
    }
}

/// A fast per-thread xorshift: balancing needs spread, not cryptographic randomness.
fn random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new({
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9E37_79B9_7F4A_7C15);
            (t ^ (&t as *const u64 as u64)) | 1
        });
    }
    STATE.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    })
}

/// Counts a request against its upstream for least_conn until dropped (with the response
/// body, so a long download counts as load). For an app route it also holds the request's
/// lease on the app instance, which a deploy waits for.
pub(crate) struct InFlight(Arc<UpstreamState>, Option<crate::apps::Lease>);

impl InFlight {
    pub(crate) fn new(u: &Arc<UpstreamState>) -> InFlight {
        u.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(u.clone(), None)
    }

    pub(crate) fn with_lease(mut self, lease: Option<crate::apps::Lease>) -> InFlight {
        self.1 = lease;
        self
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}
