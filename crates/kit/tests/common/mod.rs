//! Harness for the kit's process tests, in the style of gatehouse's own: the service under
//! test is a real process, started the way systemd starts one — listening sockets dup'ed
//! to fd 3.. with LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID, a real NOTIFY_SOCKET datagram socket
//! owned by the test — and talked to over real sockets.
//!
//! Each test file is a program (`harness = false`) playing two parts: run by cargo it is
//! the test runner ([`main`]); run with `KIT_TEST_CHILD=NAME` it is the service NAME,
//! single-threaded from `main` on like any process systemd starts.
#![allow(dead_code)]

pub mod app;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHILD_VAR: &str = "KIT_TEST_CHILD";

/// A test: a name and a function that panics on failure.
pub type Test = (&'static str, fn());
/// A service the tests start: a name and its `main`.
pub type ChildMain = (&'static str, fn() -> ExitCode);

/// The test binary's `main`: the child named by `KIT_TEST_CHILD`, or else the runner of
/// `tests` (`cargo test -p gatehouse-kit --test NAME -- FILTER`; `--list` lists them).
pub fn main(tests: &[Test], children: &[ChildMain]) -> ExitCode {
    if let Ok(name) = std::env::var(CHILD_VAR) {
        return match children.iter().find(|(n, _)| *n == name) {
            Some((_, child)) => child(),
            None => {
                eprintln!("no child {name:?} in this test binary");
                ExitCode::from(2)
            }
        };
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let exact = args.iter().any(|a| a == "--exact");
    let filter = args.iter().find(|a| !a.starts_with('-'));
    let selected: Vec<&Test> = tests
        .iter()
        .filter(|(name, _)| match filter {
            Some(f) if exact => name == f,
            Some(f) => name.contains(f.as_str()),
            None => true,
        })
        .collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in &selected {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    println!("\nrunning {} tests", selected.len());
    let started = Instant::now();
    // The tests mostly wait (on timers, on children); a few at once keep the run short
    // without starving a 2-core machine.
    let failed = std::sync::Mutex::new(Vec::new());
    let queue = std::sync::Mutex::new(selected.iter());
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| loop {
                let Some((name, test)) = queue.lock().unwrap().next().copied() else {
                    break;
                };
                let outcome = std::panic::catch_unwind(test);
                println!(
                    "test {name} ... {}",
                    if outcome.is_ok() { "ok" } else { "FAILED" }
                );
                if outcome.is_err() {
                    failed.lock().unwrap().push(*name);
                }
            });
        }
    });
    let failed = failed.into_inner().unwrap();
    println!(
        "\ntest result: {}. {} passed; {} failed; finished in {:.2}s\n",
        if failed.is_empty() { "ok" } else { "FAILED" },
        selected.len() - failed.len(),
        failed.len(),
        started.elapsed().as_secs_f64()
    );
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("failures: {}", failed.join(", "));
        ExitCode::from(101)
    }
}

/// Messages received on our NOTIFY_SOCKET, each with its arrival time.
pub struct NotifySocket {
    /// The NOTIFY_SOCKET value: a path, or `@name`.
    pub value: String,
    rx: mpsc::Receiver<(Instant, String)>,
}

impl NotifySocket {
    pub fn bind(dir: &Path) -> NotifySocket {
        let path = dir.join("notify.sock");
        let sock = UnixDatagram::bind(&path).expect("bind notify socket");
        NotifySocket::receive(sock, path.display().to_string())
    }

    pub fn bind_abstract() -> NotifySocket {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "gatehouse-kit-test/{}/{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(&name).unwrap();
        let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract notify socket");
        NotifySocket::receive(sock, format!("@{name}"))
    }

