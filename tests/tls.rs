//! TLS against the real binary: a real TLS listener fd, a throwaway CA, a real rustls client.

mod common;
mod proxy_upstream;
mod tls_support;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use tls_support::*;

/// Starts gatehouse with `config` and one passed socket per name in `fds`; returns the ports.
fn start(
    dir: tempfile::TempDir,
    config: &str,
    fds: &[&str],
    env: &[(&str, &str)],
) -> (Server, Vec<u16>) {
    let cfg = write(dir.path(), "g.toml", config);
    let mut launch = Launch::serve(&cfg);
    let mut ports = Vec::new();
    for name in fds {
        let (l, port) = tcp_listener();
        launch = launch.fd(l, name);
        ports.push(port);
    }
    for (k, v) in env {
        launch = launch.env(k, v);
    }
    let server = Server::start(dir, launch);
    server.wait_ready();
    (server, ports)
}

#[test]
fn http1_and_h2_over_tls_by_alpn_with_hsts_only_over_tls() {
    let pki = Pki::new();
    let dir = tempdir();
    let (cert, key) = pki.leaf(&["localhost"]).write(dir.path(), "site");
    let config = format!(
        r#"
[[listener]]
name = "https"
tls = {}
[[listener]]
name = "http"

[[site]]
hosts = ["*"]
hsts = "max-age=31536000; includeSubDomains"
[[site.route]]
path = "/"
respond = {{ body = "hello tls" }}
"#,
        tls_table(&cert, &key)
    );
    let (server, ports) = start(dir, &config, &["https", "http"], &[]);
    let (tls_port, plain_port) = (ports[0], ports[1]);

    // HTTP/1.1, chosen by ALPN.
    let h1 = pki.client(&[b"http/1.1"]);
    let mut s = connect(&h1, tls_port, "localhost").unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    let version = s.conn.protocol_version();
    assert!(
        matches!(version, Some(rustls::ProtocolVersion::TLSv1_3)),
        "{version:?}"
    );
    let r = request(&mut s, "localhost", "/").unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "hello tls"));
    assert_eq!(
        r.header("strict-transport-security").as_deref(),
        Some("max-age=31536000; includeSubDomains")
    );
    // Keep-alive: a second request on the same TLS session.
    assert_eq!(request(&mut s, "localhost", "/x").unwrap().status, 200);

    // Plain HTTP on the other listener: no HSTS.
    let plain = get_tcp(plain_port, "localhost", "/").unwrap();
    assert_eq!(plain.status, 200);
    assert_eq!(plain.header("strict-transport-security"), None);

    // TLS 1.2 is accepted too.
    let mut roots = rustls::RootCertStore::empty();
    roots.add_parsable_certificates(
        rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()).map(|c| c.unwrap()),
    );
    let tls12 = std::sync::Arc::new(
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    );
    let mut s12 = connect(&tls12, tls_port, "localhost").unwrap();
    assert_eq!(
        s12.conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    assert_eq!(request(&mut s12, "localhost", "/").unwrap().status, 200);

    // HTTP/2, chosen by ALPN, with hyper's client over tokio-rustls.
    let h2 = pki.client(&[b"h2", b"http/1.1"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
            .await
            .unwrap();
        let tls = tokio::time::timeout(
            Duration::from_secs(5),
            tokio_rustls::TlsConnector::from(h2).connect(
                rustls::pki_types::ServerName::try_from("localhost").unwrap(),
                tcp,
            ),
        )
        .await
        .expect("handshake in time")
        .expect("handshake");
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(tls),
        )
        .await
        .expect("h2 handshake");
        tokio::spawn(conn);
        for _ in 0..2 {
            let req = http::Request::get("https://localhost/")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
                .await
                .expect("answer in time")
                .unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.status().as_u16(), 200);
            assert!(resp.headers().contains_key("strict-transport-security"));
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            assert_eq!(&body[..], b"hello tls");
        }
    });
    assert!(
        !server.stderr().contains("BEGIN"),
        "no PEM in the log: {}",
        server.stderr()
    );
}

