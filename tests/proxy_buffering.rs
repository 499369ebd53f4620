//! Proxy buffering against a real upstream (hyper, in close mode like gunicorn's sync
//! workers) and the real binary: request bodies read whole before the upstream is involved,
//! responses read ahead of slow clients into memory and unlinked temporary files, limits,
//! metrics, and slow clients still counting for drain and idle exit. The same against a
//! real gunicorn: tests/proxy_gunicorn.rs.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

struct Setup {
    server: Server,
    port: u16,
    admin: PathBuf,
    /// The route's `temp_dir`.
    temp: PathBuf,
    up: UpstreamServer,
}

/// gatehouse with one proxy route to a close-mode upstream, `extra` added to the route's
/// keys and `server` to the [server] section, an admin socket, and its own `temp_dir`.
fn start(extra: &str, server: &str) -> Setup {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let up = UpstreamServer::start(Listen::unix(&sock), "unix");
    up.state.close_mode.store(true, Ordering::SeqCst);
    let temp = dir.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();
    let cfg = format!(
        "[server]\n{server}\n[[listener]]\nname = \"http\"\n[[listener]]\nname = \"admin\"\nrole = \"admin\"\n\
[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\n\
proxy = {{ upstreams = [\"unix:{}\"], temp_dir = \"{}\"{extra} }}\n",
        sock.display(),
        temp.display()
    );
    let cfg = write(dir.path(), "g.toml", &cfg);
    let (server, port, admin) =
        start_http_and_admin(dir, &cfg, Some("info,gatehouse::proxy=debug"));
    Setup {
        server,
        port,
        admin,
        temp,
        up,
    }
}

const SPILLED_RESPONSE: &str = "gatehouse_proxy_spilled_bytes_total{direction=\"response\"}";
const SPILLED_REQUEST: &str = "gatehouse_proxy_spilled_bytes_total{direction=\"request\"}";
const TEMP_BYTES: &str = "gatehouse_proxy_temp_file_bytes";

fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends a GET and reads until the head and `at_least` body bytes are in; returns the head
/// and the body bytes read so far.
fn start_get(s: &mut TcpStream, path: &str, at_least: usize) -> (String, Vec<u8>) {
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= end + 4 + at_least {
                let head = String::from_utf8_lossy(&got[..end]).into_owned();
                return (head, got[end + 4..].to_vec());
            }
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
}

/// Reads a stream to its end, counting bytes and checking they are all `byte`.
fn read_rest_all(s: &mut TcpStream, byte: u8) -> u64 {
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            return total;
        }
        assert!(buf[..n].iter().all(|&b| b == byte), "a wrong byte arrived");
        total += n as u64;
    }
}

#[test]
fn a_slow_clients_response_is_read_ahead_into_an_unnamed_temp_file_and_the_upstream_released() {
    let t = start("", "");
    let size: u64 = 16 << 20;
    let mut c = slow_client(t.port);
    let (head, first) = start_get(&mut c, &format!("/big/{size}"), 1);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {size}")),
        "{head}"
    );
    // The client reads nothing more; the upstream finishes anyway.
    wait_until(
        "the upstream to finish its response",
        Duration::from_secs(10),
        || t.up.state.open.load(Ordering::SeqCst) == 0,
    );
    // Beyond what the sockets hold (gatehouse's send buffer grows to megabytes on
    // loopback), the response is in the file.
    let spilled = metric(&t.admin, SPILLED_RESPONSE);
    assert!(spilled > (8 << 20) as f64, "spilled {spilled}");
    assert!(metric(&t.admin, TEMP_BYTES) > 0.0);
    assert_eq!(
        metric(&t.admin, "gatehouse_proxy_buffered_responses_total"),
        1.0
    );
    // The file has no name: nothing to clean up after a crash, nothing for others to open.
    assert_eq!(std::fs::read_dir(&t.temp).unwrap().count(), 0);
    let pid = t.server.pid();
    let deleted = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.unwrap().path()).ok())
        .filter(|l| l.starts_with(&t.temp))
        .count();
    assert_eq!(deleted, 1, "one temp file open");

    assert!(first.iter().all(|&b| b == b'x'));
    let rest = read_rest_all(&mut c, b'x');
    assert_eq!(first.len() as u64 + rest, size);
    // The file goes with the response.
    wait_until("the temp file to close", Duration::from_secs(5), || {
        metric(&t.admin, TEMP_BYTES) == 0.0
    });
}

