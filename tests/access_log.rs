//! The stderr access log: buffered per runtime thread, so these check that every line
//! still comes out whole, in order, promptly when the server goes idle, and only when the
//! log filter lets it.

mod common;

use common::*;
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn respond_server(env: &[(&str, &str)]) -> (Server, u16) {
    start_http(&respond_config("http", "\"127.0.0.1:0\"", "", "ok"), env)
}

/// One worker: the current-thread runtime, whose park hook is a different code path.
fn single_worker_server() -> (Server, u16) {
    start_http(
        &respond_config("http", "\"127.0.0.1:0\"", "workers = 1", "ok"),
        &[],
    )
}

fn access_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.contains(" INFO GET /"))
        .collect()
}

#[test]
fn every_access_line_comes_out_whole_and_in_order() {
    let (server, port) = respond_server(&[]);
    // 2,000 lines: several times the buffer, so size-triggered and park-triggered writes mix.
    for _ in 0..4 {
        pipelined_gets(port, "/r", 500, b"ok");
    }
    server.wait_log("GET /r499 200");
    let deadline = Instant::now() + Duration::from_secs(5);
    while access_lines(&server.stderr()).len() < 2000 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let stderr = server.stderr();
    let lines = access_lines(&stderr);
    assert_eq!(lines.len(), 2000, "{stderr}");
    for (k, line) in lines.iter().enumerate() {
        let i = k % 500;
        // 2026-12-05T19:32:24.350Z INFO GET /r7 200 http_host=t http_duration_us=12 remote_addr=127.0.0.1
        let (stamp, rest) = line.split_once(' ').unwrap();
        assert_eq!(stamp.len(), "2026-12-05T19:32:24.350Z".len(), "{line}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{line}"
        );
        let rest = rest
            .strip_prefix(&format!("INFO GET /r{i} 200 http_host=t http_duration_us="))
            .unwrap_or_else(|| panic!("line {k}: {line}"));
        let (micros, remote) = rest.split_once(' ').unwrap();
        assert!(micros.parse::<u64>().is_ok(), "{line}");
        assert_eq!(remote, "remote_addr=127.0.0.1", "{line}");
    }
}

#[test]
fn a_lone_request_is_logged_at_once() {
    lone_requests_are_logged_at_once(respond_server(&[]));
}

#[test]
fn a_lone_request_is_logged_at_once_with_one_worker() {
    lone_requests_are_logged_at_once(single_worker_server());
}

