//! A real upstream app server for the proxy tests: hyper on TCP or a unix socket, on its own
//! tokio runtime. It records every request head it sees and answers by path:
//!
//! - `/ws`            101 + raw byte echo after the upgrade
//! - `/slow/MS`       answers after MS milliseconds
//! - `/stall`         sends headers and one chunk, then nothing
//! - `/big/N`         streams N bytes of 'x'
//! - `/upload`        reads the body, reports the first byte on `first_byte`, answers its size
//! - `/digest`        reads the body (pausing `?pause_ms=MS` after its first frame) and
//!   answers "SIZE FNV" (`fnv1a` of the bytes)
//! - `/healthz`       200 or 503 per `set_healthy`
//! - anything else    echoes "METHOD PATH\nname: value\n..." of what it received
//!
//! `stop()` is a graceful app exit (in-flight requests finish, idle keep-alives close); the
//! listening socket may stay open in the test, as systemd keeps it, and `serve` again
//! resumes on it.
// Shared by many test crates, each using part of it: `pub` is this module's interface.
#![allow(unreachable_pub)]
#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type BoxBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("upstream runtime")
    })
}

/// What the upstream saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

pub enum Listen {
    Tcp(std::net::TcpListener),
    Unix(std::os::unix::net::UnixListener),
}

impl Listen {
    pub fn tcp() -> (Listen, u16) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let port = l.local_addr().expect("addr").port();
        (Listen::Tcp(l), port)
    }
    pub fn unix(path: &std::path::Path) -> Listen {
        Listen::Unix(std::os::unix::net::UnixListener::bind(path).expect("bind unix upstream"))
    }
    /// Another handle on the same listening socket (systemd's copy).
    pub fn try_clone(&self) -> Listen {
        match self {
            Listen::Tcp(l) => Listen::Tcp(l.try_clone().expect("dup")),
            Listen::Unix(l) => Listen::Unix(l.try_clone().expect("dup")),
        }
    }
}

#[derive(Default)]
pub struct State {
    pub seen: Mutex<Vec<Seen>>,
    pub connections: AtomicUsize,
    /// Connections open right now.
    pub open: AtomicUsize,
    pub unhealthy: AtomicBool,
    pub health_checks: AtomicUsize,
    /// Like gunicorn's sync workers: `Connection: close` on every response, and a stopping
    /// app still answers the one request of each connection it accepted.
    pub close_mode: AtomicBool,
    pub first_byte: Mutex<Option<mpsc::Sender<()>>>,
    pub name: Mutex<String>,
}

pub struct UpstreamServer {
    pub state: Arc<State>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    done: Option<std::sync::mpsc::Receiver<()>>,
}

impl UpstreamServer {
    pub fn start(listen: Listen, name: &str) -> UpstreamServer {
        let state = Arc::new(State::default());
        *state.name.lock().unwrap() = name.to_owned();
        Self::resume(listen, state)
    }

    /// Serves on `listen` with existing state (a restarted app on the same socket).
    pub fn resume(listen: Listen, state: Arc<State>) -> UpstreamServer {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let st = state.clone();
        let _guard = runtime().enter();
        runtime().spawn(async move {
            accept_loop(listen, st, stop_rx).await;
            let _ = done_tx.send(());
        });
        UpstreamServer {
            state,
            stop: Some(stop_tx),
            done: Some(done_rx),
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn set_healthy(&self, up: bool) {
        self.state.unhealthy.store(!up, Ordering::SeqCst);
    }

    /// Graceful exit: stop accepting, finish in-flight requests, close keep-alives.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(d) = self.done.take() {
            let _ = d.recv_timeout(Duration::from_secs(10));
        }
    }
}

