//! The security corpus (issue 24): what a hostile client may send, and what gatehouse and the
//! apps behind it must make of it. Paths are routed on one canonical form that the app sees
//! too; proxy-asserted headers cannot be spoofed in any spelling; only allowed `Upgrade`
//! protocols are tunnelled; listings and logs escape hostile names; upstream URLs carry no
//! credentials. Timeouts and connection budgets: security_timeouts.rs.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn raw(port: u16, request: &[u8]) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    exchange(&mut s, request).unwrap()
}

fn get(port: u16, host: &str, target: &str) -> Reply {
    raw(
        port,
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
}

/// Every spelling of `/admin/x` a client may try, each a way some layer reads as `/admin/x`.
const ADMIN_SPELLINGS: &[&str] = &[
    "/admin/x",
    "/%61dmin/x",
    "/%61%64%6D%69%6E/x",
    "/admin%2fx",
    "/admin%2Fx",
    "//admin/x",
    "/admin//x",
    "/./admin/x",
    "/%2e/admin/x",
    "/x/%2e%2e/admin/x",
    "/x/%2E%2E/admin/x",
    "/x/.%2e/admin/x",
    "/foo/../admin/x",
    "/foo/..%2fadmin/x",
    "/foo%2f..%2fadmin%2fx",
    "/admin/y/../x",
    "/public/..;/admin/x",
    "/x/%c0%ae%c0%ae/admin/x",
    "/x/%e0%80%ae%e0%80%ae/admin/x",
    "/%c0%afadmin/x",
    "/admin%00/x",
    "/../admin/x",
    "/%2e%2e/admin/x",
    "/%2e%2e%2fadmin/x",
];

/// A deny route in front of a proxy route: no spelling of the denied path reaches the app,
/// and what reaches it is the path the route matched.
#[test]
fn no_spelling_of_a_denied_path_reaches_the_app() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "app");
    let cfg = any_host(&format!(
        r#"[[site.route]]
path = "/admin/"
respond = {{ status = 403, body = "denied" }}
[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"] }}
[[site.route]]
path = "/api/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"], strip_prefix = true }}
"#
    ));
    let (_server, port) = start_http_in(dir, &cfg);
    for target in ADMIN_SPELLINGS {
        let r = get(port, "a", target);
        assert!(
            r.status == 403 || r.status == 400,
            "{target} → {} {}",
            r.status,
            r.text()
        );
    }
    assert!(up.seen().is_empty(), "reached the app: {:?}", up.seen());

    // What is forwarded is the canonical path, encoded again: the app decodes it to the
    // path the route matched. The query goes as it came.
    for (target, upstream_sees) in [
        ("/%70ublic/a%20b?q=%2e%2e", "/public/a%20b?q=%2e%2e"),
        ("/public//x/./y/../z", "/public/x/z"),
        ("/caf%c3%a9/%7euser", "/caf%C3%A9/~user"),
        ("/a%3fb%23c", "/a%3Fb%23c"),
        ("/admin%5cx", "/admin%5Cx"),
        ("/admin;jsessionid=1/x", "/admin;jsessionid=1/x"),
        ("/api/..%2fapi/%61/b", "/a/b"),
        ("/x/..", "/"),
    ] {
        let r = get(port, "a", target);
        assert_eq!(r.status, 200, "{target}");
        assert_eq!(up.seen().last().unwrap().path, upstream_sees, "{target}");
    }
}

/// An allow-list (`/public/` proxied, everything else refused): no path escapes the prefix.
#[test]
fn no_path_climbs_out_of_an_allowed_prefix() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "app");
    let cfg = any_host(&format!(
        r#"[[site.route]]
path = "/"
respond = {{ status = 403, body = "denied" }}
[[site.route]]
path = "/public/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"] }}
"#
    ));
    let (_server, port) = start_http_in(dir, &cfg);
    for target in [
        "/public/../admin",
        "/public/%2e%2e/admin",
        "/public/%2E%2E%2Fadmin",
        "/public%2f..%2fadmin",
        "/public/..%2f..%2fadmin",
        "/public/..;/admin",
        "/public/.;/../admin",
        "/public/%c0%ae%c0%ae/admin",
        "/public/..%00/admin",
        "/public/x/../../admin",
    ] {
        let r = get(port, "a", target);
        assert!(
            r.status == 403 || r.status == 400,
            "{target} → {}",
            r.status
        );
    }
    assert!(up.seen().is_empty(), "reached the app: {:?}", up.seen());
    assert_eq!(get(port, "a", "/public/ok").status, 200);
}

