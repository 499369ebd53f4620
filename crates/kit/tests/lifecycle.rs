//! The lifecycle contract of a kit service: watchdog, reload, stop with drain, idle exit,
//! the open-file limit.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    common::main(
        &[
            (
                "watchdog_pings_every_half_interval_and_stop_while_frozen",
                watchdog_pings_every_half_interval_and_stop_while_frozen,
            ),
            (
                "watchdog_pings_stop_while_the_health_path_fails",
                watchdog_pings_stop_while_the_health_path_fails,
            ),
            (
                "sigterm_drains_an_in_flight_request_with_extend_timeout",
                sigterm_drains_an_in_flight_request_with_extend_timeout,
            ),
            (
                "a_second_sigterm_exits_at_once",
                a_second_sigterm_exits_at_once,
            ),
            (
                "the_drain_gives_up_after_the_shutdown_timeout",
                the_drain_gives_up_after_the_shutdown_timeout,
            ),
            (
                "idle_keep_alive_connections_close_at_once_on_stop",
                idle_keep_alive_connections_close_at_once_on_stop,
            ),
            (
                "sighup_reloads_between_reloading_and_ready",
                sighup_reloads_between_reloading_and_ready,
            ),
            (
                "an_early_sighup_is_a_pending_reload_not_death",
                an_early_sighup_is_a_pending_reload_not_death,
            ),
            (
                "idle_exit_waits_for_the_last_connection",
                idle_exit_waits_for_the_last_connection,
            ),
            (
                "an_upgraded_tunnel_counts_as_a_connection",
                an_upgraded_tunnel_counts_as_a_connection,
            ),
            (
                "the_open_file_limit_is_raised_to_the_hard_limit",
                the_open_file_limit_is_raised_to_the_hard_limit,
            ),
        ],
        &[("router", common::app::router_main)],
    )
}

/// The test app on a passed TCP socket, READY awaited.
fn start(env: &[(&str, &str)]) -> (App, u16) {
    let (l, port) = tcp_listener();
    let mut launch = Launch::new("router").fd(l, "http");
    for (k, v) in env {
        launch = launch.env(k, v);
    }
    let app = App::start(launch);
    app.wait_ready();
    (app, port)
}

fn watchdog_pings_every_half_interval_and_stop_while_frozen() {
    let (app, _) = start(&[("WATCHDOG_USEC", "400000")]);
    let running = pings(&app, Duration::from_millis(1500));
    assert!(
        (5..=10).contains(&running.len()),
        "about one WATCHDOG=1 per 200ms over 1.5s, got {}",
        running.len()
    );
    app.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(50)); // a ping already in flight may land
    app.notify().clear();
    let frozen = pings(&app, Duration::from_millis(1000));
    assert!(
        frozen.is_empty(),
        "no pings while stopped: {}",
        frozen.len()
    );
    app.signal(libc::SIGCONT);
    let resumed = pings(&app, Duration::from_millis(700));
    assert!(resumed.len() >= 2, "pings resume: {}", resumed.len());
}

fn watchdog_pings_stop_while_the_health_path_fails() {
    let dir = tempfile::tempdir().unwrap();
    let healthy = dir.path().join("healthy");
    std::fs::write(&healthy, "").unwrap();
    let (app, _) = start(&[
        ("WATCHDOG_USEC", "400000"),
        ("KIT_HEALTH_FILE", healthy.to_str().unwrap()),
    ]);
    assert!(pings(&app, Duration::from_millis(600)).len() >= 2);
    std::fs::remove_file(&healthy).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    app.notify().clear();
    let failing = pings(&app, Duration::from_millis(1000));
    assert!(
        failing.is_empty(),
        "withheld while /healthz fails: {}",
        failing.len()
    );
    std::fs::write(&healthy, "").unwrap();
    assert!(
        pings(&app, Duration::from_millis(700)).len() >= 2,
        "resumed"
    );
    let log = app.stderr();
    assert_eq!(
        log.matches("liveness probe failed").count(),
        1,
        "said once: {log}"
    );
    assert!(log.contains("GET /healthz answered 503"), "{log}");
    assert!(log.contains("liveness restored"), "{log}");
}

