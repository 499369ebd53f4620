//! Test harness: runs the real `gatehouse` binary the way systemd does — listening sockets
//! dup'ed to fd 3.. with LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID, and a real NOTIFY_SOCKET
//! datagram socket owned by the test.
// Shared by many test crates, each using part of it: `pub` is this module's interface.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_gatehouse");

/// Messages received on our NOTIFY_SOCKET, each with its arrival time.
pub struct NotifySocket {
    pub path: PathBuf,
    rx: mpsc::Receiver<(Instant, String)>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                if tx.send((Instant::now(), msg)).is_err() {
                    break;
                }
            }
        });
        NotifySocket { path, rx }
    }

    /// Waits for a datagram that has a line equal to `line`; returns the whole datagram.
    pub fn wait_for_line(&self, line: &str, timeout: Duration) -> Option<(Instant, String)> {
        self.wait_for(|m| m.lines().any(|l| l == line), timeout)
    }

    pub fn wait_for(
        &self,
        pred: impl Fn(&str) -> bool,
        timeout: Duration,
    ) -> Option<(Instant, String)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.checked_duration_since(Instant::now())?;
            match self.rx.recv_timeout(left) {
                Ok((t, m)) if pred(&m) => return Some((t, m)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
    }

    /// Everything that arrives within `window`.
    pub fn collect(&self, window: Duration) -> Vec<(Instant, String)> {
        let deadline = Instant::now() + window;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.rx.recv_timeout(left) {
                Ok(m) => out.push(m),
                Err(_) => break,
            }
        }
        out
    }

    pub fn clear(&self) {
        while self.rx.try_recv().is_ok() {}
    }
}

/// Which LISTEN_PID the child sees.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ListenPid {
    Own,
    Other(u32),
}

pub struct Launch {
    pub args: Vec<String>,
    pub fds: Vec<(OwnedFd, String)>,
    pub listen_pid: ListenPid,
    pub env: Vec<(String, String)>,
    pub notify: bool,
    pub stderr: Option<PathBuf>,
    /// Runs the shell under this program (e.g. `unshare -m`).
    pub wrapper: Vec<String>,
    /// Shell commands run just before exec (e.g. mounts inside the wrapper's namespace).
    pub before_exec: String,
    /// Runs the server under a seccomp filter that fails openat2(2) with ENOSYS, as
    /// systemd's RestrictSUIDSGID= (and so DynamicUser=) does.
    pub block_openat2: bool,
}

impl Launch {
    pub fn serve(config: &Path) -> Launch {
        Launch {
            args: vec![
                "serve".into(),
                "--config".into(),
                config.display().to_string(),
                "--log-target".into(),
                "stderr".into(),
            ],
            fds: Vec::new(),
            listen_pid: ListenPid::Own,
            env: Vec::new(),
            notify: true,
            stderr: None,
            wrapper: Vec::new(),
            before_exec: String::new(),
            block_openat2: false,
        }
    }

