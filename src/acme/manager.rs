//! The background task that keeps every managed certificate valid: it orders a certificate
//! when none is stored, renews at two thirds of the lifetime, retries failures with jittered
//! exponential backoff, and persists what it gets before serving it.

use super::{ari, client, store, AcmeSettings, ManagedCert, Validity};
use instant_acme::Account;
use rustls::sign::CertifiedKey;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::Notify;

/// Signalled when the configuration changes, so a new site is ordered at once. Process-wide
/// (see `crate::shared`).
pub(super) static WAKE: LazyLock<Notify> = LazyLock::new(Notify::new);

/// One attempt (account, order, validation, download) may take this long.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);
/// Even with nothing due, look again this often (cheap; catches clock jumps).
const RECHECK: Duration = Duration::from_secs(3600);
/// Without a usable certificate the site is down: retry at least this often.
const BROKEN_RETRY_CAP: Duration = Duration::from_secs(3600);
const RETRY_CAP: Duration = Duration::from_secs(6 * 3600);
/// The first retry; doubling from 2 min keeps failed validations under Let's Encrypt's
/// limit of 5 per name and hour (attempts at 0, 2, 6, 14, 30, 62 … minutes).
const RETRY_BASE: Duration = Duration::from_secs(120);
/// After the CA says "rateLimited", wait at least this long.
const RATE_LIMITED_WAIT: Duration = Duration::from_secs(3600);

/// The stored certificate for `names`, if there is one that covers all of them.
pub(crate) fn load_stored(
    path: &Path,
    names: &[String],
) -> Result<Option<(Arc<CertifiedKey>, Validity)>, String> {
    let Some(pem) =
        store::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?
    else {
        return Ok(None);
    };
    let (certified, validity) = parse(&pem, path)?;
    let covered = leaf_names(&certified);
    if names.iter().all(|n| covered.contains(n)) {
        Ok(Some((Arc::new(certified), validity)))
    } else {
        // The site's names changed since: order anew.
        Ok(None)
    }
}

fn parse(pem: &[u8], origin: &Path) -> Result<(CertifiedKey, Validity), String> {
    let (certified, not_after) = crate::certs::from_pem(pem, origin)?;
    let not_before = certified
        .cert
        .first()
        .map_or(Ok(UNIX_EPOCH), |leaf| crate::certs::not_before(leaf))
        .map_err(|e| format!("{}: unreadable certificate: {e}", origin.display()))?;
    Ok((
        certified,
        Validity {
            not_before,
            not_after,
        },
    ))
}

fn leaf_names(certified: &CertifiedKey) -> Vec<String> {
    certified
        .cert
        .first()
        .and_then(|leaf| crate::certs::leaf_info(leaf).ok())
        .map(|(_, names)| names.iter().map(|n| n.to_ascii_lowercase()).collect())
        .unwrap_or_default()
}

/// Runs for the life of the server when any site has `tls = "acme"` (or may get one by a
/// reload: the loop is idle without managed certificates). `serving` returns the settings
/// and certificates of the configuration generation being served, each time it is asked.
pub(crate) async fn run(serving: impl Fn() -> (Option<AcmeSettings>, Vec<Arc<ManagedCert>>)) {
    // Accounts stay loaded between attempts: loading one asks the CA for its directory.
    let mut accounts: HashMap<PathBuf, Account> = HashMap::new();
    // CAs whose directory has no renewalInfo: not asked again by this process.
    let mut no_ari: HashSet<PathBuf> = HashSet::new();
    loop {
        let (settings, certs) = serving();
        let labels: Vec<String> = certs.iter().map(|c| c.label()).collect();
        crate::metrics::retain_certificates(&labels);
        let mut wake_at = SystemTime::now() + RECHECK;
        if let Some(settings) = settings {
            for cert in certs {
                let ari = !no_ari.contains(&settings.ca_dir);
                let s = cert.state();
                let ari_due = ari
                    && s.issued.is_some()
                    && s.failures == 0
                    && s.ari_check <= SystemTime::now();
                if ari_due && !check_ari(&settings, &mut accounts, &cert).await {
                    no_ari.insert(settings.ca_dir.clone());
                }
                if cert.state().next_attempt <= SystemTime::now() {
                    attempt(&settings, &mut accounts, &cert).await;
                }
                let s = cert.state();
                wake_at = wake_at.min(s.next_attempt);
                if s.issued.is_some() && !no_ari.contains(&settings.ca_dir) {
                    wake_at = wake_at.min(s.ari_check);
                }
            }
        }
        let wait = wake_at
            .duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO);
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = WAKE.notified() => {}
        }
    }
}

