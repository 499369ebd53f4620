//! The rustls server side of a TLS listener: certificate choice by SNI, ALPN, protocol
//! versions, and the handshake itself (run in the connection task, bounded in time).

use crate::acme::challenge::{self, ACME_TLS_ALPN};
use crate::acme::ManagedCert;
use crate::config::tls::{ListenerTlsConfig, SiteCert};
use crate::config::{HostPattern, SiteConfig};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// A TLS listener, ready to accept: built once per configuration generation, so a reload
/// swaps certificates for new connections while open ones keep their session.
#[derive(Clone)]
pub(crate) struct ListenerTls {
    pub(crate) acceptor: TlsAcceptor,
}

impl fmt::Debug for ListenerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListenerTls").finish_non_exhaustive()
    }
}

/// A certificate as the resolver holds it: fixed for this configuration generation, or
/// managed by ACME and swapped in place on renewal.
#[derive(Clone)]
enum CertSource {
    Fixed(Arc<CertifiedKey>),
    Managed(Arc<ManagedCert>),
}

impl CertSource {
    fn get(&self) -> Arc<CertifiedKey> {
        match self {
            CertSource::Fixed(k) => k.clone(),
            CertSource::Managed(m) => m.certified(),
        }
    }
}

/// Picks the certificate for a ClientHello like the router picks a site for a Host: exact
/// name, then the longest `*.suffix`, then a `*` site, then the listener's certificate.
struct SniResolver {
    exact: HashMap<String, CertSource>,
    /// `(".example.com", key)`, longest first.
    suffixes: Vec<(String, CertSource)>,
    any: Option<CertSource>,
    default: CertSource,
    strict: bool,
    /// This listener answers TLS-ALPN-01 checks (`challenge = "tls-alpn-01"` and ACME sites).
    acme_alpn: bool,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("exact", &self.exact.keys().collect::<Vec<_>>())
            .field("strict", &self.strict)
            .finish()
    }
}

impl SniResolver {
    fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        // No SNI: a client that connects by IP address gets the listener's certificate.
        let Some(name) = server_name else {
            return Some(self.default.get());
        };
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(k) = self.exact.get(&name) {
            return Some(k.get());
        }
        if let Some((_, k)) = self
            .suffixes
            .iter()
            .find(|(s, _)| name.ends_with(s.as_str()))
        {
            return Some(k.get());
        }
        if let Some(k) = &self.any {
            return Some(k.get());
        }
        // Strict: an unknown name gets a handshake alert instead of a certificate that would
        // reveal which sites live here.
        (!self.strict).then(|| self.default.get())
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A TLS-ALPN-01 check (RFC 8737) asks only for "acme-tls/1" and gets the challenge
        // certificate, or no handshake at all when no order is pending for the name.
        if self.acme_alpn && offers_only_acme_alpn(&hello) {
            return challenge::tls_alpn01_cert(hello.server_name()?);
        }
        self.pick(hello.server_name())
    }
}

/// RFC 8737 §3: a validator offers "acme-tls/1" and nothing else. A client that lists it
/// among others is an ordinary client and gets the site's certificate (and h2/http1.1).
fn offers_only_acme_alpn(hello: &ClientHello<'_>) -> bool {
    hello.alpn().is_some_and(|mut protocols| {
        protocols.next() == Some(ACME_TLS_ALPN) && protocols.next().is_none()
    })
}