#[test]
fn a_buffered_upload_reaches_the_upstream_whole_with_a_content_length() {
    let t = start(", buffer_memory = \"256k\"", "");
    let mut c = slow_client(t.port);
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .unwrap();
    let piece = vec![b'u'; 512 * 1024];
    for _ in 0..6 {
        write!(c, "{:x}\r\n", piece.len()).unwrap();
        c.write_all(&piece).unwrap();
        c.write_all(b"\r\n").unwrap();
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    // Everything but the last chunk is in: still nothing upstream, and only in the file.
    assert!(t.up.seen().is_empty(), "{:?}", t.up.seen());
    assert_eq!(std::fs::read_dir(&t.temp).unwrap().count(), 0);
    c.write_all(b"0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    let r = parse_reply(&buf).unwrap();
    assert_eq!((r.status, r.text()), (200, "received 3145728".to_owned()));
    let seen = t.up.seen();
    assert_eq!(seen[0].all("content-length"), ["3145728"]);
    assert_eq!(seen[0].header("transfer-encoding"), None);
    assert_eq!(metric(&t.admin, SPILLED_REQUEST), 3145728.0);
    assert_eq!(
        metric(&t.admin, "gatehouse_proxy_buffered_requests_total"),
        1.0
    );
    wait_until("the temp file to close", Duration::from_secs(5), || {
        metric(&t.admin, TEMP_BYTES) == 0.0
    });
}

/// The Rss of each mapping of a file in `dir` (a temporary file shows as "DIR/#INODE
/// (deleted)").
fn mapped_from(pid: i32, dir: &Path) -> Vec<String> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let dir = format!("{}/", dir.display());
    let mut rss = Vec::new();
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        if line.contains(&dir) {
            let r = lines.find_map(|l| l.strip_prefix("Rss:"));
            rss.push(r.unwrap_or_default().trim().to_owned());
        }
    }
    rss
}

#[test]
fn a_spooled_upload_leaves_through_sendfile_byte_exact_and_never_read() {
    let t = start("", "");
    let body: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let mut c = TcpStream::connect(("127.0.0.1", t.port)).unwrap();
    write!(
        c,
        "POST /digest?pause_ms=1000 HTTP/1.1\r\nHost: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(&body).unwrap();
    // The upstream pauses after its first read: the rest of the body waits, mapped, for
    // the socket to take it. sendfile(2) sends it, so no page of it is ever faulted in
    // (the read-back path has no mapping at all).
    let pid = t.server.pid();
    wait_until(
        "the spooled body to be mapped",
        Duration::from_secs(5),
        || !mapped_from(pid, &t.temp).is_empty(),
    );
    // Time for a writer that wrote the mapping's bytes to fault in what the socket took.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        mapped_from(pid, &t.temp),
        ["0 kB"],
        "mappings of the temporary file and their Rss"
    );
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    let r = parse_reply(&buf).unwrap();
    let want = format!("{} {}", body.len(), proxy_upstream::fnv1a(&body));
    assert_eq!((r.status, r.text()), (200, want));
    wait_until("the mapping to go", Duration::from_secs(5), || {
        mapped_from(pid, &t.temp).is_empty()
    });
}

#[test]
fn a_chunked_upload_over_max_body_is_413_before_the_app_sees_anything() {
    let t = start(", max_body = \"1MiB\"", "");
    let mut c = slow_client(t.port);
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let piece = vec![b'u'; 256 * 1024];
    for _ in 0..8 {
        if write!(c, "{:x}\r\n", piece.len()).is_err() || c.write_all(&piece).is_err() {
            break;
        }
        let _ = c.write_all(b"\r\n");
    }
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert_eq!(parse_reply(&buf).unwrap().status, 413);
    assert!(t.up.seen().is_empty(), "{:?}", t.up.seen());
    assert_eq!(t.up.state.connections.load(Ordering::SeqCst), 0);
}

