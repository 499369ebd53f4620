//! TLS test helpers: a throwaway CA made at test time (rcgen), certificates for names, and a
//! real rustls client that trusts only that CA.
// Shared by many test crates, each using part of it: `pub` is this module's interface.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use crate::common::{parse_reply, Reply};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct Pki {
    issuer: Issuer<'static, KeyPair>,
    pub ca_pem: String,
}

/// A leaf certificate and its key, as PEM.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
}

impl Leaf {
    /// Writes `NAME.crt` and `NAME.key` into `dir`; returns both paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.crt"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        // As a key should be; gatehouse warns about world-readable keys.
        std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        (cert, key)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "gatehouse test CA");
        let key = KeyPair::generate().unwrap();
        let ca = params.self_signed(&key).unwrap();
        Pki {
            ca_pem: ca.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS SANs), valid until far in the future.
    pub fn leaf(&self, names: &[&str]) -> Leaf {
        self.leaf_until(names, None)
    }

    /// As [`leaf`], expiring on `(year, month, day)` when given.
    pub fn leaf_until(&self, names: &[&str], not_after: Option<(i32, u8, u8)>) -> Leaf {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, names[0].as_str());
        if let Some((y, m, d)) = not_after {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(y, m, d);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A client that trusts only this CA and offers `alpn`.
    pub fn client(&self, alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        let der: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut self.ca_pem.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap();
        roots.add_parsable_certificates(der);
        let mut cfg = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(cfg)
    }
}

pub type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// Connects to 127.0.0.1:`port` with SNI `sni` and completes the handshake (5 s bound).
pub fn connect(cfg: &Arc<ClientConfig>, port: u16, sni: &str) -> std::io::Result<TlsStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
    tcp.set_write_timeout(Some(Duration::from_secs(5)))?;
    let name = ServerName::try_from(sni.to_owned())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let conn = ClientConnection::new(cfg.clone(), name).map_err(std::io::Error::other)?;
    let mut s = StreamOwned::new(conn, tcp);
    while s.conn.is_handshaking() {
        s.conn.complete_io(&mut s.sock)?;
    }
    Ok(s)
}

/// DNS names of the certificate the server presented.
pub fn served_names(s: &TlsStream) -> Vec<String> {
    let leaf = s
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .expect("server sent a certificate");
    let (_, cert) = x509_parser::parse_x509_certificate(leaf).unwrap();
    let san = cert.subject_alternative_name().unwrap().unwrap();
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect()
}

/// Sends one HTTP/1.1 request on a kept-alive stream and reads one Content-Length response.
pub fn request(s: &mut impl ReadWrite, host: &str, path: &str) -> std::io::Result<Reply> {
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
    s.flush()?;
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte)?;
        buf.push(byte[0]);
    }
    let mut reply = parse_reply(&buf)?;
    let len: usize = reply
        .header("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    s.read_exact(&mut body)?;
    reply.body = body;
    Ok(reply)
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// One request on a new TLS connection.
pub fn get_tls(cfg: &Arc<ClientConfig>, port: u16, host: &str, path: &str) -> Reply {
    let mut s = connect(cfg, port, host).unwrap_or_else(|e| panic!("TLS to {host}: {e}"));
    request(&mut s, host, path).unwrap_or_else(|e| panic!("request to {host}: {e}"))
}

/// A `[[listener]]` line for `tls = { cert, key }`.
pub fn tls_table(cert: &Path, key: &Path) -> String {
    format!(
        "{{ cert = \"{}\", key = \"{}\" }}",
        cert.display(),
        key.display()
    )
}

/// (year, month, day) of a time, for rcgen.
pub fn ymd(t: std::time::SystemTime) -> (i32, u8, u8) {
    let days = t.duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() / 86_400;
    // Civil-from-days (Howard Hinnant), enough for test dates.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let y = (yoe + era * 400 + i64::from(m <= 2)) as i32;
    (y, m, d)
}
