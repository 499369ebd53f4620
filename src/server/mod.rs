//! The serving side: listeners and their accept loops, connection accounting, one hyper
//! connection per client, and the per-request pipeline (host → route → handler → access log).
//!
//! A request's path: `listener::accept_loop` → `conn::serve` → `request::handle` →
//! `router::Router::route` → `handlers::respond` (or a later route kind).

pub mod conn;
pub mod connections;
mod fin_merge;
pub mod listener;
mod read_ahead;
pub mod request;
mod watch;

use crate::config::Config;
use crate::lifecycle::liveness::Liveness;
use crate::lifecycle::status::ReloadOutcome;
use crate::metrics::Metrics;
use crate::router::Router;
use arc_swap::ArcSwap;
use connections::Connections;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Everything one configuration generation needs to serve requests. Swapped atomically on
/// reload; requests in flight keep the generation they started with.
pub struct Snapshot {
    pub config: Config,
    /// By listener name. A handful at most: a scan is cheaper than hashing the name.
    routers: Vec<(String, Router)>,
    /// hyper's connection builders, carrying this generation's limits and timeouts.
    pub http: HttpBuilders,
    pub loaded_at: SystemTime,
    /// This generation's proxy health checks; dropping the snapshot stops them.
    _proxy_tasks: crate::proxy::Background,
}

impl Snapshot {
    pub fn new(config: Config, metrics: &Metrics) -> Snapshot {
        let routers = config
            .listeners
            .iter()
            .filter(|l| !config.is_admin_listener(&l.name))
            .map(|l| {
                let router = Router::for_listener(&config, &l.name, metrics);
                (l.name.clone(), router)
            })
            .collect();
        let http = http_builders(&config);
        let _proxy_tasks = crate::proxy::start(&config);
        Snapshot {
            _proxy_tasks,
            config,
            routers,
            http,
            loaded_at: SystemTime::now(),
        }
    }

    /// The router for a listener; in quick mode every passed socket uses the one listener.
    pub fn router(&self, listener: &str) -> Option<&Router> {
        let named = self.routers.iter().find(|(name, _)| name == listener);
        named
            .or_else(|| {
                if self.config.claims_every_passed_socket() {
                    self.routers.first()
                } else {
                    None
                }
            })
            .map(|(_, router)| router)
    }
}

/// Client connections read request bodies in pieces of up to this many bytes.
const READ_BUF_MAX: usize = 64 * 1024;

/// One builder per protocol; `conn` picks one per connection (ALPN, or the HTTP/2 preface).
pub struct HttpBuilders {
    pub h1: http1::Builder,
    pub h2: http2::Builder<TokioExecutor>,
}

fn http_builders(config: &Config) -> HttpBuilders {
    let s = &config.server;
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        // Bounds the wait for a complete request head, including an idle keep-alive
        // connection's next request: the slowloris guard.
        .header_read_timeout(s.header_read_timeout)
        // hyper's one limit for the read buffer: the largest head it accepts (431 beyond)
        // and the largest body read. 16 KiB reads made a 64 KiB upload five recvfrom calls;
        // heads between max_header_size and this get their 431 in `request::handle`.
        .max_buf_size(s.max_header_size.max(READ_BUF_MAX))
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .keep_alive_interval(Some(s.header_read_timeout))
        .keep_alive_timeout(s.header_read_timeout);
    HttpBuilders { h1, h2 }
}

/// State shared by every task of the server.
pub struct Shared {
    pub snapshot: ArcSwap<Snapshot>,
    pub conns: Arc<Connections>,
    pub requests: AtomicU64,
    pub liveness: Liveness,
    pub metrics: Metrics,
    pub last_reload: Mutex<Option<ReloadOutcome>>,
}

impl Shared {
    pub fn new(config: Config, liveness: Liveness) -> Arc<Shared> {
        let metrics = Metrics::new();
        let snapshot = Snapshot::new(config, &metrics);
        let server = &snapshot.config.server;
        let conns = Connections::new(server.max_connections, server.admin_max_connections);
        Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            conns: Arc::new(conns),
            requests: AtomicU64::new(0),
            liveness,
            metrics,
            last_reload: Mutex::new(None),
        })
    }

    /// A new configuration generation, with counters from this server's registry.
    pub fn snapshot_for(&self, config: Config) -> Snapshot {
        Snapshot::new(config, &self.metrics)
    }
}