fn lone_requests_are_logged_at_once((server, port): (Server, u16)) {
    for i in 0..3 {
        let path = format!("/alone{i}");
        assert_eq!(get_tcp(port, "t", &path).unwrap().status, 200);
        // The runtime parks right after answering: the line must not wait for company.
        let t = Instant::now();
        server.wait_log(&format!("GET {path} 200"));
        // Well under wait_log's 5 s; generous for a debug build on a busy machine.
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_log_filter_still_decides() {
    let (server, port) = respond_server(&[("RUST_LOG", "info,gatehouse::access=off")]);
    assert_eq!(get_tcp(port, "t", "/quiet").unwrap().status, 200);
    // A later non-access line proves the earlier one would have been out by now.
    server.signal(libc::SIGHUP);
    server.wait_log("reload");
    assert!(
        !server.stderr().contains("GET /quiet"),
        "{}",
        server.stderr()
    );
}

#[test]
fn access_lines_come_before_later_log_lines_and_keep_the_line_format() {
    let (server, port) = respond_server(&[]);
    // HTTP/1.0 without Host: the empty host is quoted, as the line format quotes any empty
    // value.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let reply = exchange(&mut s, b"GET /first HTTP/1.0\r\n\r\n").unwrap();
    assert_eq!(reply.status, 200);
    // The reload's own log line must not overtake the access line (flushed by the runtime's
    // park, or by the other line's writer when the signal comes first).
    server.signal(libc::SIGHUP);
    server.wait_log("reload");
    let stderr = server.stderr();
    let access = stderr
        .find("INFO GET /first 200 http_host=\"\" http_duration_us=")
        .unwrap_or_else(|| panic!("{stderr}"));
    let reload = stderr.find("reload").unwrap();
    assert!(access < reload, "{stderr}");
}

fn logged_paths(server: &Server) -> Vec<String> {
    server
        .stderr()
        .lines()
        .filter_map(|l| l.split_once(" INFO GET ").map(|(_, rest)| rest.to_owned()))
        .map(|rest| rest.split(" http_host").next().unwrap_or("").to_owned())
        .collect()
}

/// 30 requests answered 200 and 2 answered 404, then the entries the policy kept.
fn policy_run(policy: &str) -> Vec<String> {
    let (server, port) = start_http(
        &format!(
            "[server]\n{policy}\n[[listener]]\nname = \"http\"\nbind = [\"127.0.0.1:0\"]\n\
             [[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/ok/\"\nrespond = {{ body = \"ok\" }}\n"
        ),
        &[],
    );
    for i in 0..30 {
        assert_eq!(get_tcp(port, "t", &format!("/ok/{i}")).unwrap().status, 200);
    }
    for i in 0..2 {
        assert_eq!(
            get_tcp(port, "t", &format!("/missing{i}")).unwrap().status,
            404
        );
    }
    server.wait_log("GET /missing1 404");
    logged_paths(&server)
}

#[test]
fn access_log_sample_keeps_one_in_n_and_every_error() {
    assert_eq!(
        policy_run("access_log_sample = 10"),
        [
            "/ok/0 200",
            "/ok/10 200",
            "/ok/20 200",
            "/missing0 404",
            "/missing1 404"
        ]
    );
}

#[test]
fn access_log_errors_keeps_only_errors() {
    assert_eq!(
        policy_run("access_log = \"errors\""),
        ["/missing0 404", "/missing1 404"]
    );
}

#[test]
fn access_log_off_keeps_nothing() {
    let (server, port) = start_http(
        &respond_config("http", "\"127.0.0.1:0\"", "access_log = \"off\"", "ok"),
        &[],
    );
    for _ in 0..5 {
        get_tcp(port, "t", "/").unwrap();
    }
    std::thread::sleep(Duration::from_millis(500));
    assert!(logged_paths(&server).is_empty(), "{}", server.stderr());
}

/// Waits up to 5 s for `path` to hold a line containing `needle`; returns its text.
fn wait_file_line(path: &std::path::Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) || Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn file_log_config(path: &std::path::Path) -> String {
    respond_config(
        "http",
        "\"127.0.0.1:0\"",
        &format!("access_log_file = {:?}", path.to_str().unwrap()),
        "ok",
    )
}

#[test]
fn access_log_file_takes_the_lines_and_is_reopened_on_reload() {
    let logs = tempdir();
    let path = logs.path().join("access.log");
    let (server, port) = start_http(&file_log_config(&path), &[]);
    assert_eq!(get_tcp(port, "t", "/one").unwrap().status, 200);
    let text = wait_file_line(&path, "GET /one 200");
    assert!(
        text.contains(" INFO GET /one 200 http_host=t http_duration_us="),
        "{text}"
    );
    assert!(!server.stderr().contains("GET /one"), "{}", server.stderr());
    use std::os::unix::fs::PermissionsExt as _;
    // Created 0640 (less under a stricter umask): clients' addresses are not for everyone.
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o137, 0, "{mode:o}");

    // logrotate: move the file away, reload, and the next line starts a new file.
    let rotated = logs.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("reload");
    assert_eq!(get_tcp(port, "t", "/two").unwrap().status, 200);
    let text = wait_file_line(&path, "GET /two 200");
    assert!(text.contains("GET /two 200"), "{text}");
    assert!(!text.contains("GET /one"), "{text}");
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        old.contains("GET /one 200") && !old.contains("/two"),
        "{old}"
    );
}

#[test]
fn a_reload_whose_access_log_file_cannot_be_opened_keeps_the_old_one() {
    let logs = tempdir();
    let path = logs.path().join("access.log");
    let (server, port) = start_http(&file_log_config(&path), &[]);
    // The directory exists (validation passes) but the path is a directory: open fails.
    let blocked = logs.path().join("blocked");
    std::fs::create_dir(&blocked).unwrap();
    let config = file_log_config(&blocked).replace("\"ok\"", "\"new\"");
    std::fs::write(config_path(&server), config).unwrap();
    server.signal(libc::SIGHUP);
    server.wait_log("cannot open access_log_file");
    // The old config serves, and its log goes on.
    let reply = get_tcp(port, "t", "/after").unwrap();
    assert_eq!((reply.status, reply.text()), (200, "ok".to_owned()));
    let text = wait_file_line(&path, "GET /after 200");
    assert!(text.contains("GET /after 200"), "{text}");
}

#[test]
fn a_relative_or_dangling_access_log_file_is_a_config_error() {
    let dir = tempdir();
    for (value, message) in [
        (
            "logs/access.log",
            "`access_log_file` must be an absolute path",
        ),
        (
            "/nonexistent-dir/access.log",
            "`access_log_file`: no directory",
        ),
    ] {
        let config = respond_config(
            "http",
            "\"127.0.0.1:0\"",
            &format!("access_log_file = {value:?}"),
            "ok",
        );
        let file = write(dir.path(), "g.toml", &config);
        let (code, _, stderr) = run_cli(&["check", "--config", file.to_str().unwrap()]);
        assert_eq!(code, Some(78), "{stderr}");
        assert!(stderr.contains(message), "{stderr}");
        // file:line:column of the value
        assert!(stderr.contains("g.toml:2:19"), "{stderr}");
    }
}
