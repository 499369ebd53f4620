//! Loading a certificate chain and its private key from PEM files, checking that they belong
//! together, and reading the leaf's names and expiry for messages and warnings.
//!
//! Error messages name the files but never quote their contents: a key must not reach a log.

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::fmt;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Warn when a certificate expires within this long.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// A certificate chain with its key, loaded and checked.
/// The crypto provider: ring (builds faster than aws-lc-rs and needs no cmake).
pub(crate) fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

#[derive(Clone)]
pub(crate) struct LoadedCert {
    pub(crate) cert_path: PathBuf,
    pub(crate) key_path: PathBuf,
    pub(crate) certified: Arc<CertifiedKey>,
    /// The leaf's notAfter.
    pub(crate) not_after: SystemTime,
    /// The leaf's DNS names (SAN), or its CN when it has none; for messages.
    pub(crate) names: Vec<String>,
    /// Set when anyone on the machine may read the key file.
    pub(crate) key_world_readable: bool,
}

impl fmt::Debug for LoadedCert {
    // The key stays out of every Debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish()
    }
}

impl PartialEq for LoadedCert {
    fn eq(&self, other: &Self) -> bool {
        self.cert_path == other.cert_path
            && self.key_path == other.key_path
            && self.certified.cert == other.certified.cert
    }
}

impl Eq for LoadedCert {}

impl LoadedCert {
    /// A short name for messages: the first DNS name, else the certificate file.
    pub(crate) fn label(&self) -> String {
        self.names
            .first()
            .cloned()
            .unwrap_or_else(|| self.cert_path.display().to_string())
    }

    /// `Some(message)` when every user of the machine may read the private key.
    pub(crate) fn key_warning(&self) -> Option<String> {
        self.key_world_readable.then(|| {
            format!(
                "TLS private key {} is readable by every user (chmod o-r, or use LoadCredential=)",
                self.key_path.display()
            )
        })
    }

    /// `Some(message)` when the certificate expires within [`EXPIRY_WARNING`] of `now`.
    pub(crate) fn expiry_warning(&self, now: SystemTime) -> Option<String> {
        match self.not_after.duration_since(now) {
            Ok(left) if left >= EXPIRY_WARNING => None,
            Ok(left) => Some(format!(
                "TLS certificate {} ({}) expires in {}",
                self.label(),
                self.cert_path.display(),
                days(left)
            )),
            Err(e) => Some(format!(
                "TLS certificate {} ({}) EXPIRED {} ago",
                self.label(),
                self.cert_path.display(),
                days(e.duration())
            )),
        }
    }
}

fn days(d: Duration) -> String {
    let days = d.as_secs() / 86_400;
    if days == 0 {
        format!("{}h", d.as_secs() / 3600)
    } else {
        format!("{days} day{}", if days == 1 { "" } else { "s" })
    }
}

/// Loads `cert_path` (PEM chain, leaf first) and `key_path` (PEM PKCS#8, PKCS#1 or SEC1 key)
/// and checks that the key belongs to the leaf.
pub(crate) fn load(cert_path: &Path, key_path: &Path) -> Result<LoadedCert, String> {
    let chain = read_chain(&mut open(cert_path, "certificate")?, cert_path)?;
    let key = read_key(&mut open(key_path, "private key")?, key_path)?;
    let (certified, not_after, names) = check_pair(chain, key, cert_path, key_path)?;
    Ok(LoadedCert {
        cert_path: cert_path.to_path_buf(),
        key_path: key_path.to_path_buf(),
        certified: Arc::new(certified),
        not_after,
        names,
        key_world_readable: world_readable(key_path),
    })
}

/// [`load`] for PEM text in memory (key and chain in one text); `origin` names it in errors.
pub(crate) fn from_pem(pem: &[u8], origin: &Path) -> Result<(CertifiedKey, SystemTime), String> {
    let chain = read_chain(&mut &pem[..], origin)?;
    let key = read_key(&mut &pem[..], origin)?;
    check_pair(chain, key, origin, origin).map(|(c, not_after, _)| (c, not_after))
}

type Checked = (CertifiedKey, SystemTime, Vec<String>);

fn check_pair(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<Checked, String> {
    let provider = provider();
    let signing = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: unusable private key: {e}", key_path.display()))?;
    let certified = CertifiedKey::new(chain, signing);
    match certified.keys_match() {
        Ok(()) => {}
        // The provider could not tell (no public key exposed); rustls accepts that too.
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            return Err(format!(
                "the key {} does not belong to the certificate {}",
                key_path.display(),
                cert_path.display()
            ))
        }
        Err(e) => {
            return Err(format!(
                "{}: cannot check the key against the certificate: {e}",
                cert_path.display()
            ))
        }
    }
    let (not_after, names) = match certified.cert.first() {
        Some(leaf) => leaf_info(leaf)
            .map_err(|e| format!("{}: unreadable certificate: {e}", cert_path.display()))?,
        None => return Err(format!("{}: no certificate", cert_path.display())),
    };
    Ok((certified, not_after, names))
}

/// Group-readable keys are common (Debian's ssl-cert group); world-readable ones are a leak.
fn world_readable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
}

fn open(path: &Path, what: &str) -> Result<BufReader<std::fs::File>, String> {
    std::fs::File::open(path)
        .map(BufReader::new)
        .map_err(|e| format!("cannot read the {what} {}: {e}", path.display()))
}

fn read_chain(
    reader: &mut dyn std::io::BufRead,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = rustls_pemfile::certs(reader)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no \"BEGIN CERTIFICATE\" block; expected a PEM certificate chain, leaf first",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(
    reader: &mut dyn std::io::BufRead,
    path: &Path,
) -> Result<PrivateKeyDer<'static>, String> {
    // The error text of rustls-pemfile describes the structure, never the bytes.
    match rustls_pemfile::private_key(reader) {
        Ok(Some(key)) => Ok(key),
        Ok(None) => Err(format!(
            "{}: no private key block (\"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")",
            path.display()
        )),
        Err(e) => Err(format!("{}: invalid PEM: {e}", path.display())),
    }
}

/// Unix seconds (as X.509 and ACME give them) as a SystemTime; before 1970 counts as 1970.
pub(crate) fn from_unix_seconds(ts: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(ts).unwrap_or(0))
}

/// notBefore of a DER certificate.
pub(crate) fn not_before(der: &[u8]) -> Result<SystemTime, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    Ok(from_unix_seconds(cert.validity().not_before.timestamp()))
}

/// notAfter and DNS names of a DER certificate.
pub(crate) fn leaf_info(der: &[u8]) -> Result<(SystemTime, Vec<String>), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let not_after = from_unix_seconds(cert.validity().not_after.timestamp());
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push((*d).to_owned());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
        {
            names.push(cn.to_owned());
        }
    }
    Ok((not_after, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_and_empty_files_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("gatehouse-certs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let err = load(&dir.join("nope.crt"), &empty).unwrap_err();
        assert!(err.contains("cannot read the certificate"), "{err}");
        let err = load(&empty, &empty).unwrap_err();
        assert!(err.contains("no \"BEGIN CERTIFICATE\""), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn day_formatting() {
        assert_eq!(days(Duration::from_secs(3 * 86_400 + 5)), "3 days");
        assert_eq!(days(Duration::from_secs(86_400)), "1 day");
        assert_eq!(days(Duration::from_secs(7200)), "2h");
    }
}
