//! gatehouse in front of a real gunicorn sync worker (Debian's `gunicorn`), the stack it
//! replaces nginx in: one worker, which a slow client would hold for the whole transfer
//! without buffering. Slow uploads and slow readers must not keep other requests waiting,
//! transfers stay byte-exact, streams are not held back, `X-Accel-Buffering: no` and event
//! streams are streamed, and many stalled readers go to disk, not to memory.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const APP: &str = r#"
import time, zlib

PATTERN = bytes(range(256)) * 256  # 64 KiB; byte i of a body is i % 256


def pattern(n):
    full, rest = divmod(n, len(PATTERN))
    for _ in range(full):
        yield PATTERN
    if rest:
        yield PATTERN[:rest]


def application(environ, start_response):
    path = environ['PATH_INFO']
    if path == '/fast':
        start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', '4')])
        return [b'fast']
    if path == '/upload':
        body = environ['wsgi.input'].read()
        out = '%d %08x %s %s' % (len(body), zlib.crc32(body),
                                 environ.get('CONTENT_LENGTH') or '-',
                                 environ.get('HTTP_TRANSFER_ENCODING') or '-')
        out = out.encode()
        start_response('200 OK', [('Content-Type', 'text/plain'), ('Content-Length', str(len(out)))])
        return [out]
    if path.startswith('/big/'):
        n = int(path[5:])
        start_response('200 OK', [('Content-Type', 'application/octet-stream'), ('Content-Length', str(n))])
        return pattern(n)
    if path.startswith('/nobuf/'):
        n = int(path[7:])
        start_response('200 OK', [('Content-Type', 'application/octet-stream'), ('Content-Length', str(n)),
                                  ('X-Accel-Buffering', 'no')])
        return pattern(n)
    if path.startswith('/events/'):
        n = int(path[8:])
        start_response('200 OK', [('Content-Type', 'text/event-stream')])
        return pattern(n)
    if path == '/stream':
        start_response('200 OK', [('Content-Type', 'text/plain')])
        def chunks():
            yield b'first\n'
            time.sleep(2)
            yield b'second\n'
        return chunks()
    start_response('404 Not Found', [('Content-Length', '0')])
    return []
"#;

/// `gunicorn --workers 1 --worker-class sync` on a unix socket, serving `APP`.
struct Gunicorn {
    child: Child,
    sock: PathBuf,
}

