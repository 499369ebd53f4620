//! Answers to the CA's checks while an order is pending: HTTP-01 tokens served from
//! `/.well-known/acme-challenge/` on plain listeners, and TLS-ALPN-01 certificates
//! presented to a client that asks for the ALPN protocol "acme-tls/1" (RFC 8737).
//!
//! Process-wide tables, since the manager publishes and the serving tasks read; entries are
//! removed when their order ends ([`Published`] on drop).

use crate::http_base::{self, Body};
use http::{header, HeaderValue, Response};
use rustls::pki_types::PrivateKeyDer;
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex};

const HTTP01_PREFIX: &str = "/.well-known/acme-challenge/";
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

// Process-wide (see `crate::shared`): the order task writes them, the port-80 request path
// and every TLS listener's certificate resolver read them.
static HTTP01: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);
static TLS_ALPN01: LazyLock<Mutex<HashMap<String, Arc<CertifiedKey>>>> =
    LazyLock::new(Default::default);

/// The answer to an HTTP-01 check, if `path` asks for a token of a pending order. Other
/// paths under the prefix fall through to the routes (a site may serve its own files there).
/// Every request asks: a path outside the prefix costs one comparison, no lock.
pub(crate) fn http01_response(path: &str) -> Option<Response<Body>> {
    let token = path.strip_prefix(HTTP01_PREFIX)?;
    let key_authorization = HTTP01
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(token)?
        .clone();
    let mut resp = Response::new(http_base::full(bytes::Bytes::from(key_authorization)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Some(resp)
}

/// The TLS-ALPN-01 certificate for `server_name`, if its order is pending.
pub(crate) fn tls_alpn01_cert(server_name: &str) -> Option<Arc<CertifiedKey>> {
    let name = server_name.trim_end_matches('.').to_ascii_lowercase();
    TLS_ALPN01
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&name)
        .cloned()
}

/// What one order published; dropping it withdraws every entry.
#[derive(Default)]
pub(crate) struct Published {
    tokens: Vec<String>,
    names: Vec<String>,
}

impl Published {
    pub(crate) fn http01(&mut self, token: &str, key_authorization: &str) {
        HTTP01
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned(), key_authorization.to_owned());
        self.tokens.push(token.to_owned());
    }

    /// `digest` is SHA-256 of the key authorization, carried in the acmeIdentifier extension.
    pub(crate) fn tls_alpn01(&mut self, name: &str, digest: &[u8]) -> Result<(), String> {
        let cert = challenge_cert(name, digest)?;
        let name = name.to_ascii_lowercase();
        TLS_ALPN01
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), Arc::new(cert));
        self.names.push(name);
        Ok(())
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        let mut http = HTTP01.lock().unwrap_or_else(|e| e.into_inner());
        for t in &self.tokens {
            http.remove(t);
        }
        drop(http);
        let mut tls = TLS_ALPN01.lock().unwrap_or_else(|e| e.into_inner());
        for n in &self.names {
            tls.remove(n);
        }
    }
}

fn challenge_cert(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| format!("TLS-ALPN-01 certificate for {name}: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    self_signed(params)
}

/// A self-signed ECDSA P-256 certificate for `params`, as rustls wants it.
pub(crate) fn self_signed(params: rcgen::CertificateParams) -> Result<CertifiedKey, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("key generation: {e}"))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("self-signing: {e}"))?;
    let signing = crate::certs::provider()
        .key_provider
        .load_private_key(PrivateKeyDer::Pkcs8(key.serialize_der().into()))
        .map_err(|e| format!("key: {e}"))?;
    Ok(CertifiedKey::new(vec![cert.der().clone()], signing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_served_while_published_and_gone_after() {
        let mut p = Published::default();
        p.http01("tok-1", "tok-1.thumb");
        let r = http01_response("/.well-known/acme-challenge/tok-1").unwrap();
        assert_eq!(r.status(), 200);
        assert!(http01_response("/.well-known/acme-challenge/other").is_none());
        assert!(http01_response("/tok-1").is_none());
        p.tls_alpn01("A.test", &[0u8; 32]).unwrap();
        assert!(tls_alpn01_cert("a.test.").is_some());
        drop(p);
        assert!(http01_response("/.well-known/acme-challenge/tok-1").is_none());
        assert!(tls_alpn01_cert("a.test").is_none());
    }
}