#[test]
fn sni_picks_the_site_certificate_and_strict_sni_refuses_unknown_names() {
    let pki = Pki::new();
    let dir = tempdir();
    let (dc, dk) = pki.leaf(&["default.test"]).write(dir.path(), "default");
    let (ac, ak) = pki.leaf(&["a.test"]).write(dir.path(), "a");
    let (bc, bk) = pki.leaf(&["*.b.test"]).write(dir.path(), "b");
    let config = format!(
        r#"
[[listener]]
name = "https"
tls = {default}
[[listener]]
name = "strict"
tls = {{ cert = "{dc}", key = "{dk}", strict_sni = true }}

[[site]]
hosts = ["a.test"]
tls = {a}
[[site.route]]
path = "/"
respond = {{ body = "site a" }}

[[site]]
hosts = ["*.b.test"]
tls = {b}
[[site.route]]
path = "/"
respond = {{ body = "site b" }}

[[site]]
hosts = ["plain.test"]
[[site.route]]
path = "/"
respond = {{ body = "plain" }}
"#,
        default = tls_table(&dc, &dk),
        dc = dc.display(),
        dk = dk.display(),
        a = tls_table(&ac, &ak),
        b = tls_table(&bc, &bk),
    );
    let (_server, ports) = start(dir, &config, &["https", "strict"], &[]);
    let client = pki.client(&[b"http/1.1"]);
    // rustls verifies the name too, so a successful handshake already proves the right leaf;
    // the SAN check makes the choice explicit.
    let mut a = connect(&client, ports[0], "a.test").unwrap();
    assert_eq!(served_names(&a), ["a.test"]);
    assert_eq!(request(&mut a, "a.test", "/").unwrap().text(), "site a");
    let mut b = connect(&client, ports[0], "x.b.test").unwrap();
    assert_eq!(served_names(&b), ["*.b.test"]);
    assert_eq!(request(&mut b, "x.b.test", "/").unwrap().text(), "site b");

    // A name no site claims gets the listener's certificate, which the client then rejects
    // for the wrong name: the handshake fails on the client side with a name error.
    let err = connect(&client, ports[0], "unknown.test").unwrap_err();
    assert!(err.to_string().contains("not valid for name"), "{err}");
    // A site without its own certificate is served under the listener's certificate.
    let d = connect(&client, ports[0], "default.test").unwrap();
    assert_eq!(served_names(&d), ["default.test"]);

    // strict_sni: plain.test is a known name without its own certificate, so the server
    // presents the listener's certificate (the client only objects to the name); an unknown
    // name gets a handshake alert from the server instead of any certificate.
    let known = connect(&client, ports[1], "plain.test").unwrap_err();
    assert!(known.to_string().contains("not valid for name"), "{known}");
    let a_strict = connect(&client, ports[1], "a.test").unwrap();
    assert_eq!(served_names(&a_strict), ["a.test"]);
    let refused = connect(&client, ports[1], "unknown.test").unwrap_err();
    assert!(
        refused.to_string().contains("AlertReceived") || refused.to_string().contains("alert"),
        "server refused the handshake: {refused}"
    );
}

