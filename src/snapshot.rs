//! One configuration generation, built: what the server runs on between two reloads.
//!
//! `config` validates into plain values; [`Snapshot::build`] is the one place that turns
//! them into runtime objects (routers with their upstream pools and static-file caches, TLS
//! acceptors, ACME certificate managers, hyper's connection builders). Startup builds the
//! first snapshot, a reload builds the next and swaps it in; requests in flight keep the
//! generation they started with. `gatehouse check` never builds one: it reads the
//! configuration and the certificate files it names, not the ACME state or any socket.

use crate::acme::ManagedCert;
use crate::config::tls::SiteCert;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::proxy::ProxyRoute;
use crate::router::{Handler, Router, SiteParts};
use crate::tls::ListenerTls;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use std::sync::Arc;

/// Why a validated configuration could not be built; the file itself was fine (validation
/// reports every mistake in it), so these are failures of the machine or a library.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BuildError {
    /// The placeholder certificate of an ACME site could not be made.
    #[error("{0}")]
    Acme(String),
    /// A TLS listener's rustls configuration could not be set up.
    #[error("{0}")]
    Tls(String),
}

/// Everything one configuration generation needs to serve requests. Swapped atomically on
/// reload; requests in flight keep the generation they started with.
pub(crate) struct Snapshot {
    pub(crate) config: Config,
    /// By listener name. A handful at most: a scan is cheaper than hashing the name.
    routers: Vec<(String, Router)>,
    /// TLS listeners' acceptors, by listener name.
    acceptors: Vec<(String, ListenerTls)>,
    /// The ACME certificates this generation serves, each once.
    pub(crate) managed_certs: Vec<Arc<ManagedCert>>,
    /// Every proxy route, each once (a site on several listeners shares its pool).
    pub(crate) proxy_routes: Vec<Arc<ProxyRoute>>,
    /// hyper's connection builders, carrying this generation's limits and timeouts.
    pub(crate) http: HttpBuilders,
    /// This generation's proxy health checks; dropping the snapshot stops them.
    _proxy_tasks: crate::proxy::Background,
}

impl Snapshot {
    /// Builds the runtime objects of a validated configuration. Fails only where building
    /// can (an ACME placeholder certificate, rustls setup); every mistake in the file was
    /// reported by validation already.
    pub(crate) fn build(config: Config, metrics: &Metrics) -> Result<Snapshot, BuildError> {
        let mut managed_certs: Vec<Arc<ManagedCert>> = Vec::new();
        let mut parts = Vec::with_capacity(config.sites.len());
        for site in &config.sites {
            let acme = match (&site.tls, &config.acme) {
                (Some(SiteCert::Acme(names)), Some(settings)) => {
                    let m = crate::acme::managed(settings, names).map_err(BuildError::Acme)?;
                    if !managed_certs.iter().any(|have| Arc::ptr_eq(have, &m)) {
                        managed_certs.push(m.clone());
                    }
                    Some(m)
                }
                _ => None,
            };
            parts.push(SiteParts::new(site, acme));
        }
        let acceptors = acceptors(&config, &parts)?;
        let routers = config
            .listeners
            .iter()
            .filter(|l| !config.is_admin_listener(&l.name))
            .map(|l| {
                let router = Router::for_listener(&config, &parts, &l.name, metrics);
                (l.name.clone(), router)
            })
            .collect();
        let proxy_routes: Vec<Arc<ProxyRoute>> = parts
            .iter()
            .flat_map(|p| &p.handlers)
            .filter_map(|h| match h {
                Handler::Proxy(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let http = http_builders(&config);
        let _proxy_tasks = crate::proxy::start(&proxy_routes);
        Ok(Snapshot {
            _proxy_tasks,
            config,
            routers,
            acceptors,
            managed_certs,
            proxy_routes,
            http,
        })
    }

    /// The router for a listener; in quick mode every passed socket uses the one listener.
    pub(crate) fn router(&self, listener: &str) -> Option<&Router> {
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

    /// The acceptor of a TLS listener.
    pub(crate) fn acceptor(&self, listener: &str) -> Option<&ListenerTls> {
        self.acceptors
            .iter()
            .find(|(name, _)| name == listener)
            .map(|(_, tls)| tls)
    }
}

/// One acceptor per TLS listener. SNI needs every site's certificate, so they come after
/// the sites' ACME certificates.
fn acceptors(
    config: &Config,
    parts: &[SiteParts],
) -> Result<Vec<(String, ListenerTls)>, BuildError> {
    let acme_alpn = config
        .acme
        .as_ref()
        .is_some_and(|a| a.challenge == crate::acme::Challenge::TlsAlpn01);
    let managed: Vec<Option<Arc<ManagedCert>>> = parts.iter().map(|p| p.acme.clone()).collect();
    let mut out = Vec::new();
    for l in &config.listeners {
        if let Some(tls) = &l.tls {
            let built =
                crate::tls::acceptor::build(tls, &l.name, &config.sites, &managed, acme_alpn)
                    .map_err(BuildError::Tls)?;
            out.push((l.name.clone(), built));
        }
    }
    Ok(out)
}

/// Client connections read request bodies in pieces of up to this many bytes.
const READ_BUF_MAX: usize = 64 * 1024;

/// One builder per protocol; `conn` picks one per connection (ALPN, or the HTTP/2 preface).
pub(crate) struct HttpBuilders {
    pub(crate) h1: http1::Builder,
    pub(crate) h2: http2::Builder<TokioExecutor>,
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
        // Queue body bytes for writev, never copy them: a mapped file body must reach the
        // socket writer by address (see `crate::sendfile`). (pipeline_flush would copy.)
        .writev(true)
        .keep_alive(true);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(s.max_header_size).unwrap_or(u32::MAX))
        .max_concurrent_streams(s.http2_max_concurrent_streams)
        .keep_alive_interval(Some(s.header_read_timeout))
        .keep_alive_timeout(s.header_read_timeout);
    HttpBuilders { h1, h2 }
}
