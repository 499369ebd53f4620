//! The access log in the journal's native protocol, read from a real datagram socket bound
//! at /run/systemd/journal/socket inside a private mount namespace (tracing-journald always
//! writes to that fixed path).

mod common;
use common::*;
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

/// Parses one native-protocol datagram: `KEY=value\n` or `KEY\n<u64 le length><value>\n`.
fn parse_entry(mut buf: &[u8]) -> HashMap<String, String> {
    let mut fields = HashMap::new();
    while !buf.is_empty() {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            break;
        };
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

/// Starts the server in a private mount namespace whose /run/systemd/journal/socket is a
/// datagram socket of ours; None (after saying why) where that is not possible.
fn start_with_journal() -> Option<(Server, u16, UnixDatagram)> {
    if !can_use_mount_namespaces() {
        eprintln!("SKIPPED: needs root and unshare -m for a private /run/systemd/journal");
        return None;
    }
    let dir = tempdir();
    let journal_path = dir.path().join("journal.sock");
    let journal = UnixDatagram::bind(&journal_path).unwrap();
    journal
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let cfg = write(
        dir.path(),
        "g.toml",
        &respond_config("http", "", "", "logged"),
    );
    // systemd sets JOURNAL_STREAM to the device:inode of the stderr it connected.
    let stderr_path = dir.path().join("stderr.log");
    std::fs::File::create(&stderr_path).unwrap();
    let meta = std::fs::metadata(&stderr_path).unwrap();
    let (l, port) = tcp_listener();
    let mut launch = Launch::serve(&cfg)
        .fd(l, "http")
        .env("JOURNAL_STREAM", &format!("{}:{}", meta.dev(), meta.ino()));
    launch.args.truncate(3); // drop --log-target stderr: detection must pick the journal
    launch.stderr = Some(stderr_path);
    launch.wrapper = vec![
        "unshare".into(),
        "-m".into(),
        "--propagation".into(),
        "private".into(),
    ];
    launch.before_exec = format!(
        "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal && \
         touch /run/systemd/journal/socket && \
         mount --bind '{}' /run/systemd/journal/socket &&",
        journal_path.display()
    );
    let server = Server::start(dir, launch);
    server.wait_ready();
    Some((server, port, journal))
}

#[test]
fn access_log_entries_carry_the_documented_journal_fields() {
    let Some((server, port, journal)) = start_with_journal() else {
        return;
    };

    assert_eq!(
        get_tcp(port, "Example.COM:8080", "/hello?x=1")
            .unwrap()
            .status,
        200
    );
    let reply = get_tcp(port, "example.com", "/").unwrap();
    assert_eq!(reply.text(), "logged");

    let mut entries = Vec::new();
    let mut buf = vec![0u8; 65536];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && entries
            .iter()
            .filter(|e: &&HashMap<_, _>| e.contains_key("HTTP_STATUS"))
            .count()
            < 2
    {
        if let Ok(n) = journal.recv(&mut buf) {
            entries.push(parse_entry(&buf[..n]));
        }
    }
    let access: Vec<_> = entries
        .iter()
        .filter(|e| e.contains_key("HTTP_STATUS"))
        .collect();
    assert_eq!(
        access.len(),
        2,
        "one entry per request; all entries: {entries:#?}"
    );
    let first = access[0];
    assert_eq!(first["HTTP_METHOD"], "GET");
    assert_eq!(first["HTTP_PATH"], "/hello");
    assert_eq!(first["HTTP_HOST"], "example.com");
    assert_eq!(first["HTTP_STATUS"], "200");
    assert_eq!(first["REMOTE_ADDR"], "127.0.0.1");
    assert!(
        first["HTTP_DURATION_US"].parse::<u64>().is_ok(),
        "{first:?}"
    );
    assert_eq!(first["PRIORITY"], "6", "access log at info priority");
    assert_eq!(first["SYSLOG_IDENTIFIER"], "gatehouse");
    assert!(
        !first.contains_key("UPSTREAM"),
        "UPSTREAM only on proxied requests"
    );
    assert!(first["MESSAGE"].contains("GET /hello 200"), "{first:?}");
    assert!(
        !first.keys().any(|k| k.starts_with("F_")),
        "fields are not prefixed: {first:?}"
    );
    assert!(
        entries
            .iter()
            .any(|e| e.get("MESSAGE").is_some_and(|m| m.contains("ready"))),
        "lifecycle messages go to the journal too"
    );
    assert!(
        !server.stderr().contains("GET /hello"),
        "with the journal detected, stderr stays quiet: {}",
        server.stderr()
    );
}

#[test]
fn a_burst_of_requests_reaches_the_journal_whole_and_in_order() {
    let Some((_server, port, journal)) = start_with_journal() else {
        return;
    };
    const N: usize = 300;
    // Read as journald does, while the requests run: the socket queue may hold only 10.
    let reader = std::thread::spawn(move || {
        let mut paths = Vec::new();
        let mut buf = vec![0u8; 65536];
        let deadline = Instant::now() + Duration::from_secs(10);
        while paths.len() < N && Instant::now() < deadline {
            if let Ok(n) = journal.recv(&mut buf) {
                let entry = parse_entry(&buf[..n]);
                if let Some(path) = entry.get("HTTP_PATH") {
                    assert_eq!(entry["HTTP_STATUS"], "200", "{entry:?}");
                    assert_eq!(entry["PRIORITY"], "6", "{entry:?}");
                    paths.push(path.clone());
                }
            }
        }
        paths
    });
    pipelined_gets(port, "/p", N, b"logged");
    let paths = reader.join().unwrap();
    let want: Vec<String> = (0..N).map(|i| format!("/p{i}")).collect();
    assert_eq!(paths, want);
}