/// Builds the listener's rustls configuration from its own certificate and the certificates
/// of the sites it serves. Hosts of sites without `tls` map to the listener's certificate,
/// so `strict_sni` accepts them. `managed` holds each site's ACME certificate, aligned with
/// `sites`.
pub(crate) fn build(
    pending: &ListenerTlsConfig,
    listener: &str,
    sites: &[SiteConfig],
    managed: &[Option<Arc<ManagedCert>>],
    acme_alpn: bool,
) -> Result<ListenerTls, String> {
    let on_listener = || {
        sites.iter().zip(managed).filter(|(s, _)| {
            s.listeners
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|l| l == listener))
        })
    };
    // Validation made sure a `tls = "acme"` listener has an ACME site.
    let default_key = match &pending.default {
        Some(c) => CertSource::Fixed(c.certified.clone()),
        None => on_listener()
            .find_map(|(_, m)| m.clone().map(CertSource::Managed))
            .ok_or_else(|| {
                format!("listener {listener:?} has tls = \"acme\" but none of its sites has")
            })?,
    };
    let mut resolver = SniResolver {
        exact: HashMap::new(),
        suffixes: Vec::new(),
        any: None,
        default: default_key.clone(),
        strict: pending.strict_sni,
        acme_alpn: false,
    };
    let mut any_managed = false;
    for (site, managed) in on_listener() {
        let key = match (&site.tls, managed) {
            (Some(SiteCert::Files(c)), _) => CertSource::Fixed(c.certified.clone()),
            (Some(SiteCert::Acme(_)), Some(m)) => {
                any_managed = true;
                CertSource::Managed(m.clone())
            }
            _ => default_key.clone(),
        };
        for host in &site.hosts {
            match host {
                HostPattern::Exact(h) => {
                    resolver
                        .exact
                        .entry(h.clone())
                        .or_insert_with(|| key.clone());
                }
                HostPattern::Suffix(s) => resolver.suffixes.push((s.clone(), key.clone())),
                HostPattern::Any => {
                    resolver.any.get_or_insert_with(|| key.clone());
                }
            }
        }
    }
    resolver
        .suffixes
        .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
    // Validations are answered only where a managed certificate is served.
    resolver.acme_alpn = acme_alpn && any_managed;
    let alpn_acme = resolver.acme_alpn;

    let mut config = ServerConfig::builder_with_provider(Arc::new(super::provider()))
        // TLS 1.2 and 1.3 only, with rustls' default (modern AEAD, forward-secret) suites.
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("listener {listener:?}: TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(resolver));
    // Our order, not the client's (what testssl.sh calls "server cipher order"): the
    // provider lists the strongest suites first (AES-256-GCM, then AES-128-GCM and
    // ChaCha20-Poly1305, all AEAD with forward secrecy), so a client that prefers a weaker
    // one still gets the strongest both support.
    config.ignore_client_order = true;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    if alpn_acme {
        config.alpn_protocols.push(ACME_TLS_ALPN.to_vec());
    }
    Ok(ListenerTls {
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}

/// Runs the handshake within `timeout` (the `header_read_timeout`): a client that connects
/// and sends nothing, or dribbles its ClientHello, cannot hold a connection slot.
pub(crate) async fn handshake<I>(
    acceptor: &TlsAcceptor,
    io: I,
    timeout: Duration,
    listener: &str,
) -> Option<TlsStream<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    handshake_until(acceptor, io, Instant::now() + timeout, listener).await
}

async fn handshake_until<I>(
    acceptor: &TlsAcceptor,
    io: I,
    deadline: Instant,
    listener: &str,
) -> Option<TlsStream<I>>
where
    I: AsyncRead + AsyncWrite + Unpin,
{
    match tokio::time::timeout_at(deadline, acceptor.accept(io)).await {
        // A TLS-ALPN-01 validation connection ends with the handshake (RFC 8737 §3).
        Ok(Ok(stream)) if stream.get_ref().1.alpn_protocol() == Some(ACME_TLS_ALPN) => None,
        Ok(Ok(stream)) => Some(stream),
        Ok(Err(e)) => {
            // Scanners, old clients, unknown SNI with strict_sni: routine.
            tracing::debug!(listener, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(listener, "TLS handshake timed out");
            None
        }
    }
}

/// [`handshake`] for TCP, which first peeks at the first byte: a TLS connection starts with
/// a handshake record (0x16), plain HTTP with a method name. Plain HTTP gets a readable 400
/// (as nginx does) instead of a TLS alert that browsers and curl show as gibberish.
pub(crate) async fn handshake_tcp(
    acceptor: &TlsAcceptor,
    io: TcpStream,
    timeout: Duration,
    listener: &str,
) -> Option<TlsStream<TcpStream>> {
    let deadline = Instant::now() + timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout_at(deadline, io.peek(&mut first)).await {
        Ok(Ok(1)) if first[0].is_ascii_uppercase() => {
            answer_plain_http(io, listener).await;
            None
        }
        Ok(Ok(1)) => handshake_until(acceptor, io, deadline, listener).await,
        Ok(_) => None,
        Err(_) => {
            tracing::debug!(listener, "TLS handshake timed out");
            None
        }
    }
}

async fn answer_plain_http(mut io: TcpStream, listener: &str) {
    const BODY: &str = "400 Bad Request: this port speaks HTTPS; use https://\n";
    let response = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    tracing::debug!(listener, "plain HTTP on a TLS listener");
    let limit = Duration::from_secs(1);
    if let Ok(Ok(())) = tokio::time::timeout(limit, io.write_all(response.as_bytes())).await {
        let _ = io.shutdown().await;
        // Read what the client sent before closing: closing with unread data makes the
        // kernel send a reset, which can destroy the answer before the client reads it.
        let mut sink = [0u8; 4096];
        let drain = async {
            let mut total = 0usize;
            while total < 64 * 1024 {
                match io.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
            }
        };
        let _ = tokio::time::timeout(limit, drain).await;
    }
}
