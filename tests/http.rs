//! HTTP behaviour on a real listener: protocols, hosts, limits and timeouts.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn start(config: &str) -> (Server, u16) {
    start_http(config, &[])
}

const VHOSTS: &str = r#"
[server]
header_read_timeout = "500ms"
max_connections = 2

[[listener]]
name = "http"

[[site]]
hosts = ["example.com"]
[[site.route]]
path = "/"
respond = { status = 200, body = "example" }
[[site.route]]
path = "/gone"
respond = { status = 410, body = "gone", content_type = "text/html" }
"#;

fn raw(port: u16, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, request).unwrap()
}

#[test]
fn unknown_host_without_default_site_is_404_and_missing_host_is_400() {
    let (_server, port) = start(VHOSTS);
    assert_eq!(get_tcp(port, "example.com", "/").unwrap().text(), "example");
    assert_eq!(
        get_tcp(port, "EXAMPLE.com.:80", "/").unwrap().text(),
        "example"
    );
    assert_eq!(get_tcp(port, "other.org", "/").unwrap().status, 404);
    assert_eq!(
        raw(port, b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n").status,
        400
    );
    assert_eq!(
        raw(
            port,
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"
        )
        .status,
        400
    );
    assert_eq!(
        raw(
            port,
            b"GET / HTTP/1.1\r\nHost: a b\r\nConnection: close\r\n\r\n"
        )
        .status,
        400
    );
    let gone = get_tcp(port, "example.com", "/gone/x").unwrap();
    assert_eq!((gone.status, gone.text().as_str()), (410, "gone"));
    assert_eq!(gone.header("content-type").as_deref(), Some("text/html"));
}

#[test]
fn garbage_and_oversized_requests_get_4xx_and_the_server_lives_on() {
    let (mut server, port) = start(VHOSTS);
    let big = format!(
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(64 * 1024)
    );
    assert_eq!(raw(port, big.as_bytes()).status, 431);
    // Above max_header_size (16 KiB) but within hyper's larger read buffer: ours to refuse.
    let big = format!(
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    assert_eq!(raw(port, big.as_bytes()).status, 431);
    let fits = format!(
        "GET / HTTP/1.1\r\nHost: example.com\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(15 * 1024)
    );
    assert_eq!(raw(port, fits.as_bytes()).status, 200);
    assert_eq!(raw(port, b"\x16\x03\x01garbage\r\n\r\n").status, 400);
    assert_eq!(
        raw(
            port,
            b"GET / HTTP/1.1\r\nHost: example.com\r\nContent-Length: x\r\n\r\n"
        )
        .status,
        400
    );
    assert!(server.is_running());
    assert_eq!(get_tcp(port, "example.com", "/").unwrap().status, 200);
}

#[test]
fn head_has_length_but_no_body_and_keep_alive_reuses_the_connection() {
    let (_server, port) = start(VHOSTS);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\nGET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).unwrap();
    let text = String::from_utf8_lossy(&buf);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(text.matches("content-length: 7").count(), 2, "{text}");
    assert!(
        text.ends_with("\r\n\r\nexample"),
        "HEAD carried no body: {text}"
    );
}

#[test]
fn slowloris_is_cut_off_after_header_read_timeout() {
    let (_server, port) = start(VHOSTS);
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: exa").unwrap();
    let t = Instant::now();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "closed after ~500ms, took {took:?}"
    );
}

#[test]
fn a_client_that_sends_nothing_is_cut_off_after_header_read_timeout() {
    // Before any byte, the connection is not yet HTTP/1 or HTTP/2; the head timer must
    // run from the connect all the same, or silent clients hold their slots for ever
    // (max_connections is 2 here: two of them would shut everybody else out).
    let (_server, port) = start(VHOSTS);
    let silent: Vec<TcpStream> = (0..2)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    let t = Instant::now();
    for mut s in silent {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let read = s.read_to_end(&mut buf);
        assert!(
            read.is_ok() && buf.is_empty(),
            "closed without an answer: {read:?} {buf:?}"
        );
    }
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(2500),
        "closed after ~500ms, took {took:?}"
    );
    let reply = raw(port, b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n");
    assert_eq!(reply.status, 200, "slots are free again");
}

#[test]
fn connections_beyond_max_wait_in_the_backlog() {
    let (_server, port) = start(VHOSTS);
    let ask = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.write_all(ask).unwrap();
        let mut b = [0u8; 64];
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        assert!(s.read(&mut b).unwrap() > 0);
        held.push(s);
    }
    let mut third = TcpStream::connect(("127.0.0.1", port)).unwrap();
    third.write_all(ask).unwrap();
    third
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 64];
    assert!(third.read(&mut b).is_err(), "third connection must wait");
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert!(third.read(&mut b).unwrap() > 0, "served once a slot frees");
}

#[test]
fn http2_prior_knowledge_on_the_same_listener() {
    let (_server, port) = start(VHOSTS);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut send = h2c(port).await;
        for (host, want) in [("example.com", 200), ("nope.example", 404)] {
            let req = http::Request::get(format!("http://{host}/"))
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = send.send_request(req).await.unwrap();
            assert_eq!(resp.version(), http::Version::HTTP_2);
            assert_eq!(resp.status().as_u16(), want, "{host}");
        }
    });
}

/// TCP segments the peer has sent to `s` (Linux `tcp_info.tcpi_segs_in`, at a fixed offset:
/// the struct only ever grows at its end).
fn segments_received(s: &TcpStream) -> u32 {
    use std::os::fd::AsRawFd;
    let mut info = [0u8; 256];
    let mut len = info.len() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `info` and updates `len`.
    let rc = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    assert_eq!(rc, 0, "TCP_INFO: {}", std::io::Error::last_os_error());
    assert!(
        len >= 144,
        "tcp_info too short ({len} bytes) for tcpi_segs_in"
    );
    u32::from_ne_bytes([info[140], info[141], info[142], info[143]])
}

/// A response that closes its connection leaves in the same segment as the FIN: the client
/// receives the SYN-ACK, the ACK of its request and one segment with the response and the
/// FIN (nginx's count too). Sent apart, it was four.
#[test]
fn a_closing_response_and_its_fin_share_one_segment() {
    let (_server, port) = start(&respond_config("http", "", "", "hello"));
    for request in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"[..],
        &b"GET / HTTP/1.0\r\n\r\n"[..],
    ] {
        let mut segments = Vec::new();
        for _ in 0..5 {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(request).unwrap();
            let mut reply = Vec::new();
            s.read_to_end(&mut reply).unwrap();
            assert!(
                reply.ends_with(b"hello"),
                "{}",
                String::from_utf8_lossy(&reply)
            );
            segments.push(segments_received(&s));
        }
        assert!(
            segments.iter().all(|&n| n <= 3),
            "segments received per connection: {segments:?}"
        );
    }
}
