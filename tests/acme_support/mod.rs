//! A real ACME CA for tests: Debian's `pebble` (Let's Encrypt's test server) with
//! `pebble-challtestsrv` as its DNS, which answers 127.0.0.1 for every name, so the CA's
//! HTTP-01 and TLS-ALPN-01 checks really connect to the gatehouse under test.
// Shared by many test crates, each using part of it: `pub` is this module's interface.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use crate::common::{free_port, tempdir, write};
use crate::tls_support::{self, Pki};
use rustls::pki_types::CertificateDer;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Pebble {
    pebble: Option<Child>,
    dns: Child,
    pub dir: tempfile::TempDir,
    pub port: u16,
    mgmt_port: u16,
    /// The test CA that signed pebble's own HTTPS certificate (for `[acme] ca_roots`).
    pub https_roots: PathBuf,
    pki: Pki,
    log: PathBuf,
}

impl Pebble {
    /// Starts pebble; it validates names by connecting to 127.0.0.1:`http_port` (HTTP-01)
    /// and :`tls_port` (TLS-ALPN-01), and issues certificates valid for `validity`.
    pub fn start(http_port: u16, tls_port: u16, validity: Duration) -> Pebble {
        let dir = tempdir();
        let pki = Pki::new();
        let leaf = pki.leaf(&["localhost", "127.0.0.1"]);
        let (cert, key) = leaf.write(dir.path(), "pebble");
        let https_roots = write(dir.path(), "roots.pem", &pki.ca_pem);
        let (port, mgmt_port, dns_port) = (free_port(), free_port(), free_port());
        let config = format!(
            r#"{{"pebble": {{
                "listenAddress": "127.0.0.1:{port}",
                "managementListenAddress": "127.0.0.1:{mgmt_port}",
                "certificate": "{}", "privateKey": "{}",
                "httpPort": {http_port}, "tlsPort": {tls_port},
                "ocspResponderURL": "", "externalAccountBindingRequired": false,
                "certificateValidityPeriod": {}
            }}}}"#,
            cert.display(),
            key.display(),
            validity.as_secs()
        );
        let config = write(dir.path(), "pebble.json", &config);
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
            .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{}", free_port())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv (apt-get install pebble)");
        let log = dir.path().join("pebble.log");
        let mut pebble = Pebble {
            pebble: None,
            dns,
            port,
            mgmt_port,
            https_roots,
            pki,
            log,
            dir,
        };
        let out = std::fs::File::create(&pebble.log).unwrap();
        pebble.pebble = Some(
            Command::new("pebble")
                .arg("-config")
                .arg(&config)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                // Deterministic: no random VA sleeps, no bad-nonce injection, and every
                // order validated afresh rather than reusing an earlier authorization.
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .env("PEBBLE_AUTHZREUSE", "0")
                .stdout(out.try_clone().unwrap())
                .stderr(out)
                .spawn()
                .expect("pebble (apt-get install pebble)"),
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err()
            || TcpStream::connect(("127.0.0.1", mgmt_port)).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "pebble did not start:\n{}",
                pebble.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        pebble
    }

    pub fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Orders pebble has accepted so far.
    pub fn orders(&self) -> usize {
        self.log().matches("Added order").count()
    }

    /// The root that signs the certificates pebble issues (random per pebble run).
    pub fn issuing_root(&self) -> CertificateDer<'static> {
        let cfg = self.pki.client(&[b"http/1.1"]);
        let mut s = tls_support::connect(&cfg, self.mgmt_port, "localhost").expect("pebble mgmt");
        let reply = tls_support::request(&mut s, "localhost", "/roots/0").expect("GET /roots/0");
        assert_eq!(reply.status, 200, "{}", reply.text());
        let root = rustls_pemfile::certs(&mut reply.body.as_slice())
            .next()
            .expect("a root certificate")
            .expect("PEM");
        root
    }

    /// A client that trusts only pebble's issuing root.
    pub fn client(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.issuing_root()).unwrap();
        let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        // A resumed session reports the certificate of the session it resumes.
        cfg.resumption = rustls::client::Resumption::disabled();
        Arc::new(cfg)
    }

    /// Stops the CA (the DNS stays), as an outage would.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.pebble.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.stop();
        let _ = self.dns.kill();
        let _ = self.dns.wait();
    }
}

/// A client that accepts any certificate, to look at placeholders.
pub fn insecure_client() -> Arc<rustls::ClientConfig> {
    #[derive(Debug)]
    struct AcceptAll;
    impl rustls::client::danger::ServerCertVerifier for AcceptAll {
        fn verify_server_cert(
            &self,
            _: &CertificateDer<'_>,
            _: &[CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .dangerous()
    .with_custom_certificate_verifier(Arc::new(AcceptAll))
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

/// The leaf certificate a TLS stream was given.
pub fn served_leaf(s: &tls_support::TlsStream) -> Vec<u8> {
    s.conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("a certificate")
        .to_vec()
}

/// The subject CN of a DER certificate.
pub fn common_name(der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(der).unwrap();
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_owned();
    cn
}
