//! Several upstreams: balancing policies, passive and active health, STATUS=, reloads that
//! retire health checks, quick mode's --proxy, h2c upstreams and config errors.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

fn site(routes: &str) -> String {
    format!(
        "[server]\nstatus_interval = \"100ms\"\n\n[[listener]]\nname = \"http\"\n\n[[site]]\nhosts = [\"*\"]\n{routes}"
    )
}

fn start(dir: tempfile::TempDir, config: &str) -> (Server, u16) {
    let cfg = write(dir.path(), "g.toml", config);
    let (l, port) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(l, "http"));
    server.wait_ready();
    (server, port)
}

fn who(port: u16, path: &str) -> String {
    let r = get_tcp(port, "a", path).unwrap();
    assert_eq!(r.status, 200, "{r:?}");
    r.header("x-upstream").unwrap_or_default()
}

fn two_upstreams(balance: &str, extra: &str) -> (UpstreamServer, UpstreamServer, String) {
    let (la, pa) = Listen::tcp();
    let (lb, pb) = Listen::tcp();
    let a = UpstreamServer::start(la, "a");
    let b = UpstreamServer::start(lb, "b");
    let cfg = site(&format!(
        "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{pa}\", \"http://127.0.0.1:{pb}\"], balance = \"{balance}\"{extra} }}\n"
    ));
    (a, b, cfg)
}

fn wait_status(server: &Server, needle: &str) -> String {
    server
        .notify()
        .wait_for(|m| m.contains(needle), Duration::from_secs(5))
        .map(|(_, m)| m)
        .unwrap_or_else(|| panic!("no STATUS with {needle:?}; stderr:\n{}", server.stderr()))
}

#[test]
fn round_robin_spreads_and_a_dead_upstream_is_ejected_without_failing_requests() {
    let (a, mut b, cfg) = two_upstreams("round_robin", ", retry_connect_for = \"0s\"");
    let (server, port) = start(tempdir(), &cfg);
    wait_status(&server, "upstreams 2/2 up");
    let answers: Vec<String> = (0..10).map(|i| who(port, &format!("/{i}"))).collect();
    assert_eq!(
        answers.iter().filter(|w| *w == "a").count(),
        5,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|w| *w == "b").count(),
        5,
        "{answers:?}"
    );

    // b goes away (its port closes): the request that finds out fails over to a.
    b.stop();
    drop(b);
    for i in 0..10 {
        assert_eq!(who(port, &format!("/after/{i}")), "a");
    }
    let status = wait_status(&server, "upstreams 1/2 up");
    assert!(status.contains("STATUS="), "{status}");
    assert!(server.stderr().contains("upstream ejected"));
    assert!(a.seen().len() >= 15);
}

#[test]
fn least_conn_avoids_the_busy_upstream() {
    let (a, b, cfg) = two_upstreams("least_conn", "");
    let (_server, port) = start(tempdir(), &cfg);
    let slow = std::thread::spawn(move || who(port, "/slow/1500"));
    // Wait until the slow request is in an upstream.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.seen().len() + b.seen().len() == 0 {
        assert!(Instant::now() < deadline, "slow request never arrived");
        std::thread::sleep(Duration::from_millis(10));
    }
    let busy = if a.seen().is_empty() { "b" } else { "a" };
    for i in 0..6 {
        assert_ne!(who(port, &format!("/q/{i}")), busy);
    }
    assert_eq!(slow.join().unwrap(), busy);
}

#[test]
fn random_two_uses_both_upstreams() {
    let (a, b, cfg) = two_upstreams("random_two", "");
    let (_server, port) = start(tempdir(), &cfg);
    for i in 0..40 {
        who(port, &format!("/{i}"));
    }
    let (na, nb) = (a.seen().len(), b.seen().len());
    assert_eq!(na + nb, 40);
    assert!(na >= 5 && nb >= 5, "a={na} b={nb}");
}

#[test]
fn active_health_checks_take_an_upstream_out_and_back() {
    let (a, b, cfg) = two_upstreams(
        "round_robin",
        ", health = { path = \"/healthz\", interval = \"100ms\", timeout = \"1s\" }",
    );
    let (server, port) = start(tempdir(), &cfg);
    wait_status(&server, "upstreams 2/2 up");
    a.set_healthy(false);
    wait_status(&server, "upstreams 1/2 up");
    let before = a.seen().len();
    for i in 0..8 {
        assert_eq!(who(port, &format!("/{i}")), "b");
    }
    assert_eq!(a.seen().len(), before);
    a.set_healthy(true);
    wait_status(&server, "upstreams 2/2 up");
    let answers: Vec<String> = (0..4).map(|i| who(port, &format!("/back/{i}"))).collect();
    assert!(answers.contains(&"a".to_owned()), "{answers:?}");
    assert!(b.state.health_checks.load(Ordering::SeqCst) >= 3);
}