/// The same corpus against a deny route in front of a `static` route, and between two
/// `respond` routes: the route that answers is the one the canonical path names.
#[test]
fn static_and_respond_routes_match_the_canonical_path() {
    let dir = tempdir();
    let www = dir.path().join("www");
    std::fs::create_dir_all(www.join("admin")).unwrap();
    std::fs::write(www.join("admin/x"), "SECRET").unwrap();
    std::fs::create_dir_all(www.join("dir")).unwrap();
    std::fs::write(www.join("dir/index.html"), "dir index").unwrap();
    std::fs::write(www.join("%2e%2e"), "a file named %2e%2e").unwrap();
    std::fs::write(www.join("not found.html"), "custom 404").unwrap();
    let cfg = format!(
        r#"[[listener]]
name = "http"
[[site]]
hosts = ["static"]
error_pages = {{ 404 = "/not%20found.html" }}
[[site.route]]
path = "/admin/"
respond = {{ status = 403, body = "denied" }}
[[site.route]]
path = "/"
static = {{ root = "{}" }}
[[site]]
hosts = ["respond"]
[[site.route]]
path = "/"
respond = {{ body = "public" }}
[[site.route]]
path = "/admin"
respond = {{ body = "ADMIN" }}
"#,
        www.display()
    );
    let (_server, port) = start_http_in(dir, &cfg);
    for target in ADMIN_SPELLINGS {
        let r = get(port, "static", target);
        assert!(
            (r.status == 403 || r.status == 400) && !r.text().contains("SECRET"),
            "{target} → {} {}",
            r.status,
            r.text()
        );
        let r = get(port, "respond", target);
        assert!(
            r.status == 400 || r.text() == "ADMIN",
            "{target} → {} {}",
            r.status,
            r.text()
        );
    }
    // Decoded once only: "%252e%252e" names the file "%2e%2e", not "..".
    assert_eq!(
        get(port, "static", "/%252e%252e").text(),
        "a file named %2e%2e"
    );
    // `..` inside the root is resolved (nginx does the same) and redirects use the
    // canonical path.
    assert_eq!(get(port, "static", "/admin/../dir/").text(), "dir index");
    let r = get(port, "static", "/x/../dir?q=1");
    assert_eq!(r.status, 301);
    assert_eq!(r.header("location").as_deref(), Some("/dir/?q=1"));
    let r = get(port, "static", "//evil.example/%2e%2e/dir");
    assert_eq!(r.header("location").as_deref(), Some("/dir/"));
    // Error pages are URL paths too, decoded the same way.
    let r = get(port, "static", "/missing");
    assert_eq!((r.status, r.text().as_str()), (404, "custom 404"));
}

