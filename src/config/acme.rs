//! The `[acme]` section: which CA, how to prove control of a name, where state lives.

use crate::config::ErrorSink;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use serde_spanned::Spanned;
use std::path::{Path, PathBuf};

pub(crate) const LETSENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
pub(crate) const LETSENCRYPT_STAGING: &str =
    "https://acme-staging-v02.api.letsencrypt.org/directory";
/// The rule: a renewal that still fails a week before expiry is an error.
pub(crate) const DEFAULT_ERROR_BEFORE_EXPIRY: std::time::Duration =
    std::time::Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    /// The CA's directory URL, or "letsencrypt" / "letsencrypt-staging".
    pub(crate) directory: Option<Spanned<String>>,
    /// Contact for expiry and policy mail from the CA.
    pub(crate) email: Option<Spanned<String>>,
    /// PEM file with the roots that sign the CA's own HTTPS certificate (a private CA).
    pub(crate) ca_roots: Option<Spanned<String>>,
    pub(crate) challenge: Option<Spanned<String>>,
    /// Where accounts and certificates are kept; default `$STATE_DIRECTORY/acme`.
    pub(crate) state_dir: Option<Spanned<String>>,
    /// Renewal failures are logged at error level (not warning) this close to expiry.
    pub(crate) error_before_expiry: Option<Spanned<crate::config::HumanDuration>>,
}

/// How the CA checks that we control a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Challenge {
    /// A file under /.well-known/acme-challenge/ on port 80.
    Http01,
    /// A special certificate on port 443, chosen by the ALPN protocol "acme-tls/1".
    TlsAlpn01,
}