#[test]
fn reload_retires_the_previous_generations_health_checks_and_connections() {
    let (la, pa) = Listen::tcp();
    let a = UpstreamServer::start(la, "a");
    let with_health = site(&format!(
        "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{pa}\"], health = {{ path = \"/healthz\", interval = \"50ms\" }} }}\n"
    ));
    let without = site(&format!(
        "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{pa}\"] }}\n"
    ));
    let (server, port) = start(tempdir(), &with_health);
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.state.health_checks.load(Ordering::SeqCst) < 3 {
        assert!(Instant::now() < deadline, "no health checks");
        std::thread::sleep(Duration::from_millis(20));
    }
    write(server.dir.path(), "g.toml", &without);
    server.notify().clear();
    server.signal(libc::SIGHUP);
    server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .expect("reload finished");
    // Let a check that was already running finish, then the count must stand still.
    std::thread::sleep(Duration::from_millis(200));
    let after_reload = a.state.health_checks.load(Ordering::SeqCst);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(a.state.health_checks.load(Ordering::SeqCst), after_reload);
    assert_eq!(who(port, "/x"), "a");
    // The old generation's pool is gone with it: its kept-alive connections close, and only
    // the new generation's connection stays open.
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.state.open.load(Ordering::SeqCst) != 1 {
        assert!(
            Instant::now() < deadline,
            "{} upstream connections still open",
            a.state.open.load(Ordering::SeqCst)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn quick_mode_proxy_flags_build_proxy_routes() {
    let dir = tempdir();
    let sock = dir.path().join("api.sock");
    let _api = UpstreamServer::start(Listen::unix(&sock), "api");
    let (lw, pw) = Listen::tcp();
    let _web = UpstreamServer::start(lw, "web");
    let port = free_port();
    let launch = Launch {
        args: vec![
            "serve".into(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--proxy".into(),
            format!("/api/=unix:{}", sock.display()),
            "--proxy".into(),
            format!("/=http://127.0.0.1:{pw}"),
            "--log-target".into(),
            "stderr".into(),
        ],
        ..Launch::serve(std::path::Path::new("/nonexistent"))
    };
    let server = Server::start(dir, launch);
    server.wait_ready();
    assert_eq!(
        get_eventually(port, "/api/users")
            .header("x-upstream")
            .as_deref(),
        Some("api")
    );
    // "/" replaced the built-in welcome page.
    assert_eq!(
        get_tcp(port, "a", "/index.html")
            .unwrap()
            .header("x-upstream")
            .as_deref(),
        Some("web")
    );
}

#[test]
fn h2c_upstreams() {
    let (l, p) = Listen::tcp();
    let up = UpstreamServer::start(l, "h2");
    let cfg = site(&format!(
        "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{p}\"], http2 = true }}\n"
    ));
    let (_server, port) = start(tempdir(), &cfg);
    let r = get_tcp(port, "app.example.com", "/over/h2?x=1").unwrap();
    assert_eq!(r.status, 200);
    // hyper's HTTP/2 server sees the absolute URI built from :scheme and :authority.
    assert!(
        r.text()
            .starts_with("GET http://app.example.com/over/h2?x=1\n"),
        "{}",
        r.text()
    );
    assert_eq!(up.seen().len(), 1);
}

#[test]
fn a_spooled_upload_to_an_h2c_upstream_arrives_byte_exact() {
    // Spilled to a temporary file, the body goes upstream as a mapping of that file, which
    // HTTP/2's frames copy in user space (only HTTP/1's writer uses sendfile).
    let (l, p) = Listen::tcp();
    let _up = UpstreamServer::start(l, "h2");
    let cfg = site(&format!(
        "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{p}\"], http2 = true }}\n"
    ));
    let (_server, port) = start(tempdir(), &cfg);
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let head = format!(
        "POST /digest HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let r = exchange(&mut c, &[head.as_bytes(), &body].concat()).unwrap();
    let want = format!("{} {}", body.len(), proxy_upstream::fnv1a(&body));
    assert_eq!((r.status, r.text()), (200, want));
}

#[test]
fn proxy_config_errors_point_at_their_values() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "bad.toml",
        r#"[[listener]]
name = "http"
bind = ["127.0.0.1:1"]
[[site]]
hosts = ["*"]
[[site.route]]
path = "/a/"
proxy = { upstreams = ["ftp://x"], balance = "fastest", max_body = "lots", connect_timeout = "0s" }
[[site.route]]
path = "/b/"
proxy = { upstreams = [], trusted_proxies = ["10.0.0.0/99"] }
[[site.route]]
path = "/c/"
respond = { body = "x" }
proxy = { upstreams = ["http://127.0.0.1:1"] }
"#,
    );
    let (code, _, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{err}");
    for needle in [
        "bad.toml:8:24: \"ftp://x\"",
        "bad.toml:8:46: unknown balance \"fastest\"",
        "bad.toml:8:68: `max_body`",
        "bad.toml:8:94: `connect_timeout` must be greater than 0",
        "bad.toml:11:23: `upstreams` needs at least one address",
        "bad.toml:11:46: \"10.0.0.0/99\"",
        "bad.toml:12:1: this route has more than one action",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
}

#[test]
fn an_ejected_upstream_returns_after_eject_for() {
    let (la, pa) = Listen::tcp();
    let (lb, pb) = Listen::tcp();
    let _a = UpstreamServer::start(la, "a");
    let mut b = UpstreamServer::start(lb, "b");
    let cfg = site(&format!(
        "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{pa}\", \"http://127.0.0.1:{pb}\"], retry_connect_for = \"0s\", eject_for = \"700ms\" }}\n"
    ));
    let (server, port) = start(tempdir(), &cfg);
    b.stop();
    drop(b);
    for i in 0..4 {
        assert_eq!(who(port, &format!("/{i}")), "a");
    }
    wait_status(&server, "upstreams 1/2 up");
    // b comes back on the same port; once eject_for has passed it is in the rotation again.
    let b = UpstreamServer::start(
        Listen::Tcp(std::net::TcpListener::bind(("127.0.0.1", pb)).unwrap()),
        "b",
    );
    wait_status(&server, "upstreams 2/2 up");
    let answers: Vec<String> = (0..6).map(|i| who(port, &format!("/back/{i}"))).collect();
    assert_eq!(
        answers.iter().filter(|w| *w == "b").count(),
        3,
        "{answers:?}"
    );
    assert_eq!(b.seen().len(), 3);
}
