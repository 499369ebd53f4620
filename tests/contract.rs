//! The parts of the systemd contract that real hosts hit and a quick test does not: a broken
//! configuration under socket activation, a SIGHUP during start-up, concurrent reloads, odd
//! NOTIFY_SOCKET values and the file-descriptor limit. (tests/e2e covers them under systemd.)

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn ok_config(body: &str) -> String {
    respond_config("http", "", "", body)
}

// ---------------------------------------------------------------- standby (issue 22, item 1)

#[test]
fn a_broken_config_under_socket_activation_answers_503_until_the_file_is_fixed() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "g.toml",
        &format!("bogus_key = 1\n{}", ok_config("fixed")),
    );
    let (l, port) = tcp_listener();
    let mut server = Server::start(dir, Launch::serve(&cfg).fd(l, "http"));
    // Exiting 78 here would only make systemd start us again for the queued connection.
    let (_, ready) = server.wait_ready();
    assert!(
        ready.contains("CONFIGURATION INVALID") && ready.contains("bogus_key"),
        "STATUS= says what is wrong: {ready}"
    );
    for _ in 0..3 {
        let r = get_tcp(port, "x", "/").unwrap();
        assert_eq!(r.status, 503, "{}", r.text());
    }
    assert!(server.is_running());
    let stderr = server.stderr();
    assert!(
        stderr.contains("g.toml:1:1") && stderr.contains("answering 503"),
        "the log has the error with its position: {stderr}"
    );

    // Fixing the file is enough: no restart, no reset-failed.
    std::fs::write(&cfg, ok_config("fixed")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = get_tcp(port, "x", "/").unwrap();
        if r.status == 200 {
            assert_eq!(r.text(), "fixed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "still {} after the fix",
            r.status
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (_, ready) = server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(1))
        .unwrap_or_else(|| (Instant::now(), String::new()));
    assert!(
        !ready.contains("INVALID"),
        "STATUS= is clear again: {ready}"
    );
}

#[test]
fn an_unclaimed_socket_is_standby_too_and_sighup_ends_it() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "g.toml",
        &respond_config("web", "", "", "renamed"),
    );
    let (l, port) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(l, "http"));
    server.wait_ready();
    assert_eq!(get_tcp(port, "x", "/").unwrap().status, 503);
    std::fs::write(&cfg, ok_config("claimed")).unwrap();
    server.signal(libc::SIGHUP);
    server
        .notify()
        .wait_for_line("RELOADING=1", Duration::from_secs(5))
        .expect("RELOADING=1");
    server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .expect("READY=1");
    assert_eq!(get_tcp(port, "x", "/").unwrap().text(), "claimed");
}

#[test]
fn without_sockets_from_systemd_a_broken_config_still_exits_78() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "g.toml",
        &format!(
            "bogus_key = 1\n{}",
            respond_config("http", &format!("\"127.0.0.1:{}\"", free_port()), "", "x")
        ),
    );
    let mut server = Server::start(dir, Launch::serve(&cfg));
    let status = server.wait_exit(Duration::from_secs(10)).expect("exit");
    assert_eq!(status.code(), Some(78), "{}", server.stderr());
}

// ---------------------------------------------------------------- FIFO configurations
// A config file that is a FIFO blocks its reader until the test writes it: it holds the
// server at a known point of its start or of a reload.

fn mkfifo(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    // SAFETY: `c` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    path
}