/// Asks the CA's renewal information about `cert` and moves its renewal earlier if the CA
/// suggests so. Returns false when the CA has no ARI at all.
async fn check_ari(
    settings: &AcmeSettings,
    accounts: &mut HashMap<PathBuf, Account>,
    cert: &ManagedCert,
) -> bool {
    let now = SystemTime::now();
    let later = |after: Duration| cert.update(|s| s.ari_check = now + after);
    let account = match accounts.get(&settings.ca_dir) {
        Some(a) => a.clone(),
        // Never registers an account just to ask: without one there is nothing stored.
        None => match client::stored_account(settings).await {
            Ok(Some(a)) => {
                accounts.insert(settings.ca_dir.clone(), a.clone());
                a
            }
            Ok(None) => {
                later(Duration::from_secs(6 * 3600));
                return true;
            }
            Err(e) => {
                tracing::debug!("ACME renewal information not checked: {e}");
                later(Duration::from_secs(3600));
                return true;
            }
        },
    };
    let label = cert.label();
    let answer = tokio::time::timeout(
        Duration::from_secs(30),
        ari::ask(&account, &cert.certified(), jitter()),
    )
    .await
    .unwrap_or_else(|_| Err("no answer within 30s".into()));
    match answer {
        Ok(ari::Answer::Window(at, recheck)) => {
            let moved = cert.update(|s| {
                s.ari_check = now + recheck;
                let earlier = at < s.next_attempt;
                if earlier {
                    s.next_attempt = at.max(now);
                }
                earlier
            });
            if moved {
                tracing::info!(
                    "the CA's renewal information moves the renewal of {label} to {}",
                    humantime::format_rfc3339_seconds(at.max(now))
                );
            }
            true
        }
        Ok(ari::Answer::Unsupported) => false,
        Err(e) => {
            tracing::debug!("ACME renewal information for {label}: {e}");
            later(Duration::from_secs(3600));
            true
        }
    }
}

async fn attempt(
    settings: &AcmeSettings,
    accounts: &mut HashMap<PathBuf, Account>,
    cert: &ManagedCert,
) {
    let label = cert.label();
    tracing::info!(names = ?cert.names, directory = %settings.directory, "requesting an ACME certificate for {label}");
    let result = tokio::time::timeout(ATTEMPT_TIMEOUT, issue(settings, accounts, cert))
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "no result from the CA within {}s",
                ATTEMPT_TIMEOUT.as_secs()
            ))
        });
    let now = SystemTime::now();
    match result {
        Ok((certified, validity)) => {
            cert.install(Arc::new(certified), validity);
            tracing::info!(
                "ACME certificate for {label} installed, valid until {}, renewal from {}",
                humantime::format_rfc3339_seconds(validity.not_after),
                humantime::format_rfc3339_seconds(validity.renew_at())
            );
        }
        Err(error) => {
            // A CA that forgot the account (a test CA restarted, an account deactivated)
            // must not wedge renewals: the next attempt loads it afresh.
            accounts.remove(&settings.ca_dir);
            crate::metrics::count_acme_failure(&label);
            let rate_limited = error.contains("urn:ietf:params:acme:error:rateLimited");
            let (issued, delay) = cert.update(|s| {
                s.failures += 1;
                s.last_error = Some(error.clone());
                let mut delay = retry_delay(s.failures, s.issued, now, jitter());
                if rate_limited {
                    delay = delay.max(RATE_LIMITED_WAIT);
                }
                s.next_attempt = now + delay;
                (s.issued, delay)
            });
            let retry = humantime::format_duration(Duration::from_secs(delay.as_secs().max(1)));
            let whole = |d: Duration| humantime::format_duration(Duration::from_secs(d.as_secs()));
            match issued.map(|v| v.not_after.duration_since(now)) {
                Some(Ok(left)) if left >= settings.error_before_expiry => tracing::warn!(
                    "ACME renewal for {label} failed (the current certificate is valid for {}): {error}; retrying in {retry}",
                    whole(left)
                ),
                Some(Ok(left)) => tracing::error!(
                    "ACME renewal for {label} failed and the certificate expires in {}: {error}; retrying in {retry}",
                    whole(left)
                ),
                Some(Err(ago)) => tracing::error!(
                    "ACME renewal for {label} failed and the certificate EXPIRED {} ago: {error}; retrying in {retry}",
                    whole(ago.duration())
                ),
                None => tracing::warn!(
                    "ACME certificate for {label} not obtained, serving a self-signed placeholder: {error}; retrying in {retry}"
                ),
            }
        }
    }
}

