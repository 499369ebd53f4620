//! WebSocket tunnels are connections: after the upgrade the tunnel keeps the client
//! connection's place in the open count, so idle exit waits for it, a drain gives it
//! `shutdown_timeout`, `max_connections` bounds it and STATUS= counts it.

mod common;
mod proxy_upstream;

use common::*;
use proxy_upstream::{Listen, UpstreamServer};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A masked text frame "hello" (RFC 6455 §5.7); the upstream echoes it byte for byte.
const FRAME: [u8; 11] = [
    0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
];

/// A server proxying everything to a WebSocket echo upstream; `server` goes in [server].
fn start(server: &str) -> (Server, u16, UpstreamServer) {
    let dir = tempdir();
    let sock = dir.path().join("ws.sock");
    let up = UpstreamServer::start(Listen::unix(&sock), "ws");
    let cfg = format!(
        "[server]\n{server}\n\n[[listener]]\nname = \"http\"\n\n[[site]]\nhosts = [\"*\"]\n\
         [[site.route]]\npath = \"/\"\nproxy = {{ upstreams = [\"unix:{}\"] }}\n",
        sock.display()
    );
    let cfg = write(dir.path(), "g.toml", &cfg);
    let (l, port) = tcp_listener();
    let server = Server::start(dir, Launch::serve(&cfg).fd(l, "http"));
    server.wait_ready();
    (server, port, up)
}

fn open_tunnel(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head);
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    echo(&mut s).expect("echo right after the upgrade");
    s
}

fn echo(s: &mut TcpStream) -> std::io::Result<()> {
    s.write_all(&FRAME)?;
    let mut back = [0u8; FRAME.len()];
    s.read_exact(&mut back)?;
    assert_eq!(back, FRAME);
    Ok(())
}

#[test]
fn an_open_tunnel_holds_off_idle_exit_and_counts_in_status() {
    let (mut server, port, _up) = start("idle_exit_after = \"1s\"\nstatus_interval = \"200ms\"");
    let mut ws = open_tunnel(port);
    server.notify().clear();
    let counted = server.notify().wait_for(
        |m| m.contains("STATUS=1 connection open"),
        Duration::from_secs(3),
    );
    assert!(counted.is_some(), "STATUS= counts the tunnel");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(server.is_running(), "idle exit with a tunnel open");
    echo(&mut ws).expect("the tunnel still echoes after 2.5 s of idle_exit_after = 1s");

    ws.shutdown(std::net::Shutdown::Both).unwrap();
    drop(ws);
    let closed = Instant::now();
    let status = server.wait_exit(Duration::from_secs(5)).expect("idle exit");
    assert_eq!(status.code(), Some(0));
    assert!(
        closed.elapsed() >= Duration::from_millis(900),
        "exit about 1s after the tunnel closed: {:?}",
        closed.elapsed()
    );
}

#[test]
fn a_drain_gives_a_tunnel_shutdown_timeout() {
    let (mut server, port, _up) = start("shutdown_timeout = \"2s\"");
    let mut ws = open_tunnel(port);
    let t = Instant::now();
    server.signal(libc::SIGTERM);
    let stopping = server
        .notify()
        .wait_for_line("STOPPING=1", Duration::from_secs(3))
        .expect("STOPPING=1")
        .1;
    assert!(
        stopping.contains("draining 1 connection"),
        "the tunnel is drained like a request: {stopping}"
    );
    std::thread::sleep(Duration::from_millis(500));
    echo(&mut ws).expect("the tunnel keeps working while the server drains");
    let status = server.wait_exit(Duration::from_secs(6)).expect("exit");
    assert!(status.success());
    let took = t.elapsed();
    assert!(
        took >= Duration::from_millis(1800) && took < Duration::from_secs(5),
        "the drain waited shutdown_timeout for the tunnel: {took:?}"
    );
}

#[test]
fn max_connections_bounds_tunnels() {
    let (_server, port, _up) = start("max_connections = 1");
    let mut ws = open_tunnel(port);
    let mut other = TcpStream::connect(("127.0.0.1", port)).unwrap();
    other
        .write_all(b"GET /plain HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .unwrap();
    other
        .set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut buf = [0u8; 1];
    let early = other.read(&mut buf);
    assert!(
        early.is_err(),
        "a second connection was served while the tunnel held the only slot: {early:?}"
    );
    echo(&mut ws).unwrap();
    ws.shutdown(std::net::Shutdown::Both).unwrap();
    drop(ws);
    other
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reply = Vec::new();
    other.read_to_end(&mut reply).unwrap();
    assert_eq!(
        parse_reply(&reply).unwrap().status,
        200,
        "served once the tunnel closed"
    );
}