/// Proxy-asserted headers in every spelling are dropped from untrusted clients; names with
/// `_` are dropped unless the route keeps them; a trusted proxy's values are kept.
#[test]
fn forwarding_headers_cannot_be_spoofed_in_any_spelling() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "app");
    let cfg = any_host(&format!(
        r#"[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"] }}
[[site.route]]
path = "/underscores/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"], underscores_in_headers = true }}
[[site.route]]
path = "/trusted/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"], trusted_proxies = ["127.0.0.1"] }}
"#
    ));
    let (_server, port) = start_http_in(dir, &cfg);
    let spoof = "X_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\nX-Forwarded-Ssl: on\r\n\
X-Forwarded-Port: 443\r\nX-Forwarded-Prefix: /admin\r\nX-Real-IP: 6.6.6.6\r\nX_Real_IP: 6.6.6.6\r\n\
X-Original-URL: /admin\r\nX-App_Token: t\r\n";
    let send = |path: &str| {
        let r = raw(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\n{spoof}Connection: close\r\n\r\n")
                .as_bytes(),
        );
        assert_eq!(r.status, 200);
        up.seen().pop().unwrap()
    };
    let asserted = [
        "x_forwarded_for",
        "x_forwarded_proto",
        "x-forwarded-ssl",
        "x-forwarded-port",
        "x-forwarded-prefix",
        "x-real-ip",
        "x_real_ip",
        "x-original-url",
    ];

    let seen = send("/");
    for h in asserted.iter().chain(&["x-app_token"]) {
        assert_eq!(seen.header(h), None, "{h} reached the app: {seen:?}");
    }
    assert_eq!(seen.all("x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(seen.all("x-forwarded-proto"), ["http"]);

    let seen = send("/underscores/");
    assert_eq!(seen.header("x-app_token"), Some("t"));
    for h in asserted {
        assert_eq!(seen.header(h), None, "{h} reached the app: {seen:?}");
    }

    let seen = send("/trusted/");
    assert_eq!(seen.header("x-real-ip"), Some("6.6.6.6"));
    assert_eq!(seen.header("x-forwarded-port"), Some("443"));
    for h in ["x_forwarded_for", "x_real_ip", "x-app_token"] {
        assert_eq!(seen.header(h), None, "{h} reached the app: {seen:?}");
    }
}

/// A WSGI app that answers what it sees: the environ a Django or Flask app would read.
const WSGI_ENVIRON_APP: &str = r#"
def application(environ, start_response):
    keys = ["PATH_INFO", "HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_REAL_IP"]
    body = "".join("%s=%r\n" % (k, environ.get(k)) for k in keys).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"#;

/// Debian's gunicorn behind a default `proxy` route: what the app reads as the client's
/// address, scheme and path.
#[test]
fn a_real_wsgi_app_reads_the_proxys_values_and_the_routed_path() {
    if !have_programs(&["gunicorn"], "gunicorn") {
        return;
    }
    let dir = tempdir();
    write(dir.path(), "environ_app.py", WSGI_ENVIRON_APP);
    let sock = dir.path().join("app.sock");
    let _app = Spawned::new(
        Command::new("gunicorn")
            .args(["--workers", "1", "--chdir"])
            .arg(dir.path())
            .arg("--bind")
            .arg(format!("unix:{}", sock.display()))
            .arg("environ_app:application"),
        &sock,
    );
    let cfg = any_host(&format!(
        r#"[[site.route]]
path = "/admin/"
respond = {{ status = 403, body = "denied" }}
[[site.route]]
path = "/"
proxy = {{ upstreams = ["unix:{}"] }}
"#,
        sock.display()
    ));
    let (_server, port) = start_http_in(dir, &cfg);
    let r = raw(
        port,
        b"GET /x HTTP/1.1\r\nHost: a\r\nX_Forwarded_For: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n\
X-Real-IP: 6.6.6.6\r\nConnection: close\r\n\r\n",
    );
    let text = r.text();
    assert!(
        text.contains("HTTP_X_FORWARDED_FOR='127.0.0.1'\n"),
        "{text}"
    );
    assert!(text.contains("HTTP_X_FORWARDED_PROTO='http'\n"), "{text}");
    assert!(text.contains("HTTP_X_REAL_IP=None\n"), "{text}");
    for target in ADMIN_SPELLINGS {
        let r = get(port, "a", target);
        assert!(
            r.status == 403 || r.status == 400,
            "{target} → {} {}",
            r.status,
            r.text()
        );
    }
    // A path that is not denied reaches the app as the route saw it.
    let r = get(port, "a", "/%70ublic//a/./b/../c%20d");
    assert!(
        r.text().contains("PATH_INFO='/public/a/c d'\n"),
        "{}",
        r.text()
    );
}

/// Only `websocket` upgrades are tunnelled by default: an `h2c` offer is forwarded as a plain
/// request, without its `Upgrade`, `Connection` and `HTTP2-Settings`.
#[test]
fn only_allowed_upgrades_are_tunnelled() {
    let dir = tempdir();
    let (l, up_port) = Listen::tcp();
    let up = UpstreamServer::start(l, "app");
    // `raw` reads until the server closes and these requests keep the connection: an idle
    // keep-alive of 1 s ends each exchange well inside its 10 s read timeout (with the
    // default 10 s the two raced, and lost on a loaded CI machine).
    let cfg = format!(
        "[server]\nheader_read_timeout = \"1s\"\n{}",
        any_host(&format!(
            r#"[[site.route]]
path = "/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"] }}
[[site.route]]
path = "/none/"
proxy = {{ upstreams = ["http://127.0.0.1:{up_port}"], upgrades = [], strip_prefix = true }}
"#
        ))
    );
    let (_server, port) = start_http_in(dir, &cfg);
    let r = raw(
        port,
        b"GET /echo HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n\
HTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
    );
    assert_eq!(r.status, 200, "{r:?}");
    let seen = up.seen().pop().unwrap();
    for h in ["upgrade", "http2-settings", "connection"] {
        assert_eq!(seen.header(h), None, "{h} reached the app: {seen:?}");
    }
    // A route that allows none: WebSocket is a plain request too, and an upstream that
    // switches protocols anyway is a bad gateway, not a tunnel.
    let r = raw(
        port,
        b"GET /none/ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(up.seen().pop().unwrap().header("upgrade"), None);
}

