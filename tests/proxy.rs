//! The `proxy` route against real upstream servers (hyper, on TCP and unix sockets) and the
//! real binary: headers, streaming, limits, timeouts, WebSocket, balancing, health, restarts.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn site(server: &str, routes: &str) -> String {
    format!(
        "[server]\n{server}\n\n[[listener]]\nname = \"http\"\n\n[[site]]\nhosts = [\"*\"]\n{routes}"
    )
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

fn raw(port: u16, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    exchange(&mut s, request).unwrap()
}

fn get(port: u16, path: &str) -> Reply {
    get_tcp(port, "app.example.com", path).unwrap()
}

/// Waits until the server's stderr (the access log) contains `needle`.
fn wait_log(server: &Server, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if server.stderr().contains(needle) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{needle:?} not in the log:\n{}", server.stderr());
}

#[test]
fn forwards_over_tcp_and_unix_with_forwarding_headers_and_without_hop_by_hop() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let tcp = UpstreamServer::start(l, "tcp");
    let sock = dir.path().join("app.sock");
    let unix = UpstreamServer::start(Listen::unix(&sock), "unix");
    let cfg = site(
        "",
        &format!(
            r#"[[site.route]]
path = "/tcp/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"], strip_prefix = true }}
[[site.route]]
path = "/"
proxy = {{ upstreams = ["unix:{}"] }}
"#,
            sock.display()
        ),
    );
    let (server, port) = start(dir, &cfg);

    let r = raw(
        port,
        b"GET /tcp/a/b?x=1 HTTP/1.1\r\nHost: app.example.com:8080\r\nX-Forwarded-For: 6.6.6.6\r\n\
X-Forwarded-Host: evil\r\nForwarded: for=6.6.6.6\r\nConnection: close, X-Secret\r\nX-Secret: s\r\n\
Keep-Alive: timeout=1\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\nX-Kept: yes\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-upstream").as_deref(), Some("tcp"));
    for h in ["x-up-secret", "keep-alive", "proxy-x"] {
        assert_eq!(r.header(h), None, "{h} reached the client: {}", r.head);
    }
    let seen = tcp.seen();
    let s = seen.last().unwrap();
    assert_eq!(s.path, "/a/b?x=1");
    assert_eq!(s.header("host"), Some("app.example.com:8080"));
    assert_eq!(s.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(s.header("x-forwarded-proto"), Some("http"));
    assert_eq!(s.header("x-forwarded-host"), Some("app.example.com:8080"));
    assert_eq!(
        s.all("forwarded"),
        ["for=127.0.0.1;host=\"app.example.com:8080\";proto=http"]
    );
    assert_eq!(s.header("x-kept"), Some("yes"));
    for h in [
        "x-secret",
        "keep-alive",
        "proxy-authorization",
        "te",
        "connection",
    ] {
        assert_eq!(s.header(h), None, "{h} reached the upstream: {s:?}");
    }

    let r = get(port, "/other/path");
    assert_eq!(r.header("x-upstream").as_deref(), Some("unix"));
    assert_eq!(unix.seen().last().unwrap().path, "/other/path");
    wait_log(
        &server,
        &format!("GET /other/path 200 via unix:{}", sock.display()),
    );
    wait_log(
        &server,
        &format!("GET /tcp/a/b 200 via http://127.0.0.1:{up_port}"),
    );
}

#[test]
fn trusted_proxies_keep_forwarded_values_and_rewrite_host_replaces_host() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "tcp");
    let cfg = site(
        "",
        &format!(
            r#"[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"], trusted_proxies = ["10.0.0.0/8", "127.0.0.1"], rewrite_host = "backend.internal" }}
"#
        ),
    );
    let (_server, port) = start(dir, &cfg);
    let r = raw(
        port,
        b"GET / HTTP/1.1\r\nHost: app.example.com\r\nX-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\n\
Forwarded: for=6.6.6.6;proto=https\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    let s = up.seen().pop().unwrap();
    assert_eq!(s.header("host"), Some("backend.internal"));
    assert_eq!(s.header("x-forwarded-for"), Some("6.6.6.6, 127.0.0.1"));
    assert_eq!(s.header("x-forwarded-proto"), Some("https"));
    assert_eq!(
        s.header("forwarded"),
        Some("for=6.6.6.6;proto=https, for=127.0.0.1;host=app.example.com;proto=http")
    );
}

