//! TLS for clients: certificates from files or systemd credentials, SNI, ALPN (h2 and
//! http/1.1), reload, expiry warnings, HTTPS redirects and HSTS.
//!
//! Certificates are loaded while the configuration is validated, so `gatehouse check`,
//! startup and reload refuse a broken or mismatched pair the same way; a `Snapshot` carries
//! the built acceptors, so a reload swaps certificates for new connections only.

pub(crate) mod acceptor;
pub(crate) mod redirect;

pub(crate) use acceptor::{handshake, handshake_tcp, ListenerTls};
pub(crate) use redirect::SitePolicy;

use std::time::SystemTime;

pub(crate) use crate::certs::provider;

/// Logs [`warnings`] to the journal; called whenever a configuration is put to use.
pub(crate) fn log_warnings(config: &crate::config::Config) {
    for w in warnings(config, SystemTime::now()) {
        tracing::warn!("{w}");
    }
}

/// Calls `log_warnings_now` (which runs [`log_warnings`] on the configuration being served)
/// daily, so a server that runs for weeks still warns in the journal once a certificate
/// enters the 14-day window (STATUS= recomputes on every refresh anyway).
pub(crate) async fn watch_warnings(log_warnings_now: impl Fn()) {
    let mut daily = tokio::time::interval(std::time::Duration::from_secs(24 * 3600));
    // The first tick is immediate; startup already warned.
    daily.tick().await;
    loop {
        daily.tick().await;
        log_warnings_now();
    }
}

/// One line per problem with a certificate in use: it expires within 14 days (or has
/// expired), or its key file is world-readable.
pub(crate) fn warnings(config: &crate::config::Config, now: SystemTime) -> Vec<String> {
    let mut seen: Vec<std::path::PathBuf> = Vec::new();
    let mut out = Vec::new();
    for listener in config.listeners.iter().filter(|l| l.tls.is_some()) {
        for cert in &config.listener_certs(&listener.name) {
            if seen.contains(&cert.cert_path) {
                continue;
            }
            seen.push(cert.cert_path.clone());
            out.extend(cert.expiry_warning(now));
            out.extend(cert.key_warning());
        }
    }
    out
}
