//! Symlinks against the lookup beneath the root, in both modes: the kernel's link limit, and
//! links swapped in while requests are being served (the race a check-then-open fallback
//! loses).

use super::{both_modes, get, start_site, Mode, Site, SECRET};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

both_modes!(
    link_chains_stop_at_the_kernels_limit,
    links_swapped_in_during_requests_never_leak,
);

fn link_chains_stop_at_the_kernels_limit(mode: Mode) {
    let site = start_site(mode);
    // chain_0 → chain_1 → … → chain_40 → index.html: 41 links from chain_0, 40 from chain_1.
    for i in 0..40 {
        symlink(
            format!("chain_{}", i + 1),
            site.root.join(format!("chain_{i}")),
        )
        .unwrap();
    }
    symlink("index.html", site.root.join("chain_40")).unwrap();
    symlink("loop_b", site.root.join("loop_a")).unwrap();
    symlink("loop_a", site.root.join("loop_b")).unwrap();
    let p = site.port;
    assert_eq!(get(p, "/chain_1", "").text(), "<h1>home</h1>\n", "40 links");
    assert_eq!(get(p, "/chain_0", "").status, 404, "41 links");
    assert_eq!(get(p, "/loop_a", "").status, 404);
    assert_eq!(get(p, "/never/chain_40", "").status, 404);
}

fn links_swapped_in_during_requests_never_leak(mode: Mode) {
    let site = start_site(mode);
    let race = site.root.join("race");
    let outside = site.root.parent().unwrap().join("outside");
    std::fs::create_dir_all(race.join("d")).unwrap();
    // race/f is a file inside, or a link to the secret; race/d a directory inside holding
    // a harmless secret.txt, or a link to the directory that holds the real one.
    std::fs::write(race.join("f"), "inside\n").unwrap();
    std::fs::write(race.join("d/secret.txt"), "inside\n").unwrap();
    symlink(outside.join("secret.txt"), race.join("f.alt")).unwrap();
    symlink(&outside, race.join("d.alt")).unwrap();
    for (a, b, url) in [
        ("f", "f.alt", "/race/f"),
        ("d", "d.alt", "/race/d/secret.txt"),
        ("f", "f.alt", "/never/race/f"),
        ("d", "d.alt", "/never/race/d/secret.txt"),
    ] {
        let (served, refused, swaps) =
            requests_while_swapping(&site, &race.join(a), &race.join(b), url);
        eprintln!("{mode:?} {url}: {served} served, {refused} refused, {swaps} swaps");
        // Both states were seen, so the race really ran.
        assert!(
            served > 0 && refused > 0,
            "{url}: {served} served, {refused} refused"
        );
    }
}

/// Swaps `a` and `b` (RENAME_EXCHANGE, atomic) in a loop while GETting `url` on one
/// keep-alive connection, for 1.5 s. Fails on any byte of the secret or on an answer other
/// than the inside file or 404. Returns (200s, 404s, swaps).
fn requests_while_swapping(site: &Site, a: &Path, b: &Path, url: &str) -> (u32, u32, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let swaps = Arc::new(AtomicU64::new(0));
    let swapper = {
        let (stop, swaps) = (stop.clone(), swaps.clone());
        let ca = std::ffi::CString::new(a.as_os_str().as_encoded_bytes()).unwrap();
        let cb = std::ffi::CString::new(b.as_os_str().as_encoded_bytes()).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                // SAFETY: `ca` and `cb` are NUL-terminated paths owned by this thread.
                let rc = unsafe {
                    libc::renameat2(
                        libc::AT_FDCWD,
                        ca.as_ptr(),
                        libc::AT_FDCWD,
                        cb.as_ptr(),
                        libc::RENAME_EXCHANGE,
                    )
                };
                // Not a panic: after a failed assertion the test's tempdir is gone.
                if rc != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                swaps.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        })
    };
    let mut conn = TcpStream::connect(("127.0.0.1", site.port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let (mut served, mut refused) = (0, 0);
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        conn.write_all(format!("GET {url} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let (status, body) = read_response(&mut reader);
        assert!(!body.contains(SECRET), "LEAK from {url}");
        match (status, body.as_str()) {
            (200, "inside\n") => served += 1,
            (404, _) => refused += 1,
            other => panic!("{url}: {other:?}"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap().expect("renameat2(RENAME_EXCHANGE)");
    (served, refused, swaps.load(Ordering::Relaxed))
}

/// One response from a keep-alive connection: status and body (Content-Length framed).
fn read_response(reader: &mut BufReader<TcpStream>) -> (u16, String) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap();
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == "\r\n" {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap();
            }
        }
    }
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}