#[test]
fn upstream_connections_are_reused() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "tcp");
    let cfg = site(
        "",
        &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"] }}\n"),
    );
    let (_server, port) = start(dir, &cfg);
    for i in 0..30 {
        // Each client connection is new and asks to close; the upstream one stays.
        assert_eq!(get(port, &format!("/{i}")).status, 200);
    }
    assert_eq!(up.seen().len(), 30);
    let conns = up.state.connections.load(Ordering::SeqCst);
    assert!(
        conns <= 2,
        "{conns} upstream connections for 30 sequential requests"
    );
}

/// Sends `total` bytes of body in 1 MiB pieces; after the first piece, waits until the
/// upstream reports its first byte, which proves the proxy streams rather than buffers.
fn upload(port: u16, up: &UpstreamServer, total: usize, chunked: bool) -> Reply {
    let (tx, rx) = std::sync::mpsc::channel();
    *up.state.first_byte.lock().unwrap() = Some(tx);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {total}")
    };
    write!(
        s,
        "POST /upload HTTP/1.1\r\nHost: a\r\n{framing}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let piece = vec![b'u'; 1 << 20];
    let mut sent = 0;
    while sent < total {
        let n = piece.len().min(total - sent);
        if chunked {
            write!(s, "{n:x}\r\n").unwrap();
        }
        s.write_all(&piece[..n]).unwrap();
        if chunked {
            s.write_all(b"\r\n").unwrap();
        }
        if sent == 0 {
            rx.recv_timeout(Duration::from_secs(10))
                .expect("the upstream saw no byte while the client was still sending");
        }
        sent += n;
    }
    if chunked {
        s.write_all(b"0\r\n\r\n").unwrap();
    }
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    parse_reply(&buf).unwrap()
}

#[test]
fn uploads_of_64_mib_stream_through_chunked_and_with_content_length() {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let up = UpstreamServer::start(Listen::unix(&sock), "unix");
    let cfg = site(
        "",
        &format!(
            "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"unix:{}\"] }}\n",
            sock.display()
        ),
    );
    let (_server, port) = start(dir, &cfg);
    let total = 64 << 20;
    let r = upload(port, &up, total, true);
    assert_eq!((r.status, r.text()), (200, format!("received {total}")));
    let r = upload(port, &up, total, false);
    assert_eq!((r.status, r.text()), (200, format!("received {total}")));
}

fn vm_hwm_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn one_gib_each_way_with_flat_memory() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "tcp");
    let cfg = site(
        "",
        &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"] }}\n"),
    );
    let (server, port) = start(dir, &cfg);
    let before = vm_hwm_kib(server.pid());
    let gib: u64 = 1 << 30;

    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET /big/{gib} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut got = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
    }
    assert!(got > gib && got < gib + 1024, "downloaded {got} bytes");

    let r = upload(port, &up, gib as usize, false);
    assert_eq!(r.text(), format!("received {gib}"));
    let after = vm_hwm_kib(server.pid());
    // Peak RSS may grow by buffers, never by the bodies.
    assert!(
        after < before + 64 * 1024,
        "peak RSS grew from {before} kB to {after} kB"
    );
}