#[test]
fn credentials_directory_with_cred_paths_and_tls_auto() {
    let pki = Pki::new();
    let dir = tempdir();
    let creds = dir.path().join("credentials");
    std::fs::create_dir(&creds).unwrap();
    let auto = pki.leaf(&["auto.test"]);
    std::fs::write(creds.join("gatehouse.tls.crt"), &auto.cert_pem).unwrap();
    std::fs::write(creds.join("gatehouse.tls.key"), &auto.key_pem).unwrap();
    let named = pki.leaf(&["named.test"]);
    std::fs::write(creds.join("site.crt"), &named.cert_pem).unwrap();
    std::fs::write(creds.join("site.key"), &named.key_pem).unwrap();
    let config = r#"
[[listener]]
name = "auto"
tls = "auto"
[[listener]]
name = "named"
tls = { cert = "cred:site.crt", key = "cred:site.key" }

[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
respond = { body = "from credentials" }
"#;
    let creds_env = creds.display().to_string();
    let (_server, ports) = start(
        dir,
        config,
        &["auto", "named"],
        &[("CREDENTIALS_DIRECTORY", &creds_env)],
    );
    let client = pki.client(&[b"http/1.1"]);
    let mut s = connect(&client, ports[0], "auto.test").unwrap();
    assert_eq!(served_names(&s), ["auto.test"]);
    assert_eq!(
        request(&mut s, "auto.test", "/").unwrap().text(),
        "from credentials"
    );
    let mut s = connect(&client, ports[1], "named.test").unwrap();
    assert_eq!(served_names(&s), ["named.test"]);
    assert_eq!(request(&mut s, "named.test", "/").unwrap().status, 200);
}

#[test]
fn redirect_https_answers_308_with_host_path_and_query() {
    let pki = Pki::new();
    let dir = tempdir();
    let (cert, key) = pki
        .leaf(&["example.com", "site.test"])
        .write(dir.path(), "c");
    let config = format!(
        r#"
[[listener]]
name = "http"
redirect_https = true
[[listener]]
name = "plain"
[[listener]]
name = "https"
tls = {}

[[site]]
hosts = ["example.com"]
[[site.route]]
path = "/"
respond = {{ body = "example" }}

[[site]]
hosts = ["site.test"]
redirect_https = true
hsts = "max-age=60"
[[site.route]]
path = "/"
respond = {{ body = "secure site" }}
"#,
        tls_table(&cert, &key)
    );
    let (_server, ports) = start(dir, &config, &["http", "plain", "https"], &[]);
    let r = get_tcp(ports[0], "Example.COM:80", "/a/b?x=1&y=2").unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://example.com/a/b?x=1&y=2")
    );
    // Site-level: only the site that asks for it, only on plain listeners.
    let r = get_tcp(ports[1], "site.test", "/p?q").unwrap();
    assert_eq!(r.status, 308);
    assert_eq!(
        r.header("location").as_deref(),
        Some("https://site.test/p?q")
    );
    assert_eq!(r.header("strict-transport-security"), None);
    assert_eq!(
        get_tcp(ports[1], "example.com", "/").unwrap().text(),
        "example"
    );
    let r = get_tls(&pki.client(&[]), ports[2], "site.test", "/p?q");
    assert_eq!((r.status, r.text().as_str()), (200, "secure site"));
    assert_eq!(
        r.header("strict-transport-security").as_deref(),
        Some("max-age=60")
    );
}

/// One TLS listener with `header_read_timeout` 500ms and room for one connection.
fn one_slot_server(pki: &Pki) -> (Server, u16) {
    let dir = tempdir();
    let (cert, key) = pki.leaf(&["localhost"]).write(dir.path(), "c");
    let config = format!(
        r#"
[server]
header_read_timeout = "500ms"
max_connections = 1
[[listener]]
name = "https"
tls = {}
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
respond = {{ body = "ok" }}
"#,
        tls_table(&cert, &key)
    );
    let (server, ports) = start(dir, &config, &["https"], &[]);
    (server, ports[0])
}

#[test]
fn plain_http_on_the_tls_port_is_closed_promptly_and_the_server_lives_on() {
    let pki = Pki::new();
    let (mut server, port) = one_slot_server(&pki);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    s.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    // A readable 400 (like nginx) and a close, not a hang and not TLS bytes.
    s.read_to_end(&mut buf).unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed promptly"
    );
    let reply = parse_reply(&buf).unwrap();
    assert_eq!(reply.status, 400);
    assert!(reply.text().contains("use https://"), "{}", reply.text());
    drop(s);
    // Bytes that are neither TLS nor HTTP: rustls refuses them and the connection closes.
    let mut junk = TcpStream::connect(("127.0.0.1", port)).unwrap();
    junk.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let started = Instant::now();
    junk.write_all(b"\x00\x01\x02junk\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = junk.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed promptly"
    );
    assert!(!buf.starts_with(b"HTTP/"));
    assert!(server.is_running());
    let r = get_tls(&pki.client(&[]), port, "localhost", "/");
    assert_eq!(r.status, 200);
}

