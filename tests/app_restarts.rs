//! The proxy's defaults against app servers that bind their own socket and are restarted
//! plainly (stop, then start: what `systemctl restart` does without socket activation).
//! Connects are refused meanwhile; `retry_connect_for`'s default must outlast that window
//! (issue 25, item 4: 1.2–4.3 s measured for gunicorn sync and gthread and for uvicorn).

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

fn start(upstream: &str) -> (Server, u16) {
    start_http(
        &format!(
            "[[listener]]\nname = \"http\"\n[[site]]\nhosts = [\"*\"]\n[[site.route]]\npath = \"/\"\n\
             proxy = {{ upstreams = [\"{upstream}\"] }}\n"
        ),
        // A failure then shows the proxy's reasons.
        &[("RUST_LOG", "info,gatehouse::proxy=debug")],
    )
}

/// An app down for 3 s (its socket gone) is within the default retry window: a request that
/// arrives meanwhile waits and is answered by the app once it is back.
#[test]
fn a_request_during_a_three_second_restart_waits_for_the_app() {
    let dir = tempdir();
    let sock = dir.path().join("app.sock");
    let mut app = UpstreamServer::start(Listen::unix(&sock), "v1");
    let (_server, port) = start(&format!("unix:{}", sock.display()));
    assert_eq!(get_tcp(port, "a", "/before").unwrap().status, 200);
    app.stop();
    std::fs::remove_file(&sock).unwrap();
    let sock2 = sock.clone();
    let back = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(3));
        UpstreamServer::start(Listen::unix(&sock2), "v2")
    });
    let t = Instant::now();
    let r = get_tcp(port, "a", "/during").unwrap();
    let _app = back.join().unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        t.elapsed() >= Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
}

const DJANGO_APP: &str = r#"
import django
from django.conf import settings
settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, SECRET_KEY="x" * 50)
django.setup()
from django.http import HttpResponse
from django.urls import path
urlpatterns = [path("", lambda request: HttpResponse("hello from django\n"))]
from django.core.wsgi import get_wsgi_application
application = get_wsgi_application()
"#;

fn gunicorn(dir: &std::path::Path, sock: &std::path::Path) -> Child {
    Command::new("gunicorn")
        .arg("--chdir")
        .arg(dir)
        .arg("--bind")
        .arg(format!("unix:{}", sock.display()))
        .args(["--workers", "2", "djapp"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("gunicorn")
}

/// A GET that waits as long as a browser would: a request queued in the new gunicorn's
/// backlog while its workers boot (seconds on a busy machine) is late, not failed.
fn patient_get(port: u16) -> std::io::Result<Reply> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    exchange(
        &mut s,
        b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    )
}

/// SIGTERM (gunicorn's graceful stop), then wait for the exit.
fn terminate(child: &mut Child) {
    // SAFETY: kill(2) takes plain integers; the pid is our own unreaped child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
}

/// Real gunicorn (sync workers, Django) binding its own unix socket, stopped with SIGTERM
/// and started again while clients keep asking: with the defaults, no request fails.
#[test]
fn a_plain_gunicorn_restart_fails_no_request_with_the_defaults() {
    if !have_programs(&["gunicorn"], "gunicorn python3-django") {
        return;
    }
    let dir = tempdir();
    write(dir.path(), "djapp.py", DJANGO_APP);
    let sock = dir.path().join("gunicorn.sock");
    let mut app = gunicorn(dir.path(), &sock);
    let (_server, port) = start(&format!("unix:{}", sock.display()));
    let deadline = Instant::now() + Duration::from_secs(20);
    while get_tcp(port, "a", "/").map(|r| r.status).ok() != Some(200) {
        assert!(Instant::now() < deadline, "gunicorn did not come up");
        std::thread::sleep(Duration::from_millis(100));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let ok = Arc::new(Mutex::new(0usize));
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let (stop, failures, ok) = (stop.clone(), failures.clone(), ok.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match patient_get(port) {
                        Ok(r) if r.status == 200 => *ok.lock().unwrap() += 1,
                        Ok(r) => failures.lock().unwrap().push(r.status.to_string()),
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        })
        .collect();
    let mut windows = Vec::new();
    for _ in 0..2 {
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        terminate(&mut app);
        app = gunicorn(dir.path(), &sock);
        while !sock.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "gunicorn did not bind"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        windows.push(t.elapsed());
    }
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    terminate(&mut app);
    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across restarts taking {windows:?}: {failures:?}\n{}",
        failures.len(),
        failures.len() + *ok.lock().unwrap(),
        _server.stderr()
    );
}
