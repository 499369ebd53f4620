//! The systemd lifecycle contract: watchdog, reload, stop with drain, idle exit.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn pings(server: &Server, window: Duration) -> Vec<Instant> {
    server
        .notify()
        .collect(window)
        .into_iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| t)
        .collect()
}

#[test]
fn watchdog_pings_every_half_interval_and_stop_while_frozen() {
    let (server, _) = start_http(
        &respond_config("http", "", "", "x"),
        &[("WATCHDOG_USEC", "400000")],
    );

    let running = pings(&server, Duration::from_millis(1500));
    assert!(
        (5..=10).contains(&running.len()),
        "about one WATCHDOG=1 per 200ms over 1.5s, got {}",
        running.len()
    );
    let gaps: Vec<_> = running.windows(2).map(|w| w[1] - w[0]).collect();
    let mean = gaps.iter().sum::<Duration>() / gaps.len() as u32;
    assert!(
        mean >= Duration::from_millis(150) && mean <= Duration::from_millis(280),
        "mean ping interval {mean:?}"
    );

    server.signal(libc::SIGSTOP);
    std::thread::sleep(Duration::from_millis(50)); // a ping already in flight may land
    server.notify().clear();
    let frozen = pings(&server, Duration::from_millis(1000));
    assert!(
        frozen.is_empty(),
        "no pings while stopped: {}",
        frozen.len()
    );

    server.signal(libc::SIGCONT);
    let resumed = pings(&server, Duration::from_millis(700));
    assert!(
        resumed.len() >= 2,
        "pings resume after SIGCONT: {}",
        resumed.len()
    );
}

#[test]
fn watchdog_for_another_pid_is_not_ours() {
    let (server, _) = start_http(
        &respond_config("http", "", "", "x"),
        &[("WATCHDOG_USEC", "200000"), ("WATCHDOG_PID", "1")],
    );
    assert!(pings(&server, Duration::from_millis(600)).is_empty());
}

#[test]
fn reload_swaps_config_and_a_broken_one_keeps_the_old() {
    let (server, port) = start_http(&respond_config("http", "", "", "first"), &[]);
    let cfg = config_path(&server);
    assert_eq!(get_tcp(port, "x", "/").unwrap().text(), "first");

    // A keep-alive connection opened before the reload must survive it.
    let mut keep = TcpStream::connect(("127.0.0.1", port)).unwrap();
    keep.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let ask = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    keep.write_all(ask).unwrap();
    assert!(read_response(&mut keep).ends_with("first"));

    std::fs::write(&cfg, respond_config("http", "", "", "second")).unwrap();
    server.signal(libc::SIGHUP);
    let (_, reloading) = server
        .notify()
        .wait_for_line("RELOADING=1", Duration::from_secs(5))
        .expect("RELOADING=1");
    let now = monotonic_usec();
    let stamp: i128 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .expect("MONOTONIC_USEC in the same datagram as RELOADING=1")
        .parse()
        .unwrap();
    assert!(
        (now - stamp).abs() < 2_000_000,
        "MONOTONIC_USEC={stamp} is CLOCK_MONOTONIC (test: {now})"
    );
    server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .expect("READY=1 after reload");
    assert_eq!(get_tcp(port, "x", "/").unwrap().text(), "second");
    keep.write_all(ask).unwrap();
    assert!(
        read_response(&mut keep).ends_with("second"),
        "old connection, new config"
    );

    std::fs::write(
        &cfg,
        "[[listener]]\nname = \"http\"\nbind = [\"nowhere\"]\n",
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server
        .notify()
        .wait_for_line("RELOADING=1", Duration::from_secs(5))
        .expect("RELOADING=1");
    let (_, ready) = server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .expect("a refused reload still ends with READY=1");
    assert!(ready.contains("reload FAILED"), "STATUS says so: {ready}");
    assert_eq!(get_tcp(port, "x", "/").unwrap().text(), "second");
    let stderr = server.stderr();
    assert!(
        stderr.contains("g.toml:3:9"),
        "error with line:col logged: {stderr}"
    );
}

/// Reads one Content-Length response from a keep-alive connection.
fn read_response(s: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        buf.push(byte[0]);
    }
    let reply = parse_reply(&buf).unwrap();
    let len: usize = reply.header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    format!("{}\n{}", reply.head, String::from_utf8_lossy(&body))
}

#[test]
fn reload_adds_and_removes_bind_listeners() {
    let dir = tempdir();
    let (a, b) = (free_port(), free_port());
    let cfg = write(
        dir.path(),
        "g.toml",
        &respond_config("http", &format!("\"127.0.0.1:{a}\""), "", "x"),
    );
    let server = Server::start(dir, Launch::serve(&cfg));
    server.wait_ready();
    assert_eq!(get_tcp(a, "x", "/").unwrap().status, 200);
    std::fs::write(
        &cfg,
        respond_config("http", &format!("\"127.0.0.1:{b}\""), "", "x"),
    )
    .unwrap();
    server.signal(libc::SIGHUP);
    server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .unwrap();
    assert_eq!(get_tcp(b, "x", "/").unwrap().status, 200);
    assert!(get_tcp(a, "x", "/").is_err(), "old bind address closed");
}

