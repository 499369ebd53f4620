//! Request bodies read whole into memory go to the upstream through gatehouse's own
//! client (`src/proxy/lean.rs`), head and body in one writev. What an app may do while a
//! body larger than the sockets' buffers is on its way: answer before reading it (a 413),
//! keeping the connection open or closing it, send an unasked-for 100 Continue first,
//! answer while it reads (the rest of the body must still come), or read slowly (each
//! write restarts the response-header timeout). The client must get the app's answer, not
//! a 504 after the response-header timeout.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::time::Duration;

/// Larger than loopback TCP and unix socket buffers together: the upstream must read for
/// the write to finish.
const BODY: usize = 8 << 20;

/// A route buffering bodies up to 16 MiB in memory to `upstream`; an upstream that never
/// answers is a 504 after 3 s.
fn config(upstream: &str) -> String {
    format!(
        "[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\n\
         proxy = {{ upstreams = [\"{upstream}\"], buffer_memory = \"16MiB\", response_header_timeout = \"3s\" }}\n"
    )
}

/// The request head on `conn`, read byte by byte so that nothing of the body is taken.
fn read_head(conn: &mut impl Read) -> String {
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") {
        match conn.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

fn content_length(head: &str) -> usize {
    head.lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0)
}

/// POSTs `BODY` bytes of `x` and reads the whole answer.
fn post(port: u16) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut request = format!(
        "POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: {BODY}\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    request.resize(request.len() + BODY, b'x');
    exchange(&mut s, &request).unwrap()
}

const TOO_LARGE: &[u8] =
    b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbig!";

#[test]
fn an_app_that_answers_before_reading_the_body_and_waits_is_heard() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        read_head(&mut conn);
        conn.write_all(TOO_LARGE).unwrap();
        // Holds the connection without reading a byte of the body.
        std::thread::sleep(Duration::from_secs(10));
    });
    let (_server, port) = start_http(&config(&format!("http://127.0.0.1:{up_port}")), &[]);
    let reply = post(port);
    assert_eq!(reply.status, 413, "{}", reply.head);
    assert_eq!(reply.text(), "big!");
}

#[test]
fn an_app_that_answers_before_reading_the_body_and_closes_is_heard() {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        read_head(&mut conn);
        conn.write_all(TOO_LARGE).unwrap();
        // Closed with the body unread: gatehouse's next write fails (EPIPE).
    });
    let (_server, port) = start_http(&config(&format!("unix:{}", path(&sock))), &[]);
    let reply = post(port);
    assert_eq!(reply.status, 413, "{}", reply.head);
    assert_eq!(reply.text(), "big!");
}

#[test]
fn an_unasked_for_100_continue_does_not_stop_the_body() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let up_port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let head = read_head(&mut conn);
        // gatehouse sends no Expect; RFC 9110 §15.2 lets a server send a 1xx anyway.
        conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
        let mut body = vec![0u8; content_length(&head)];
        conn.read_exact(&mut body).unwrap();
        let got = body.iter().filter(|&&b| b == b'x').count().to_string();
        let _ = write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{got}",
            got.len()
        );
    });
    let (_server, port) = start_http(&config(&format!("http://127.0.0.1:{up_port}")), &[]);
    let reply = post(port);
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert_eq!(reply.text(), BODY.to_string());
}

/// An app on a unix socket (whose buffers hold ~200 KiB, so the body waits on its reads)
/// that counts the body's bytes, reading `chunk` at a time with `pause` between reads;
/// with `head_first`, it sends its head (chunked) before reading. Returns the upstream.
fn counting_app(dir: &Path, head_first: bool, chunk: usize, pause: Duration) -> String {
    let sock = dir.join("app.sock");
    let listener = UnixListener::bind(&sock).unwrap();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let head = read_head(&mut conn);
        let chunked = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        if head_first {
            conn.write_all(chunked.as_bytes()).unwrap();
        }
        let mut left = content_length(&head);
        let mut buf = vec![0u8; chunk];
        let mut got = 0;
        while left > 0 {
            let n = conn.read(&mut buf[..chunk.min(left)]).unwrap();
            assert!(n > 0, "the body stopped {left} bytes short");
            got += buf[..n].iter().filter(|&&b| b == b'x').count();
            left -= n;
            std::thread::sleep(pause);
        }
        if !head_first {
            conn.write_all(chunked.as_bytes()).unwrap();
        }
        let got = got.to_string();
        let _ = write!(conn, "{:x}\r\n{got}\r\n0\r\n\r\n", got.len());
    });
    format!("unix:{}", path(&sock))
}

#[test]
fn an_app_that_answers_while_it_reads_gets_the_whole_body() {
    let dir = tempdir();
    let upstream = counting_app(dir.path(), true, 64 << 10, Duration::ZERO);
    let (_server, port) = start_http(&config(&upstream), &[]);
    let reply = post(port);
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(reply.text().contains(&BODY.to_string()), "{}", reply.text());
}

#[test]
fn an_app_that_reads_slowly_is_not_timed_out_while_it_reads() {
    // 8 MiB at ~2 MiB/s: four seconds of reading against a 3 s response-header timeout.
    let dir = tempdir();
    let upstream = counting_app(dir.path(), false, 256 << 10, Duration::from_millis(120));
    let (_server, port) = start_http(&config(&upstream), &[]);
    let reply = post(port);
    assert_eq!(reply.status, 200, "{}", reply.head);
    assert!(reply.text().contains(&BODY.to_string()), "{}", reply.text());
}

fn path(p: &Path) -> String {
    p.to_str().unwrap().to_owned()
}
