//! The admin listener: /metrics, /status, /healthz on a real unix socket; `gatehouse status`.

mod common;
use common::*;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

fn config() -> String {
    r#"
[server]
shutdown_timeout = "10s"

[[listener]]
name = "http"

[[listener]]
name = "admin"
role = "admin"

[[site]]
hosts = ["example.com"]
[[site.route]]
path = "/"
respond = { body = "hello" }
[[site.route]]
path = "/teapot"
respond = { status = 418, body = "short and stout" }
"#
    .into()
}

fn start() -> (Server, u16, std::path::PathBuf) {
    let dir = tempdir();
    let admin_path = dir.path().join("admin.sock");
    let cfg = write(dir.path(), "g.toml", &config());
    let (l, port) = tcp_listener();
    let admin = UnixListener::bind(&admin_path).unwrap();
    let server = Server::start(dir, Launch::serve(&cfg).fd(l, "http").fd(admin, "admin"));
    server.wait_ready();
    (server, port, admin_path)
}

fn scrape(admin: &Path) -> prometheus_parse::Scrape {
    let reply = get_unix(admin, "admin", "/metrics").unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply
        .header("content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let lines = reply
        .text()
        .lines()
        .map(|l| Ok(l.to_owned()))
        .collect::<Vec<_>>();
    prometheus_parse::Scrape::parse(lines.into_iter()).expect("valid Prometheus text")
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) => v,
            prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_move_with_the_requests_made() {
    let (_server, port, admin) = start();
    let before = scrape(&admin);
    let ok = [
        ("site", "example.com"),
        ("kind", "respond"),
        ("class", "2xx"),
    ];
    let teapot = [
        ("site", "example.com"),
        ("kind", "respond"),
        ("class", "4xx"),
    ];
    let no_site = [("site", "-"), ("kind", "none"), ("class", "4xx")];
    assert_eq!(value(&before, "gatehouse_http_requests_total", &ok), 0.0);

    for _ in 0..3 {
        assert_eq!(get_tcp(port, "example.com", "/").unwrap().status, 200);
    }
    assert_eq!(get_tcp(port, "example.com", "/teapot").unwrap().status, 418);
    assert_eq!(get_tcp(port, "unknown.org", "/").unwrap().status, 404);

    let after = scrape(&admin);
    assert_eq!(value(&after, "gatehouse_http_requests_total", &ok), 3.0);
    assert_eq!(value(&after, "gatehouse_http_requests_total", &teapot), 1.0);
    assert_eq!(
        value(&after, "gatehouse_http_requests_total", &no_site),
        1.0
    );
    assert_eq!(
        value(&after, "gatehouse_http_request_duration_seconds_count", &[]),
        5.0
    );
    assert!(value(&after, "gatehouse_received_bytes_total", &[]) > 5.0 * 40.0);
    assert!(value(&after, "gatehouse_sent_bytes_total", &[]) > 5.0 * 60.0);
    assert!(value(&after, "gatehouse_connections_accepted_total", &[]) >= 5.0);
    assert_eq!(
        value(
            &after,
            "gatehouse_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    assert!(value(&after, "gatehouse_process_start_time_seconds", &[]) > 1.7e9);
    assert_eq!(value(&after, "gatehouse_last_reload_success", &[]), 1.0);
}

#[test]
fn reloads_are_counted_and_status_agrees_with_systemd_status() {
    let (server, port, admin) = start();
    get_tcp(port, "example.com", "/").unwrap();
    let cfg = server.dir.path().join("g.toml");
    std::fs::write(&cfg, "[[listener]]\nname = \"http\"\nbind = 7\n").unwrap();
    server.signal(libc::SIGHUP);
    let (_, ready) = server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .unwrap();
    let m = scrape(&admin);
    assert_eq!(
        value(&m, "gatehouse_reloads_total", &[("result", "failed")]),
        1.0
    );
    assert_eq!(value(&m, "gatehouse_last_reload_success", &[]), 0.0);

    let status = get_unix(&admin, "admin", "/status").unwrap();
    assert_eq!(
        status.header("content-type").as_deref(),
        Some("application/json")
    );
    let json: serde_json::Value = serde_json::from_slice(&status.body).unwrap();
    assert_eq!(json["requests_total"], 1);
    assert_eq!(json["reloads_failed"], 1);
    assert_eq!(json["last_reload"]["ok"], false);
    assert_eq!(json["draining"], false);
    let status_line = ready
        .lines()
        .find_map(|l| l.strip_prefix("STATUS="))
        .unwrap();
    // The open count may still include the first client while the server sees its close.
    assert!(
        status_line.contains(" open, 1 request served; reload FAILED at "),
        "{status_line}"
    );

    let (code, out, err) = run_cli(&["status", "--admin", admin.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("requests: 1"), "{out}");
    assert!(out.contains("reloads: 0 ok, 1 failed"), "{out}");
}

#[test]
fn healthz_turns_503_while_draining() {
    let (mut server, port, admin) = start();
    let ok = get_unix(&admin, "admin", "/healthz").unwrap();
    assert_eq!((ok.status, ok.text().as_str()), (200, "ok\n"));

    // Hold the drain open with a response the client does not read.
    let big = "x".repeat(4 << 20);
    std::fs::write(
        server.dir.path().join("g.toml"),
        config().replace("body = \"hello\"", &format!("body = \"{big}\"")),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .unwrap();
    let mut stuck = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    server.signal(libc::SIGTERM);
    server
        .notify()
        .wait_for_line("STOPPING=1", Duration::from_secs(5))
        .unwrap();
    let draining = get_unix(&admin, "admin", "/healthz").unwrap();
    assert_eq!(
        (draining.status, draining.text().as_str()),
        (503, "draining\n")
    );
    drop(stuck);
    assert!(server.wait_exit(Duration::from_secs(5)).unwrap().success());
}

#[test]
fn admin_paths_never_reach_the_public_listener_and_sites_never_the_admin_one() {
    let (_server, port, admin) = start();
    for path in ["/metrics", "/status", "/healthz"] {
        for host in ["example.com", "admin", "localhost"] {
            let r = get_tcp(port, host, path).unwrap();
            assert!(
                r.status == 404 || r.text() == "hello",
                "{host}{path} on the public listener: {} {}",
                r.status,
                r.text()
            );
            assert!(!r.text().contains("gatehouse_"), "{host}{path}");
        }
    }
    assert_eq!(get_unix(&admin, "example.com", "/").unwrap().status, 404);
    let mut s = UnixStream::connect(&admin).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let post = exchange(
        &mut s,
        b"POST /metrics HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(post.status, 405);
}

#[test]
fn status_command_fails_when_unreachable() {
    let (code, _, err) = run_cli(&["status", "--admin", "/nonexistent/admin.sock"]);
    assert_eq!(code, Some(69));
    assert!(err.contains("/nonexistent/admin.sock"), "{err}");
}

#[test]
fn a_site_cannot_claim_the_admin_listener() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "g.toml",
        "[[listener]]\nname = \"admin\"\nrole = \"admin\"\n[[site]]\nhosts = [\"*\"]\nlisteners = [\"admin\"]\n[[site.route]]\npath = \"/\"\nrespond = {}\n",
    );
    let (code, _, err) = run_cli(&["check", "-c", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78));
    assert!(err.contains(":6:14: "), "{err}");
}
