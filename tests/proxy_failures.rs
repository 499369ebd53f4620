//! Failures the proxy must hide or report: dead, hung and stalled upstreams (502, 504, idle
//! cut-off, with the UPSTREAM field), connects that hang, and app restarts under load that
//! must fail no request.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn site(routes: &str) -> String {
    format!("[[listener]]\nname = \"http\"\n\n[[site]]\nhosts = [\"*\"]\n{routes}")
}

fn start(dir: tempfile::TempDir, config: &str) -> (Server, u16) {
    let cfg = write(dir.path(), "g.toml", config);
    let (l, port) = tcp_listener();
    let mut launch = Launch::serve(&cfg).fd(l, "http");
    launch
        .args
        .extend(["--log-level".into(), "info,gatehouse::proxy=debug".into()]);
    let server = Server::start(dir, launch);
    server.wait_ready();
    (server, port)
}

fn get(port: u16, path: &str) -> Reply {
    get_tcp(port, "app.example.com", path).unwrap()
}

#[test]
fn dead_upstream_is_502_fast_and_hung_upstream_is_504() {
    let dir = tempdir();
    let dead_port = free_port();
    let (l, up_port) = Listen::tcp();
    let _up = UpstreamServer::start(l, "tcp");
    let cfg = site(&format!(
        r#"[[site.route]]
path = "/dead/"
proxy = {{ upstreams = ["http://127.0.0.1:{dead_port}"], connect_timeout = "3s", retry_connect_for = "0s" }}
[[site.route]]
path = "/retrying/"
proxy = {{ upstreams = ["http://127.0.0.1:{dead_port}"], connect_timeout = "3s", retry_connect_for = "1s" }}
[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"], response_header_timeout = "500ms", idle_timeout = "700ms" }}
"#
    ));
    let (server, port) = start(dir, &cfg);

    let t = Instant::now();
    let r = get(port, "/dead/x");
    assert_eq!(r.status, 502);
    assert!(r.text().contains("502 Bad Gateway"));
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "took {:?}",
        t.elapsed()
    );
    server.wait_log(&format!("GET /dead/x 502 via http://127.0.0.1:{dead_port}"));

    // With retry_connect_for the refusals are retried, then given up on within the window.
    let t = Instant::now();
    assert_eq!(get(port, "/retrying/x").status, 502);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_millis(2500),
        "took {took:?}"
    );

    let t = Instant::now();
    let r = get(port, "/slow/5000");
    assert_eq!(r.status, 504);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?}",
        t.elapsed()
    );
    server.wait_log(&format!(
        "GET /slow/5000 504 via http://127.0.0.1:{up_port}"
    ));
    // The only upstream stays usable after its ejection.
    assert_eq!(get(port, "/fine").status, 200);

    // A body that stops flowing is cut after idle_timeout.
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /stall HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert!(String::from_utf8_lossy(&buf).contains("partial"));
    assert!(
        t.elapsed() < Duration::from_secs(3),
        "took {:?}",
        t.elapsed()
    );
}

