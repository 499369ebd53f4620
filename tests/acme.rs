//! Automatic HTTPS against a real ACME CA (pebble): issuance over HTTP-01 and TLS-ALPN-01,
//! persistence and reuse across restarts, renewal under an open connection, a CA outage
//! during renewal, and the placeholder while nothing is issued.

mod acme_support;
mod common;
mod tls_support;

use acme_support::*;
use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};
use tls_support::{connect, request};

/// One plain and one TLS listener (ports bound here and passed like systemd would), one
/// ACME site for a.test and www.a.test.
struct Setup {
    http: std::net::TcpListener,
    https: std::net::TcpListener,
    http_port: u16,
    https_port: u16,
}

impl Setup {
    fn new() -> Setup {
        let (http, http_port) = tcp_listener();
        let (https, https_port) = tcp_listener();
        Setup {
            http,
            https,
            http_port,
            https_port,
        }
    }

    /// Starts gatehouse with `STATE_DIRECTORY=state` (as StateDirectory= sets it).
    fn start(&self, state: &Path, acme: &str) -> Server {
        let dir = tempdir();
        let admin = dir.path().join("admin.sock").display().to_string();
        let config = format!(
            r#"[acme]
{acme}
email = "ops@a.test"

[[listener]]
name = "http"

[[listener]]
name = "https"
tls = "acme"

[[listener]]
name = "admin"
role = "admin"
bind = ["unix:{admin}"]

[[site]]
hosts = ["a.test", "www.a.test"]
tls = "acme"
redirect_https = true
[[site.route]]
path = "/"
respond = {{ body = "hello from a\n" }}
"#
        );
        let cfg = write(dir.path(), "g.toml", &config);
        let launch = Launch::serve(&cfg)
            .fd(self.http.try_clone().unwrap(), "http")
            .fd(self.https.try_clone().unwrap(), "https")
            .env("STATE_DIRECTORY", state.to_str().unwrap());
        let server = Server::start(dir, launch);
        server.wait_ready();
        server
    }
}

