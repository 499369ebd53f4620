//! Socket activation: fds passed the way systemd passes them, to a real process.

mod common;
use common::*;
use gatehouse_kit::activation::assign_roles;
use gatehouse_kit::{Environment, PassedListener};
use std::fmt::Write as _;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    common::main(
        &[
            (
                "passed_sockets_arrive_named_nonblocking_and_close_on_exec",
                passed_sockets_arrive_named_nonblocking_and_close_on_exec,
            ),
            (
                "fds_for_another_pid_are_not_ours_and_the_variables_go",
                fds_for_another_pid_are_not_ours_and_the_variables_go,
            ),
            (
                "without_listen_pid_no_fd_is_taken",
                without_listen_pid_no_fd_is_taken,
            ),
            (
                "a_udp_socket_is_refused_naming_the_fd",
                a_udp_socket_is_refused_naming_the_fd,
            ),
            (
                "a_regular_file_is_refused_naming_the_fd",
                a_regular_file_is_refused_naming_the_fd,
            ),
            (
                "an_unlistened_stream_socket_is_refused",
                an_unlistened_stream_socket_is_refused,
            ),
            (
                "roles_claim_names_and_refuse_strangers",
                roles_claim_names_and_refuse_strangers,
            ),
            (
                "the_watchdog_is_ours_only_for_our_pid",
                the_watchdog_is_ours_only_for_our_pid,
            ),
        ],
        &[("report", report), ("roles", roles)],
    )
}

const VARS: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

/// The child: takes the environment and reports, one fact per line, what it got.
fn report() -> ExitCode {
    let env = Environment::take();
    let mut out = String::new();
    match &env.sockets {
        Ok(sockets) if sockets.is_empty() => out.push_str("sockets none\n"),
        Ok(sockets) => {
            for s in sockets {
                let fd = s.fd;
                // SAFETY: fcntl F_GETFL/F_GETFD on an fd we own.
                let (fl, fdfl) = unsafe {
                    (
                        libc::fcntl(fd, libc::F_GETFL),
                        libc::fcntl(fd, libc::F_GETFD),
                    )
                };
                let kind = match s.listener {
                    PassedListener::Tcp(_) => "tcp",
                    PassedListener::Unix(_) => "unix",
                };
                let _ = writeln!(
                    out,
                    "socket fd={fd} name={} kind={kind} nonblocking={} cloexec={} addr={}",
                    s.name,
                    fl & libc::O_NONBLOCK != 0,
                    fdfl & libc::FD_CLOEXEC != 0,
                    s.address()
                );
            }
        }
        Err(e) => {
            let _ = writeln!(out, "error {e}");
        }
    }
    let _ = writeln!(out, "watchdog {:?}", env.watchdog);
    for v in VARS {
        if let Some(value) = std::env::var_os(v) {
            let _ = writeln!(out, "env {v}={value:?}");
        }
    }
    // What a process we start inherits: neither the variables nor the sockets.
    let inherited = std::process::Command::new("/bin/sh")
        .args(["-c", "env; for f in /proc/$$/fd/*; do readlink $f; done"])
        .output()
        .expect("run sh");
    for line in String::from_utf8_lossy(&inherited.stdout).lines() {
        if VARS.iter().any(|v| line.starts_with(&format!("{v}="))) {
            let _ = writeln!(out, "child-env {line}");
        } else if line.starts_with("socket:") {
            let _ = writeln!(out, "child-fd {line}");
        }
    }
    print!("{out}");
    // Keep the sockets open until the report is out.
    drop(env);
    ExitCode::SUCCESS
}

/// The child: sorts its sockets into the roles "http" and "admin".
fn roles() -> ExitCode {
    let env = Environment::take();
    let sockets = env.sockets.expect("sockets");
    match assign_roles(sockets, &["http", "admin"]) {
        Ok(by_role) => {
            for (role, sockets) in by_role {
                let fds: Vec<String> = sockets.iter().map(|s| s.fd.to_string()).collect();
                println!("role {role} fds={}", fds.join(","));
            }
        }
        Err(e) => println!("error {e}"),
    }
    ExitCode::SUCCESS
}