async fn issue(
    settings: &AcmeSettings,
    accounts: &mut HashMap<PathBuf, Account>,
    cert: &ManagedCert,
) -> Result<(CertifiedKey, Validity), String> {
    // Before anything is asked of the CA: an account registered but not saved would be
    // registered again on every attempt.
    store::ensure_dir(&settings.ca_dir).map_err(|e| {
        format!(
            "cannot create the ACME state directory {}: {e}",
            settings.ca_dir.display()
        )
    })?;
    let account = match accounts.get(&settings.ca_dir) {
        Some(a) => a.clone(),
        None => {
            let a = client::account(settings).await?;
            accounts.insert(settings.ca_dir.clone(), a.clone());
            a
        }
    };
    let issued = client::order(&account, &cert.names, settings.challenge).await?;
    let pem = format!("{}{}", issued.key_pem, issued.chain_pem);
    // Checked before it replaces the stored file: a bad answer must not destroy a good one.
    let (certified, validity) = parse(pem.as_bytes(), &cert.path)
        .map_err(|e| format!("the CA sent an unusable certificate: {e}"))?;
    let covered = leaf_names(&certified);
    if let Some(missing) = cert.names.iter().find(|n| !covered.contains(n)) {
        return Err(format!(
            "the CA sent a certificate without {missing} (it covers {covered:?})"
        ));
    }
    store::write_atomic(&cert.path, pem.as_bytes())
        .map_err(|e| format!("cannot save {}: {e}", cert.path.display()))?;
    Ok((certified, validity))
}

/// A number in [0, 1) that differs between calls and processes, for jitter: instances that
/// failed together (a CA outage) must not retry in lockstep.
fn jitter() -> f64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// 2 min, 4, 8 … capped at 6 h (1 h while no valid certificate is installed), but never
/// more than a quarter of the validity left, so a short-lived certificate is retried often
/// enough to be renewed in time; at least 1 s; then ±25 % jitter (`jitter` in [0, 1)).
pub(crate) fn retry_delay(
    failures: u32,
    issued: Option<Validity>,
    now: SystemTime,
    jitter: f64,
) -> Duration {
    let exponential = RETRY_BASE * 2u32.pow(failures.saturating_sub(1).min(12));
    let delay = match issued.and_then(|v| v.not_after.duration_since(now).ok()) {
        Some(left) => exponential.min(RETRY_CAP).min(left / 4),
        None => exponential.min(BROKEN_RETRY_CAP),
    };
    delay
        .max(Duration::from_secs(1))
        .mul_f64(0.75 + jitter / 2.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_respect_the_time_left() {
        let now = SystemTime::now();
        let d = |n, issued| retry_delay(n, issued, now, 0.5);
        assert_eq!(d(1, None), Duration::from_secs(120));
        assert_eq!(d(2, None), Duration::from_secs(240));
        assert_eq!(d(30, None), Duration::from_secs(3600));
        let expired = Validity {
            not_before: now - Duration::from_secs(90),
            not_after: now - Duration::from_secs(1),
        };
        assert_eq!(d(30, Some(expired)), Duration::from_secs(3600));
        let long = Validity {
            not_before: now,
            not_after: now + Duration::from_secs(60 * 86_400),
        };
        assert_eq!(d(3, Some(long)), Duration::from_secs(480));
        assert_eq!(d(30, Some(long)), Duration::from_secs(6 * 3600));
        let short = Validity {
            not_before: now - Duration::from_secs(20),
            not_after: now + Duration::from_secs(8),
        };
        assert_eq!(d(5, Some(short)), Duration::from_secs(2));
        // Jitter stays within ±25 %.
        assert_eq!(retry_delay(1, None, now, 0.0), Duration::from_secs(90));
        assert!(retry_delay(1, None, now, 0.999_999) < Duration::from_secs(150));
    }

    #[test]
    fn renewal_is_at_two_thirds() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let v = Validity {
            not_before: t0,
            not_after: t0 + Duration::from_secs(90),
        };
        assert_eq!(v.renew_at(), t0 + Duration::from_secs(60));
    }
}