#[test]
fn max_body_expect_continue_and_413() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "tcp");
    let cfg = site(
        "",
        &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"], max_body = \"1MiB\" }}\n"),
    );
    let (_server, port) = start(dir, &cfg);

    // Declared too large, with Expect: 413 at once, no 100, nothing forwarded.
    let r = raw(
        port,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 2097152\r\nExpect: 100-continue\r\n\r\n",
    );
    assert_eq!(r.status, 413, "{r:?}");
    assert!(up.seen().is_empty());

    // Chunked and too large: cut off with 413.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let piece = vec![b'u'; 256 * 1024];
    for _ in 0..8 {
        if write!(s, "{:x}\r\n", piece.len()).is_err() || s.write_all(&piece).is_err() {
            break;
        }
        let _ = s.write_all(b"\r\n");
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    assert_eq!(parse_reply(&buf).unwrap().status, 413);

    // Expect: 100-continue within the limit: 100, then the body, then the answer.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut head = [0u8; 25];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"0123456789").unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    assert_eq!(parse_reply(&buf).unwrap().text(), "received 10");
    let seen = up.seen();
    assert_eq!(seen.last().unwrap().header("expect"), None);
}

#[test]
fn websocket_upgrade_is_tunnelled_both_ways() {
    let dir = tempdir();
    let sock = dir.path().join("ws.sock");
    let up = UpstreamServer::start(Listen::unix(&sock), "unix");
    let cfg = site(
        "",
        &format!(
            "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"unix:{}\"] }}\n",
            sock.display()
        ),
    );
    let (_server, port) = start(dir, &cfg);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.header("upgrade"), Some("websocket"));
    assert_eq!(
        seen.header("sec-websocket-key"),
        Some("dGhlIHNhbXBsZSBub25jZQ==")
    );

    // A masked text frame "hello" (RFC 6455 §5.7), echoed back byte for byte, twice.
    let frame = [
        0x81u8, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
    ];
    for _ in 0..2 {
        s.write_all(&frame).unwrap();
        let mut back = [0u8; 11];
        s.read_exact(&mut back).unwrap();
        assert_eq!(back, frame);
    }
    // The client closing ends the tunnel: the proxy closes its side too.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap(), 0);
}

#[test]
fn dead_upstream_is_502_fast_and_hung_upstream_is_504() {
    let dir = tempdir();
    let dead_port = free_port();
    let (l, up_port) = Listen::tcp();
    let _up = UpstreamServer::start(l, "tcp");
    let cfg = site(
        "",
        &format!(
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
        ),
    );
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
    wait_log(
        &server,
        &format!("GET /dead/x 502 via http://127.0.0.1:{dead_port}"),
    );

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
    wait_log(
        &server,
        &format!("GET /slow/5000 504 via http://127.0.0.1:{up_port}"),
    );
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

#[test]
fn app_restarts_behind_a_held_socket_fail_no_request() {
    let dir = tempdir();
    // The test holds the listening socket, as systemd's app.socket would.
    let (listen, up_port) = Listen::tcp();
    let held = listen.try_clone();
    let cfg = site(
        "",
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
    assert!(ok > 40, "only {ok} requests");
}

#[test]
fn refused_connections_are_retried_until_the_app_is_back() {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let cfg = site(
        "",
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
    let log = server.stderr();
    let why: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("failed") && !l.contains("connect failed"))
        .take(5)
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}\n{why:#?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 20, "only {ok} requests");
    assert!(
        log.contains("connect failed"),
        "no refused connect was retried:\n{log}"
    );
}

#[test]
fn http2_clients_reach_http1_upstreams_with_their_authority_as_host() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "tcp");
    let cfg = site(
        "",
        &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"] }}\n"),
    );
    let (_server, port) = start(dir, &cfg);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, x_upstream) = rt.block_on(async {
        let io = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut send, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(io),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get("http://app.example.com:8443/h2/path?q=1")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = tokio::time::timeout(Duration::from_secs(5), send.send_request(req))
            .await
            .unwrap()
            .unwrap();
        (
            resp.status().as_u16(),
            resp.headers().get("x-upstream").cloned(),
        )
    });
    assert_eq!(status, 200);
    assert_eq!(x_upstream.unwrap(), "tcp");
    let s = up.seen().pop().unwrap();
    assert_eq!(s.path, "/h2/path?q=1");
    assert_eq!(s.header("host"), Some("app.example.com:8443"));
    assert_eq!(s.header("x-forwarded-host"), Some("app.example.com:8443"));
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
        "",
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
    wait_log(&server, &format!("GET /hang 504 via http://{addr}"));
}