/// Waits until a reader has the FIFO open (it then waits for this writer), returns the writer.
fn writer_once_read(fifo: &Path) -> std::fs::File {
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Without a reader, a non-blocking open for writing fails (ENXIO). CLOEXEC: a child
        // spawned meanwhile (by any test) must not keep the writer open.
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_WRONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd >= 0 {
            // SAFETY: open(2) just returned `fd`, and nothing else owns it.
            let file = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            return file;
        }
        assert!(
            Instant::now() < deadline,
            "nobody opened {}",
            fifo.display()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Writes `text` as the next read of `fifo` and closes it (the reader sees the end).
fn feed(fifo: &Path, text: &str) {
    let mut w = writer_once_read(fifo);
    // A reader that died makes this EPIPE: the test's asserts tell what went wrong.
    let _ = w.write_all(text.as_bytes());
}

#[test]
fn a_sighup_during_start_up_does_not_kill_the_server() {
    let dir = tempdir();
    let fifo = mkfifo(dir.path(), "g.toml");
    let (l, port) = tcp_listener();
    let mut server = Server::start(dir, Launch::serve(&fifo).fd(l, "http"));
    // The server is reading its configuration: long before its handlers exist.
    let mut w = writer_once_read(&fifo);
    server.signal(libc::SIGHUP);
    std::thread::sleep(Duration::from_millis(100));
    let _ = w.write_all(ok_config("first").as_bytes());
    drop(w);
    assert!(
        server
            .notify()
            .wait_for_line("READY=1", Duration::from_secs(10))
            .is_some(),
        "no READY=1: killed by the SIGHUP? exit {:?}, stderr:\n{}",
        server.wait_exit(Duration::from_millis(100)),
        server.stderr()
    );
    assert_eq!(get_tcp(port, "x", "/").unwrap().text(), "first");
    // The SIGHUP was not lost either: it asked for a reload, which now reads the file.
    feed(&fifo, &ok_config("second"));
    server
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(5))
        .expect("READY=1 after the reload");
    assert_eq!(get_tcp(port, "x", "/").unwrap().text(), "second");
    assert!(server.is_running());
}

#[test]
fn gatehouse_reload_reports_its_own_reload_not_a_concurrent_one() {
    let dir = tempdir();
    let fifo = mkfifo(dir.path(), "g.toml");
    let valid = write(dir.path(), "valid.toml", &ok_config("mine"));
    let run = dir.path().join("run");
    std::fs::create_dir(&run).unwrap();
    let (l, port) = tcp_listener();
    let launch = Launch::serve(&fifo)
        .fd(l, "http")
        .env("RUNTIME_DIRECTORY", run.to_str().unwrap());
    let server = Server::start(dir, launch);
    feed(&fifo, &ok_config("first"));
    server.wait_ready();

    // Someone else's reload is under way (it waits for the file) ...
    server.signal(libc::SIGHUP);
    let mut theirs = writer_once_read(&fifo);
    // ... when `gatehouse reload` (ExecReload=) asks for ours.
    let client = Command::new(BIN)
        .args([
            "reload",
            "--pid",
            &server.pid().to_string(),
            "--timeout",
            "20s",
        ])
        .arg("--config")
        .arg(&valid)
        .env("RUNTIME_DIRECTORY", &run)
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It validates, reads the status record and signals: milliseconds.
    std::thread::sleep(Duration::from_millis(1000));
    // Theirs fails, having read the file before our signal ...
    let _ = theirs.write_all(b"[server\n");
    drop(theirs);
    // Until the first reader has closed the FIFO, a new writer would join its read and
    // both texts would be read as one file.
    server.wait_log("reload refused");
    // ... ours (the signal that came meanwhile) reads it afterwards and succeeds.
    feed(&fifo, &ok_config("mine"));
    let out = client.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "took the concurrent reload's failure for its own: {stdout}{stderr}\nrecord: {:?}\nserver: {}",
        std::fs::read_to_string(run.join("reload.status")),
        server.stderr()
    );
    assert!(stdout.contains("reload 2"), "{stdout}");
    assert_eq!(get_tcp(port, "x", "/").unwrap().text(), "mine");
}

// ---------------------------------------------------------------- NOTIFY_SOCKET forms

#[test]
fn a_relative_notify_socket_is_refused_with_a_log_line() {
    let dir = tempdir();
    let sock = UnixDatagram::bind(dir.path().join("notify.sock")).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    let cfg = write(dir.path(), "g.toml", &ok_config("x"));
    let (l, port) = tcp_listener();
    let mut launch = Launch::serve(&cfg)
        .fd(l, "http")
        .env("NOTIFY_SOCKET", "notify.sock");
    launch.notify = false;
    launch.before_exec = format!("cd '{}' &&", dir.path().display());
    let server = Server::start(dir, launch);
    assert_eq!(get_eventually(port, "/").status, 200);
    let mut buf = [0u8; 512];
    let got = sock.recv(&mut buf);
    assert!(
        got.is_err(),
        "sd_notify(3) ignores relative paths, but we sent {:?}",
        got.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
    );
    server.wait_log("not an absolute path");
    assert!(server
        .stderr()
        .contains("NOTIFY_SOCKET=\"notify.sock\" is unusable"));
}