/// Starts GET `path` on its own thread; the reply (or error) comes back on the handle.
fn get_in_background(port: u16, path: &str) -> std::thread::JoinHandle<std::io::Result<Reply>> {
    let path = path.to_owned();
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        exchange(
            &mut s,
            format!("GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").as_bytes(),
        )
    })
}

fn sigterm_drains_an_in_flight_request_with_extend_timeout() {
    let (mut app, port) = start(&[("KIT_SHUTDOWN_MS", "20000")]);
    let request = get_in_background(port, "/slow?ms=2500");
    std::thread::sleep(Duration::from_millis(300));
    app.signal(libc::SIGTERM);
    let (_, stopping) = app
        .notify()
        .wait_for_line("STOPPING=1", Duration::from_secs(5))
        .expect("STOPPING=1");
    assert!(
        stopping.contains("STATUS=stopping (SIGTERM): draining 1 connections"),
        "{stopping}"
    );
    let (_, extend) = app
        .notify()
        .wait_for(
            |m| m.starts_with("EXTEND_TIMEOUT_USEC="),
            Duration::from_secs(3),
        )
        .expect("EXTEND_TIMEOUT_USEC while draining");
    let usec: u64 = extend
        .trim()
        .trim_start_matches("EXTEND_TIMEOUT_USEC=")
        .parse()
        .unwrap();
    assert!((2_000_000..=5_000_000).contains(&usec), "{extend}");
    let reply = request
        .join()
        .unwrap()
        .expect("the in-flight request is answered");
    assert_eq!((reply.status, reply.text().as_str()), (200, "slept 2500"));
    let status = app
        .wait_exit(Duration::from_secs(5))
        .expect("exits after the drain");
    assert!(status.success(), "{status}");
    assert!(app.stderr().contains("INFO stopped"), "{}", app.stderr());
}

fn a_second_sigterm_exits_at_once() {
    let (mut app, port) = start(&[("KIT_SHUTDOWN_MS", "30000")]);
    let request = get_in_background(port, "/slow?ms=20000");
    std::thread::sleep(Duration::from_millis(300));
    app.signal(libc::SIGTERM);
    app.notify()
        .wait_for_line("STOPPING=1", Duration::from_secs(5))
        .expect("STOPPING=1");
    let t = Instant::now();
    app.signal(libc::SIGTERM);
    let status = app.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(status.success(), "{status}");
    assert!(request.join().unwrap().is_err(), "the slow request was cut");
    assert!(
        app.stderr().contains("second SIGTERM: exiting now"),
        "{}",
        app.stderr()
    );
}

fn the_drain_gives_up_after_the_shutdown_timeout() {
    let (mut app, port) = start(&[("KIT_SHUTDOWN_MS", "800")]);
    let _request = get_in_background(port, "/slow?ms=20000");
    std::thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    app.signal(libc::SIGTERM);
    app.wait_exit(Duration::from_secs(5)).expect("exits");
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert!(
        app.stderr().contains("shutdown_timeout reached"),
        "{}",
        app.stderr()
    );
}

fn idle_keep_alive_connections_close_at_once_on_stop() {
    let (mut app, port) = start(&[("KIT_SHUTDOWN_MS", "30000")]);
    let mut keep = TcpStream::connect(("127.0.0.1", port)).unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    keep.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 4096];
    let n = keep.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("hello"));
    let t = Instant::now();
    app.signal(libc::SIGTERM);
    assert_eq!(keep.read(&mut buf).unwrap(), 0, "closed by the server");
    app.wait_exit(Duration::from_secs(5)).expect("exits");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "no wait: {:?}",
        t.elapsed()
    );
}