impl Gunicorn {
    fn start(dir: &Path) -> Gunicorn {
        write(dir, "app.py", APP);
        let sock = dir.join("gunicorn.sock");
        let log = std::fs::File::create(dir.join("gunicorn.log")).unwrap();
        let child = Command::new("gunicorn")
            .args([
                "--workers",
                "1",
                "--worker-class",
                "sync",
                "--timeout",
                "120",
            ])
            .arg("--bind")
            .arg(format!("unix:{}", sock.display()))
            .arg("--chdir")
            .arg(dir)
            .arg("app:application")
            .env_remove("GUNICORN_CMD_ARGS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn gunicorn");
        let g = Gunicorn { child, sock };
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&g.sock).is_err() {
            assert!(Instant::now() < deadline, "gunicorn did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }
}

impl Drop for Gunicorn {
    fn drop(&mut self) {
        // SIGINT: quick shutdown of the arbiter and its worker.
        // SAFETY: kill(2) takes plain integers; the pid is our own child's.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Stack {
    server: Server,
    port: u16,
    admin: PathBuf,
    temp: PathBuf,
    _app: Gunicorn,
}

/// gunicorn behind a default `proxy` route (plus `extra` keys), with an admin socket and
/// the route's temp_dir in the test directory. `None` when gunicorn is not installed.
fn stack(extra: &str) -> Option<Stack> {
    if !have_programs(&["gunicorn"], "gunicorn") {
        return None;
    }
    let dir = tempdir();
    let app = Gunicorn::start(dir.path());
    let temp = dir.path().join("tmp");
    std::fs::create_dir(&temp).unwrap();
    let cfg = format!(
        "[[listener]]\nname = \"http\"\n[[listener]]\nname = \"admin\"\nrole = \"admin\"\n\
[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\n\
proxy = {{ upstreams = [\"unix:{}\"], temp_dir = \"{}\"{extra} }}\n",
        app.sock.display(),
        temp.display()
    );
    let cfg = write(dir.path(), "g.toml", &cfg);
    let (server, port, admin) = start_http_and_admin(dir, &cfg, None);
    let s = Stack {
        server,
        port,
        admin,
        temp,
        _app: app,
    };
    // gunicorn's worker is up once it has answered.
    fast(s.port);
    Some(s)
}

/// GET /fast; returns how long the answer took.
fn fast(port: u16) -> Duration {
    let t = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let r = exchange(
        &mut s,
        b"GET /fast HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!((r.status, r.text()), (200, "fast".to_owned()));
    t.elapsed()
}

fn assert_quick(what: &str, took: Duration) {
    eprintln!("{what}: {took:?}");
    assert!(took < Duration::from_secs(1), "{what} took {took:?}");
}

/// A request that the client stops reading once the head and a few body bytes are in.
struct SlowReader {
    s: TcpStream,
    head: String,
    body: Vec<u8>,
}

impl SlowReader {
    fn start(port: u16, path: &str) -> SlowReader {
        let mut s = slow_client(port);
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 1024];
        let end = loop {
            if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                if got.len() > end + 4 {
                    break end;
                }
            }
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        };
        SlowReader {
            s,
            head: String::from_utf8_lossy(&got[..end]).into_owned(),
            body: got[end + 4..].to_vec(),
        }
    }

    /// Reads the rest and checks the whole body is the app's pattern, `len` bytes long.
    fn finish(mut self, len: usize) {
        self.s.read_to_end(&mut self.body).unwrap();
        assert_eq!(self.body.len(), len, "{}", self.head);
        assert!(
            self.body
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 256) as u8),
            "the body is not what the app sent"
        );
    }
}

#[test]
fn a_slow_upload_does_not_hold_the_sync_worker() {
    let Some(t) = stack("") else { return };
    let body: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    let mut crc = flate2::Crc::new();
    crc.update(&body);
    let port = t.port;
    let uploader = std::thread::spawn(move || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        // Chunked, as a browser streaming a file might; 64 KiB every 150 ms: ~2.4 s.
        s.write_all(b"POST /upload HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            .unwrap();
        for piece in body.chunks(64 << 10) {
            write!(s, "{:x}\r\n", piece.len()).unwrap();
            s.write_all(piece).unwrap();
            s.write_all(b"\r\n").unwrap();
            std::thread::sleep(Duration::from_millis(150));
        }
        s.write_all(b"0\r\n\r\n").unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).unwrap();
        parse_reply(&buf).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..3 {
        assert_quick("GET /fast during a slow upload", fast(t.port));
        std::thread::sleep(Duration::from_millis(400));
    }
    assert!(
        !uploader.is_finished(),
        "the upload ended before the checks"
    );
    let r = uploader.join().unwrap();
    // Byte-exact, and the app got a Content-Length instead of a chunked body.
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), format!("1048576 {:08x} 1048576 -", crc.sum()));
}

#[test]
fn slow_readers_of_large_responses_do_not_hold_the_sync_worker() {
    let Some(t) = stack("") else { return };
    let len = 8 << 20;
    let readers: Vec<SlowReader> = (0..3)
        .map(|_| SlowReader::start(t.port, &format!("/big/{len}")))
        .collect();
    for _ in 0..3 {
        assert_quick("GET /fast while 3 clients read 8 MiB slowly", fast(t.port));
        std::thread::sleep(Duration::from_millis(200));
    }
    for r in readers {
        r.finish(len);
    }
}

