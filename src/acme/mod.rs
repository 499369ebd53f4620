//! Automatic HTTPS: certificates for `tls = "acme"` sites, obtained from an ACME CA and
//! renewed by gatehouse itself.
//!
//! - `config`: the `[acme]` section.
//! - `ManagedCert` (here): one site's certificate as the TLS listeners see it. It starts as
//!   the stored certificate, or a self-signed placeholder until the first one is issued, and
//!   is swapped in place when a new one arrives: handshakes after the swap get it, open
//!   connections keep theirs.
//! - `challenge`: the HTTP-01 and TLS-ALPN-01 answers while an order is pending.
//! - `client`: one order with instant-acme (account, authorizations, CSR, download).
//! - `manager`: the background task that decides when to order, retries with backoff and
//!   persists what it gets (`store`).
//!
//! Managed certificates live in a process-wide registry keyed by CA and names, so a reload
//! that keeps a site keeps its certificate and its renewal schedule.

mod ari;
pub(crate) mod challenge;
mod client;
pub(crate) mod manager;
mod store;

pub(crate) use crate::config::acme::{AcmeSettings, Challenge};

use arc_swap::ArcSwap;
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The start and end of an issued certificate's validity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Validity {
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
}

impl Validity {
    /// Renew when two thirds of the lifetime have passed (Let's Encrypt's 90 days → 30 left).
    pub(crate) fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::ZERO);
        self.not_before + life * 2 / 3
    }
}

/// Where a managed certificate stands; shown by /status and STATUS=.
#[derive(Debug, Clone)]
pub(crate) struct CertState {
    /// `None` while the placeholder is served.
    pub(crate) issued: Option<Validity>,
    /// Failed attempts since the last success.
    pub(crate) failures: u32,
    pub(crate) last_error: Option<String>,
    pub(crate) next_attempt: SystemTime,
    /// When to ask the CA's renewal information (ARI) about the installed certificate.
    pub(crate) ari_check: SystemTime,
}

pub(crate) struct ManagedCert {
    /// Lower-case, sorted, no duplicates: the certificate's SANs.
    pub(crate) names: Vec<String>,
    /// Key and chain, one PEM file under the CA's state directory.
    path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    /// notAfter of the installed certificate in Unix seconds, 0 for the placeholder: read
    /// by the request path (redirects), so an atomic rather than the state lock.
    valid_until: AtomicU64,
    state: Mutex<CertState>,
}

impl std::fmt::Debug for ManagedCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagedCert")
            .field("names", &self.names)
            .field("issued", &self.is_issued())
            .finish()
    }
}

impl ManagedCert {
    /// What the TLS listeners present now.
    pub(crate) fn certified(&self) -> Arc<CertifiedKey> {
        self.current.load_full()
    }

    /// A certificate has been issued (the placeholder is gone): `redirect_https` may send
    /// clients to https. An expired one still counts: turning redirects off would quietly
    /// move a site to plain HTTP while renewals fail.
    pub(crate) fn is_issued(&self) -> bool {
        self.valid_until.load(Ordering::Acquire) != 0
    }

    pub(crate) fn state(&self) -> CertState {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn label(&self) -> String {
        match self.names.as_slice() {
            [one] => one.clone(),
            [first, rest @ ..] => format!("{first} (+{})", rest.len()),
            [] => "-".to_owned(),
        }
    }

    fn update<R>(&self, f: impl FnOnce(&mut CertState) -> R) -> R {
        f(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Installs a newly issued certificate: new handshakes present it from now on.
    fn install(&self, certified: Arc<CertifiedKey>, validity: Validity) {
        self.current.store(certified);
        self.valid_until
            .store(unix_secs(validity.not_after), Ordering::Release);
        self.update(|s| {
            s.issued = Some(validity);
            s.failures = 0;
            s.last_error = None;
            s.next_attempt = validity.renew_at();
            // A fresh certificate's window is months away; ask later.
            s.ari_check = SystemTime::now() + Duration::from_secs(6 * 3600);
        });
        crate::metrics::set_certificate_expiry(&self.label(), validity.not_after);
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

type RegistryKey = (PathBuf, Vec<String>);

/// Process-wide (see `crate::shared`): outlives configuration generations.
static REGISTRY: LazyLock<Mutex<HashMap<RegistryKey, Arc<ManagedCert>>>> =
    LazyLock::new(Default::default);

/// The managed certificate for `names` at this CA: the one already running, else the one
/// stored on disk, else a placeholder due for issuance now. Called while a configuration is
/// validated; reads the state directory, never writes it.
pub(crate) fn managed(
    settings: &AcmeSettings,
    names: &[String],
) -> Result<Arc<ManagedCert>, String> {
    let mut names: Vec<String> = names.iter().map(|n| n.to_ascii_lowercase()).collect();
    names.sort();
    names.dedup();
    let key = (settings.ca_dir.clone(), names.clone());
    let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = registry.get(&key) {
        return Ok(m.clone());
    }
    let path = store::cert_path(&settings.ca_dir, &names);
    let stored = manager::load_stored(&path, &names);
    let (certified, issued, last_error) = match stored {
        Ok(Some((certified, validity))) => (certified, Some(validity), None),
        // A damaged file is replaced by the next issuance; until then the placeholder.
        Ok(None) | Err(_) => {
            // A site whose hosts changed keeps presenting its previous certificate (valid
            // for the names it had) until the new one arrives, rather than the placeholder.
            let previous = registry
                .iter()
                .filter(|((dir, old), m)| {
                    *dir == settings.ca_dir
                        && m.is_issued()
                        && old.iter().any(|n| names.contains(n))
                })
                .map(|(_, m)| m.certified())
                .next();
            let certified = match previous {
                Some(c) => c,
                None => Arc::new(placeholder(&names)?),
            };
            (certified, None, stored.err())
        }
    };
    let managed = Arc::new(ManagedCert {
        names,
        path,
        current: ArcSwap::new(certified),
        valid_until: AtomicU64::new(issued.map_or(0, |v| unix_secs(v.not_after))),
        state: Mutex::new(CertState {
            issued,
            failures: 0,
            last_error,
            next_attempt: issued.map_or(SystemTime::now(), |v| v.renew_at()),
            ari_check: SystemTime::now(),
        }),
    });
    if let Some(v) = issued {
        crate::metrics::set_certificate_expiry(&managed.label(), v.not_after);
    }
    registry.insert(key, managed.clone());
    Ok(managed)
}

/// Served until the first certificate is issued: browsers warn, but TLS clients get a
/// handshake instead of a reset, and the plain listener answers the CA meanwhile.
fn placeholder(names: &[String]) -> Result<CertifiedKey, String> {
    let mut params = rcgen::CertificateParams::new(names.to_vec())
        .map_err(|e| format!("placeholder certificate for {names:?}: {e}"))?;
    params.distinguished_name.push(
        rcgen::DnType::CommonName,
        "gatehouse placeholder: ACME certificate pending",
    );
    challenge::self_signed(params)
}

/// Wakes the manager, e.g. after a reload added a site.
pub(crate) fn config_changed() {
    manager::WAKE.notify_one();
}
