//! The serving side: listeners and their accept loops, one hyper connection per client, and
//! the per-request pipeline (host → route → handler → access log). Connection accounting is
//! `crate::connections`; the configuration generation it serves, `crate::snapshot`.
//!
//! A request's path: `listener::accept_loop` → `conn::serve` → `request::handle` →
//! `router::Router::route` → `handlers::dispatch` → `respond`, `static_files::serve` or
//! `proxy::handle`.

pub mod conn;
mod fin_merge;
pub mod listener;
mod read_ahead;
pub mod request;
mod watch;

use crate::config::Config;
use crate::connections::Connections;
use crate::lifecycle::liveness::Liveness;
use crate::lifecycle::status::ReloadOutcome;
use crate::metrics::Metrics;
pub use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};

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
    /// The first generation is built here, with this server's registry; see
    /// [`Snapshot::build`] for how it can fail.
    pub fn new(config: Config, liveness: Liveness) -> Result<Arc<Shared>, String> {
        let metrics = Metrics::new();
        let snapshot = Snapshot::build(config, &metrics)?;
        let server = &snapshot.config.server;
        let conns = Connections::new(server.max_connections, server.admin_max_connections);
        Ok(Arc::new(Shared {
            snapshot: ArcSwap::from_pointee(snapshot),
            conns: Arc::new(conns),
            requests: AtomicU64::new(0),
            liveness,
            metrics,
            last_reload: Mutex::new(None),
        }))
    }

    /// A new configuration generation, with counters from this server's registry.
    pub fn snapshot_for(&self, config: Config) -> Result<Snapshot, String> {
        Snapshot::build(config, &self.metrics)
    }
}
