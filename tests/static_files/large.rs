//! Files large enough to leave through sendfile(2) on plaintext HTTP/1 (see `src/sendfile/`):
//! every byte, in order, whatever the range or the pipeline, and never a page of the file in
//! the server's memory; the same bytes over HTTP/2, which reads them instead; and a file cut
//! short while being sent ends that response's connection, never the server.

use super::{get, start_site, Mode};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

/// Not a multiple of the page size, so the last page is partial.
const LEN: usize = 3 * 1024 * 1024 + 4321;

fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

fn write_large(root: &Path) -> Vec<u8> {
    let data = pattern(LEN);
    std::fs::write(root.join("large.bin"), &data).unwrap();
    data
}

/// The file grown to 1 GiB with a sparse tail: far more than loopback's socket buffers hold,
/// so a response of it is still being sent while the test looks.
const SPARSE_LEN: u64 = 1 << 30;

fn grow_sparse(root: &Path) -> std::fs::File {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(root.join("large.bin"))
        .unwrap();
    file.set_len(SPARSE_LEN).unwrap();
    file
}

/// A client that asks for `/large.bin` with `headers` and takes the first `n` bytes only.
fn slow_reader(port: u16, headers: &str, n: usize) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("GET /large.bin HTTP/1.1\r\nHost: t\r\n{headers}\r\n").as_bytes())
        .unwrap();
    let mut first = vec![0u8; n];
    s.read_exact(&mut first).unwrap();
    (s, first)
}

#[test]
fn large_files_arrive_whole_with_ranges_and_head() {
    let site = start_site(Mode::Openat2);
    let data = write_large(&site.root);
    let whole = get(site.port, "/large.bin", "");
    assert_eq!(whole.status, 200);
    assert_eq!(whole.header("content-length"), Some(LEN.to_string()));
    assert!(whole.body == data, "the whole file, byte for byte");
    // Starts mid-page and ends mid-page: the mapping starts earlier than the body.
    let r = get(site.port, "/large.bin", "Range: bytes=4097-2000000\r\n");
    assert_eq!(r.status, 206);
    assert!(r.body == data[4097..=2_000_000]);
    let tail = get(site.port, "/large.bin", "Range: bytes=-300000\r\n");
    assert!(tail.body == data[LEN - 300_000..]);
    let small = get(site.port, "/large.bin", "Range: bytes=100-199\r\n");
    assert!(small.body == data[100..200]);
    let mut s = TcpStream::connect(("127.0.0.1", site.port)).unwrap();
    let head = crate::common::exchange(
        &mut s,
        b"HEAD /large.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(head.header("content-length"), Some(LEN.to_string()));
    assert!(head.body.is_empty());
}

/// Three responses on one connection, asked for in one write: each body follows its own
/// head, the small one between the large ones included.
#[test]
fn pipelined_large_responses_stay_in_order() {
    let site = start_site(Mode::Openat2);
    let data = write_large(&site.root);
    let mut s = TcpStream::connect(("127.0.0.1", site.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(
        b"GET /large.bin HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /digits.txt HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /large.bin HTTP/1.1\r\nHost: t\r\nRange: bytes=1-\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let digits = std::fs::read(site.root.join("digits.txt")).unwrap();
    let mut rest = &all[..];
    for want in [&data[..], &digits[..], &data[1..]] {
        let reply = crate::common::parse_reply(rest).unwrap();
        let len: usize = reply.header("content-length").unwrap().parse().unwrap();
        assert_eq!(len, want.len());
        assert!(reply.body[..len] == *want, "a body out of place");
        rest = &rest[rest.len() - reply.body.len() + len..];
    }
    assert!(rest.is_empty());
}

#[test]
fn large_files_over_http2_arrive_whole() {
    let site = start_site(Mode::Openat2);
    let data = write_large(&site.root);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let body = rt.block_on(async {
        let mut send = crate::common::h2c(site.port).await;
        let req = http::Request::get("http://t/large.bin")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.version(), http::Version::HTTP_2);
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes()
    });
    assert!(body[..] == data[..]);
}

/// Truncated in place (not replaced by rename) while a slow client reads it: that
/// response's connection closes short of Content-Length, the server stays up, and the next
/// request gets the file as it is now. The file is far larger than loopback's socket buffers
/// (a sparse tail), so the server cannot have sent it all before the truncation.
#[test]
fn a_file_cut_short_while_sent_closes_only_its_connection() {
    let mut site = start_site(Mode::Openat2);
    let data = write_large(&site.root);
    let file = grow_sparse(&site.root);
    let (mut s, first) = slow_reader(site.port, "Connection: close\r\n", 64 * 1024);
    file.set_len(100_000).unwrap();
    let mut rest = Vec::new();
    // The server closes the connection (a reset is fine too): it cannot finish the body.
    let _ = s.read_to_end(&mut rest);
    let got = (first.len() + rest.len()) as u64;
    assert!(
        got < SPARSE_LEN / 2,
        "got {got} bytes of a body cut to 100000"
    );
    assert!(
        site.server.is_running(),
        "the server died: {}",
        site.server.stderr()
    );
    let now = get(site.port, "/large.bin", "");
    assert_eq!(now.status, 200);
    assert!(now.body == data[..100_000]);
}

/// While a slow client takes a large file, the server holds a mapping of it (the body hyper
/// writes) and not one page of it is resident: the bytes went by sendfile(2), not through
/// user space. The test that would catch a server reading the file it claims to send.
#[test]
fn a_large_file_is_mapped_for_sendfile_and_never_read() {
    let site = start_site(Mode::Openat2);
    write_large(&site.root);
    grow_sparse(&site.root);
    let (_client, _) = slow_reader(site.port, "", 256 * 1024);
    let smaps = std::fs::read_to_string(format!("/proc/{}/smaps", site.server.pid())).unwrap();
    let mut resident = Vec::new();
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        if line.ends_with("/large.bin") {
            let rss = lines
                .find_map(|l| l.strip_prefix("Rss:"))
                .map(|v| v.trim().to_owned());
            resident.push(rss.unwrap_or_default());
        }
    }
    assert_eq!(resident, ["0 kB"], "mappings of large.bin and their Rss");
}