    pub fn fd(mut self, fd: impl Into<OwnedFd>, name: &str) -> Launch {
        self.fds.push((fd.into(), name.to_owned()));
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Launch {
        self.env.push((k.into(), v.into()));
        self
    }
}

pub struct Server {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub notify: Option<NotifySocket>,
    pub stderr_path: PathBuf,
}

impl Server {
    /// Starts the binary in `dir` with `launch`. Passed fds land on 3, 4, ... and LISTEN_PID
    /// is the child's own pid: `sh` exports `$$` and execs, so the pid is unchanged.
    pub fn start(dir: tempfile::TempDir, launch: Launch) -> Server {
        let notify = launch.notify.then(|| NotifySocket::bind(dir.path()));
        let stderr_path = launch
            .stderr
            .clone()
            .unwrap_or_else(|| dir.path().join("stderr.log"));
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");

        let mut cmd = match launch.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg("/bin/sh");
                c
            }
            None => Command::new("/bin/sh"),
        };
        let pid_setup = match launch.listen_pid {
            ListenPid::Own => "LISTEN_PID=$$".to_owned(),
            ListenPid::Other(pid) => format!("LISTEN_PID={pid}"),
        };
        cmd.arg("-c")
            .arg(format!(
                "{} export {pid_setup}; exec \"$0\" \"$@\"",
                launch.before_exec
            ))
            .arg(BIN)
            .args(&launch.args)
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .env_remove("RUNTIME_DIRECTORY")
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if !launch.fds.is_empty() {
            cmd.env("LISTEN_FDS", launch.fds.len().to_string());
            let names: Vec<&str> = launch.fds.iter().map(|(_, n)| n.as_str()).collect();
            cmd.env("LISTEN_FDNAMES", names.join(":"));
        }
        if let Some(n) = &notify {
            cmd.env("NOTIFY_SOCKET", &n.path);
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        let raw: Vec<RawFd> = launch.fds.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        let mut seccomp = launch
            .block_openat2
            .then(|| enosys_filter(libc::SYS_openat2));
        // SAFETY: only async-signal-safe calls (fcntl, dup2, prctl) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move every source out of the 3.. range first, so no dup2 clobbers another.
                let mut high = Vec::with_capacity(raw.len());
                for &fd in &raw {
                    let h = libc::fcntl(fd, libc::F_DUPFD, 100);
                    if h < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    high.push(h);
                }
                for (i, &h) in high.iter().enumerate() {
                    // dup2 clears FD_CLOEXEC on the target, so the fd survives exec.
                    if libc::dup2(h, 3 + i as RawFd) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if let Some(filter) = seccomp.as_mut() {
                    install_filter(filter)?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn gatehouse");
        // The parent's copies close here; the child holds its own.
        drop(launch.fds);
        Server {
            child,
            dir,
            notify,
            stderr_path,
        }
    }

    pub fn notify(&self) -> &NotifySocket {
        self.notify.as_ref().expect("launched with a notify socket")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) takes plain integers; the pid is our own child's.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill({sig})");
    }

    pub fn wait_ready(&self) -> (Instant, String) {
        self.notify()
            .wait_for_line("READY=1", Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no READY=1; stderr:\n{}", self.stderr()))
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// Waits until stderr (the access log) contains `needle`; panics after 5 s.
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.stderr().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{needle:?} not in the log:\n{}", self.stderr());
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().expect("try_wait").is_none()
    }
}

/// A classic-BPF seccomp program: `nr` fails with ENOSYS, every other system call runs.
/// (The syscall number is the same for every ABI a test binary runs under.)
fn enosys_filter(nr: libc::c_long) -> [libc::sock_filter; 4] {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
    const RET_K: u16 = 0x06; // BPF_RET | BPF_K
    const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;
    const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    [
        op(LD_W_ABS, 0, 0, 0), // seccomp_data.nr
        op(JEQ_K, 0, 1, nr as u32),
        op(RET_K, 0, 0, SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        op(RET_K, 0, 0, SECCOMP_RET_ALLOW),
    ]
}

/// Installs `filter` on the calling thread (between fork and exec: async-signal-safe).
fn install_filter(filter: &mut [libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: prctl with the documented arguments; `prog` outlives the calls.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
            || libc::prctl(libc::PR_SET_SECCOMP, libc::SECCOMP_MODE_FILTER, &prog) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tempdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("gatehouse-test")
        .tempdir()
        .expect("tempdir")
}

pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path
}

/// A shipped example configuration (`repo_path` from the repository root) written to
/// `dir/g.toml`, its document root /var/www/example.com replaced by an empty `dir/www`.
pub fn example_config(dir: &Path, repo_path: &str) -> PathBuf {
    let example = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(repo_path))
        .expect("example config");
    let www = dir.join("www");
    std::fs::create_dir(&www).expect("www dir");
    write(
        dir,
        "g.toml",
        &example.replace("/var/www/example.com", &www.display().to_string()),
    )
}

/// A TCP listener on a free loopback port, as systemd would create it.
pub fn tcp_listener() -> (TcpListener, u16) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    (l, port)
}

pub fn free_port() -> u16 {
    tcp_listener().1
}

/// Starts the binary on `config` with one passed TCP socket named "http" (plus `env`), waits
/// for READY=1, and returns the server and the socket's port.
pub fn start_http(config: &str, env: &[(&str, &str)]) -> (Server, u16) {
    let dir = tempdir();
    let cfg = write(dir.path(), "g.toml", config);
    let (l, port) = tcp_listener();
    let mut launch = Launch::serve(&cfg).fd(l, "http");
    for (k, v) in env {
        launch = launch.env(k, v);
    }
    let server = Server::start(dir, launch);
    server.wait_ready();
    (server, port)
}

/// Starts the binary on the config file `cfg` (in `dir`) with a passed TCP socket named
/// "http" and a unix one named "admin" (`dir/admin.sock`), `--log-level log_level` if
/// given, and waits for READY=1. Returns the server, the http port and the admin socket.
pub fn start_http_and_admin(
    dir: tempfile::TempDir,
    cfg: &Path,
    log_level: Option<&str>,
) -> (Server, u16, PathBuf) {
    let admin = dir.path().join("admin.sock");
    let admin_listener = std::os::unix::net::UnixListener::bind(&admin).unwrap();
    let (l, port) = tcp_listener();
    let mut launch = Launch::serve(cfg).fd(l, "http").fd(admin_listener, "admin");
    if let Some(level) = log_level {
        launch.args.extend(["--log-level".into(), level.to_owned()]);
    }
    let server = Server::start(dir, launch);
    server.wait_ready();
    (server, port, admin)
}

/// The config file of a server started by [`start_http`].
pub fn config_path(server: &Server) -> PathBuf {
    server.dir.path().join("g.toml")
}

/// A config with one `respond` route on `/` answering `body`.
pub fn respond_config(listener: &str, bind: &str, server: &str, body: &str) -> String {
    format!(
        r#"[server]
{server}

[[listener]]
name = "{listener}"
bind = [{bind}]

[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
respond = {{ status = 200, body = "{body}" }}
"#
    )
}

#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.head.lines().skip(1).find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// Sends raw request bytes and reads until the server closes; parses status and body.
pub fn exchange(stream: &mut (impl Read + Write), request: &[u8]) -> std::io::Result<Reply> {
    stream.write_all(request)?;
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf)?;
    parse_reply(&buf)
}

pub fn parse_reply(buf: &[u8]) -> std::io::Result<Reply> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_owned());
    let split = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| {
            bad(&format!(
                "no header end in {:?}",
                String::from_utf8_lossy(buf)
            ))
        })?;
    let head = String::from_utf8_lossy(&buf[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("no status"))?;
    Ok(Reply {
        status,
        head,
        body: buf[split + 4..].to_vec(),
    })
}