fn wait_for(server: &Server, needle: &str, n: usize, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while server.stderr().matches(needle).count() < n {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged {n} times:\n{}",
            server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A client trusting pebble that offers acme-tls/1 after http/1.1, as no validator would.
fn mixed_alpn(pebble: &Pebble) -> std::sync::Arc<rustls::ClientConfig> {
    let mut cfg = (*pebble.client()).clone();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec(), b"acme-tls/1".to_vec()];
    std::sync::Arc::new(cfg)
}

fn acme_section(pebble: &Pebble) -> String {
    format!(
        "directory = \"{}\"\nca_roots = \"{}\"",
        pebble.directory(),
        pebble.https_roots.display()
    )
}

fn have_pebble() -> bool {
    have_programs(&["pebble", "pebble-challtestsrv"], "pebble")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

/// gatehouse with a.test's certificate issued by a pebble that hands out 90-day certificates.
fn issued_90_days() -> (Setup, Pebble, tempfile::TempDir, Server) {
    let setup = Setup::new();
    let pebble = Pebble::start(
        setup.http_port,
        setup.https_port,
        Duration::from_secs(90 * 86_400),
    );
    let state = tempdir();
    let server = setup.start(state.path(), &acme_section(&pebble));
    wait_for(
        &server,
        "ACME certificate for a.test (+1) installed",
        1,
        Duration::from_secs(30),
    );
    (setup, pebble, state, server)
}

#[test]
fn a_certificate_is_issued_verified_persisted_and_reused_after_a_restart() {
    if !have_pebble() {
        return;
    }
    let (setup, pebble, state, server) = issued_90_days();
    assert!(
        server.stderr().contains("GET /.well-known/acme-challenge/"),
        "the CA's HTTP-01 checks reach the plain listener:\n{}",
        server.stderr()
    );

    // The chain verifies against pebble's root, for both names.
    let trusted = pebble.client();
    let mut first = None;
    for name in ["a.test", "www.a.test"] {
        let mut s = connect(&trusted, setup.https_port, name)
            .unwrap_or_else(|e| panic!("{name}: {e}\n{}", server.stderr()));
        let mut names = tls_support::served_names(&s);
        names.sort();
        assert_eq!(names, ["a.test", "www.a.test"]);
        first.get_or_insert(served_leaf(&s));
        let reply = request(&mut s, name, "/").unwrap();
        assert_eq!(reply.text(), "hello from a\n");
    }
    let mut s = connect(&mixed_alpn(&pebble), setup.https_port, "a.test").unwrap();
    assert_eq!(request(&mut s, "a.test", "/").unwrap().status, 200);
    // Now that https works, the plain listener redirects.
    let reply = get_tcp(setup.http_port, "a.test", "/page?x=1").unwrap();
    assert_eq!(reply.status, 308);
    assert_eq!(reply.header("location").unwrap(), "https://a.test/page?x=1");

    // State: account and certificate, owner-only.
    let ca_dir = state
        .path()
        .join("acme")
        .join(format!("127.0.0.1_{}_dir", pebble.port));
    assert_eq!(mode(&ca_dir), 0o700);
    let mut files: Vec<String> = std::fs::read_dir(&ca_dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(files[1], "account.json");
    assert!(files[0].starts_with("a.test+1-") && files[0].ends_with(".pem"));
    for f in &files {
        assert_eq!(mode(&ca_dir.join(f)), 0o600, "{f}");
    }
    let status = server
        .notify()
        .wait_for(|m| m.contains("acme 1/1 valid"), Duration::from_secs(10));
    assert!(status.is_some(), "STATUS= shows the certificate");
    let admin = server.dir.path().join("admin.sock");
    let metrics = get_unix(&admin, "localhost", "/metrics").unwrap().text();
    let expiry = metrics
        .lines()
        .find(|l| {
            l.starts_with(
                "gatehouse_acme_certificate_expiry_timestamp_seconds{certificate=\"a.test (+1)\"}",
            )
        })
        .unwrap_or_else(|| panic!("{metrics}"));
    let expiry: u64 = expiry.rsplit(' ').next().unwrap().parse().unwrap();
    let in_days = expiry.saturating_sub(unix_now()) / 86_400;
    assert!((88..=90).contains(&in_days), "{expiry}");
    let status = get_unix(&admin, "localhost", "/status").unwrap().text();
    let status: serde_json::Value = serde_json::from_str(&status).unwrap();
    assert_eq!(status["acme"][0]["state"], "valid", "{status}");
    assert_eq!(status["acme"][0]["names"][1], "www.a.test", "{status}");
    let (code, out, err) = run_cli(&["status", "--admin", admin.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.contains("acme: a.test,www.a.test valid, expires 20"),
        "{out}"
    );
    assert_eq!(pebble.orders(), 1);
    drop(server);

    // A restart serves the stored certificate at once and asks the CA for nothing.
    let server = setup.start(state.path(), &acme_section(&pebble));
    let s = connect(&trusted, setup.https_port, "a.test").unwrap();
    assert_eq!(Some(served_leaf(&s)), first);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(pebble.orders(), 1, "{}", server.stderr());
    assert!(!server.stderr().contains("requesting an ACME certificate"));
    assert!(!server.stderr().contains("account registered"));
}

#[test]
fn a_short_lived_certificate_is_renewed_under_an_open_connection_and_survives_a_ca_outage() {
    if !have_pebble() {
        return;
    }
    let setup = Setup::new();
    // 15 s: renewal is due after 10 s.
    let mut pebble = Pebble::start(setup.http_port, setup.https_port, Duration::from_secs(15));
    let state = tempdir();
    // Errors (instead of warnings) only in the last 2 s, scaled down from 7 days.
    let acme = format!("{}\nerror_before_expiry = \"2s\"", acme_section(&pebble));
    let server = setup.start(state.path(), &acme);
    let installed = "ACME certificate for a.test (+1) installed";
    wait_for(&server, installed, 1, Duration::from_secs(30));
    let trusted = pebble.client();
    let mut kept = connect(&trusted, setup.https_port, "a.test").unwrap();
    let first = served_leaf(&kept);
    assert_eq!(request(&mut kept, "a.test", "/").unwrap().status, 200);

    wait_for(&server, installed, 2, Duration::from_secs(30));
    let s = connect(&trusted, setup.https_port, "a.test").unwrap();
    let second = served_leaf(&s);
    assert_ne!(second, first, "new handshakes get the renewed certificate");
    // The connection opened before the renewal is still served.
    let reply = request(&mut kept, "a.test", "/").unwrap();
    assert_eq!(reply.text(), "hello from a\n");
    assert_eq!(pebble.orders(), 2);

    // The CA goes away before the next renewal: retries fail, the current certificate is
    // still served, and the failure is logged with the reason.
    pebble.stop();
    wait_for(
        &server,
        "ACME renewal for a.test (+1) failed",
        2,
        Duration::from_secs(30),
    );
    let log = server.stderr();
    assert!(
        log.contains(
            "WARN ACME renewal for a.test (+1) failed (the current certificate is valid for"
        ),
        "{log}"
    );
    assert!(log.contains("Connection refused"), "{log}");
    assert!(log.contains("retrying in"), "{log}");
    let s = connect(&insecure_client(), setup.https_port, "a.test").unwrap();
    assert_eq!(served_leaf(&s), second);
    assert!(server.stderr().matches(installed).count() == 2);
    // Close to expiry the same failure is an error.
    wait_for(
        &server,
        "ERROR ACME renewal for a.test (+1) failed and the certificate",
        1,
        Duration::from_secs(15),
    );
}

#[test]
fn tls_alpn_01_is_answered_by_the_tls_listener() {
    if !have_pebble() {
        return;
    }
    let setup = Setup::new();
    // No plain listener reachable by the CA: pebble's HTTP port points nowhere useful.
    let pebble = Pebble::start(free_port(), setup.https_port, Duration::from_secs(86_400));
    let state = tempdir();
    let acme = format!("{}\nchallenge = \"tls-alpn-01\"", acme_section(&pebble));
    let server = setup.start(state.path(), &acme);
    wait_for(
        &server,
        "ACME certificate for a.test (+1) installed",
        1,
        Duration::from_secs(30),
    );
    assert!(
        !server.stderr().contains("acme-challenge"),
        "{}",
        server.stderr()
    );
    // Ordinary clients are unaffected, even one that lists acme-tls/1 among its protocols
    // (RFC 8737: only a handshake offering nothing else is a validation).
    let mut s = connect(&pebble.client(), setup.https_port, "www.a.test").unwrap();
    assert_eq!(request(&mut s, "www.a.test", "/").unwrap().status, 200);
    let mut s = connect(&mixed_alpn(&pebble), setup.https_port, "a.test").unwrap();
    assert_eq!(s.conn.alpn_protocol(), Some(&b"http/1.1"[..]));
    assert_eq!(request(&mut s, "a.test", "/").unwrap().status, 200);
}

#[test]
fn until_a_certificate_exists_a_placeholder_is_served_and_redirects_wait() {
    let setup = Setup::new();
    let state = tempdir();
    // A CA that does not answer (nothing listens there).
    let acme = format!("directory = \"https://127.0.0.1:{}/dir\"", free_port());
    let server = setup.start(state.path(), &acme);
    wait_for(
        &server,
        "ACME certificate for a.test (+1) not obtained, serving a self-signed placeholder",
        1,
        Duration::from_secs(10),
    );
    let mut s = connect(&insecure_client(), setup.https_port, "a.test").unwrap();
    assert!(common_name(&served_leaf(&s)).contains("placeholder"));
    assert_eq!(request(&mut s, "a.test", "/").unwrap().status, 200);
    // The plain listener serves the site instead of redirecting to a broken https.
    let reply = get_tcp(setup.http_port, "a.test", "/").unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    // An unknown challenge token falls through to the routes.
    let reply = get_tcp(
        setup.http_port,
        "a.test",
        "/.well-known/acme-challenge/nope",
    )
    .unwrap();
    assert_eq!(reply.text(), "hello from a\n");
    let status = server.notify().wait_for(
        |m| m.contains("acme 0/1 valid") && m.contains("pending"),
        Duration::from_secs(10),
    );
    assert!(status.is_some());
}

/// An ACME site on a wildcard host, which ACME over HTTP-01/TLS-ALPN-01 cannot cover.
const WILDCARD_SITE: &str = r#"[[listener]]
name = "https"
bind = ["127.0.0.1:1"]
tls = "acme"

[[site]]
hosts = ["*.a.test"]
tls = "acme"
[[site.route]]
path = "/"
respond = {}
"#;

#[test]
fn acme_configuration_mistakes_are_reported_with_positions() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "g.toml",
        &format!(
            "[acme]\ndirectory = \"http://ca.test/dir\"\nchallenge = \"dns-01\"\nemail = \"nobody\"\n\n{WILDCARD_SITE}"
        ),
    );
    let (code, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{err}");
    for want in [
        "g.toml:2:13: ACME directory \"http://ca.test/dir\" is not an https:// URL",
        "g.toml:3:13: unknown ACME challenge \"dns-01\"",
        "g.toml:4:9: \"nobody\" is not an email address",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    // Without a state directory, and for a wildcard host.
    let cfg = write(dir.path(), "h.toml", WILDCARD_SITE);
    let (code, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("$STATE_DIRECTORY is not set"), "{err}");
    let state = dir.path().join("state");
    let cfg_text = std::fs::read_to_string(&cfg).unwrap();
    let cfg = write(
        dir.path(),
        "i.toml",
        &format!("[acme]\nstate_dir = \"{}\"\n\n{cfg_text}", state.display()),
    );
    let (code, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{err}");
    assert!(
        err.contains("i.toml:11:7: tls = \"acme\" cannot cover the host \"*.a.test\""),
        "{err}"
    );
    // check reads the state directory but never creates it.
    assert!(!state.exists());
}

#[test]
fn the_shipped_acme_example_checks_under_a_state_directory() {
    let dir = tempdir();
    let cfg = example_config(dir.path(), "units/examples/tls/gatehouse-acme.toml");
    let check = |state: Option<&Path>| {
        let mut cmd = std::process::Command::new(BIN);
        cmd.args(["check", "--config", cfg.to_str().unwrap()]);
        match state {
            Some(s) => cmd.env("STATE_DIRECTORY", s),
            None => cmd.env_remove("STATE_DIRECTORY"),
        };
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = check(Some(dir.path()));
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = check(None);
    assert_eq!(code, Some(78), "{err}");
    assert!(err.contains("$STATE_DIRECTORY is not set"), "{err}");
}

#[test]
fn a_site_added_by_a_reload_gets_its_certificate_without_a_restart() {
    if !have_pebble() {
        return;
    }
    let (setup, pebble, _state, server) = issued_90_days();
    let trusted = pebble.client();
    let mut kept = connect(&trusted, setup.https_port, "a.test").unwrap();

    let cfg = config_path(&server);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "{text}\n[[site]]\nhosts = [\"b.test\"]\ntls = \"acme\"\n[[site.route]]\npath = \"/\"\nrespond = {{ body = \"hello from b\\n\" }}\n"
        ),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    wait_for(
        &server,
        "ACME certificate for b.test installed",
        1,
        Duration::from_secs(30),
    );
    let mut s = connect(&trusted, setup.https_port, "b.test").unwrap();
    assert_eq!(
        request(&mut s, "b.test", "/").unwrap().text(),
        "hello from b\n"
    );
    // a.test kept its certificate (no new order for it) and its open connection.
    assert_eq!(pebble.orders(), 2);
    assert_eq!(
        request(&mut kept, "a.test", "/").unwrap().text(),
        "hello from a\n"
    );
}
