//! Holding connections for ever at no cost (issue 24, item 4): an idle HTTP/2 connection gets
//! a GOAWAY after `header_read_timeout`; a client that stops reading (HTTP/1, or HTTP/2 with
//! a zero window) loses the connection and its open files after `send_timeout`; HTTP/2
//! streams are capped and share `max_connections`; the admin listener has its own budget.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

type Empty = http_body_util::Empty<bytes::Bytes>;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// An HTTP/2 (prior knowledge) client connection; `window` is its initial stream window.
async fn h2_client(
    port: u16,
    window: Option<u32>,
) -> (
    hyper::client::conn::http2::SendRequest<Empty>,
    tokio::task::JoinHandle<Result<(), hyper::Error>>,
) {
    let io = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut builder =
        hyper::client::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder.initial_stream_window_size(window);
    let (send, conn) = builder
        .handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .unwrap();
    (send, tokio::spawn(conn))
}

fn h2_get(path: &str) -> http::Request<Empty> {
    http::Request::get(format!("http://t{path}"))
        .body(Empty::new())
        .unwrap()
}

/// Open file descriptors of a process.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

/// The server's descriptors once a first request has opened the document root (which stays
/// open for reuse).
fn baseline_fds(server: &Server, port: u16) -> usize {
    assert_eq!(get_tcp(port, "t", "/small").unwrap().status, 200);
    open_fds(server.pid())
}

fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

fn respond_site(server: &str) -> String {
    format!(
        "[server]\n{server}\n[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n\
[[site.route]]\npath = \"/\"\nrespond = {{ body = \"ok\" }}\n"
    )
}

#[test]
fn idle_http2_connections_get_a_goaway_after_header_read_timeout() {
    let (_server, port) = start_http(&respond_site("header_read_timeout = \"1s\""), &[]);
    let rt = runtime();
    rt.block_on(async {
        // After a request…
        let (mut send, conn) = h2_client(port, None).await;
        let resp = send.send_request(h2_get("/")).await.unwrap();
        assert_eq!(resp.status(), 200);
        let start = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
        assert!(ended.is_ok(), "an idle HTTP/2 connection stayed open 6 s");
        assert!(
            start.elapsed() >= Duration::from_millis(900),
            "{:?}",
            start.elapsed()
        );
        // …and without any request at all (its pings answered all along).
        let (_send, conn) = h2_client(port, None).await;
        let ended = tokio::time::timeout(Duration::from_secs(6), conn).await;
        assert!(
            ended.is_ok(),
            "an HTTP/2 connection without streams stayed open 6 s"
        );
    });
}

/// A static file large enough to be streamed from an open descriptor.
fn big_file_site(dir: &std::path::Path, server: &str) -> String {
    let www = dir.join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::write(www.join("big"), vec![b'x'; 64 << 20]).unwrap();
    std::fs::write(www.join("small"), "small").unwrap();
    format!(
        "[server]\n{server}\n[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n\
[[site.route]]\npath = \"/\"\nstatic = {{ root = \"{}\" }}\n",
        www.display()
    )
}

/// A server of `big_file_site` with a 2 s send timeout, its port and its descriptors at rest.
fn big_file_server() -> (Server, u16, usize) {
    let dir = tempdir();
    let cfg = big_file_site(
        dir.path(),
        "send_timeout = \"2s\"\nheader_read_timeout = \"30s\"",
    );
    let (server, port) = start_in(dir, &cfg);
    let baseline = baseline_fds(&server, port);
    (server, port, baseline)
}

fn start_in(dir: tempfile::TempDir, config: &str) -> (Server, u16) {
    let cfg = write(dir.path(), "g.toml", config);
    let (l, port) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(l, "http"));
    server.wait_ready();
    (server, port)
}

#[test]
fn an_http2_client_with_a_zero_window_loses_its_streams_and_files_after_send_timeout() {
    let (server, port, baseline) = big_file_server();
    let rt = runtime();
    rt.block_on(async {
        let (send, conn) = h2_client(port, Some(0)).await;
        let mut responses = Vec::new();
        for _ in 0..20 {
            let mut send = send.clone();
            responses.push(tokio::spawn(async move {
                send.send_request(h2_get("/big")).await
            }));
        }
        // Kept: a dropped response would reset its stream.
        let mut kept = Vec::new();
        for r in responses {
            let r = r.await.unwrap().unwrap();
            assert_eq!(r.status(), 200);
            kept.push(r);
        }
        // 20 files open, none of their bytes can move.
        let held = open_fds(server.pid());
        assert!(held >= baseline + 20, "{baseline} → {held}");
        let start = Instant::now();
        let ended = tokio::time::timeout(Duration::from_secs(8), conn).await;
        assert!(ended.is_ok(), "a zero-window connection stayed open 8 s");
        assert!(
            start.elapsed() >= Duration::from_millis(1500),
            "{:?}",
            start.elapsed()
        );
    });
    assert!(
        wait_until(Duration::from_secs(2), || open_fds(server.pid())
            <= baseline),
        "files still open: {} > {baseline}",
        open_fds(server.pid())
    );
}

