//! Request-smuggling defences: malformed framing is answered 400 by gatehouse and never
//! reaches the upstream, whatever the upstream's parser would have made of it. Requests go
//! over a plain TcpStream so no client library normalises them.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Each entry: why it is malformed, the raw bytes. Every one must get 400.
const CORPUS: &[(&str, &[u8])] = &[
    ("two different Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"),
    ("Content-Length list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 6\r\n\r\nhello!"),
    ("same Content-Length as a list", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5, 5\r\n\r\nhello"),
    ("negative Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -5\r\n\r\nhello"),
    ("signed Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\nhello"),
    ("hex Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x5\r\n\r\nhello"),
    ("overflowing Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 99999999999999999999999\r\n\r\nhello"),
    ("empty Content-Length", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: \r\n\r\nhello"),
    ("Transfer-Encoding not ending in chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n"),
    ("unknown Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("Content-Length with identity Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: identity\r\n\r\nhello"),
    ("gzip, chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
    ("chunked twice in one line", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n"),
    ("two Transfer-Encoding lines", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("Transfer-Encoding in HTTP/1.0", b"POST / HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("space before the colon", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n"),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: a\r\nX-Folded: a\r\n b\r\n\r\n"),
    ("obs-fold hiding Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"),
    ("invalid header name", b"GET / HTTP/1.1\r\nHost: a\r\nBad[Name]: x\r\n\r\n"),
    ("header line without a colon", b"GET / HTTP/1.1\r\nHost: a\r\nNoColonHere\r\n\r\n"),
    ("NUL in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\x00b\r\n\r\n"),
    ("bare CR in a header value", b"GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n"),
    ("vertical tab before chunked", b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: \x0bchunked\r\n\r\n0\r\n\r\n"),
    ("space in the request target", b"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n"),
    ("two Host headers", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"),
    ("no Host", b"GET / HTTP/1.1\r\nX-A: 1\r\nConnection: close\r\n\r\n"),
];

fn send(port: u16, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    // The server closes after a 400; a reset also ends the read.
    let _ = s.read_to_end(&mut buf);
    buf
}

fn start() -> (Server, u16, UpstreamServer) {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "tcp");
    let cfg = write(
        dir.path(),
        "g.toml",
        &format!(
            "[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"] }}\n"
        ),
    );
    let (l, port) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(l, "http"));
    server.wait_ready();
    (server, port, up)
}

#[test]
fn malformed_framing_is_400_and_never_forwarded() {
    let (_server, port, up) = start();
    assert!(CORPUS.len() >= 15);
    let mut wrong = Vec::new();
    for (why, request) in CORPUS {
        let reply = send(port, request);
        match parse_reply(&reply) {
            Ok(r) if r.status == 400 => {}
            other => wrong.push(format!("{why}: {other:?}")),
        }
        // A smuggled request hidden in the body must not appear either.
        assert!(
            up.seen().is_empty(),
            "{why} reached the upstream: {:?}",
            up.seen()
        );
    }
    assert!(wrong.is_empty(), "not answered 400:\n{}", wrong.join("\n"));
    // The same server still forwards a well-formed request.
    let r = get_tcp(port, "a", "/fine").unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(up.seen().len(), 1);
}

/// Content-Length together with `Transfer-Encoding: chunked` is the one classic that hyper
/// accepts rather than rejects (RFC 9112 §6.3 lets a server do so): it drops Content-Length,
/// reads the chunked body, and closes the connection after answering. What the upstream gets
/// is re-framed by gatehouse (the body read whole, sent with its real length), so it cannot
/// disagree about where the request ends, and the request hidden after the chunked body is
/// never read.
#[test]
fn content_length_with_chunked_cannot_smuggle_a_second_request() {
    let (_server, port, up) = start();
    let reply = send(
        port,
        b"POST /first HTTP/1.1\r\nHost: a\r\nContent-Length: 40\r\nTransfer-Encoding: chunked\r\n\r\n\
0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n",
    );
    let r = parse_reply(&reply).unwrap();
    assert!(!String::from_utf8_lossy(&reply).contains("/smuggled"));
    let seen = up.seen();
    assert!(seen.iter().all(|s| s.path != "/smuggled"), "{seen:?}");
    if r.status == 200 {
        assert_eq!(seen.len(), 1);
        assert_eq!(seen[0].all("content-length"), ["0"]);
        assert_eq!(seen[0].header("transfer-encoding"), None);
    } else {
        assert_eq!(r.status, 400);
        assert!(seen.is_empty());
    }
}

/// Repeated identical Content-Length lines are merged into one by hyper (RFC 9110 §8.6
/// allows it); the upstream gets a single, consistent length.
#[test]
fn identical_content_length_lines_are_merged_into_one() {
    let (_server, port, up) = start();
    let reply = send(
        port,
        b"POST /twice HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    assert_eq!(parse_reply(&reply).unwrap().status, 200);
    let seen = up.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].all("content-length"), ["5"]);
}