fn run(launch: Launch) -> String {
    let mut app = App::start(launch);
    let status = app
        .wait_exit(Duration::from_secs(10))
        .expect("the child exits");
    assert!(status.success(), "{status}; stderr: {}", app.stderr());
    app.stdout()
}

fn passed_sockets_arrive_named_nonblocking_and_close_on_exec() {
    let (tcp, port) = tcp_listener();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("admin.sock");
    let unix = UnixListener::bind(&path).unwrap();
    let out = run(Launch::new("report")
        .fd(tcp, "http")
        .fd(unix, "admin")
        .env("WATCHDOG_USEC", "3000000"));
    assert!(
        out.contains(&format!(
            "socket fd=3 name=http kind=tcp nonblocking=true cloexec=true addr=127.0.0.1:{port}\n"
        )),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "socket fd=4 name=admin kind=unix nonblocking=true cloexec=true addr=unix:{}\n",
            path.display()
        )),
        "{out}"
    );
    assert!(out.contains("watchdog Some(3s)"), "{out}");
    assert!(!out.contains("env "), "variables removed: {out}");
    assert!(!out.contains("child-env"), "a child inherits none: {out}");
    assert!(!out.contains("child-fd"), "nor the sockets: {out}");
}

fn fds_for_another_pid_are_not_ours_and_the_variables_go() {
    let (tcp, _) = tcp_listener();
    let mut launch = Launch::new("report").fd(tcp, "http");
    launch.listen_pid = ListenPid::Other(1);
    let out = run(launch);
    assert!(out.contains("sockets none"), "{out}");
    assert!(!out.contains("env "), "{out}");
    // Not ours, so not touched either: still open, still inheritable.
    assert!(out.contains("child-fd socket:"), "{out}");
}

fn without_listen_pid_no_fd_is_taken() {
    let (tcp, _) = tcp_listener();
    let mut launch = Launch::new("report").fd(tcp, "http");
    launch.listen_pid = ListenPid::Unset;
    let out = run(launch);
    assert!(
        out.contains("sockets none"),
        "LISTEN_PID is required: {out}"
    );
}

fn expect_refusal(fd: impl Into<std::os::fd::OwnedFd>, needle: &str) {
    let out = run(Launch::new("report").fd(fd, "http"));
    assert!(
        out.contains("error fd 3 (name \"http\") passed by systemd") && out.contains(needle),
        "{needle}: {out}"
    );
}

fn a_udp_socket_is_refused_naming_the_fd() {
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    expect_refusal(
        udp,
        "is a datagram (UDP or unix datagram) socket, not a stream socket",
    );
}

fn a_regular_file_is_refused_naming_the_fd() {
    let dir = tempfile::tempdir().unwrap();
    let file = std::fs::File::create(dir.path().join("plain")).unwrap();
    expect_refusal(file, "is not a socket");
}

fn an_unlistened_stream_socket_is_refused() {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    assert!(sock.as_raw_fd() > 2);
    expect_refusal(sock, "use Accept=no");
}

fn roles_claim_names_and_refuse_strangers() {
    let (a, _) = tcp_listener();
    let (b, _) = tcp_listener();
    let (c, _) = tcp_listener();
    let out = run(Launch::new("roles")
        .fd(a, "http")
        .fd(b, "admin")
        .fd(c, "http"));
    assert!(out.contains("role http fds=3,5"), "{out}");
    assert!(out.contains("role admin fds=4"), "{out}");

    let (a, _) = tcp_listener();
    let (b, _) = tcp_listener();
    let out = run(Launch::new("roles").fd(a, "http").fd(b, "metrics"));
    assert!(
        out.contains("error fd 4 (name \"metrics\") passed by systemd is not claimed"),
        "{out}"
    );
}

fn the_watchdog_is_ours_only_for_our_pid() {
    let out = run(Launch::new("report")
        .env("WATCHDOG_USEC", "200000")
        .env("WATCHDOG_PID", "1"));
    assert!(out.contains("watchdog None"), "{out}");
    assert!(!out.contains("env WATCHDOG"), "removed even so: {out}");
}
