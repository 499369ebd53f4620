//! State of the whole process, in one place.
//!
//! [`Shared`] is what every task of the server holds: the serving configuration generation
//! (swapped by reload), connection accounting, counters, liveness for the watchdog.
//!
//! A few things are process-wide statics instead, because they must outlive any one
//! generation or are reached from code that holds no `Shared`. Each stays next to the code
//! that owns it (moving it here would make this module import theirs) and is listed here,
//! with a pointer back, so none is a surprise:
//!
//! - `acme::REGISTRY`: the managed certificates by CA and names, so a reload that keeps a
//!   site keeps its certificate and renewal schedule.
//! - `acme::challenge::{HTTP01, TLS_ALPN01}`: answers to pending ACME validations; the
//!   order task writes them, the request path (port 80) and the TLS resolver read them.
//! - `acme::manager::WAKE`: wakes the certificate manager after a reload.
//! - `metrics::{UPSTREAMS, PROTOCOL_ERRORS, BUFFERS, ACME}`: metric families fed from deep
//!   in the proxy, logging and ACME code, which hold no `Metrics`; `Metrics::new` registers them.
//! - `log::SAMPLED`, `log::peer_noise::{HELD, LATEST}`: access-log sampling and the
//!   peer-noise summary.
//! - in gatehouse-kit: the `$NOTIFY_SOCKET` (`notify`) and the early-SIGHUP flag
//!   (`signals`), set once at start; the access log's batch and sink (`log`), chosen at
//!   start, and its file, swapped by each reload.

use crate::config::Config;
use crate::metrics::Metrics;
use crate::snapshot::Snapshot;
use arc_swap::ArcSwap;
use gatehouse_kit::connections::Connections;
use gatehouse_kit::liveness::Liveness;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// How the last reload ended; shown by STATUS= and /status.
#[derive(Debug, Clone)]
pub(crate) struct ReloadOutcome {
    pub(crate) at: SystemTime,
    pub(crate) error: Option<String>,
}

/// State shared by every task of the server.
pub(crate) struct Shared {
    pub(crate) snapshot: ArcSwap<Snapshot>,
    pub(crate) conns: Arc<Connections>,
    pub(crate) requests: AtomicU64,
    pub(crate) liveness: Liveness,
    pub(crate) metrics: Metrics,
    pub(crate) last_reload: Mutex<Option<ReloadOutcome>>,
}

impl Shared {
    /// The first generation is built here, with this server's registry; see
    /// [`Snapshot::build`] for how it can fail.
    pub(crate) fn new(
        config: Config,
        liveness: Liveness,
    ) -> Result<Arc<Shared>, crate::snapshot::BuildError> {
        let metrics = Metrics::new();
        let snapshot = Snapshot::build(config, &metrics)?;
        let server = &snapshot.config.server;
        let conns =
            Connections::with_admin_limit(server.max_connections, server.admin_max_connections);
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
    pub(crate) fn snapshot_for(
        &self,
        config: Config,
    ) -> Result<Snapshot, crate::snapshot::BuildError> {
        Snapshot::build(config, &self.metrics)
    }
}