#[test]
fn sigterm_lets_a_slow_request_finish_then_exits_0() {
    const SIZE: usize = 8 << 20;
    let (mut server, port) = start_http(
        &respond_config("http", "", "shutdown_timeout = \"30s\"", &"x".repeat(SIZE)),
        &[],
    );

    // A small receive buffer keeps the response in flight while we read slowly.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut client: TcpStream = sock.into();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = vec![0u8; 16384];
    client.read_exact(&mut got).unwrap();

    server.signal(libc::SIGTERM);
    server
        .notify()
        .wait_for_line("STOPPING=1", Duration::from_secs(5))
        .expect("STOPPING=1");
    let mut buf = vec![0u8; 65536];
    let mut midway_checked = false;
    loop {
        let n = client.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if !midway_checked && got.len() > SIZE / 2 {
            assert!(
                server.is_running(),
                "still draining with half the body unsent"
            );
            midway_checked = true;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
    assert!(midway_checked);
    let reply = parse_reply(&got).unwrap();
    assert_eq!(reply.body.len(), SIZE, "the in-flight response completed");
    let status = server
        .wait_exit(Duration::from_secs(5))
        .expect("exits after drain");
    assert_eq!(status.code(), Some(0));
}

/// Idle keep-alive connections that have served requests are closed at once by a drain,
/// and the server exits long before its shutdown_timeout.
#[test]
fn sigterm_closes_idle_keep_alive_connections_at_once() {
    let (mut server, port) = start_http(
        &respond_config("http", "", "shutdown_timeout = \"30s\"", "hi"),
        &[],
    );
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|_| {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            for _ in 0..3 {
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
                assert!(read_response(&mut s).ends_with("hi"));
            }
            s
        })
        .collect();
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    for s in &mut idle {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{:?}", String::from_utf8_lossy(&rest));
    }
    let status = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(status.success());
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t.elapsed()
    );
}

#[test]
fn drain_gives_up_after_shutdown_timeout() {
    let (mut server, port) = start_http(
        &respond_config(
            "http",
            "",
            "shutdown_timeout = \"1s\"",
            &"y".repeat(8 << 20),
        ),
        &[],
    );
    let mut stuck = TcpStream::connect(("127.0.0.1", port)).unwrap();
    stuck
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    // Never read: the response cannot complete.
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    let extend = server.notify().wait_for(
        |m| m.starts_with("EXTEND_TIMEOUT_USEC="),
        Duration::from_secs(3),
    );
    assert!(extend.is_some(), "EXTEND_TIMEOUT_USEC while draining");
    let status = server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(status.success());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "bounded by shutdown_timeout: {took:?}"
    );
}

#[test]
fn idle_exit_waits_for_the_last_connection_to_close() {
    let (mut server, port) = start_http(
        &respond_config("http", "", "idle_exit_after = \"1s\"", "x"),
        &[],
    );

    let mut open = TcpStream::connect(("127.0.0.1", port)).unwrap();
    open.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    open.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    read_response(&mut open);
    std::thread::sleep(Duration::from_millis(2000));
    assert!(
        server.is_running(),
        "an open connection keeps the server up"
    );

    drop(open);
    let closed = Instant::now();
    let status = server.wait_exit(Duration::from_secs(5)).expect("idle exit");
    let after = closed.elapsed();
    assert_eq!(status.code(), Some(0));
    assert!(
        after >= Duration::from_millis(900) && after < Duration::from_millis(2500),
        "exit about 1s after the last close: {after:?}"
    );
    assert!(server
        .notify()
        .wait_for_line("STOPPING=1", Duration::from_secs(1))
        .is_some());
}

#[test]
fn idle_exit_loses_no_request_queued_on_the_socket() {
    // systemd keeps the socket; a client connecting while we exit waits for the next
    // instance. Here the test plays systemd: same listener, second instance.
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "g.toml",
        &respond_config("http", "", "idle_exit_after = \"300ms\"", "again"),
    );
    let (l, port) = tcp_listener();
    let keep = l.try_clone().unwrap();
    let mut first = Server::start(dir, Launch::serve(&cfg).fd(l, "http"));
    first.wait_ready();
    assert!(first.wait_exit(Duration::from_secs(5)).unwrap().success());

    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let dir2 = tempdir();
    let second = Server::start(dir2, Launch::serve(&cfg).fd(keep, "http"));
    second.wait_ready();
    let mut buf = Vec::new();
    client.read_to_end(&mut buf).unwrap();
    assert_eq!(parse_reply(&buf).unwrap().text(), "again");
}
