//! Socket activation: fds passed the way systemd passes them.

mod common;
use common::*;
use std::os::unix::net::UnixListener;
use std::time::Duration;

#[test]
fn passed_tcp_socket_serves_and_ready_follows_a_working_listener() {
    let dir = tempdir();
    // The bind address is deliberately unusable: it must not be touched when a fd is passed.
    let cfg = write(
        dir.path(),
        "g.toml",
        &respond_config(
            "http",
            "\"192.0.2.1:1\"",
            "status_interval = \"200ms\"",
            "hello",
        ),
    );
    let (listener, port) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(listener, "http"));
    let (_, ready) = server.wait_ready();
    assert!(
        ready.contains("STATUS="),
        "READY carries a status: {ready:?}"
    );
    // Right after READY=1 the listener answers: no retry loop here.
    let reply = get_tcp(port, "example.com", "/").expect("answer right after READY");
    assert_eq!((reply.status, reply.text().as_str()), (200, "hello"));

    let statuses: Vec<_> = server
        .notify()
        .collect(Duration::from_millis(900))
        .into_iter()
        .filter(|(_, m)| m.starts_with("STATUS="))
        .collect();
    assert!(
        statuses.len() >= 2,
        "STATUS= refreshed every 200ms: {statuses:?}"
    );
    assert!(
        statuses.iter().any(|(_, m)| m.contains("1 request served")),
        "STATUS counts requests: {statuses:?}"
    );
}

#[test]
fn bind_listener_is_ready_only_once_it_accepts() {
    let dir = tempdir();
    let port = free_port();
    let cfg = write(
        dir.path(),
        "g.toml",
        &respond_config("http", &format!("\"127.0.0.1:{port}\""), "", "bound"),
    );
    let server = Server::start(dir, Launch::serve(&cfg));
    server.wait_ready();
    let reply = get_tcp(port, "x", "/").expect("listening when READY=1 arrives");
    assert_eq!(reply.text(), "bound");
}

#[test]
fn fds_for_another_pid_are_ignored_and_bind_is_used() {
    let dir = tempdir();
    let port = free_port();
    let cfg = write(
        dir.path(),
        "g.toml",
        &respond_config("http", &format!("\"127.0.0.1:{port}\""), "", "fallback"),
    );
    let (foreign, foreign_port) = tcp_listener();
    let mut launch = Launch::serve(&cfg).fd(foreign.try_clone().unwrap(), "http");
    launch.listen_pid = ListenPid::Other(1);
    let server = Server::start(dir, launch);
    server.wait_ready();
    assert_eq!(get_tcp(port, "x", "/").unwrap().text(), "fallback");

    // Nobody accepts on the foreign socket: a client there gets no answer.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", foreign_port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let r = exchange(&mut s, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(
        r.is_err(),
        "fd of another LISTEN_PID must not be served: {r:?}"
    );
}

#[test]
fn two_named_fds_each_serve_their_own_listener() {
    let dir = tempdir();
    let sock_path = dir.path().join("internal.sock");
    let cfg = write(
        dir.path(),
        "g.toml",
        r#"
[[listener]]
name = "http"
[[listener]]
name = "internal"

[[site]]
hosts = ["*"]
listeners = ["http"]
[[site.route]]
path = "/"
respond = { body = "public" }

[[site]]
hosts = ["*"]
listeners = ["internal"]
[[site.route]]
path = "/"
respond = { body = "internal" }
"#,
    );
    let (tcp, port) = tcp_listener();
    let unix = UnixListener::bind(&sock_path).unwrap();
    let server = Server::start(
        dir,
        Launch::serve(&cfg).fd(tcp, "http").fd(unix, "internal"),
    );
    server.wait_ready();
    assert_eq!(get_tcp(port, "a", "/").unwrap().text(), "public");
    assert_eq!(get_unix(&sock_path, "a", "/").unwrap().text(), "internal");
    // A passed socket is never unlinked, even after stopping.
    let mut server = server;
    server.signal(libc::SIGTERM);
    assert!(server.wait_exit(Duration::from_secs(5)).unwrap().success());
    assert!(sock_path.exists(), "systemd's socket file must survive us");
}

#[test]
fn several_fds_may_share_one_name() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "g.toml",
        &respond_config("http", "", "", "both"),
    );
    let (a, pa) = tcp_listener();
    let (b, pb) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(a, "http").fd(b, "http"));
    server.wait_ready();
    assert_eq!(get_tcp(pa, "x", "/").unwrap().text(), "both");
    assert_eq!(get_tcp(pb, "x", "/").unwrap().text(), "both");
}

fn expect_config_exit(launch_fd: std::os::fd::OwnedFd, name: &str, needle: &str) {
    let dir = tempdir();
    let cfg = write(dir.path(), "g.toml", &respond_config("http", "", "", "x"));
    let mut server = Server::start(dir, Launch::serve(&cfg).fd(launch_fd, name));
    let status = server
        .wait_exit(Duration::from_secs(10))
        .expect("must exit, not serve");
    let stderr = server.stderr();
    assert_eq!(status.code(), Some(78), "stderr: {stderr}");
    assert!(
        stderr.contains(needle),
        "message names the fd ({needle}): {stderr}"
    );
}

#[test]
fn udp_fd_exits_78_naming_the_fd() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    expect_config_exit(udp.into(), "http", "fd 3");
}

#[test]
fn regular_file_fd_exits_78_naming_the_fd() {
    let dir = tempdir();
    let file = std::fs::File::create(dir.path().join("plain")).unwrap();
    expect_config_exit(
        file.into(),
        "http",
        "fd 3 (name \"http\") passed by systemd is not a socket",
    );
}

#[test]
fn unlistened_stream_socket_exits_78() {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    expect_config_exit(sock.into(), "http", "not listening");
}

/// A name no listener claims is a configuration error like any other: under socket
/// activation that is standby (503 until fixed; tests/contract.rs), not exit 78, which would
/// make systemd start the service again for the queued connection.
#[test]
fn unclaimed_fd_name_is_named_and_answered_503() {
    let dir = tempdir();
    let cfg = write(dir.path(), "g.toml", &respond_config("http", "", "", "x"));
    let (l, port) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(l, "metrics"));
    server.wait_ready();
    assert_eq!(get_tcp(port, "x", "/").unwrap().status, 503);
    assert!(
        server.stderr().contains("not claimed by any [[listener]]"),
        "{}",
        server.stderr()
    );
}

#[test]
fn quick_mode_claims_every_passed_socket_whatever_its_name() {
    let dir = tempdir();
    let (l, port) = tcp_listener();
    let mut launch = Launch::serve(std::path::Path::new("unused"));
    launch.args = vec![
        "serve".into(),
        "--listen".into(),
        "192.0.2.1:1".into(),
        "--log-target".into(),
        "stderr".into(),
    ];
    let server = Server::start(dir, launch.fd(l, "whatever"));
    server.wait_ready();
    let reply = get_tcp(port, "x", "/").unwrap();
    assert_eq!(reply.status, 200);
    assert!(reply.text().contains("Welcome to gatehouse"));
}
