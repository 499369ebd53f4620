//! The `static` route against a docroot the test builds, over real sockets. Every test that
//! looks a path up runs twice: with openat2, and with the server under a seccomp filter
//! that fails openat2 with ENOSYS, as the packaged unit's RestrictSUIDSGID= does. Both ways
//! of resolving a path beneath the root must answer alike.

mod common;
#[path = "static_files/large.rs"]
mod large;
#[path = "static_files/symlinks.rs"]
mod symlinks;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::Duration;

const SECRET: &str = "TOPSECRET-7f3a9c";

/// What the server logs once it finds openat2 blocked.
const BLOCKED_LINE: &str = "openat2 is not permitted here";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Openat2,
    Blocked,
}

/// `#[test]`s NAME::openat2 and NAME::openat2_blocked, each calling `NAME(mode)`.
macro_rules! both_modes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn openat2() {
                super::$name(super::Mode::Openat2)
            }
            #[test]
            fn openat2_blocked() {
                super::$name(super::Mode::Blocked)
            }
        }
    )*};
}
pub(crate) use both_modes;

both_modes!(
    traversal_corpus_never_leaks_a_byte_outside_the_root,
    files_have_type_length_validators_and_cache_rules,
    conditional_requests,
    ranges,
    precompressed_siblings_follow_accept_encoding,
    on_the_fly_compression_for_text_above_the_threshold,
    directories_redirect_index_forbid_and_list,
    spa_fallback_and_error_pages,
    dotfiles_symlinks_and_special_files,
    device_nodes_are_never_opened,
    changed_files_are_never_served_stale,
);

pub struct Site {
    pub server: Server,
    pub port: u16,
    pub root: PathBuf,
}

fn build_docroot(base: &Path) -> PathBuf {
    let root = base.join("root");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(root.join("empty")).unwrap();
    std::fs::create_dir_all(root.join("spa")).unwrap();
    std::fs::create_dir_all(root.join(".git")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), SECRET).unwrap();
    std::fs::write(root.join("index.html"), "<h1>home</h1>\n").unwrap();
    std::fs::write(root.join("sub/index.html"), "sub index\n").unwrap();
    std::fs::write(root.join("a.css"), "body { color: red; }\n".repeat(20)).unwrap();
    std::fs::write(root.join("app.js"), "console.log('identity');\n").unwrap();
    std::fs::write(root.join("app.js.br"), "BROTLI-BYTES").unwrap();
    std::fs::write(root.join("app.js.gz"), "GZIP-BYTES!!").unwrap();
    std::fs::write(root.join("404.html"), "<p>custom not found</p>\n").unwrap();
    std::fs::write(root.join(".env"), "HIDDEN=1\n").unwrap();
    std::fs::write(root.join(".git/config"), "[core]\n").unwrap();
    std::fs::write(root.join("spa/index.html"), "spa shell\n").unwrap();
    std::fs::create_dir_all(root.join("files/sub")).unwrap();
    std::fs::write(root.join("files/<b>&\"x'.txt"), "odd name\n").unwrap();
    std::fs::write(root.join("files/.hidden"), "h\n").unwrap();
    let digits: String = (0..1000)
        .map(|i| char::from(b'0' + (i % 10) as u8))
        .collect();
    std::fs::write(root.join("digits.txt"), &digits).unwrap();
    symlink(outside.join("secret.txt"), root.join("out")).unwrap();
    symlink(&outside, root.join("outdir")).unwrap();
    symlink("../outside/secret.txt", root.join("rel_out")).unwrap();
    symlink("index.html", root.join("in")).unwrap();
    symlink(root.join("index.html"), root.join("abs_in")).unwrap();
    let fifo = std::ffi::CString::new(root.join("fifo").as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: `fifo` is a NUL-terminated path that outlives the call.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
    root
}