#[test]
fn a_silent_client_is_cut_off_by_the_handshake_timeout() {
    let pki = Pki::new();
    let (_server, port) = one_slot_server(&pki);
    let mut silent = TcpStream::connect(("127.0.0.1", port)).unwrap();
    silent
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let started = Instant::now();
    let mut b = [0u8; 1];
    let n = silent.read(&mut b).unwrap_or(0);
    let waited = started.elapsed();
    assert_eq!(n, 0, "server closed the silent connection");
    assert!(
        waited >= Duration::from_millis(400) && waited < Duration::from_secs(3),
        "cut off after header_read_timeout, took {waited:?}"
    );
    // Its slot (max_connections = 1) is free again.
    let r = get_tls(&pki.client(&[]), port, "localhost", "/");
    assert_eq!(r.text(), "ok");
}

#[test]
fn check_refuses_a_mismatched_key_and_missing_credentials_with_exit_78() {
    let pki = Pki::new();
    let dir = tempdir();
    let (cert, _) = pki.leaf(&["a.test"]).write(dir.path(), "a");
    let (_, other_key) = pki.leaf(&["b.test"]).write(dir.path(), "b");
    let cfg = write(
        dir.path(),
        "g.toml",
        &format!(
            "[[listener]]\nname = \"https\"\nbind = [\"127.0.0.1:1\"]\ntls = {}\n\n[[site]]\nhosts = [\"*\"]\ntls = {{ cert = \"cred:x.crt\", key = \"relative.key\" }}\n[[site.route]]\npath = \"/\"\nrespond = {{}}\n",
            tls_table(&cert, &other_key)
        ),
    );
    let (code, _, stderr) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(
        stderr.contains("does not belong to the certificate"),
        "{stderr}"
    );
    assert!(
        stderr.contains("g.toml:4:"),
        "error points at the tls line: {stderr}"
    );
    assert!(stderr.contains("needs $CREDENTIALS_DIRECTORY"), "{stderr}");
    assert!(stderr.contains("must be an absolute path"), "{stderr}");
    assert!(
        !stderr.contains("PRIVATE KEY"),
        "key contents never printed: {stderr}"
    );

    // A garbage key file.
    std::fs::write(&other_key, "not a key\n").unwrap();
    let cfg2 = write(
        dir.path(),
        "g2.toml",
        &format!(
            "[[listener]]\nname = \"https\"\nbind = [\"127.0.0.1:1\"]\ntls = {}\n",
            tls_table(&cert, &other_key)
        ),
    );
    let (code, _, stderr) = run_cli(&["check", "--config", cfg2.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{stderr}");
    assert!(stderr.contains("no private key block"), "{stderr}");
}

#[test]
fn check_warns_about_an_expiring_certificate_and_a_world_readable_key() {
    let pki = Pki::new();
    let dir = tempdir();
    let soon = std::time::SystemTime::now() + Duration::from_secs(5 * 86_400);
    let (cert, key) = pki
        .leaf_until(&["soon.test"], Some(ymd(soon)))
        .write(dir.path(), "soon");
    let cfg = write(
        dir.path(),
        "g.toml",
        &format!(
            "[[listener]]\nname = \"https\"\nbind = [\"127.0.0.1:1\"]\ntls = {}\n",
            tls_table(&cert, &key)
        ),
    );
    let (code, stdout, stderr) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("configuration OK"));
    assert!(
        stderr.contains("warning: TLS certificate soon.test") && stderr.contains("expires in"),
        "{stderr}"
    );
    assert!(!stderr.contains("readable by every user"), "{stderr}");
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let (code, _, stderr) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "warning: TLS private key {} is readable by every user",
            key.display()
        )),
        "{stderr}"
    );
}