/// An ASGI app that serves two "files", one of which a gatehouse route denies.
const ASGI_FILES_APP: &str = r#"
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = {"/h2c/index.html": b"index\n", "/h2c/private/secret.txt": b"SECRET\n"}.get(scope["path"], b"nope\n")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
"#;

/// The issue's h2c smuggling, with Debian's hypercorn (which accepts `Upgrade: h2c`) behind
/// gatehouse and nghttp's upgrade mode as the client: the denied file never comes back.
#[test]
fn h2c_cannot_smuggle_requests_past_the_routes() {
    if !have_programs(&["hypercorn"], "python3-hypercorn")
        || !have_programs(&["nghttp"], "nghttp2-client")
    {
        return;
    }
    let dir = tempdir();
    write(dir.path(), "files_app.py", ASGI_FILES_APP);
    let app_port = free_port();
    let _app = Spawned::new(
        Command::new("hypercorn")
            .current_dir(dir.path())
            .arg("--bind")
            .arg(format!("127.0.0.1:{app_port}"))
            .arg("files_app:app"),
        Path::new(""),
    );
    wait_for_port(app_port);
    let cfg = any_host(&format!(
        r#"[[site.route]]
path = "/h2c/private/"
respond = {{ status = 403, body = "denied" }}
[[site.route]]
path = "/h2c/"
proxy = {{ upstreams = ["http://127.0.0.1:{app_port}"] }}
"#
    ));
    let (server, port) = start_http_in(dir, &cfg);
    let out = Command::new("timeout")
        .args(["10", "nghttp", "-u", "-v"])
        .arg(format!("http://127.0.0.1:{port}/h2c/index.html"))
        .arg(format!("http://127.0.0.1:{port}/h2c/private/secret.txt"))
        .args(["-H", "x-forwarded-for: 6.6.6.6"])
        .output()
        .expect("run nghttp");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        !stdout.contains("SECRET"),
        "the denied file came back:\n{stdout}"
    );
    assert!(!stdout.contains("101 Switching"), "{stdout}");
    server.wait_log("GET /h2c/index.html 200");
}