/// A vsock listener on the local CID, where the kernel has vsock loopback.
fn vsock_loopback_listener() -> Option<(socket2::Socket, u32)> {
    let s = socket2::Socket::new(socket2::Domain::VSOCK, socket2::Type::STREAM, None).ok()?;
    s.bind(&socket2::SockAddr::vsock(
        libc::VMADDR_CID_LOCAL,
        libc::VMADDR_PORT_ANY,
    ))
    .ok()?;
    s.listen(4).ok()?;
    let (_, port) = s.local_addr().ok()?.as_vsock_address()?;
    Some((s, port))
}

#[test]
fn vsock_notify_sockets_are_used_or_their_failure_logged() {
    let listener = vsock_loopback_listener();
    let port = listener.as_ref().map_or(1, |(_, p)| *p);
    let dir = tempdir();
    let cfg = write(dir.path(), "g.toml", &ok_config("x"));
    let (l, http_port) = tcp_listener();
    let mut launch = Launch::serve(&cfg)
        .fd(l, "http")
        .env("NOTIFY_SOCKET", &format!("vsock-stream:local:{port}"));
    launch.notify = false;
    let server = Server::start(dir, launch);
    assert_eq!(get_eventually(http_port, "/").status, 200);
    match listener {
        Some((l, _)) => {
            l.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let (conn, _) = l.accept().expect("a connection per message");
            let mut conn: std::net::TcpStream = TcpStream::from(OwnedFd::from(conn));
            let mut msg = String::new();
            conn.read_to_string(&mut msg).unwrap();
            assert!(msg.lines().any(|l| l == "READY=1"), "{msg}");
        }
        None => {
            eprintln!("no vsock loopback here: checking that the failure is logged instead");
            server.wait_log("sd_notify failed");
            assert!(server.stderr().contains("vsock-stream:local:1"));
        }
    }
}

// ---------------------------------------------------------------- RLIMIT_NOFILE

fn limits_of(pid: i32) -> (u64, u64) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap();
    let mut f = line.split_whitespace().skip(3);
    (
        f.next().unwrap().parse().unwrap(),
        f.next().unwrap().parse().unwrap(),
    )
}

#[test]
fn the_soft_fd_limit_is_raised_and_a_short_one_reported() {
    if !have_programs(&["prlimit"], "util-linux") {
        return;
    }
    let dir = tempdir();
    // Respond routes only: one fd per connection, so 600 + 64 fit under 1024 but not 256.
    let cfg = write(
        dir.path(),
        "g.toml",
        &respond_config("http", "", "max_connections = 2000", "x"),
    );
    let (l, port) = tcp_listener();
    let mut launch = Launch::serve(&cfg).fd(l, "http");
    launch.wrapper = vec!["prlimit".into(), "--nofile=256:1024".into()];
    let server = Server::start(dir, launch);
    server.wait_ready();
    assert_eq!(limits_of(server.pid()), (1024, 1024), "soft raised to hard");
    server.wait_log("max_connections = 2000 may need 2064 file descriptors");

    // 600 keep-alive clients at once: more than the soft limit the server was started with.
    let mut clients: Vec<TcpStream> = (0..600)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    for c in &mut clients {
        c.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    }
    // One deadline for all: unanswered clients must not take 5 s each.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut answered = 0;
    for c in &mut clients {
        let left = deadline.saturating_duration_since(Instant::now());
        c.set_read_timeout(Some(left.max(Duration::from_millis(10))))
            .unwrap();
        let mut buf = [0u8; 256];
        if matches!(c.read(&mut buf), Ok(n) if n > 0 && buf.starts_with(b"HTTP/1.1 200")) {
            answered += 1;
        }
    }
    assert_eq!(answered, 600, "every client answered");
}
