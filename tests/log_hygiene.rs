//! What clients can make gatehouse log (issue 25, item 5): at the default level a client gets
//! no WARN line per connection (rapid resets, TLS renegotiation attempts): such events are
//! counted in `gatehouse_protocol_errors_total` and summed up once a minute. And a message
//! says each thing once.

mod common;
mod tls_support;

use common::*;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// gatehouse at the default log level with `listeners` ([[listener]] tables) plus an admin
/// socket, one respond route, and `extra` config; returns the server, the ports of the
/// listeners in order, and the admin socket.
fn start(listeners: &[(&str, &str)], extra: &str) -> (Server, Vec<u16>, PathBuf) {
    let dir = tempdir();
    let admin = dir.path().join("admin.sock");
    let mut cfg = String::new();
    for (name, table) in listeners {
        cfg.push_str(&format!("[[listener]]\nname = \"{name}\"\n{table}\n"));
    }
    cfg.push_str("[[listener]]\nname = \"admin\"\nrole = \"admin\"\n");
    cfg.push_str(
        "[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\nrespond = { body = \"ok\" }\n",
    );
    cfg.push_str(extra);
    let path = write(dir.path(), "g.toml", &cfg);
    let mut launch = Launch::serve(&path);
    let mut ports = Vec::new();
    for (name, _) in listeners {
        let (l, port) = tcp_listener();
        launch = launch.fd(l, name);
        ports.push(port);
    }
    let admin_listener = UnixListener::bind(&admin).unwrap();
    launch = launch.fd(admin_listener, "admin");
    let server = Server::start(dir, launch);
    server.wait_ready();
    (server, ports, admin)
}

fn protocol_errors(admin: &Path) -> u64 {
    let metrics = get_unix(admin, "admin", "/metrics").unwrap().text();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("gatehouse_protocol_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gatehouse_protocol_errors_total in\n{metrics}"))
}

fn warnings(server: &Server) -> Vec<String> {
    server
        .stderr()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .map(str::to_owned)
        .collect()
}

/// One HTTP/2 (prior knowledge) connection that opens and cancels streams as fast as it can
/// (CVE-2023-44487): the server's h2 answers GOAWAY(ENHANCE_YOUR_CALM) and logs a warning.
async fn rapid_reset(port: u16) {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
    let driver = tokio::spawn(conn);
    for _ in 0..500 {
        let Ok(ready) = client.clone().ready().await else {
            break;
        };
        client = ready;
        let req = http::Request::get("http://a/").body(()).unwrap();
        match client.send_request(req, false) {
            Ok((_, mut stream)) => stream.send_reset(h2::Reason::CANCEL),
            Err(_) => break,
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(5), driver).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_connections_add_no_warning_lines() {
    let (server, ports, admin) = start(&[("http", "")], "");
    for _ in 0..5 {
        rapid_reset(ports[0]).await;
    }
    assert_eq!(warnings(&server), Vec::<String>::new());
    assert!(
        protocol_errors(&admin) >= 5,
        "the rapid resets were not noticed:\n{}",
        server.stderr()
    );
    // Still serving.
    assert_eq!(get_tcp(ports[0], "a", "/").unwrap().status, 200);
}

#[test]
fn tls_renegotiation_attempts_add_no_warning_lines() {
    if !have_programs(&["openssl"], "openssl") {
        return;
    }
    let pki = tls_support::Pki::new();
    let dir = tempdir();
    let (cert, key) = pki.leaf(&["localhost"]).write(dir.path(), "c");
    let tls = format!("tls = {}", tls_support::tls_table(&cert, &key));
    let (server, ports, admin) = start(&[("https", &tls)], "");
    for _ in 0..3 {
        // TLS 1.2 (1.3 has no renegotiation); "R" asks s_client to renegotiate.
        let mut client = Command::new("openssl")
            .args([
                "s_client",
                "-tls1_2",
                "-servername",
                "localhost",
                "-connect",
            ])
            .arg(format!("127.0.0.1:{}", ports[0]))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdin = client.stdin.take().unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let _ = stdin.write_all(b"R\n");
        std::thread::sleep(Duration::from_millis(300));
        let _ = stdin.write_all(b"R\n");
        std::thread::sleep(Duration::from_millis(300));
        drop(stdin);
        // s_client may wait on: the attempts are made.
        let _ = client.kill();
        let _ = client.wait();
    }
    assert_eq!(warnings(&server), Vec::<String>::new());
    assert!(
        protocol_errors(&admin) >= 3,
        "the renegotiation attempts were not noticed:\n{}",
        server.stderr()
    );
    let log = server.stderr();
    assert!(!log.contains(".cargo/registry"), "{log}");
}

#[test]
fn a_connect_error_names_its_cause_once() {
    let dir = tempdir();
    let missing = dir.path().join("no-such-app.sock");
    let route = format!(
        "[[site.route]]\npath = \"/app/\"\nproxy = {{ upstreams = [\"unix:{}\"], retry_connect_for = \"0s\" }}\n",
        missing.display()
    );
    let (server, ports, _admin) = start(&[("http", "")], &route);
    assert_eq!(get_tcp(ports[0], "a", "/app/x").unwrap().status, 502);
    server.wait_log("upstream ejected");
    let log = server.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("upstream ejected"))
        .unwrap();
    assert_eq!(
        line.matches("No such file or directory").count(),
        1,
        "{line}"
    );
    assert!(
        line.contains("connect failed: No such file or directory"),
        "{line}"
    );
}
