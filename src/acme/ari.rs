//! ACME Renewal Information (RFC 9773): the CA may ask for an earlier renewal (a revocation
//! coming, a mis-issuance) by publishing a suggested window per certificate. Asked with a
//! plain GET; CAs without it (pebble 2.4 among them) answer "unsupported", and then the
//! 2/3-of-lifetime rule alone decides.

use crate::certs::from_unix_seconds;
use instant_acme::{Account, CertificateIdentifier};
use rustls::pki_types::Der;
use rustls::sign::CertifiedKey;
use std::time::{Duration, SystemTime};

/// How often to ask again when the CA gives no usable Retry-After.
const DEFAULT_RECHECK: Duration = Duration::from_secs(6 * 3600);

pub(crate) enum Answer {
    /// Renew at this time (a random point in the suggested window), ask again after the
    /// duration.
    Window(SystemTime, Duration),
    /// This CA has no ARI: stop asking.
    Unsupported,
}

/// The certificate's ARI identifier: its Authority Key Identifier and serial number.
fn identifier(certified: &CertifiedKey) -> Option<CertificateIdentifier<'static>> {
    let leaf = certified.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).ok()?;
    let aki = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        })?;
    Some(
        CertificateIdentifier::new(
            Der::from_slice(aki),
            Der::from_slice(cert.tbs_certificate.raw_serial()),
        )
        .into_owned(),
    )
}

pub(crate) async fn ask(
    account: &Account,
    certified: &CertifiedKey,
    jitter: f64,
) -> Result<Answer, String> {
    let Some(id) = identifier(certified) else {
        return Err("the certificate has no Authority Key Identifier".into());
    };
    match account.renewal_info(&id).await {
        Ok((info, retry_after)) => {
            let window = &info.suggested_window;
            let at = pick(
                from_unix_seconds(window.start.unix_timestamp()),
                from_unix_seconds(window.end.unix_timestamp()),
                jitter,
            );
            let recheck = if retry_after.is_zero() {
                DEFAULT_RECHECK
            } else {
                // Bounded: a CA asking every second, or once a month, is not followed blindly.
                retry_after.clamp(Duration::from_secs(3600), Duration::from_secs(24 * 3600))
            };
            Ok(Answer::Window(at, recheck))
        }
        Err(instant_acme::Error::Unsupported(_)) => Ok(Answer::Unsupported),
        Err(e) => Err(e.to_string()),
    }
}

/// A uniformly random point in [start, end] (`jitter` in [0, 1)), so that a CA's window is
/// not hit by every client at its first second. An inverted window means its start.
pub(crate) fn pick(start: SystemTime, end: SystemTime, jitter: f64) -> SystemTime {
    match end.duration_since(start) {
        Ok(width) => start + width.mul_f64(jitter.clamp(0.0, 1.0)),
        Err(_) => start,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn a_point_inside_the_window() {
        let start = UNIX_EPOCH + Duration::from_secs(1000);
        let end = start + Duration::from_secs(100);
        assert_eq!(pick(start, end, 0.0), start);
        assert_eq!(pick(start, end, 0.5), start + Duration::from_secs(50));
        assert!(pick(start, end, 0.999) < end);
        assert_eq!(pick(end, start, 0.5), end);
    }
}
