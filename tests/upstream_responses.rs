//! Response-side desync defences, end to end: an upstream that writes raw bytes, honest or
//! not, behind the real binary. These GETs go through gatehouse's own upstream client
//! (`src/proxy/lean.rs`, reading with `crates/upstream-h1`): whatever the upstream
//! sends, no client may get bytes meant for another request, and a response whose length
//! cannot be told is a 502, not a guess.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What the upstream does with one request: (connection number from 0, request number on
/// that connection from 0, request path, the socket).
type Script = dyn Fn(usize, usize, &str, &mut TcpStream) + Send + Sync;

/// An upstream speaking raw HTTP/1.1 bytes from `script`; counts the connections it accepts.
struct RawUpstream {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl RawUpstream {
    fn start(script: impl Fn(usize, usize, &str, &mut TcpStream) + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let script: Arc<Script> = Arc::new(script);
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let n = count.fetch_add(1, Ordering::SeqCst);
                let script = script.clone();
                std::thread::spawn(move || {
                    let mut i = 0;
                    while let Some(path) = read_head(&mut conn) {
                        script(n, i, &path, &mut conn);
                        i += 1;
                    }
                });
            }
        });
        RawUpstream { port, accepted }
    }

    fn connections(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

/// The path of the next request head on `conn` (the requests here have no body).
fn read_head(conn: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        if conn.read(&mut byte).ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&head).into_owned();
    line.split(' ').nth(1).map(str::to_owned)
}

fn start(up: &RawUpstream) -> (Server, u16) {
    start_http(
        &format!(
            "[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{}\"] }}\n",
            up.port
        ),
        &[],
    )
}

fn get(port: u16, path: &str) -> Reply {
    get_tcp(port, "a", path).unwrap()
}

fn ok(conn: &mut TcpStream, body: &str) {
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
}

#[test]
fn bytes_an_upstream_sends_while_idle_never_reach_the_next_request() {
    let up = RawUpstream::start(|conn, i, _, s| {
        if (conn, i) == (0, 0) {
            ok(s, "first");
            // Later, unasked: a whole response, ready to be taken for the next request's.
            std::thread::sleep(Duration::from_millis(100));
            ok(s, "EVIL!");
        } else {
            ok(s, "fresh");
        }
    });
    let (_server, port) = start(&up);
    assert_eq!(get(port, "/1").text(), "first");
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(get(port, "/2").text(), "fresh");
    assert_eq!(
        up.connections(),
        2,
        "the tainted connection was not used again"
    );
}

#[test]
fn bytes_past_a_responses_length_are_not_read_as_the_next_response() {
    let up = RawUpstream::start(|conn, _, _, s| {
        if conn == 0 {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nEVIL!");
        } else {
            ok(s, "fresh");
        }
    });
    let (_server, port) = start(&up);
    assert_eq!(get(port, "/1").text(), "ok");
    assert_eq!(get(port, "/2").text(), "fresh");
    assert_eq!(up.connections(), 2);
}

#[test]
fn an_honest_keep_alive_upstream_keeps_one_connection() {
    let up = RawUpstream::start(|_, i, path, s| match path {
        "/head" => {
            // HEAD: the length of the body a GET would get, and no body.
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n");
        }
        "/chunked" => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n");
        }
        "/continue" => {
            let _ = s.write_all(b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n");
        }
        _ => ok(s, &format!("request {i}")),
    });
    let (_server, port) = start(&up);
    assert_eq!(get(port, "/").text(), "request 0");
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let head = exchange(
        &mut s,
        b"HEAD /head HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(
        (head.status, head.header("content-length").as_deref()),
        (200, Some("1000"))
    );
    assert!(head.body.is_empty());
    assert_eq!(get(port, "/chunked").text(), "hello world");
    assert_eq!(get(port, "/continue").status, 204);
    assert_eq!(get(port, "/").text(), "request 4");
    assert_eq!(up.connections(), 1);
}

#[test]
fn a_response_whose_length_cannot_be_told_is_a_502() {
    let big = format!(
        "HTTP/1.1 200 OK\r\nX-Big: {}\r\nContent-Length: 0\r\n\r\n",
        "a".repeat(500 * 1024)
    );
    let up = RawUpstream::start(move |_, _, path, s| {
        let raw: &[u8] = match path {
            "/both" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            "/two-lengths" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            "/gzip" => b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            "/obs-fold" => b"HTTP/1.1 200 OK\r\nX-A: 1\r\n folded\r\nContent-Length: 0\r\n\r\n",
            "/big" => big.as_bytes(),
            _ => b"not http at all\r\n\r\n",
        };
        let _ = s.write_all(raw);
        // These connections are done, whatever the proxy made of them.
        let _ = s.shutdown(std::net::Shutdown::Both);
    });
    let (_server, port) = start(&up);
    for path in [
        "/both",
        "/two-lengths",
        "/gzip",
        "/obs-fold",
        "/big",
        "/garbage",
    ] {
        assert_eq!(get(port, path).status, 502, "{path}");
    }
}

#[test]
fn a_body_cut_short_or_misframed_ends_the_response_and_its_connection() {
    let up = RawUpstream::start(|conn, _, path, s| match (conn, path) {
        (_, "/short") => {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly this");
            let _ = s.shutdown(std::net::Shutdown::Both);
        }
        (_, "/bad-chunk") => {
            let _ = s.write_all(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n0\r\n\r\n",
            );
        }
        _ => ok(s, "fine"),
    });
    let (_server, port) = start(&up);
    for path in ["/short", "/bad-chunk"] {
        // The head went out before the body failed: the client sees the response end early
        // (a reset or a short body), never a whole, wrong one.
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        );
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let reply = String::from_utf8_lossy(&buf);
        assert!(
            !reply.contains("XX") && !reply.contains("\r\n\r\n0\r\n"),
            "{path}: {reply:?}"
        );
        if let Ok(r) = parse_reply(&buf) {
            assert!(r.body.len() < 100, "{path}: {reply:?}");
        }
    }
    let before = up.connections();
    assert_eq!(get(port, "/").text(), "fine");
    assert_eq!(
        up.connections(),
        before + 1,
        "the misframed connection is not reused"
    );
}