    fn receive(sock: UnixDatagram, value: String) -> NotifySocket {
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
        NotifySocket { value, rx }
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
    Unset,
}

/// Which NOTIFY_SOCKET the child gets.
pub enum Notify {
    Path,
    Abstract,
    /// This exact value, and no socket of ours.
    Value(String),
    /// A socket at `notify.sock` in the child's working directory, passed as the relative
    /// path `notify.sock` (which a service must refuse).
    Relative,
    None,
}

pub struct Launch {
    pub child: &'static str,
    pub fds: Vec<(OwnedFd, String)>,
    pub listen_pid: ListenPid,
    pub env: Vec<(String, String)>,
    pub notify: Notify,
    /// Soft and hard RLIMIT_NOFILE for the child.
    pub nofile: Option<(u64, u64)>,
    /// Runs the shell under this program (e.g. `unshare -m`).
    pub wrapper: Vec<String>,
    /// Shell commands run just before exec (e.g. mounts inside the wrapper's namespace).
    pub before_exec: String,
    /// Set JOURNAL_STREAM to the child's stderr, as systemd does when it connects stderr
    /// to journald.
    pub journal_stream: bool,
}

impl Launch {
    pub fn new(child: &'static str) -> Launch {
        Launch {
            child,
            fds: Vec::new(),
            listen_pid: ListenPid::Own,
            env: Vec::new(),
            notify: Notify::Path,
            nofile: None,
            wrapper: Vec::new(),
            before_exec: String::new(),
            journal_stream: false,
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

/// A running child service.
pub struct App {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub notify: Option<NotifySocket>,
    pub stderr_path: PathBuf,
    pub stdout_path: PathBuf,
}

impl App {
    /// Starts this test binary as `launch.child` in a new temporary directory (its working
    /// directory). Passed fds land on 3, 4, ... and LISTEN_PID is the child's own pid: `sh`
    /// exports `$$` and execs, so the pid is unchanged.
    pub fn start(launch: Launch) -> App {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-kit-test")
            .tempdir()
            .expect("tempdir");
        let notify = match &launch.notify {
            Notify::Path | Notify::Relative => Some(NotifySocket::bind(dir.path())),
            Notify::Abstract => Some(NotifySocket::bind_abstract()),
            Notify::Value(_) | Notify::None => None,
        };
        let stderr_path = dir.path().join("stderr.log");
        let stdout_path = dir.path().join("stdout.log");
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
            ListenPid::Own => "export LISTEN_PID=$$;".to_owned(),
            ListenPid::Other(pid) => format!("export LISTEN_PID={pid};"),
            ListenPid::Unset => String::new(),
        };
        cmd.arg("-c")
            .arg(format!("{} {pid_setup} exec \"$0\"", launch.before_exec))
            .arg(std::env::current_exe().expect("current_exe"))
            .current_dir(dir.path())
            .env(CHILD_VAR, launch.child)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_FDNAMES")
            .env_remove("LISTEN_PID")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .env_remove("JOURNAL_STREAM")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(stderr.try_clone().expect("stderr file"));
        if launch.journal_stream {
            use std::os::unix::fs::MetadataExt;
            let meta = stderr.metadata().expect("stat stderr");
            cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
        }
        if !launch.fds.is_empty() {
            cmd.env("LISTEN_FDS", launch.fds.len().to_string());
            let names: Vec<&str> = launch.fds.iter().map(|(_, n)| n.as_str()).collect();
            cmd.env("LISTEN_FDNAMES", names.join(":"));
        }
        match (&launch.notify, &notify) {
            (Notify::Value(v), _) => {
                cmd.env("NOTIFY_SOCKET", v);
            }
            (Notify::Relative, _) => {
                cmd.env("NOTIFY_SOCKET", "notify.sock");
            }
            (_, Some(n)) => {
                cmd.env("NOTIFY_SOCKET", &n.value);
            }
            _ => {}
        }
        for (k, v) in &launch.env {
            cmd.env(k, v);
        }
        let raw: Vec<RawFd> = launch.fds.iter().map(|(fd, _)| fd.as_raw_fd()).collect();
        let nofile = launch.nofile;
        // SAFETY: only async-signal-safe calls (fcntl, dup2, setrlimit) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // Move every source out of the 3.. range first, so no dup2 clobbers another;
                // the copies close on exec.
                let mut high = Vec::with_capacity(raw.len());
                for &fd in &raw {
                    let h = libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 100);
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
                if let Some((soft, hard)) = nofile {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn the child");
        // The parent's copies close here; the child holds its own.
        drop(launch.fds);
        App {
            child,
            dir,
            notify,
            stderr_path,
            stdout_path,
        }
    }

    pub fn notify(&self) -> &NotifySocket {
        self.notify.as_ref().expect("launched with a notify socket")
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: i32) {
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

    pub fn stdout(&self) -> String {
        std::fs::read_to_string(&self.stdout_path).unwrap_or_default()
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

    /// Waits until stderr contains `needle`; panics after 5 s.
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

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
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
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    exchange(
        &mut s,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

pub fn get_unix(path: &Path, url: &str) -> std::io::Result<Reply> {
    let mut s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    exchange(
        &mut s,
        format!("GET {url} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// CLOCK_MONOTONIC in microseconds, as MONOTONIC_USEC= carries it.
pub fn monotonic_usec() -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as i128 * 1_000_000 + ts.tv_nsec as i128 / 1_000
}

/// WATCHDOG=1 datagrams arriving within `window`.
pub fn pings(app: &App, window: Duration) -> Vec<Instant> {
    app.notify()
        .collect(window)
        .into_iter()
        .filter(|(_, m)| m.lines().any(|l| l == "WATCHDOG=1"))
        .map(|(t, _)| t)
        .collect()
}