/// Keeps `threads` clients sending requests for `run_for`: GETs, and with `post` two in
/// three a POST with a body. Returns the count of 200s and the failures.
fn load(port: u16, threads: usize, run_for: Duration, post: bool) -> (usize, Vec<String>) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let deadline = Instant::now() + run_for;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let ok = ok.clone();
            let failures = failures.clone();
            std::thread::spawn(move || {
                let mut i = 0;
                while Instant::now() < deadline {
                    i += 1;
                    // Bodies: with Content-Length (small, read whole first) and chunked
                    // (streamed, kept for a retry only while unread).
                    let body = match i % 3 {
                        1 => Some("Content-Length: 5\r\n\r\nhello"),
                        2 => Some("Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"),
                        _ => None,
                    };
                    let r = match body.filter(|_| post) {
                        None => get_tcp(port, "a", &format!("/t{t}/{i}")),
                        Some(body) => {
                            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
                            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                            exchange(
                                &mut s,
                                format!("POST /upload HTTP/1.1\r\nHost: a\r\nConnection: close\r\n{body}")
                                    .as_bytes(),
                            )
                        }
                    };
                    match r {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures.lock().unwrap().push(format!("{} {}", r.status, r.text())),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    let f = failures.lock().unwrap().clone();
    (ok.load(Ordering::SeqCst), f)
}

/// Fails with the first failures and the proxy's own explanation from its log.
fn assert_no_failures(server: &Server, ok: usize, failed: &[String]) {
    let log = server.stderr();
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed") && !l.contains("connect failed"))
        .take(5)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed (of {}): {:?}\n{why:#?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)]
    );
}

#[test]
fn app_restarts_behind_a_held_socket_fail_no_request() {
    let dir = tempdir();
    // The test holds the listening socket, as systemd's app.socket would.
    let (listen, up_port) = Listen::tcp();
    let held = listen.try_clone();
    let cfg = site(
        &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"] }}\n"),
    );
    let mut app = UpstreamServer::start(listen, "v1");
    let state = app.state.clone();
    let (server, port) = start(dir, &cfg);
    let restarts = std::thread::spawn(move || {
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(300));
            app.stop();
            // The app is down: connections queue in the held socket's backlog.
            std::thread::sleep(Duration::from_millis(300));
            app = UpstreamServer::resume(held.try_clone(), state.clone());
        }
        app
    });
    // GETs only: a POST written on a keep-alive connection the app closes at that moment
    // cannot be told from one the app processed, so it is never re-sent (RFC 9110 §9.2.2).
    let (ok, failed) = load(port, 4, Duration::from_millis(2800), false);
    let _app = restarts.join().unwrap();
    assert_no_failures(&server, ok, &failed);
    assert!(ok > 40, "only {ok} requests");
}

#[test]
fn refused_connections_are_retried_until_the_app_is_back() {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let cfg = site(
        &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"unix:{}\"], retry_connect_for = \"5s\" }}\n", sock.display()),
    );
    let mut app = UpstreamServer::start(Listen::unix(&sock), "v1");
    // Gunicorn-style one request per connection, so every request (POSTs too) needs a connect.
    app.state.close_mode.store(true, Ordering::SeqCst);
    let state = app.state.clone();
    let (server, port) = start(dir, &cfg);
    let sock2 = sock.clone();
    let restarts = std::thread::spawn(move || {
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(300));
            // An app that binds its own socket: gone (ENOENT) while it restarts. It unlinks
            // first and serves what is already queued: closing a listener resets the
            // connections in its backlog, and a reset POST is never re-sent.
            std::fs::remove_file(&sock2).unwrap();
            std::thread::sleep(Duration::from_millis(50));
            app.stop();
            std::thread::sleep(Duration::from_millis(400));
            app = UpstreamServer::resume(Listen::unix(&sock2), state.clone());
        }
        app
    });
    let (ok, failed) = load(port, 3, Duration::from_millis(2500), true);
    let _app = restarts.join().unwrap();
    assert_no_failures(&server, ok, &failed);
    assert!(ok > 20, "only {ok} requests");
    let log = server.stderr();
    assert!(
        log.contains("connect failed"),
        "no refused connect was retried:\n{log}"
    );
}

#[test]
fn a_connect_that_hangs_is_504_after_connect_timeout() {
    // A listener whose backlog is full and that never accepts: the kernel drops further
    // SYNs, so a connect hangs, as with an unreachable host.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(
        &"127.0.0.1:0"
            .parse::<std::net::SocketAddr>()
            .unwrap()
            .into(),
    )
    .unwrap();
    sock.listen(0).unwrap();
    let addr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        s.set_nonblocking(true).unwrap();
        let _ = s.connect(&addr.into());
        fillers.push(s);
    }
    std::thread::sleep(Duration::from_millis(100));
    let dir = tempdir();
    let cfg = site(
        &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://{addr}\"], connect_timeout = \"500ms\", retry_connect_for = \"0s\" }}\n"),
    );
    let (server, port) = start(dir, &cfg);
    let t = Instant::now();
    let r = get(port, "/hang");
    let took = t.elapsed();
    assert_eq!(r.status, 504, "{r:?}");
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    server.wait_log(&format!("GET /hang 504 via http://{addr}"));
}

