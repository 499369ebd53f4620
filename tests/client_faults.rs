//! A client's broken request body is the client's fault: 400 (or, when the client went away
//! mid-body, 499 in the access log as nginx writes it), never a 502, and the upstream's error
//! counter and health are left alone (issue 25, item 2). Bodies are sent raw over a
//! TcpStream so no client library repairs them.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::path::PathBuf;
use std::time::Duration;

struct Setup {
    server: Server,
    port: u16,
    admin: PathBuf,
    upstream: String,
    _up: UpstreamServer,
}

fn start() -> Setup {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "tcp");
    let cfg = write(
        dir.path(),
        "g.toml",
        &format!(
            "[[listener]]\nname = \"http\"\n[[listener]]\nname = \"admin\"\nrole = \"admin\"\n\
             [[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\n\
             proxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"] }}\n"
        ),
    );
    let (server, port, admin) =
        start_http_and_admin(dir, &cfg, Some("info,gatehouse::proxy=debug"));
    Setup {
        server,
        port,
        admin,
        upstream: format!("http://127.0.0.1:{up_port}"),
        _up: up,
    }
}

/// The value of one upstream series on /metrics.
fn upstream_metric(s: &Setup, name: &str) -> String {
    let metrics = get_unix(&s.admin, "admin", "/metrics").unwrap().text();
    let prefix = format!("{name}{{upstream=\"{}\"}} ", s.upstream);
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
        .to_owned()
}

/// Sends `request`, then reads the answer until the server closes.
fn send(port: u16, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, request).unwrap()
}

/// Sends `request` (a head and part of its body) and hangs up without reading an answer.
fn send_and_abort(port: u16, request: &[u8]) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(request).unwrap();
    // Long enough for the proxy to start forwarding the body.
    std::thread::sleep(Duration::from_millis(200));
    let _ = s.shutdown(Shutdown::Both);
}

#[test]
fn malformed_bodies_are_400_and_not_the_upstreams_fault() {
    let s = start();
    let long_extension = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext={}\r\nhello\r\n0\r\n\r\n",
        "x".repeat(20_000)
    );
    let cases: &[(&str, &[u8])] = &[
        (
            "a chunk size that is not hex",
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        ),
        (
            "a chunk without its CRLF",
            b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
        ),
        ("a chunk extension over 16 KiB", long_extension.as_bytes()),
    ];
    let mut wrong = Vec::new();
    for (why, request) in cases {
        let r = send(s.port, request);
        if r.status != 400 {
            wrong.push(format!("{why}: {} {}", r.status, r.text()));
        }
    }
    assert!(wrong.is_empty(), "not 400:\n{}", wrong.join("\n"));
    s.server.wait_log("POST /upload 400");
    assert!(
        !s.server.stderr().contains(" 502 "),
        "{}",
        s.server.stderr()
    );
    assert_eq!(upstream_metric(&s, "gatehouse_upstream_errors_total"), "0");
    assert_eq!(upstream_metric(&s, "gatehouse_upstream_up"), "1");
    // The upstream still serves.
    assert_eq!(get_tcp(s.port, "a", "/fine").unwrap().status, 200);
}

#[test]
fn a_client_that_hangs_up_mid_body_is_logged_499_not_502() {
    let s = start();
    // A streamed upload (over the 64 KiB read ahead), cut after 100 KB of 1 MB.
    let mut big = b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 1000000\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(b'x', 100_000));
    send_and_abort(s.port, &big);
    // A small body, read whole before forwarding, cut after 10 of 100 bytes.
    send_and_abort(
        s.port,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789",
    );
    // A chunked body that stops after its first chunk.
    send_and_abort(
        s.port,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while s.server.stderr().matches("POST /upload 499").count() < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "three aborts not logged 499:\n{}",
            s.server.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = s.server.stderr();
    assert!(!log.contains(" 502 "), "{log}");
    assert!(!log.contains("ejected"), "{log}");
    assert_eq!(upstream_metric(&s, "gatehouse_upstream_errors_total"), "0");
    assert_eq!(upstream_metric(&s, "gatehouse_upstream_up"), "1");
    let mut conn = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let r = exchange(
        &mut conn,
        b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "received 5"));
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
}

/// An HTTP/2 client that resets its stream mid-upload went away too: 499, not 502.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_client_resetting_its_upload_is_logged_499() {
    let s = start();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", s.port))
        .await
        .unwrap();
    let (client, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut client = client.ready().await.unwrap();
    let req = http::Request::post("http://a/upload")
        .header("content-length", "1000000")
        .body(())
        .unwrap();
    let (_response, mut body) = client.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from(vec![b'x'; 100_000]), false)
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    body.send_reset(h2::Reason::CANCEL);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !s.server.stderr().contains("POST /upload 499") {
        assert!(
            std::time::Instant::now() < deadline,
            "not logged 499:\n{}",
            s.server.stderr()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!s.server.stderr().contains(" 502 "));
    assert_eq!(upstream_metric(&s, "gatehouse_upstream_errors_total"), "0");
}

/// A client that hangs up while the upstream is still working: hyper drops the request, and
/// the access log still gets its line, 499.
#[test]
fn a_client_that_hangs_up_while_waiting_is_logged_499() {
    let s = start();
    let mut conn = TcpStream::connect(("127.0.0.1", s.port)).unwrap();
    conn.write_all(b"GET /slow/1500 HTTP/1.1\r\nHost: a\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(conn);
    s.server.wait_log("GET /slow/1500 499");
    assert_eq!(upstream_metric(&s, "gatehouse_upstream_errors_total"), "0");
}