#[test]
fn an_http1_client_that_stops_reading_loses_the_connection_after_send_timeout() {
    let (server, port, baseline) = big_file_server();
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut s: TcpStream = sock.into();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // The client reads a little, then nothing: the server's buffers fill and its writes wait.
    let mut some = [0u8; 1024];
    s.read_exact(&mut some).unwrap();
    assert!(wait_until(Duration::from_secs(2), || open_fds(
        server.pid()
    ) > baseline));
    let start = Instant::now();
    assert!(
        wait_until(Duration::from_secs(8), || open_fds(server.pid())
            <= baseline),
        "the connection and its file stayed open 8 s"
    );
    assert!(
        start.elapsed() >= Duration::from_millis(1000),
        "{:?}",
        start.elapsed()
    );
    // A client that reads slowly but steadily is not cut: nginx's rule too (the timeout is
    // between two successive writes, not for the whole response).
    drop(s);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\nRange: bytes=0-8388607\r\n\r\n")
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    let start = Instant::now();
    while got < (8 << 20) {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "cut after {got} bytes and {:?}", start.elapsed());
        got += n;
        if start.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn http2_streams_are_capped_and_share_max_connections() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let _up = UpstreamServer::start(l, "app");
    let site = |server: &str| {
        format!(
            "[server]\n{server}\n[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n\
[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"] }}\n"
        )
    };
    let (_server, port) = start_in(dir, &site("max_connections = 4"));
    let rt = runtime();
    let statuses = rt.block_on(async {
        let (send, _conn) = h2_client(port, None).await;
        let mut tasks = Vec::new();
        for _ in 0..5 {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                send.send_request(h2_get("/slow/1500"))
                    .await
                    .unwrap()
                    .status()
                    .as_u16()
            }));
        }
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap());
        }
        statuses.sort();
        statuses
    });
    // Of 4 slots the accept loop holds one for the next client and the connection one (its
    // first stream's): two more streams get one each, the rest a 503.
    assert_eq!(statuses, [200, 200, 200, 503, 503]);

    // http2_max_concurrent_streams: the client queues what the server does not accept.
    let dir = tempdir();
    let (_server, port) = start_in(dir, &site("http2_max_concurrent_streams = 2"));
    let elapsed = rt.block_on(async {
        let (mut send, _conn) = h2_client(port, None).await;
        // Once the server's SETTINGS are in, the client keeps to its limit.
        send.send_request(h2_get("/slow/1")).await.unwrap();
        let start = Instant::now();
        let mut tasks = Vec::new();
        for _ in 0..4 {
            let mut send = send.clone();
            tasks.push(tokio::spawn(async move {
                send.send_request(h2_get("/slow/1000"))
                    .await
                    .unwrap()
                    .status()
            }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), 200);
        }
        start.elapsed()
    });
    assert!(
        elapsed >= Duration::from_millis(1900),
        "4 streams of 1 s in {elapsed:?}"
    );
}

#[test]
fn the_admin_listener_answers_while_the_public_budget_is_used_up() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "g.toml",
        "[server]\nmax_connections = 4\nheader_read_timeout = \"30s\"\n\
[[listener]]\nname = \"http\"\n[[listener]]\nname = \"admin\"\nrole = \"admin\"\n\
[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\nrespond = { body = \"ok\" }\n",
    );
    let (public, port) = tcp_listener();
    let (admin, admin_port) = tcp_listener();
    let launch = Launch::serve(&cfg).fd(public, "http").fd(admin, "admin");
    let server = Server::start(dir, launch);
    server.wait_ready();
    // Four clients that connect and say nothing hold every public slot for 30 s.
    let idle: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // Several checks: a slot an admin connection gives back must not go to the public side.
    for _ in 0..3 {
        let start = Instant::now();
        let r = get_tcp(admin_port, "admin", "/healthz").expect("/healthz unanswered");
        assert_eq!(r.status, 200);
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
    }
    drop(idle);
}