fn reload_datagrams(app: &App) -> (String, String) {
    let (_, reloading) = app
        .notify()
        .wait_for_line("RELOADING=1", Duration::from_secs(5))
        .expect("RELOADING=1");
    let (_, ready) = app
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .expect("READY=1 ends the reload");
    (reloading, ready)
}

fn sighup_reloads_between_reloading_and_ready() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reload");
    std::fs::write(&file, "ok").unwrap();
    let (mut app, port) = start(&[("KIT_RELOAD_FILE", file.to_str().unwrap())]);
    app.signal(libc::SIGHUP);
    let (reloading, ready) = reload_datagrams(&app);
    let stamp: i128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC with RELOADING=1")
        .parse()
        .unwrap();
    assert!((monotonic_usec() - stamp).abs() < 5_000_000);
    assert!(!ready.contains("FAILED"), "{ready}");

    std::fs::write(&file, "database unreachable").unwrap();
    app.signal(libc::SIGHUP);
    let (_, ready) = reload_datagrams(&app);
    assert!(
        ready.contains("reload FAILED: database unreachable"),
        "{ready}"
    );
    assert_eq!(
        get_tcp(port, "t", "/").unwrap().text(),
        "hello",
        "still serving"
    );
    assert!(app.is_running());
    app.wait_log("reload refused, still running the previous state");
}

fn an_early_sighup_is_a_pending_reload_not_death() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("reload");
    std::fs::write(&file, "ok").unwrap();
    let (mut app, port) = start(&[
        ("KIT_EARLY_HUP", "1"),
        ("KIT_RELOAD_FILE", file.to_str().unwrap()),
    ]);
    app.notify()
        .wait_for_line("RELOADING=1", Duration::from_secs(5))
        .expect("the early SIGHUP is a reload once the handlers are in");
    assert!(app.is_running(), "{}", app.stderr());
    assert_eq!(get_tcp(port, "t", "/").unwrap().text(), "hello");
}

fn idle_exit_waits_for_the_last_connection() {
    let (mut app, port) = start(&[("KIT_IDLE_MS", "600")]);
    let mut keep = TcpStream::connect(("127.0.0.1", port)).unwrap();
    keep.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    assert!(app.is_running(), "an open connection is not idleness");
    drop(keep);
    let t = Instant::now();
    let status = app
        .wait_exit(Duration::from_secs(5))
        .expect("exits when idle");
    assert!(status.success(), "{status}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let stopping = app
        .notify()
        .wait_for_line("STOPPING=1", Duration::from_secs(1))
        .expect("STOPPING=1")
        .1;
    assert!(
        stopping.contains("stopping (no connection for 600ms)"),
        "{stopping}"
    );
}

fn an_upgraded_tunnel_counts_as_a_connection() {
    let (mut app, port) = start(&[("KIT_IDLE_MS", "500")]);
    let mut tunnel = TcpStream::connect(("127.0.0.1", port)).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    tunnel
        .write_all(
            b"GET /upgrade HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        tunnel.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    // Well past the idle timeout, the tunnel still echoes and the service still runs.
    std::thread::sleep(Duration::from_millis(1500));
    tunnel.write_all(b"ping").unwrap();
    let mut echo = [0u8; 4];
    tunnel.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping");
    assert!(app.is_running());
    drop(tunnel);
    app.wait_exit(Duration::from_secs(5))
        .expect("idle once the tunnel closed");
}

fn the_open_file_limit_is_raised_to_the_hard_limit() {
    let (l, _) = tcp_listener();
    let mut launch = Launch::new("router").fd(l, "http");
    launch.nofile = Some((512, 4096));
    let app = App::start(launch);
    app.wait_ready();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", app.pid())).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(&fields[3..5], ["4096", "4096"], "{line}");
    // 4096 cannot hold the default 10 000 connections: said so.
    assert!(app
        .stderr()
        .contains("open-file limit is below max_connections"));
}