pub fn start_site(mode: Mode) -> Site {
    let dir = tempdir();
    let root = build_docroot(dir.path());
    let r = root.display();
    let config = format!(
        r#"
[[listener]]
name = "http"

[[site]]
hosts = ["*"]
error_pages = {{ 404 = "/404.html", 405 = "/404.html" }}

[[site.route]]
path = "/"
static = {{ root = "{r}", precompressed = ["br", "gzip"], cache_control = [ {{ pattern = "*.{{css,js}}", value = "public, max-age=31536000, immutable" }} ] }}

[[site.route]]
path = "/spa/"
static = {{ root = "{r}/spa", spa_fallback = "index.html" }}

[[site.route]]
path = "/listed/"
static = {{ root = "{r}/files", list_directories = true }}

[[site.route]]
path = "/never/"
static = {{ root = "{r}", follow_symlinks = "never" }}

[[site.route]]
path = "/always/"
static = {{ root = "{r}", follow_symlinks = "always" }}

[[site.route]]
path = "/hidden/"
static = {{ root = "{r}", serve_hidden = true }}

[[site.route]]
path = "/gz/"
static = {{ root = "{r}", compress = ["gzip"], compress_min_size = 100 }}
"#
    );
    let cfg = write(dir.path(), "g.toml", &config);
    let (l, port) = tcp_listener();
    let mut launch = Launch::serve(&cfg).fd(l, "http");
    launch.block_openat2 = mode == Mode::Blocked;
    let server = Server::start(dir, launch);
    server.wait_ready();
    // The first lookup asks whether openat2 may be called, and logs it when it may not:
    // proof that this run takes the way it is meant to test.
    assert_eq!(get(port, "/index.html", "").status, 200);
    match mode {
        Mode::Blocked => server.wait_log(BLOCKED_LINE),
        Mode::Openat2 if openat2_works_here() => {
            server.wait_log("GET /index.html 200");
            assert!(
                !server.stderr().contains(BLOCKED_LINE),
                "{}",
                server.stderr()
            );
        }
        Mode::Openat2 => eprintln!("openat2 is blocked for this test process too"),
    }
    Site { server, port, root }
}

fn openat2_works_here() -> bool {
    // SAFETY: open_how is plain integers, for which all-zero is valid.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = (libc::O_PATH | libc::O_CLOEXEC) as u64;
    // SAFETY: openat2 reads `how` (of the size passed) and a NUL-terminated path.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            c".".as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    if fd >= 0 {
        // SAFETY: `fd` is the descriptor openat2 just opened, closed once.
        unsafe { libc::close(fd as i32) };
    }
    fd >= 0
}

pub fn request(port: u16, text: &str) -> Reply {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(&mut s, text.as_bytes()).unwrap()
}

pub fn get(port: u16, path: &str, headers: &str) -> Reply {
    request(
        port,
        &format!("GET {path} HTTP/1.1\r\nHost: t\r\n{headers}Connection: close\r\n\r\n"),
    )
}

