//! The access log and the app's own events in the journal's native protocol, read from a
//! real datagram socket bound at /run/systemd/journal/socket inside a private mount
//! namespace (journald's socket path is fixed). Needs root for the namespace: SKIPPED
//! otherwise, as gatehouse's own tests/journal.rs.

mod common;
use common::*;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixDatagram;
use std::process::ExitCode;
use std::time::{Duration, Instant};

fn main() -> ExitCode {
    common::main(
        &[
            (
                "access_log_entries_carry_gatehouses_journal_fields",
                access_log_entries_carry_gatehouses_journal_fields,
            ),
            (
                "a_burst_reaches_the_journal_whole_and_in_order",
                a_burst_reaches_the_journal_whole_and_in_order,
            ),
            (
                "an_apps_own_events_keep_their_fields",
                an_apps_own_events_keep_their_fields,
            ),
        ],
        &[("router", common::app::router_main)],
    )
}

/// Parses one native-protocol datagram: `KEY=value\n` or `KEY\n<u64 le length><value>\n`.
fn parse_entry(mut buf: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
        let line = &buf[..nl];
        if let Some(eq) = line.iter().position(|&b| b == b'=') {
            fields.insert(
                String::from_utf8_lossy(&line[..eq]).into_owned(),
                String::from_utf8_lossy(&line[eq + 1..]).into_owned(),
            );
            buf = &buf[nl + 1..];
        } else {
            let key = String::from_utf8_lossy(line).into_owned();
            let rest = &buf[nl + 1..];
            let len = u64::from_le_bytes(rest[..8].try_into().unwrap()) as usize;
            fields.insert(key, String::from_utf8_lossy(&rest[8..8 + len]).into_owned());
            buf = &rest[8 + len + 1..];
        }
    }
    fields
}

fn can_use_mount_namespaces() -> bool {
    std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "true"])
        .status()
        .is_ok_and(|s| s.success())
}

struct Journaled {
    app: App,
    port: u16,
    journal: UnixDatagram,
    _dir: tempfile::TempDir,
}

/// Starts the test app in a private mount namespace whose /run/systemd/journal/socket is a
/// datagram socket of ours, with JOURNAL_STREAM naming its stderr; `None` (after saying
/// why) where that is not possible.
fn start_with_journal() -> Option<Journaled> {
    if !can_use_mount_namespaces() {
        eprintln!("SKIPPED: needs root and unshare -m for a private /run/systemd/journal");
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    let journal_path = dir.path().join("journal.sock");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (l, port) = tcp_listener();
    let mut launch = Launch::new("router").fd(l, "http");
    launch.journal_stream = true;
    launch.wrapper = ["unshare", "-m", "--propagation", "private"]
        .map(String::from)
        .to_vec();
    launch.before_exec = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         touch /run/systemd/journal/socket && \
         mount --bind '{}' /run/systemd/journal/socket &&",
        journal_path.display()
    );
    let app = App::start(launch);
    app.wait_ready();
    Some(Journaled {
        app,
        port,
        journal,
        _dir: dir,
    })
}

/// Entries received until `enough` says so or 5 s pass.
fn read_entries(
    journal: &UnixDatagram,
    enough: impl Fn(&[HashMap<String, String>]) -> bool,
) -> Vec<HashMap<String, String>> {
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !enough(&entries) {
        if let Ok(n) = journal.recv(&mut buf) {
            entries.push(parse_entry(&buf[..n]));
        }
    }
    entries
}

fn access_log_entries_carry_gatehouses_journal_fields() {
    let Some(j) = start_with_journal() else {
        return;
    };
    assert_eq!(
        get_tcp(j.port, "Example.COM:8080", "/?x=1").unwrap().status,
        200
    );
    assert_eq!(
        get_tcp(j.port, "example.com", "/nowhere").unwrap().status,
        404
    );
    let entries = read_entries(&j.journal, |e| {
        e.iter().filter(|e| e.contains_key("HTTP_STATUS")).count() >= 2
    });
    let access: Vec<_> = entries
        .iter()
        .filter(|e| e.contains_key("HTTP_STATUS"))
        .collect();
    assert_eq!(access.len(), 2, "one entry per request: {entries:#?}");
    let first = access[0];
    assert_eq!(first["MESSAGE"], "GET / 200");
    assert_eq!(first["HTTP_METHOD"], "GET");
    assert_eq!(first["HTTP_PATH"], "/");
    assert_eq!(first["HTTP_HOST"], "example.com");
    assert_eq!(first["HTTP_STATUS"], "200");
    assert_eq!(first["REMOTE_ADDR"], "127.0.0.1");
    assert!(
        first["HTTP_DURATION_US"].parse::<u64>().is_ok(),
        "{first:?}"
    );
    assert_eq!(first["PRIORITY"], "6", "access log at info priority");
    assert_eq!(first["SYSLOG_IDENTIFIER"], "kit-test");
    assert_eq!(first["TARGET"], "access");
    assert!(
        !first.contains_key("UPSTREAM"),
        "UPSTREAM only on proxied requests"
    );
    assert!(
        !first.keys().any(|k| k.starts_with("F_")),
        "not prefixed: {first:?}"
    );
    assert_eq!(access[1]["MESSAGE"], "GET /nowhere 404");
    assert!(
        entries.iter().any(|e| e
            .get("MESSAGE")
            .is_some_and(|m| m.contains("kit-test ready"))),
        "lifecycle messages go to the journal too: {entries:#?}"
    );
    assert!(
        !j.app.stderr().contains("GET /"),
        "stderr stays quiet: {}",
        j.app.stderr()
    );
}

fn a_burst_reaches_the_journal_whole_and_in_order() {
    let Some(j) = start_with_journal() else {
        return;
    };
    const N: usize = 300;
    // Read as journald does, while the requests run: the socket queue may hold only 10.
    let journal = j.journal;
    let reader = std::thread::spawn(move || {
        let mut paths = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(10);
        while paths.len() < N && Instant::now() < deadline {
            if let Ok(n) = journal.recv(&mut buf) {
                if let Some(path) = parse_entry(&buf[..n]).get("HTTP_PATH") {
                    paths.push(path.clone());
                }
            }
        }
        paths
    });
    let mut s = std::net::TcpStream::connect(("127.0.0.1", j.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let batch: String = (0..N)
        .map(|i| format!("GET /p/{i} HTTP/1.1\r\nHost: t\r\n\r\n"))
        .collect();
    s.write_all(batch.as_bytes()).unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 65536];
    while seen.windows(6).filter(|w| *w == b"\r\n\r\nok").count() < N {
        let got = s.read(&mut buf).unwrap();
        assert!(got > 0, "connection closed early");
        seen.extend_from_slice(&buf[..got]);
    }
    let paths = reader.join().unwrap();
    let want: Vec<String> = (0..N).map(|i| format!("/p/{i}")).collect();
    assert_eq!(paths, want);
}

fn an_apps_own_events_keep_their_fields() {
    let Some(j) = start_with_journal() else {
        return;
    };
    assert_eq!(get_tcp(j.port, "t", "/event").unwrap().text(), "logged");
    let entries = read_entries(&j.journal, |e| {
        e.iter()
            .any(|e| e.get("MESSAGE").is_some_and(|m| m == "custom event"))
    });
    let event = entries
        .iter()
        .find(|e| e.get("MESSAGE").is_some_and(|m| m == "custom event"))
        .unwrap_or_else(|| panic!("{entries:#?}"));
    assert_eq!(event["ORDER_ID"], "42");
    assert_eq!(event["SYSLOG_IDENTIFIER"], "kit-test");
}