impl Drop for UpstreamServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept_loop(
    listen: Listen,
    state: Arc<State>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    enum L {
        Tcp(tokio::net::TcpListener),
        Unix(tokio::net::UnixListener),
    }
    let l = match listen {
        Listen::Tcp(l) => {
            l.set_nonblocking(true).unwrap();
            L::Tcp(tokio::net::TcpListener::from_std(l).unwrap())
        }
        Listen::Unix(l) => {
            l.set_nonblocking(true).unwrap();
            L::Unix(tokio::net::UnixListener::from_std(l).unwrap())
        }
    };
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = stop.wait_for(|s| *s) => break,
            a = async {
                match &l {
                    L::Tcp(l) => l.accept().await.map(|(s, _)| Conn::Tcp(s)),
                    L::Unix(l) => l.accept().await.map(|(s, _)| Conn::Unix(s)),
                }
            } => a,
        };
        let Ok(conn) = accepted else { continue };
        state.connections.fetch_add(1, Ordering::SeqCst);
        state.open.fetch_add(1, Ordering::SeqCst);
        let st = state.clone();
        let stop = stop.clone();
        conns.spawn(async move {
            let open = st.clone();
            match conn {
                Conn::Tcp(s) => serve_conn(TokioIo::new(s), st, stop).await,
                Conn::Unix(s) => serve_conn(TokioIo::new(s), st, stop).await,
            }
            open.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
    // Dropping `l` here closes only this copy; the test may hold another.
    drop(l);
    let _ = tokio::time::timeout(Duration::from_secs(10), async {
        while conns.join_next().await.is_some() {}
    })
    .await;
}

enum Conn {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn serve_conn<I>(
    io: TokioIo<I>,
    state: Arc<State>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let close_mode = state.close_mode.load(Ordering::SeqCst);
    let svc = hyper::service::service_fn(move |req| {
        let st = state.clone();
        async move { Ok::<_, Infallible>(answer(req, st).await) }
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        _ = conn.as_mut() => return,
        _ = stop.wait_for(|s| *s) => {}
    }
    if !close_mode {
        conn.as_mut().graceful_shutdown();
    }
    let _ = conn.await;
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<BoxBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn answer(req: Request<Incoming>, state: Arc<State>) -> Response<BoxBody> {
    let close = state.close_mode.load(Ordering::SeqCst);
    let name = state.name.lock().unwrap().clone();
    let mut r = answer_inner(req, state).await;
    if let Ok(v) = name.parse() {
        r.headers_mut().entry("x-upstream").or_insert(v);
    }
    if close {
        r.headers_mut()
            .insert("connection", "close".parse().unwrap());
    }
    r
}

async fn answer_inner(mut req: Request<Incoming>, state: Arc<State>) -> Response<BoxBody> {
    let path = req.uri().path().to_owned();
    if path == "/healthz" {
        state.health_checks.fetch_add(1, Ordering::SeqCst);
        return if state.unhealthy.load(Ordering::SeqCst) {
            text(StatusCode::SERVICE_UNAVAILABLE, "down")
        } else {
            text(StatusCode::OK, "ok")
        };
    }
    state.seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map_or("/".to_owned(), |p| p.to_string()),
        headers: req
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
    });
    let name = state.name.lock().unwrap().clone();
    if path == "/ws" {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = vec![0u8; 4096];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = text(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "Upgrade".parse().unwrap());
        return r;
    }
    if let Some(ms) = path.strip_prefix("/slow/") {
        let ms: u64 = ms.parse().unwrap_or(1000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
        return text(StatusCode::OK, "slow");
    }
    if path == "/stall" {
        let mut r = Response::new(Stall { sent: false }.boxed());
        r.headers_mut().insert("x-upstream", name.parse().unwrap());
        return r;
    }
    if let Some(n) = path.strip_prefix("/big/") {
        let n: u64 = n.parse().unwrap_or(0);
        return Response::new(Repeat { left: n }.boxed());
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut total = 0u64;
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return text(StatusCode::BAD_REQUEST, "body error");
            };
            if let Some(d) = frame.data_ref() {
                if total == 0 && !d.is_empty() {
                    if let Some(tx) = state.first_byte.lock().unwrap().take() {
                        let _ = tx.send(());
                    }
                }
                total += d.len() as u64;
            }
        }
        return text(StatusCode::OK, format!("received {total}"));
    }
    if path == "/digest" {
        let pause = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("pause_ms="))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(0);
        let mut body = req.into_body();
        let (mut total, mut hash) = (0u64, FNV_OFFSET);
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else {
                return text(StatusCode::BAD_REQUEST, "body error");
            };
            if let Some(d) = frame.data_ref() {
                if total == 0 {
                    tokio::time::sleep(Duration::from_millis(pause)).await;
                }
                total += d.len() as u64;
                hash = fnv1a_from(hash, d);
            }
        }
        return text(StatusCode::OK, format!("{total} {hash:016x}"));
    }
    let mut out = format!("{} {}\n", req.method(), req.uri());
    for (k, v) in req.headers() {
        out.push_str(&format!(
            "{}: {}\n",
            k,
            String::from_utf8_lossy(v.as_bytes())
        ));
    }
    // Drain whatever body came, so keep-alive works.
    let _ = req.into_body().collect().await;
    let mut r = text(StatusCode::OK, out);
    let h = r.headers_mut();
    h.insert("x-upstream", name.parse().unwrap());
    // Hop-by-hop headers the proxy must not pass to the client.
    h.insert("connection", "x-up-secret".parse().unwrap());
    h.insert("x-up-secret", "1".parse().unwrap());
    h.insert("keep-alive", "timeout=5".parse().unwrap());
    h.insert("proxy-x", "1".parse().unwrap());
    r
}

/// `left` bytes of 'x' in 64 KiB frames.
struct Repeat {
    left: u64,
}

impl Body for Repeat {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 65536] = [b'x'; 65536];
        if self.left == 0 {
            return Poll::Ready(None);
        }
        let n = self.left.min(CHUNK.len() as u64) as usize;
        self.left -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
    }
    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.left)
    }
}

/// One chunk, then silence forever.
struct Stall {
    sent: bool,
}

impl Body for Stall {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.sent {
            return Poll::Pending;
        }
        self.sent = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"partial")))))
    }
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a_from(mut hash: u64, bytes: &[u8]) -> u64 {
    for b in bytes {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// FNV-1a, 64 bits, as `/digest` answers it.
pub fn fnv1a(bytes: &[u8]) -> String {
    format!("{:016x}", fnv1a_from(FNV_OFFSET, bytes))
}