/// Hostile file names in a directory listing: no script link, no markup, no reordering.
#[test]
fn directory_listings_escape_hostile_names() {
    let dir = tempdir();
    let www = dir.path().join("www");
    std::fs::create_dir(&www).unwrap();
    for name in [
        "javascript:alert(document.domain)",
        "\"><img src=x onerror=alert(1)>",
        "line\nbreak",
        "evil\u{202e}gpj.exe",
        "data:text",
    ] {
        std::fs::write(www.join(name), "x").unwrap();
    }
    let cfg = any_host(&format!(
        r#"[[site.route]]
path = "/"
static = {{ root = "{}", list_directories = true }}
"#,
        www.display()
    ));
    let (_server, port) = start_http_in(dir, &cfg);
    let html = get(port, "a", "/").text();
    assert!(!html.contains("<img"), "{html}");
    assert!(!html.contains('\u{202e}'), "{html}");
    assert!(!html.contains("line\nbreak"), "{html}");
    let hrefs: Vec<&str> = html.split("href=\"").skip(1).collect();
    assert_eq!(hrefs.len(), 5, "{html}");
    for h in hrefs {
        assert!(h.starts_with("./"), "a link that is not relative: {h}");
        let link = &h[..h.find('"').unwrap()];
        assert!(!link.contains(':'), "a link with a scheme: {link}");
    }
    assert!(
        html.contains("href=\"./javascript%3Aalert(document.domain)\""),
        "{html}"
    );
}

/// Control, C1 and bidi characters a client puts in a path are escaped on the stderr
/// target, in the fast access line and in lines formatted by tracing (long entries).
#[test]
fn the_stderr_log_escapes_what_a_client_sends() {
    let (server, port) = start_http(
        "[server]\nmax_header_size = 65536\n[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n\
[[site.route]]\npath = \"/\"\nrespond = { body = \"ok\" }\n",
        &[],
    );
    let hostile = "/a\u{9b}b\u{2028}c\u{202e}d\u{85}e";
    let long = format!("{hostile}/{}", "l".repeat(20 * 1024));
    for path in [hostile.to_owned(), long] {
        let r = raw(
            port,
            format!("GET {path} HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").as_bytes(),
        );
        assert_eq!(r.status, 200);
    }
    server.wait_log("/a\\xC2\\x9Bb\\xE2\\x80\\xA8c\\xE2\\x80\\xAEd\\xC2\\x85e 200");
    let deadline = Instant::now() + Duration::from_secs(5);
    while server.stderr().matches("\\xC2\\x9Bb").count() < 2 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = server.stderr();
    assert_eq!(log.matches("\\xC2\\x9Bb").count(), 2, "{log}");
    for c in ['\u{9b}', '\u{2028}', '\u{202e}', '\u{85}'] {
        assert!(!log.contains(c), "{c:?} written raw:\n{log}");
    }
}

/// Credentials in an upstream URL are refused with their position, and never printed.
#[test]
fn upstream_credentials_are_refused_and_not_printed() {
    let dir = tempdir();
    let cfg = write(
        dir.path(),
        "creds.toml",
        "[[listener]]\nname = \"http\"\nbind = [\"127.0.0.1:8080\"]\n[[site]]\nhosts = [\"*\"]\n\
[[site.route]]\npath = \"/\"\nproxy = { upstreams = [\"http://user:s3cretpass@127.0.0.1:18001\"] }\n",
    );
    let (code, out, err) = run_cli(&["check", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78), "{out}{err}");
    assert!(
        err.contains(&format!("{}:8:24: ", cfg.display())),
        "no file:line:col in:\n{err}"
    );
    assert!(err.contains("credentials"), "{err}");
    assert!(
        !err.contains("s3cretpass"),
        "the password was printed:\n{err}"
    );
    let (code, _, err) = run_cli(&["serve", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, Some(78));
    assert!(!err.contains("s3cretpass"), "{err}");
}

/// One listener and one site for every host, with `routes`.
fn any_host(routes: &str) -> String {
    format!("[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n{routes}")
}

fn start_http_in(dir: tempfile::TempDir, config: &str) -> (Server, u16) {
    let cfg = write(dir.path(), "g.toml", config);
    let (l, port) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(l, "http"));
    server.wait_ready();
    (server, port)
}

fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An app server this test started, stopped (by its pid) when dropped.
struct Spawned(Child);

impl Spawned {
    /// Starts `cmd` and, if `socket` is a path, waits until it exists.
    fn new(cmd: &mut Command, socket: &Path) -> Spawned {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start app server");
        let spawned = Spawned(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.as_os_str().is_empty() && !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "{} never appeared",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        spawned
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