fn traversal_corpus_never_leaks_a_byte_outside_the_root(mode: Mode) {
    let site = start_site(mode);
    let secret_abs = site.root.parent().unwrap().join("outside/secret.txt");
    let abs = secret_abs.display().to_string();
    let abs_encoded = abs.replace('/', "%2f");
    let many_up = "%2e%2e/".repeat(12);
    let mut targets: Vec<String> = [
        "/../outside/secret.txt",
        "/..%2foutside%2fsecret.txt",
        "/%2e%2e/outside/secret.txt",
        "/%2E%2E/outside/secret.txt",
        "/%2e%2e%2foutside%2fsecret.txt",
        "/.%2e/outside/secret.txt",
        "/%2e./outside/secret.txt",
        "/%252e%252e/outside/secret.txt",
        "/%252e%252e%252foutside%252fsecret.txt",
        "/..%252foutside%252fsecret.txt",
        "/..%5coutside%5csecret.txt",
        "/%2e%2e%5coutside%5csecret.txt",
        "/..\\outside\\secret.txt",
        "/sub/../../outside/secret.txt",
        "/sub/%2e%2e/%2e%2e/outside/secret.txt",
        "/sub/..%2f..%2foutside%2fsecret.txt",
        "/./../outside/secret.txt",
        "//../outside/secret.txt",
        "/..;/outside/secret.txt",
        "/%c0%ae%c0%ae/outside/secret.txt",
        "/%c0%2e%c0%2e/outside/secret.txt",
        "/%uff0e%uff0e/outside/secret.txt",
        "/..%00/outside/secret.txt",
        "/%00../outside/secret.txt",
        "/index.html%00/../../outside/secret.txt",
        "/.../outside/secret.txt",
        "/..../outside/secret.txt",
        "/out",
        "/out/",
        "/rel_out",
        "/outdir/secret.txt",
        "/outdir/",
        "/never/out",
        "/never/outdir/secret.txt",
        "/listed/outdir/",
        "/listed/../outside/secret.txt",
        "/spa/../outside/secret.txt",
        "/spa/..%2f..%2foutside/secret.txt",
        "/hidden/../outside/secret.txt",
        "/gz/../outside/secret.txt",
        "/gz/out",
        "/%2fetc%2fpasswd",
        "//etc/passwd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    targets.push(format!("/{many_up}{}", abs.trim_start_matches('/')));
    targets.push(format!("/{abs_encoded}"));
    targets.push(format!("/%2f{}", abs.trim_start_matches('/')));
    targets.push(format!("/{}", "a/".repeat(3000)));
    targets.push(format!("/{}/secret.txt", "..%2f".repeat(20)));
    assert!(targets.len() >= 40, "corpus has {}", targets.len());

    let mut lines: Vec<String> = targets
        .iter()
        .map(|t| format!("GET {t} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"))
        .collect();
    // Request-target forms other than origin-form.
    lines.push("GET ../outside/secret.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".into());
    lines.push(format!(
        "GET {abs} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    ));
    lines.push(
        "GET http://t/../outside/secret.txt HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
            .into(),
    );
    lines.push("GET /../outside/secret.txt HTTP/1.0\r\n\r\n".into());

    for line in &lines {
        let mut s = TcpStream::connect(("127.0.0.1", site.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(line.as_bytes()).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let text = String::from_utf8_lossy(&buf);
        assert!(!text.contains(SECRET), "LEAK for {line:?}:\n{text}");
        let status = parse_reply(&buf).map(|r| r.status).unwrap_or(0);
        assert!(
            matches!(status, 400 | 403 | 404 | 0) || (status == 301 && !text.contains("//etc")),
            "{line:?} → {status}\n{text}"
        );
    }
}

fn files_have_type_length_validators_and_cache_rules(mode: Mode) {
    let site = start_site(mode);
    let r = get(site.port, "/a.css", "");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("text/css; charset=utf-8")
    );
    assert_eq!(r.header("content-length").as_deref(), Some("420"));
    assert_eq!(r.body.len(), 420);
    assert!(r.header("last-modified").is_some());
    let etag = r.header("etag").unwrap();
    assert!(
        etag.starts_with('"') && etag.ends_with('"'),
        "strong etag {etag}"
    );
    assert_eq!(
        r.header("cache-control").as_deref(),
        Some("public, max-age=31536000, immutable")
    );
    let html = get(site.port, "/", "");
    assert_eq!(html.text(), "<h1>home</h1>\n");
    assert_eq!(html.header("cache-control"), None);
    assert_eq!(
        html.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );

    let head = request(
        site.port,
        "HEAD /a.css HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(head.header("content-length").as_deref(), Some("420"));
    assert!(head.body.is_empty());

    let post = request(
        site.port,
        "POST /a.css HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(post.status, 405);
    assert_eq!(post.header("allow").as_deref(), Some("GET, HEAD"));
    // The site's page replaces only the body: status and Allow stay.
    assert_eq!(post.text(), "<p>custom not found</p>\n");
}

fn conditional_requests(mode: Mode) {
    let site = start_site(mode);
    let first = get(site.port, "/digits.txt", "");
    let etag = first.header("etag").unwrap();
    let lm = first.header("last-modified").unwrap();
    let p = site.port;
    assert_eq!(
        get(p, "/digits.txt", &format!("If-None-Match: {etag}\r\n")).status,
        304
    );
    assert_eq!(
        get(
            p,
            "/digits.txt",
            &format!("If-None-Match: \"x\", W/{etag}\r\n")
        )
        .status,
        304
    );
    assert_eq!(
        get(p, "/digits.txt", "If-None-Match: \"other\"\r\n").status,
        200
    );
    assert_eq!(
        get(p, "/digits.txt", &format!("If-Modified-Since: {lm}\r\n")).status,
        304
    );
    assert_eq!(
        get(
            p,
            "/digits.txt",
            "If-Modified-Since: Mon, 01 Jan 2001 00:00:00 GMT\r\n"
        )
        .status,
        200
    );
    // If-None-Match wins over If-Modified-Since.
    assert_eq!(
        get(
            p,
            "/digits.txt",
            &format!("If-None-Match: \"other\"\r\nIf-Modified-Since: {lm}\r\n")
        )
        .status,
        200
    );
    assert_eq!(get(p, "/digits.txt", "If-Match: \"other\"\r\n").status, 412);
    assert_eq!(
        get(p, "/digits.txt", &format!("If-Match: {etag}\r\n")).status,
        200
    );
    assert_eq!(
        get(
            p,
            "/digits.txt",
            "If-Unmodified-Since: Mon, 01 Jan 2001 00:00:00 GMT\r\n"
        )
        .status,
        412
    );
    let r304 = get(p, "/digits.txt", &format!("If-None-Match: {etag}\r\n"));
    assert_eq!(r304.header("etag").as_deref(), Some(etag.as_str()));
    assert!(r304.body.is_empty());
}

fn ranges(mode: Mode) {
    let site = start_site(mode);
    let p = site.port;
    let r = get(p, "/digits.txt", "Range: bytes=10-19\r\n");
    assert_eq!(r.status, 206);
    assert_eq!(r.text(), "0123456789");
    assert_eq!(
        r.header("content-range").as_deref(),
        Some("bytes 10-19/1000")
    );
    assert_eq!(r.header("content-length").as_deref(), Some("10"));
    let tail = get(p, "/digits.txt", "Range: bytes=-3\r\n");
    assert_eq!((tail.status, tail.text().as_str()), (206, "789"));
    let bad = get(p, "/digits.txt", "Range: bytes=5000-\r\n");
    assert_eq!(bad.status, 416);
    assert_eq!(bad.header("content-range").as_deref(), Some("bytes */1000"));
    let multi = get(p, "/digits.txt", "Range: bytes=0-1,5-6\r\n");
    assert_eq!(
        (multi.status, multi.body.len()),
        (200, 1000),
        "multi-range → whole body"
    );
    let etag = get(p, "/digits.txt", "").header("etag").unwrap();
    let ok = get(
        p,
        "/digits.txt",
        &format!("Range: bytes=0-0\r\nIf-Range: {etag}\r\n"),
    );
    assert_eq!((ok.status, ok.text().as_str()), (206, "0"));
    let stale = get(
        p,
        "/digits.txt",
        "Range: bytes=0-0\r\nIf-Range: \"old\"\r\n",
    );
    assert_eq!((stale.status, stale.body.len()), (200, 1000));
}

fn precompressed_siblings_follow_accept_encoding(mode: Mode) {
    let site = start_site(mode);
    let p = site.port;
    let br = get(p, "/app.js", "Accept-Encoding: gzip, br\r\n");
    assert_eq!(br.header("content-encoding").as_deref(), Some("br"));
    assert_eq!(br.text(), "BROTLI-BYTES");
    assert_eq!(br.header("content-length").as_deref(), Some("12"));
    assert_eq!(br.header("vary").as_deref(), Some("Accept-Encoding"));
    assert_eq!(
        br.header("content-type").as_deref(),
        Some("text/javascript; charset=utf-8")
    );
    let gz = get(p, "/app.js", "Accept-Encoding: br;q=0.1, gzip;q=0.9\r\n");
    assert_eq!(gz.header("content-encoding").as_deref(), Some("gzip"));
    assert_eq!(gz.text(), "GZIP-BYTES!!");
    assert_ne!(
        gz.header("etag"),
        br.header("etag"),
        "each representation has its own ETag"
    );
    let plain = get(p, "/app.js", "");
    assert_eq!(plain.header("content-encoding"), None);
    assert_eq!(plain.text(), "console.log('identity');\n");
    assert_eq!(plain.header("vary").as_deref(), Some("Accept-Encoding"));
    let refused = get(p, "/app.js", "Accept-Encoding: br;q=0, gzip;q=0\r\n");
    assert_eq!(refused.header("content-encoding"), None);
}

fn on_the_fly_compression_for_text_above_the_threshold(mode: Mode) {
    let site = start_site(mode);
    let r = get(site.port, "/gz/a.css", "Accept-Encoding: gzip\r\n");
    assert_eq!(r.header("content-encoding").as_deref(), Some("gzip"));
    assert!(r.header("etag").unwrap().starts_with("W/"));
    // Chunked (length unknown up front): undo the chunking, then gunzip.
    let body = dechunk(&r.body);
    let mut out = String::new();
    flate2::read::GzDecoder::new(&body[..])
        .read_to_string(&mut out)
        .unwrap();
    assert_eq!(out, "body { color: red; }\n".repeat(20));
    let small = get(site.port, "/gz/index.html", "Accept-Encoding: gzip\r\n");
    assert_eq!(
        small.header("content-encoding"),
        None,
        "below compress_min_size"
    );
    let png_like = get(site.port, "/gz/digits.txt", "Accept-Encoding: gzip\r\n");
    assert_eq!(png_like.header("content-encoding").as_deref(), Some("gzip"));
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let nl = body.windows(2).position(|w| w == b"\r\n").unwrap();
        let size =
            usize::from_str_radix(std::str::from_utf8(&body[..nl]).unwrap().trim(), 16).unwrap();
        body = &body[nl + 2..];
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

fn directories_redirect_index_forbid_and_list(mode: Mode) {
    let site = start_site(mode);
    let p = site.port;
    let redirect = get(p, "/sub?x=1", "");
    assert_eq!(redirect.status, 301);
    assert_eq!(redirect.header("location").as_deref(), Some("/sub/?x=1"));
    assert_eq!(get(p, "/sub/", "").text(), "sub index\n");
    assert_eq!(get(p, "/empty/", "").status, 403);
    let listing = get(p, "/listed/", "");
    assert_eq!(listing.status, 200);
    let html = listing.text();
    assert!(
        html.contains("&lt;b&gt;&amp;&quot;x&#39;.txt"),
        "escaped name: {html}"
    );
    assert!(
        html.contains("href=\"./%3Cb%3E%26%22x%27.txt\""),
        "encoded link: {html}"
    );
    assert!(!html.contains("<b>"), "no raw markup from names");
    assert!(!html.contains(".hidden"), "hidden files not listed");
    assert!(html.contains("href=\"./sub/\""));
}

fn spa_fallback_and_error_pages(mode: Mode) {
    let site = start_site(mode);
    let p = site.port;
    let spa = get(p, "/spa/users/42", "");
    assert_eq!((spa.status, spa.text().as_str()), (200, "spa shell\n"));
    assert_eq!(get(p, "/spa/missing.js", "").status, 404);
    let custom = get(p, "/no/such/page", "");
    assert_eq!(custom.status, 404);
    assert_eq!(custom.text(), "<p>custom not found</p>\n");
    assert_eq!(
        custom.header("content-type").as_deref(),
        Some("text/html; charset=utf-8")
    );
}

fn dotfiles_symlinks_and_special_files(mode: Mode) {
    let site = start_site(mode);
    let p = site.port;
    assert_eq!(get(p, "/.env", "").status, 404);
    assert_eq!(get(p, "/.git/config", "").status, 404);
    assert_eq!(get(p, "/hidden/.env", "").text(), "HIDDEN=1\n");
    // Inside-root symlinks, relative and absolute, are followed by default.
    assert_eq!(get(p, "/in", "").text(), "<h1>home</h1>\n");
    assert_eq!(get(p, "/abs_in", "").text(), "<h1>home</h1>\n");
    assert_eq!(get(p, "/never/in", "").status, 404);
    assert_eq!(get(p, "/out", "").status, 404);
    // "always" follows wherever the link goes, by the admin's explicit choice.
    assert_eq!(get(p, "/always/out", "").text(), SECRET);
    // A FIFO is never opened: an answer comes at once, and the server is not stuck.
    let t = std::time::Instant::now();
    assert_eq!(get(p, "/fifo", "").status, 404);
    assert!(t.elapsed() < Duration::from_secs(2));
    assert_eq!(get(p, "/", "").status, 200);
}

fn device_nodes_are_never_opened(mode: Mode) {
    let site = start_site(mode);
    let node =
        std::ffi::CString::new(site.root.join("zero").as_os_str().as_encoded_bytes()).unwrap();
    // /dev/zero's numbers (1, 5); needs root, like mknod(1).
    // SAFETY: `node` is a NUL-terminated path that outlives the call.
    if unsafe { libc::mknod(node.as_ptr(), libc::S_IFCHR | 0o644, libc::makedev(1, 5)) } != 0 {
        eprintln!("SKIPPED: mknod needs root");
        return;
    }
    assert_eq!(get(site.port, "/zero", "").status, 404);
}

fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_huge_file_to_many_slow_clients_keeps_memory_flat() {
    let site = start_site(Mode::Openat2);
    // Sparse: 1 GiB without using disk.
    let big = std::fs::File::create(site.root.join("huge.bin")).unwrap();
    big.set_len(1 << 30).unwrap();
    let before = rss_kib(site.server.pid());
    let mut clients = Vec::new();
    for _ in 0..50 {
        let mut s = TcpStream::connect(("127.0.0.1", site.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(b"GET /huge.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        s.read_exact(&mut buf).unwrap();
        clients.push(s);
    }
    // Slow readers: the server must wait on them instead of buffering the file.
    std::thread::sleep(Duration::from_millis(1500));
    let after = rss_kib(site.server.pid());
    let growth = after.saturating_sub(before);
    eprintln!("RSS before {before} KiB, with 50 slow clients {after} KiB (+{growth} KiB)");
    // The file leaves through sendfile(2): per client only the read buffer (≈ 128 KiB,
    // 6.2 MiB for 50 on a debug build) at most; the mapping is never touched, so it is in
    // no one's RSS. A server that read ahead into memory would hold most of the 1 GiB.
    assert!(growth < 12 * 1024, "RSS grew by {growth} KiB");
    for mut c in clients {
        let mut buf = [0u8; 65536];
        assert!(c.read(&mut buf).unwrap() > 0, "streams keep flowing");
    }
}

fn changed_files_are_never_served_stale(mode: Mode) {
    let site = start_site(mode);
    let path = site.root.join("digits.txt");
    let original = get(site.port, "/digits.txt", "").text();
    // Twice, so the second answer can come from the small-file cache.
    assert_eq!(get(site.port, "/digits.txt", "").text(), original);
    let same_size = "x".repeat(original.len());
    std::fs::write(&path, &same_size).unwrap();
    assert_eq!(get(site.port, "/digits.txt", "").text(), same_size);
    std::fs::write(&path, "short").unwrap();
    let r = get(site.port, "/digits.txt", "Range: bytes=1-2\r\n");
    assert_eq!((r.status, r.text().as_str()), (206, "ho"));
    // Replaced by rename (a new inode), as deploy tools do.
    let tmp = site.root.join("digits.tmp");
    std::fs::write(&tmp, "renamed").unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert_eq!(get(site.port, "/digits.txt", "").text(), "renamed");
}
