//! Pooled upstream connections that the app closes: a request must never be written into a
//! connection the upstream has closed or is about to close after a failure (issue 25, item 1).
//! The upstream is a raw socket server, so the timing of its close is exact.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A keep-alive HTTP/1.1 app on a real socket that answers by path:
/// - `/fail`: 500 without `Connection: close`, then closes the connection 100 ms later
///   without reading on, as uvicorn 0.17 does after an unhandled exception (it logs the
///   traceback first);
/// - `/close-idle`: 200, then closes the idle connection 20 ms later (an app keep-alive
///   timeout shorter than the pool's);
/// - anything else: 200, the connection stays open.
///
/// Returns its port and the request lines it read.
fn closing_app() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let log = log.clone();
            std::thread::spawn(move || serve(conn, &log));
        }
    });
    (port, seen)
}

fn serve(mut conn: TcpStream, log: &Mutex<Vec<String>>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + 4 + length {
            match conn.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..end + 4 + length);
        let line = head.lines().next().unwrap_or("").to_owned();
        log.lock().unwrap().push(line.clone());
        let path = line.split(' ').nth(1).unwrap_or("");
        let (answer, close_after): (&[u8], _) = match path {
            "/fail" => (
                b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 21\r\n\r\nInternal Server Error",
                Some(Duration::from_millis(100)),
            ),
            "/close-idle" => (
                b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
                Some(Duration::from_millis(20)),
            ),
            _ => (b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", None),
        };
        if conn.write_all(answer).is_err() {
            return;
        }
        if let Some(after) = close_after {
            std::thread::sleep(after);
            // Whatever was written meanwhile is never read: the kernel answers it with a reset.
            return;
        }
    }
}

fn start(up_port: u16) -> (Server, u16) {
    start_http(
        &format!(
            "[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\n\
             proxy = {{ upstreams = [\"http://127.0.0.1:{up_port}\"], keepalive_timeout = \"10s\" }}\n"
        ),
        &[],
    )
}

fn post(port: u16, path: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 7\r\nConnection: close\r\n\r\n[1,2,3]"
    );
    exchange(&mut s, request.as_bytes()).unwrap().status
}

#[test]
fn a_post_right_after_a_500_is_not_written_into_the_closing_connection() {
    let (up_port, seen) = closing_app();
    let (_server, port) = start(up_port);
    let mut answers = Vec::new();
    for _ in 0..10 {
        answers.push(format!("{}/{}", post(port, "/fail"), post(port, "/ok")));
    }
    assert!(
        answers.iter().all(|a| a == "500/200"),
        "bad then good POST: {answers:?}"
    );
    // Each valid POST reached the app once: none was lost, none sent twice.
    let oks = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.starts_with("POST /ok "))
        .count();
    assert_eq!(oks, 10);
}

#[test]
fn a_connection_the_app_closed_while_idle_is_not_reused() {
    let (up_port, seen) = closing_app();
    let (_server, port) = start(up_port);
    for _ in 0..5 {
        assert_eq!(post(port, "/close-idle"), 200);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(post(port, "/ok"), 200);
    }
    assert_eq!(seen.lock().unwrap().len(), 10, "{:?}", seen.lock().unwrap());
}