pub fn get_tcp(port: u16, host: &str, path: &str) -> std::io::Result<Reply> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    exchange(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn get_unix(path: &Path, host: &str, url: &str) -> std::io::Result<Reply> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    exchange(
        &mut s,
        format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Retries until the server answers (for listeners it binds itself).
pub fn get_eventually(port: u16, path: &str) -> Reply {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match get_tcp(port, "localhost", path) {
            Ok(r) => return r,
            Err(e) if Instant::now() > deadline => panic!("no answer on port {port}: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    }
}

/// CLOCK_MONOTONIC in microseconds, as MONOTONIC_USEC= carries it.
pub fn monotonic_usec() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes only into `ts`, which lives across the call.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000 + ts.tv_nsec as i128 / 1_000
}

/// Runs `gatehouse ARGS...` to completion.
pub fn run_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run gatehouse");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sends GET `{prefix}0` … `{prefix}{n-1}` pipelined on one connection and reads until all
/// `n` replies (each ending in `body`) are in.
pub fn pipelined_gets(port: u16, prefix: &str, n: usize, body: &[u8]) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut batch = String::new();
    for i in 0..n {
        batch.push_str(&format!("GET {prefix}{i} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    s.write_all(batch.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while seen.windows(body.len()).filter(|w| *w == body).count() < n {
        let got = s.read(&mut buf).unwrap();
        assert!(got > 0, "connection closed early");
        seen.extend_from_slice(&buf[..got]);
    }
}

/// Whether the system programs a test needs are installed. When one is missing the test
/// prints `SKIPPED: install PACKAGE` and should return early, so `cargo test` passes on a
/// fresh clone; under `CI=true` (where `.ci/run` installs them) a missing one fails instead.
pub fn have_programs(programs: &[&str], package: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let missing: Vec<&str> = programs
        .iter()
        .copied()
        .filter(|p| !std::env::split_paths(&path).any(|d| d.join(p).is_file()))
        .collect();
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "SKIPPED: install {package} ({} not found)",
        missing.join(", ")
    );
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true: {msg}"
    );
    eprintln!("{msg}");
    false
}

/// One sample of an admin listener's /metrics: the value on the line that starts with
/// `series` (name and labels as printed) and a space.
pub fn metric(admin: &Path, series: &str) -> f64 {
    let text = get_unix(admin, "admin", "/metrics")
        .expect("scrape /metrics")
        .text();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
}

/// A client connection to 127.0.0.1:`port` with a 16 KiB receive buffer, as a slow client
/// has: the kernel then holds little of a response for it (loopback buffers otherwise grow
/// to megabytes, and a client that reads nothing gets much of a response anyway).
pub fn slow_client(port: u16) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    sock.set_recv_buffer_size(16 << 10).expect("SO_RCVBUF");
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("read timeout");
    s
}

/// An HTTP/2 connection with prior knowledge (h2c) to `port`, its driver spawned on the
/// current runtime.
pub async fn h2c(
    port: u16,
) -> hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2c handshake");
    tokio::spawn(conn);
    send
}