impl Challenge {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Challenge::Http01 => "http-01",
            Challenge::TlsAlpn01 => "tls-alpn-01",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AcmeSettings {
    pub(crate) directory: String,
    pub(crate) email: Option<String>,
    /// The roots for the CA's HTTPS, already parsed; `None` = the system's trust store.
    pub(crate) ca_roots: Option<Vec<CertificateDer<'static>>>,
    pub(crate) challenge: Challenge,
    /// `<state_dir>/<CA>`: this CA's account and certificates. Another CA (staging vs
    /// production) never sees them.
    pub(crate) ca_dir: PathBuf,
    pub(crate) error_before_expiry: std::time::Duration,
}

/// The first path of `$STATE_DIRECTORY` (systemd sets one per StateDirectory= entry,
/// colon-separated), read at each load like `$CREDENTIALS_DIRECTORY`.
fn state_directory() -> Option<PathBuf> {
    let v = std::env::var_os("STATE_DIRECTORY")?;
    let first = v.to_str()?.split(':').next()?.to_owned();
    (!first.is_empty()).then(|| PathBuf::from(first))
}

/// A directory URL as a file name: "https://ca.example:14000/dir" → "ca.example_14000_dir".
pub(crate) fn ca_slug(directory: &str) -> String {
    let rest = directory
        .split_once("://")
        .map_or(directory, |(_, r)| r)
        .trim_end_matches('/');
    rest.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Validates `[acme]` (or its absence: Let's Encrypt with http-01). `needed` is whether any
/// site uses `tls = "acme"`; only then must a state directory exist.
pub(crate) fn validate(
    raw: Option<&RawAcme>,
    needed: bool,
    sink: &mut ErrorSink,
) -> Option<AcmeSettings> {
    let default = RawAcme::default();
    let raw = raw.unwrap_or(&default);
    let directory = match raw.directory.as_ref() {
        None => Some(LETSENCRYPT.to_owned()),
        Some(d) => match d.get_ref().as_str() {
            "letsencrypt" => Some(LETSENCRYPT.to_owned()),
            "letsencrypt-staging" => Some(LETSENCRYPT_STAGING.to_owned()),
            url if is_https_url(url) => Some(url.to_owned()),
            other => {
                sink.push(
                    Some(d.span()),
                    format!("ACME directory {other:?} is not an https:// URL"),
                    Some("RFC 8555 requires HTTPS; use \"letsencrypt\", \"letsencrypt-staging\" or the CA's https://…/directory URL"),
                );
                None
            }
        },
    };
    let email = match &raw.email {
        None => None,
        Some(e) => {
            let v = e.get_ref();
            let plausible = v.split_once('@').is_some_and(|(user, host)| {
                !user.is_empty() && host.contains('.') && !v.contains([' ', ',', '<', '>'])
            });
            if !plausible {
                sink.push(
                    Some(e.span()),
                    format!("{v:?} is not an email address"),
                    None,
                );
            }
            Some(v.clone())
        }
    };
    let challenge = match raw.challenge.as_ref().map(|c| (c.get_ref().as_str(), c)) {
        None | Some(("http-01", _)) => Challenge::Http01,
        Some(("tls-alpn-01", _)) => Challenge::TlsAlpn01,
        Some((other, c)) => {
            sink.push(
                Some(c.span()),
                format!("unknown ACME challenge {other:?}"),
                Some("use \"http-01\" (port 80 answers) or \"tls-alpn-01\" (port 443 answers)"),
            );
            Challenge::Http01
        }
    };
    let ca_roots = raw
        .ca_roots
        .as_ref()
        .and_then(|p| match load_roots(Path::new(p.get_ref())) {
            Ok(roots) => Some(roots),
            Err(msg) => {
                sink.push(Some(p.span()), msg, None);
                None
            }
        });
    let state_dir = match &raw.state_dir {
        Some(d) if d.get_ref().starts_with('/') => Some(PathBuf::from(d.get_ref())),
        Some(d) => {
            sink.push(Some(d.span()), "`state_dir` must be an absolute path", None);
            None
        }
        None => state_directory().map(|d| d.join("acme")),
    };
    let Some(state_dir) = state_dir else {
        if needed {
            sink.push(
                None,
                "tls = \"acme\" needs a place to keep the account and certificates, and $STATE_DIRECTORY is not set",
                Some("run under the shipped unit (StateDirectory=gatehouse), or set [acme] state_dir = \"/var/lib/gatehouse/acme\""),
            );
        }
        return None;
    };
    let directory = directory?;
    let error_before_expiry = raw
        .error_before_expiry
        .as_ref()
        .map_or(DEFAULT_ERROR_BEFORE_EXPIRY, |d| d.get_ref().0);
    Some(AcmeSettings {
        error_before_expiry,
        ca_dir: state_dir.join(ca_slug(&directory)),
        directory,
        email,
        ca_roots,
        challenge,
    })
}

/// An https URL with a host: the host becomes part of a directory name, so "https://.."
/// must not pass.
fn is_https_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    uri.scheme_str() == Some("https")
        && uri
            .host()
            .is_some_and(|h| !h.is_empty() && !h.chars().all(|c| c == '.'))
}

fn load_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let file = std::fs::File::open(path)
        .map_err(|e| format!("cannot read the ACME CA roots {}: {e}", path.display()))?;
    let roots = rustls_pemfile::certs(&mut std::io::BufReader::new(file))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: invalid PEM: {e}", path.display()))?;
    if roots.is_empty() {
        return Err(format!(
            "{}: no \"BEGIN CERTIFICATE\" block; ca_roots is a PEM file of root certificates",
            path.display()
        ));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_file_names() {
        assert_eq!(
            ca_slug(LETSENCRYPT),
            "acme-v02.api.letsencrypt.org_directory"
        );
        assert_eq!(
            ca_slug("https://127.0.0.1:14000/dir/"),
            "127.0.0.1_14000_dir"
        );
        assert!(!ca_slug("https://x/../../etc").contains('/'));
    }

    #[test]
    fn directory_urls_need_a_real_host() {
        assert!(is_https_url("https://127.0.0.1:14000/dir"));
        assert!(is_https_url("https://acme.example/directory"));
        for bad in [
            "https://..",
            "https://.",
            "https://",
            "http://ca.test/dir",
            "https:///dir",
        ] {
            assert!(!is_https_url(bad), "{bad}");
        }
    }
}