#[test]
fn the_shipped_example_config_checks_with_credentials() {
    let pki = Pki::new();
    let dir = tempdir();
    let leaf = pki.leaf(&["example.com", "www.example.com"]);
    std::fs::write(dir.path().join("gatehouse.tls.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("gatehouse.tls.key"), &leaf.key_pem).unwrap();
    let cfg = example_config(dir.path(), "units/examples/tls/gatehouse.toml");
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env("CREDENTIALS_DIRECTORY", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    // Without the credentials the same file is refused, naming what is missing.
    let out = std::process::Command::new(BIN)
        .args(["check", "--config", cfg.to_str().unwrap()])
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{stderr}");
    assert!(
        stderr.contains("tls = \"auto\" needs $CREDENTIALS_DIRECTORY"),
        "{stderr}"
    );
}

#[test]
fn proxied_requests_over_tls_say_https_to_the_upstream() {
    let pki = Pki::new();
    let dir = tempdir();
    let (cert, key) = pki.leaf(&["localhost"]).write(dir.path(), "site");
    let (l, up_port) = proxy_upstream::Listen::tcp();
    let upstream = proxy_upstream::UpstreamServer::start(l, "app");
    let config = format!(
        r#"
[[listener]]
name = "https"
tls = {}
[[listener]]
name = "http"
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"] }}
"#,
        tls_table(&cert, &key)
    );
    let (_server, ports) = start(dir, &config, &["https", "http"], &[]);
    let h1 = pki.client(&[b"http/1.1"]);
    assert_eq!(get_tls(&h1, ports[0], "localhost", "/over-tls").status, 200);
    assert_eq!(
        get_tcp(ports[1], "localhost", "/plain").unwrap().status,
        200
    );
    let seen = upstream.seen();
    let proto = |path: &str| {
        let s = seen
            .iter()
            .find(|s| s.path == path)
            .expect("request reached the upstream");
        (
            s.header("x-forwarded-proto").map(str::to_owned),
            s.header("forwarded").map(str::to_owned),
        )
    };
    let (xfp, fwd) = proto("/over-tls");
    assert_eq!(xfp.as_deref(), Some("https"));
    assert!(fwd.unwrap_or_default().contains("proto=https"));
    assert_eq!(proto("/plain").0.as_deref(), Some("http"));
}

/// A client that lists `suites` in its order of preference, for `version`.
fn client_preferring(
    pki: &Pki,
    suites: &[rustls::SupportedCipherSuite],
    version: &'static rustls::SupportedProtocolVersion,
) -> std::sync::Arc<rustls::ClientConfig> {
    let provider = rustls::crypto::CryptoProvider {
        cipher_suites: suites.to_vec(),
        ..rustls::crypto::ring::default_provider()
    };
    let mut roots = rustls::RootCertStore::empty();
    for der in rustls_pemfile::certs(&mut pki.ca_pem.as_bytes()) {
        roots.add(der.unwrap()).unwrap();
    }
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[version])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    std::sync::Arc::new(cfg)
}

#[test]
fn the_server_picks_the_strongest_suite_whatever_the_client_prefers() {
    use rustls::crypto::ring::cipher_suite::*;
    let pki = Pki::new();
    let (_server, port) = one_slot_server(&pki);
    let cases = [
        (
            &rustls::version::TLS13,
            vec![
                TLS13_AES_128_GCM_SHA256,
                TLS13_CHACHA20_POLY1305_SHA256,
                TLS13_AES_256_GCM_SHA384,
            ],
            TLS13_AES_256_GCM_SHA384,
        ),
        (
            &rustls::version::TLS12,
            vec![
                TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
                TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            ],
            TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        ),
    ];
    for (version, client_order, strongest) in cases {
        let cfg = client_preferring(&pki, &client_order, version);
        let mut s = connect(&cfg, port, "localhost").unwrap();
        assert_eq!(
            s.conn.negotiated_cipher_suite().map(|c| c.suite()),
            Some(strongest.suite()),
            "{version:?}"
        );
        assert_eq!(request(&mut s, "localhost", "/").unwrap().status, 200);
    }
}
