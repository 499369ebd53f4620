//! Serving an axum Router with `Server`: READY after the router answers, fallback
//! addresses, start-up errors with exit 78, the access log, composition with tower-http.

mod common;
use common::*;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    common::main(
        &[
            (
                "ready_only_after_the_router_answers",
                ready_only_after_the_router_answers,
            ),
            (
                "a_fallback_address_serves_when_run_by_hand",
                a_fallback_address_serves_when_run_by_hand,
            ),
            (
                "a_fallback_unix_socket_is_removed_on_stop_a_passed_one_is_not",
                a_fallback_unix_socket_is_removed_on_stop_a_passed_one_is_not,
            ),
            (
                "no_socket_and_no_fallback_exits_78",
                no_socket_and_no_fallback_exits_78,
            ),
            (
                "a_bad_fallback_address_exits_78",
                a_bad_fallback_address_exits_78,
            ),
            (
                "an_unclaimed_fd_name_exits_78_naming_the_fd",
                an_unclaimed_fd_name_exits_78_naming_the_fd,
            ),
            (
                "requests_are_logged_and_tower_http_layers_compose",
                requests_are_logged_and_tower_http_layers_compose,
            ),
            (
                "handlers_get_axum_connect_info",
                handlers_get_axum_connect_info,
            ),
        ],
        &[("router", common::app::router_main)],
    )
}

fn ready_only_after_the_router_answers() {
    let dir = tempfile::tempdir().unwrap();
    let healthy = dir.path().join("healthy");
    let (l, port) = tcp_listener();
    let app = App::start(
        Launch::new("router")
            .fd(l, "http")
            .env("KIT_HEALTH_FILE", healthy.to_str().unwrap()),
    );
    let (_, starting) = app
        .notify()
        .wait_for(
            |m| m.starts_with("STATUS=starting"),
            Duration::from_secs(10),
        )
        .expect("STATUS while waiting for the health check");
    assert!(
        starting.contains("GET /healthz answered 503 Service Unavailable"),
        "{starting}"
    );
    // A client that connects now waits in the backlog, it is not answered 503.
    let early = std::thread::spawn(move || (get_tcp(port, "t", "/"), Instant::now()));
    std::thread::sleep(Duration::from_millis(800));
    assert!(
        app.notify()
            .collect(Duration::ZERO)
            .iter()
            .all(|(_, m)| !m.contains("READY=1")),
        "no READY=1 while /healthz fails"
    );
    let healthy_at = Instant::now();
    std::fs::write(&healthy, "").unwrap();
    let (ready_at, ready) = app.wait_ready();
    assert!(ready_at >= healthy_at);
    assert!(ready.contains("STATUS="), "{ready}");
    // Right after READY=1 the socket answers: no retry loop here.
    assert_eq!(get_tcp(port, "t", "/").unwrap().text(), "hello");
    let (early, answered_at) = early.join().unwrap();
    let early = early.expect("the early client is answered");
    assert_eq!((early.status, early.text().as_str()), (200, "hello"));
    assert!(answered_at >= healthy_at, "answered only once healthy");
}

fn a_fallback_address_serves_when_run_by_hand() {
    let port = free_port();
    let app = App::start(Launch::new("router").env("KIT_FALLBACK", &format!("127.0.0.1:{port}")));
    app.wait_ready();
    assert_eq!(get_tcp(port, "t", "/").unwrap().text(), "hello");
}

fn a_fallback_unix_socket_is_removed_on_stop_a_passed_one_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let ours = dir.path().join("fallback.sock");
    let mut app =
        App::start(Launch::new("router").env("KIT_FALLBACK", &format!("unix:{}", ours.display())));
    app.wait_ready();
    assert_eq!(get_unix(&ours, "/").unwrap().text(), "hello");
    app.signal(libc::SIGTERM);
    app.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(!ours.exists(), "our own socket file is removed");

    let systemds = dir.path().join("passed.sock");
    let mut app =
        App::start(Launch::new("router").fd(UnixListener::bind(&systemds).unwrap(), "http"));
    app.wait_ready();
    assert_eq!(get_unix(&systemds, "/").unwrap().text(), "hello");
    app.signal(libc::SIGTERM);
    app.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(systemds.exists(), "systemd's socket file must survive us");
}

fn expect_exit_78(launch: Launch, needle: &str) {
    let mut app = App::start(launch);
    let status = app
        .wait_exit(Duration::from_secs(10))
        .expect("exits, does not serve");
    let log = app.stderr();
    assert_eq!(status.code(), Some(78), "{log}");
    assert!(log.contains(needle), "{needle}: {log}");
}

fn no_socket_and_no_fallback_exits_78() {
    expect_exit_78(
        Launch::new("router"),
        "no socket from systemd (LISTEN_FDS) and no fallback address",
    );
}

fn a_bad_fallback_address_exits_78() {
    expect_exit_78(
        Launch::new("router").env("KIT_FALLBACK", "localhost:80"),
        "\"localhost:80\" is not an address",
    );
}

fn an_unclaimed_fd_name_exits_78_naming_the_fd() {
    let (l, _) = tcp_listener();
    expect_exit_78(
        Launch::new("router")
            .fd(l, "metrics")
            .env("KIT_FD_NAME", "http"),
        "fd 3 (name \"metrics\") passed by systemd is not claimed by this service; it serves \"http\"",
    );
}

fn requests_are_logged_and_tower_http_layers_compose() {
    let (l, port) = tcp_listener();
    let app = App::start(Launch::new("router").fd(l, "http"));
    app.wait_ready();
    let reply = get_tcp(port, "Example.COM:8080", "/?token=secret").unwrap();
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-tower-http").as_deref(), Some("yes"));
    assert_eq!(get_tcp(port, "t", "/nowhere").unwrap().status, 404);
    app.wait_log("GET /nowhere 404");
    let log = app.stderr();
    let line = log
        .lines()
        .find(|l| l.contains(" INFO GET / 200 "))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        line.contains(" http_host=example.com http_duration_us=")
            && line.ends_with(" remote_addr=127.0.0.1"),
        "{line}"
    );
    assert!(
        !log.contains("secret"),
        "no query strings in the log: {log}"
    );
    assert!(
        !log.contains("/healthz"),
        "health probes are not requests: {log}"
    );
}

fn handlers_get_axum_connect_info() {
    let (l, port) = tcp_listener();
    let app = App::start(Launch::new("router").fd(l, "http"));
    app.wait_ready();
    assert_eq!(get_tcp(port, "t", "/peer").unwrap().text(), "127.0.0.1");
}
