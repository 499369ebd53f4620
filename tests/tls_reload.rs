//! TLS and SIGHUP: certificates are re-read; open connections survive; a bad pair is refused
//! and the old certificate keeps serving; an expiring certificate shows in STATUS=.

mod common;
mod tls_support;
use common::*;
use std::time::Duration;
use tls_support::*;

const CONFIG: &str = r#"
[[listener]]
name = "https"
tls = { cert = "DIR/live.crt", key = "DIR/live.key" }
[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
respond = { body = "ok" }
"#;

fn start(pki: &Pki, names: &[&str]) -> (Server, u16) {
    let dir = tempdir();
    pki.leaf(names).write(dir.path(), "live");
    let cfg = write(
        dir.path(),
        "g.toml",
        &CONFIG.replace("DIR", &dir.path().display().to_string()),
    );
    let (l, port) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(l, "https"));
    server.wait_ready();
    (server, port)
}

/// SIGHUP and the READY=1 that ends the reload; returns that datagram (with STATUS=).
fn reload(server: &Server) -> String {
    server.notify().clear();
    server.signal(libc::SIGHUP);
    server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(10))
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("reload did not finish; stderr:\n{}", server.stderr()))
}

#[test]
fn reload_swaps_the_certificate_and_keeps_open_connections() {
    let pki = Pki::new();
    let (server, port) = start(&pki, &["localhost", "old.test"]);
    let client = pki.client(&[b"http/1.1"]);
    let mut kept = connect(&client, port, "localhost").unwrap();
    assert_eq!(served_names(&kept), ["localhost", "old.test"]);
    assert_eq!(request(&mut kept, "localhost", "/").unwrap().status, 200);

    pki.leaf(&["localhost", "new.test"])
        .write(server.dir.path(), "live");
    let status = reload(&server);
    assert!(status.contains("reload ok"), "{status}");

    // The open keep-alive connection still works on its old session.
    let again = request(&mut kept, "localhost", "/").unwrap();
    assert_eq!((again.status, again.text().as_str()), (200, "ok"));
    // A new connection sees the new certificate.
    let fresh = connect(&client, port, "localhost").unwrap();
    assert_eq!(served_names(&fresh), ["localhost", "new.test"]);
}

#[test]
fn a_mismatched_key_on_reload_is_refused_and_the_old_certificate_serves() {
    let pki = Pki::new();
    let (server, port) = start(&pki, &["localhost", "old.test"]);
    let client = pki.client(&[b"http/1.1"]);
    // New certificate, but the key of yet another one.
    let new = pki.leaf(&["localhost", "new.test"]);
    let other = pki.leaf(&["localhost"]);
    std::fs::write(server.dir.path().join("live.crt"), &new.cert_pem).unwrap();
    std::fs::write(server.dir.path().join("live.key"), &other.key_pem).unwrap();

    let status = reload(&server);
    assert!(status.contains("reload FAILED"), "{status}");
    assert!(status.contains("does not belong"), "{status}");
    let stderr = server.stderr();
    assert!(
        stderr.contains("live.key does not belong to the certificate"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("PRIVATE KEY"),
        "key never logged: {stderr}"
    );

    let mut s = connect(&client, port, "localhost").unwrap();
    assert_eq!(served_names(&s), ["localhost", "old.test"]);
    assert_eq!(request(&mut s, "localhost", "/").unwrap().status, 200);
}

#[test]
fn a_certificate_expiring_within_14_days_is_warned_about_in_the_journal_and_status() {
    let pki = Pki::new();
    let (server, _port) = start(&pki, &["localhost"]);
    let soon = std::time::SystemTime::now() + Duration::from_secs(3 * 86_400);
    pki.leaf_until(&["localhost"], Some(ymd(soon)))
        .write(server.dir.path(), "live");
    let status = reload(&server);
    assert!(status.contains("reload ok"), "{status}");
    assert!(
        status.contains("WARNING: TLS certificate localhost") && status.contains("expires in"),
        "{status}"
    );
    let stderr = server.stderr();
    assert!(
        stderr.contains("WARN") && stderr.contains("expires in"),
        "journal warning: {stderr}"
    );
}