/// Unbuffered; for a buffered response see tests/proxy_buffering.rs.
#[test]
fn a_client_that_stops_reading_releases_the_upstream_after_idle_timeout() {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let up = UpstreamServer::start(Listen::unix(&sock), "unix");
    let cfg = site(&format!(
        "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"unix:{}\"], idle_timeout = \"500ms\", buffer_responses = false }}\n",
        sock.display()
    ));
    let (server, port) = start(dir, &cfg);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /big/1000000000 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    let mut first = [0u8; 4096];
    s.read_exact(&mut first).unwrap();
    // Now the client reads nothing more: the upstream blocks writing, its app worker held.
    let t = Instant::now();
    let deadline = t + Duration::from_secs(5);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(up.state.open.load(Ordering::SeqCst), 1);
    while up.state.open.load(Ordering::SeqCst) != 0 {
        assert!(
            Instant::now() < deadline,
            "the upstream connection is still held by a client that reads nothing"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "{:?}",
        t.elapsed()
    );
    server.wait_log("client stopped reading");
    drop(s);
}

/// A raw upstream whose first connection reads one request and hangs up without answering;
/// later connections answer 200. Returns the port and the request lines it received.
fn hang_up_once_upstream() -> (u16, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for (n, conn) in listener.incoming().enumerate() {
            let Ok(mut conn) = conn else { return };
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = vec![0u8; 65536];
            let mut got = Vec::new();
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(k) => got.extend_from_slice(&buf[..k]),
                }
            }
            let line = String::from_utf8_lossy(&got)
                .lines()
                .next()
                .unwrap_or("")
                .to_owned();
            log.lock().unwrap().push(line);
            if n == 0 {
                continue; // drop: closed with nothing sent back
            }
            let _ = conn.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nsecond",
            );
        }
    });
    (port, seen)
}

#[test]
fn a_request_the_upstream_dropped_unanswered_is_resent_only_if_idempotent() {
    let (port_get, seen_get) = hang_up_once_upstream();
    let (port_post, seen_post) = hang_up_once_upstream();
    let cfg = site(&format!(
        r#"[[site.route]]
path = "/get/"
proxy = {{ upstreams = ["http://127.0.0.1:{port_get}"] }}
[[site.route]]
path = "/post/"
proxy = {{ upstreams = ["http://127.0.0.1:{port_post}"] }}
"#
    ));
    let (_server, port) = start(tempdir(), &cfg);

    let r = get(port, "/get/x");
    assert_eq!((r.status, r.text().as_str()), (200, "second"));
    assert_eq!(
        *seen_get.lock().unwrap(),
        ["GET /get/x HTTP/1.1", "GET /get/x HTTP/1.1"]
    );

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = exchange(
        &mut s,
        b"POST /post/x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(*seen_post.lock().unwrap(), ["POST /post/x HTTP/1.1"]);
}

#[test]
fn a_killed_upstream_is_502_within_connect_timeout_with_default_retries() {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let mut up = UpstreamServer::start(Listen::unix(&sock), "unix");
    let cfg = site(&format!(
        "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"unix:{}\"], connect_timeout = \"8s\" }}\n",
        sock.display()
    ));
    let (server, port) = start(dir, &cfg);
    assert_eq!(get(port, "/before").status, 200);
    // The app dies and its socket refuses: retried for retry_connect_for (5s by default),
    // then 502, well within connect_timeout.
    up.stop();
    drop(up);
    let t = Instant::now();
    let r = get(port, "/after");
    let took = t.elapsed();
    assert_eq!(r.status, 502, "{r:?}");
    assert!(
        took >= Duration::from_millis(4500) && took < Duration::from_secs(7),
        "took {took:?}"
    );
    server.wait_log(&format!("GET /after 502 via unix:{}", sock.display()));
}
