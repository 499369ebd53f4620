//! The `proxy` route against real upstream servers (hyper, on TCP and unix sockets) and the
//! real binary: headers, forwarding, connection reuse, streaming, limits, WebSocket, HTTP/2
//! clients. Failures and restarts: proxy_failures.rs; several upstreams: proxy_balance.rs.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::Ordering;
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

    // HTTP/1.0 without Host: the upstream is named in the one Host line it gets.
    let r = raw(port, b"GET /tcp/old HTTP/1.0\r\n\r\n");
    assert_eq!(r.status, 200, "{r:?}");
    let seen = tcp.seen();
    let s = seen.last().unwrap();
    assert_eq!(s.path, "/old");
    assert_eq!(s.all("host"), [format!("127.0.0.1:{up_port}")]);

    let r = get(port, "/other/path");
    assert_eq!(r.header("x-upstream").as_deref(), Some("unix"));
    assert_eq!(unix.seen().last().unwrap().path, "/other/path");
    server.wait_log(&format!("GET /other/path 200 via unix:{}", sock.display()));
    server.wait_log(&format!("GET /tcp/a/b 200 via http://127.0.0.1:{up_port}"));
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
    // Idle longer than keepalive_timeout (1s): gatehouse closes the connection itself, before
    // an app's own keep-alive timeout could close it under a request, and opens a new one.
    let deadline = Instant::now() + Duration::from_secs(5);
    while up.state.open.load(Ordering::SeqCst) != 0 {
        assert!(
            Instant::now() < deadline,
            "idle upstream connection never closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(get(port, "/again").status, 200);
    assert_eq!(up.state.connections.load(Ordering::SeqCst), conns + 1);
}

/// Sends `total` bytes of body in 1 MiB pieces; after the first piece, waits until the
/// upstream reports its first byte, which proves the proxy streams rather than buffers
/// (the route must say `buffer_requests = false`).
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
fn unbuffered_uploads_of_64_mib_stream_through_chunked_and_with_content_length() {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let up = UpstreamServer::start(Listen::unix(&sock), "unix");
    let cfg = site(
        "",
        &format!(
            "[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"unix:{}\"], buffer_requests = false }}\n",
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

/// Unbuffered, nothing is held beyond a frame at a time. (Buffered bodies are bounded by
/// `buffer_memory`, then go to disk: tests/proxy_buffering.rs, tests/proxy_gunicorn.rs.)
#[test]
fn unbuffered_one_gib_each_way_with_flat_memory() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "tcp");
    let cfg = site(
        "",
        &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"], buffer_requests = false, buffer_responses = false }}\n"),
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
        let mut send = h2c(port).await;
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
fn head_requests_get_the_upstreams_length_and_no_body() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let _up = UpstreamServer::start(l, "tcp");
    let cfg = site(
        "",
        &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"] }}\n"),
    );
    let (_server, port) = start(dir, &cfg);
    let r = raw(
        port,
        b"HEAD /big/1000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length").as_deref(), Some("1000"));
    assert!(r.body.is_empty());
    let r = raw(
        port,
        b"GET /big/1000 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(r.body.len(), 1000);
}

/// A client that asks to close still gets a proxied body as the upstream sends it: the part
/// before a pause arrives during the pause. (A closing connection's last response may be
/// held for the FIN, which the kernel does for up to 200 ms; never one that waits on a peer.)
#[test]
fn a_closing_clients_proxied_body_is_not_held_while_the_upstream_pauses() {
    const ROUNDS: usize = 3;
    let dir = tempdir();
    let (up, up_port) = tcp_listener();
    let (sent_tx, sent_rx) = std::sync::mpsc::channel::<Instant>();
    let (seen_tx, seen_rx) = std::sync::mpsc::channel::<()>();
    let upstream = std::thread::spawn(move || {
        for _ in 0..ROUNDS {
            let (mut s, _) = up.accept().unwrap();
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                assert_eq!(s.read(&mut byte).unwrap(), 1, "upstream: request cut short");
                head.push(byte[0]);
            }
            s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nhello")
                .unwrap();
            sent_tx.send(Instant::now()).unwrap();
            // The rest once the client has the first part (or gave up).
            let _ = seen_rx.recv_timeout(Duration::from_secs(5));
            s.write_all(b"world").unwrap();
        }
    });
    let (_server, port) = start(
        dir,
        &site(
            "",
            &format!("[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"] }}\n"),
        ),
    );
    let mut delays = Vec::new();
    for _ in 0..ROUNDS {
        let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /pause HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !got.ends_with(b"hello") {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        let seen = Instant::now();
        delays.push(seen - sent_rx.recv().unwrap());
        seen_tx.send(()).unwrap();
        c.read_to_end(&mut got).unwrap();
        assert!(
            got.ends_with(b"helloworld"),
            "{:?}",
            String::from_utf8_lossy(&got)
        );
    }
    upstream.join().unwrap();
    // Held, every round takes the kernel's 200 ms; passed on, at least one is quick.
    let quickest = delays.iter().min().unwrap();
    assert!(
        *quickest < Duration::from_millis(150),
        "the first part waited for the rest: {delays:?}"
    );
}