/// A client that stops reading a response larger than the buffer: the pump waits at the
/// cap for as long as the connection lives, and `send_timeout` (judged at the client's
/// socket) ends it, letting the upstream go and freeing the file.
#[test]
fn a_client_that_stops_reading_past_max_temp_file_is_cut_after_send_timeout() {
    let t = start(", max_temp_file = \"1MiB\"", "send_timeout = \"1s\"");
    let mut c = slow_client(t.port);
    start_get(&mut c, "/big/1000000000", 1);
    // The buffer fills up to its cap (memory + 1 MiB of file, beyond what the sockets
    // hold), then the upstream waits...
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(t.up.state.open.load(Ordering::SeqCst), 1);
    let in_file = metric(&t.admin, TEMP_BYTES);
    assert!(
        in_file <= (1 << 20) as f64,
        "{in_file} bytes in the file, past the cap"
    );
    assert!(metric(&t.admin, SPILLED_RESPONSE) > 0.0);
    assert_eq!(metric(&t.admin, "gatehouse_open_connections"), 1.0);
    // ...until the client has taken nothing for send_timeout: its connection goes, and the
    // upstream and the file with it.
    wait_until("the upstream released", Duration::from_secs(5), || {
        t.up.state.open.load(Ordering::SeqCst) == 0
    });
    wait_until("the temp file freed", Duration::from_secs(5), || {
        metric(&t.admin, TEMP_BYTES) == 0.0
    });
    assert_eq!(metric(&t.admin, "gatehouse_open_connections"), 0.0);
}

#[test]
fn a_drain_waits_for_a_slow_client_fed_from_the_buffer() {
    let mut t = start("", "shutdown_timeout = \"20s\"");
    let size: u64 = 4 << 20;
    let mut c = slow_client(t.port);
    let (_, first) = start_get(&mut c, &format!("/big/{size}"), 1);
    wait_until("the upstream to finish", Duration::from_secs(10), || {
        t.up.state.open.load(Ordering::SeqCst) == 0
    });
    assert_eq!(metric(&t.admin, "gatehouse_open_connections"), 1.0);
    t.server.signal(libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        t.server.is_running(),
        "exited while a client was still being fed"
    );
    let rest = read_rest_all(&mut c, b'x');
    assert_eq!(first.len() as u64 + rest, size);
    let status = t.server.wait_exit(Duration::from_secs(5)).expect("exit");
    assert!(status.success(), "{status:?}");
}

#[test]
fn idle_exit_waits_for_a_slow_client_fed_from_the_buffer() {
    let mut t = start("", "idle_exit_after = \"500ms\"");
    let size: u64 = 4 << 20;
    let mut c = slow_client(t.port);
    let (_, first) = start_get(&mut c, &format!("/big/{size}"), 1);
    wait_until("the upstream to finish", Duration::from_secs(10), || {
        t.up.state.open.load(Ordering::SeqCst) == 0
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        t.server.is_running(),
        "idle exit while a client was being fed"
    );
    let rest = read_rest_all(&mut c, b'x');
    assert_eq!(first.len() as u64 + rest, size);
    let status = t
        .server
        .wait_exit(Duration::from_secs(5))
        .expect("idle exit");
    assert!(status.success(), "{status:?}");
}

#[test]
fn unbuffered_routes_hold_the_upstream_until_the_client_has_read() {
    let t = start(", buffer_responses = false", "");
    let mut c = slow_client(t.port);
    start_get(&mut c, "/big/8388608", 1);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(t.up.state.open.load(Ordering::SeqCst), 1);
    assert_eq!(metric(&t.admin, SPILLED_RESPONSE), 0.0);
    assert_eq!(
        metric(&t.admin, "gatehouse_proxy_buffered_responses_total"),
        0.0
    );
    read_rest_all(&mut c, b'x');
}

#[test]
fn the_shipped_apps_example_checks() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("units/examples/gatehouse-apps.toml");
    let (code, _, err) = run_cli(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, Some(0), "{err}");
}

/// A gRPC streaming call sends while its answer comes back: its body is never held.
#[test]
fn grpc_request_bodies_stream_through() {
    let t = start("", "");
    let (tx, rx) = std::sync::mpsc::channel();
    *t.up.state.first_byte.lock().unwrap() = Some(tx);
    let mut c = slow_client(t.port);
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Type: application/grpc+proto\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n")
        .unwrap();
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the upstream saw nothing while the call was open");
    c.write_all(b"0\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    c.read_to_end(&mut buf).unwrap();
    assert_eq!(parse_reply(&buf).unwrap().text(), "received 5");
    assert_eq!(
        metric(&t.admin, "gatehouse_proxy_buffered_requests_total"),
        0.0
    );
}

#[test]
fn an_upload_that_stalls_is_408_and_never_reaches_the_app() {
    let t = start(", idle_timeout = \"300ms\"", "");
    let mut c = slow_client(t.port);
    c.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n0123456789")
        .unwrap();
    let started = Instant::now();
    let mut buf = Vec::new();
    let _ = c.read_to_end(&mut buf);
    assert_eq!(parse_reply(&buf).unwrap().status, 408);
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(t.up.state.connections.load(Ordering::SeqCst), 0);
}