#[test]
fn a_streamed_response_reaches_the_client_as_the_app_writes_it() {
    let Some(t) = stack("") else { return };
    let start = Instant::now();
    let mut s = TcpStream::connect(("127.0.0.1", t.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    let mut first_at = None;
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
        if first_at.is_none() && got.windows(6).any(|w| w == b"first\n") {
            first_at = Some(start.elapsed());
        }
    }
    let first_at = first_at.expect("no first chunk");
    let text = String::from_utf8_lossy(&got);
    assert!(text.contains("second\n"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{text}"
    );
    // The app sleeps 2 s between its two chunks; buffered, the first would wait for it.
    assert_quick("the first chunk of a stream", first_at);
    assert!(start.elapsed() >= Duration::from_millis(1900));
}

/// Streamed responses hold the worker while their client reads slowly: a /fast request
/// waits for them. That is the proof they were not buffered.
#[test]
fn x_accel_buffering_no_and_event_streams_are_not_buffered() {
    let Some(t) = stack("") else { return };
    let len = 8 << 20;
    for path in ["/nobuf/", "/events/"] {
        let reader = SlowReader::start(t.port, &format!("{path}{len}"));
        assert!(
            !reader
                .head
                .to_ascii_lowercase()
                .contains("x-accel-buffering"),
            "X-Accel-Buffering reached the client:\n{}",
            reader.head
        );
        let (tx, rx) = mpsc::channel();
        let port = t.port;
        let waiting = std::thread::spawn(move || tx.send(fast(port)).unwrap());
        assert!(
            rx.recv_timeout(Duration::from_millis(1500)).is_err(),
            "{path}: /fast was answered while the worker should be busy streaming"
        );
        if path == "/events/" {
            // Chunked: the body arrives with its chunk framing, checked by length only.
            let mut r = reader;
            let mut rest = Vec::new();
            r.s.read_to_end(&mut rest).unwrap();
            assert!(r.body.len() + rest.len() > len);
        } else {
            reader.finish(len);
        }
        rx.recv_timeout(Duration::from_secs(10))
            .expect("/fast never answered");
        waiting.join().unwrap();
    }
    assert_eq!(
        metric(&t.admin, "gatehouse_proxy_buffered_responses_total"),
        3.0,
        "only the three /fast were buffered"
    );
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn many_stalled_readers_spill_to_disk_and_memory_stays_bounded() {
    let Some(t) = stack("") else { return };
    const READERS: usize = 40;
    let len = 8 << 20;
    let before = rss_kib(t.server.pid());
    let readers: Vec<SlowReader> = (0..READERS)
        .map(|_| SlowReader::start(t.port, &format!("/big/{len}")))
        .collect();
    // The worker answers in order, so /fast is answered once every big response was
    // written to gatehouse.
    let took = fast(t.port);
    eprintln!("GET /fast behind {READERS} × 8 MiB for stalled readers: {took:?}");
    let spilled = metric(
        &t.admin,
        "gatehouse_proxy_spilled_bytes_total{direction=\"response\"}",
    );
    let rss = rss_kib(t.server.pid());
    eprintln!("RSS {before} KiB before, {rss} KiB with {READERS} stalled readers; {spilled} bytes spilled");
    // 320 MiB are waiting for the readers; beyond what the sockets hold (their send buffers
    // grow to megabytes on loopback), they are on disk.
    assert!(
        spilled > (READERS * len / 4) as f64,
        "only {spilled} bytes went to disk"
    );
    assert!(
        rss < before + 48 * 1024,
        "RSS grew from {before} KiB to {rss} KiB"
    );
    assert_eq!(std::fs::read_dir(&t.temp).unwrap().count(), 0);
    for r in readers {
        r.finish(len);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&t.admin, "gatehouse_proxy_temp_file_bytes") != 0.0 {
        assert!(Instant::now() < deadline, "temp files left open");
        std::thread::sleep(Duration::from_millis(20));
    }
}
