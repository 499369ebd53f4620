//! The service the tests start: an axum app on `gatehouse_kit::server::Server`, shaped by
//! environment variables so one program covers every scenario.
//!
//! | variable | effect |
//! |---|---|
//! | `KIT_FALLBACK` | `fallback_listen` address |
//! | `KIT_FD_NAME` | `fd_name` |
//! | `KIT_IDLE_MS` | `idle_exit_after` |
//! | `KIT_SHUTDOWN_MS` | `shutdown_timeout` |
//! | `KIT_HEALTH_FILE` | `/healthz` answers 200 while this file exists, else 503 (`health_path`) |
//! | `KIT_RELOAD_FILE` | SIGHUP reads it: `ok` succeeds, anything else is the failure |
//! | `KIT_EARLY_HUP` | raise SIGHUP right after taking the environment, before the handlers exist |

use axum::extract::{ConnectInfo, Query, Request};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use gatehouse_kit::server::Server;
use gatehouse_kit::Environment;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn millis(name: &str) -> Option<Duration> {
    var(name)
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

pub fn router() -> Router {
    let health_file = var("KIT_HEALTH_FILE");
    Router::new()
        .route("/", get(|| async { "hello" }))
        .route("/slow", get(slow))
        .route("/p/{n}", get(|| async { "ok" }))
        .route("/peer", get(peer))
        .route("/upgrade", get(upgrade))
        .route(
            "/event",
            get(|| async {
                tracing::info!(order_id = 42u64, "custom event");
                "logged"
            }),
        )
        .route(
            "/healthz",
            get(move || async move {
                match &health_file {
                    Some(f) if !std::path::Path::new(f).exists() => {
                        (StatusCode::SERVICE_UNAVAILABLE, "not yet")
                    }
                    _ => (StatusCode::OK, "ok"),
                }
            }),
        )
        // tower-http composes with the kit's access layer (which wraps the whole router).
        .layer(tower_http::set_header::SetResponseHeaderLayer::overriding(
            header::HeaderName::from_static("x-tower-http"),
            HeaderValue::from_static("yes"),
        ))
}

#[derive(serde::Deserialize)]
struct SlowParams {
    ms: u64,
}

async fn slow(Query(p): Query<SlowParams>) -> String {
    tokio::time::sleep(Duration::from_millis(p.ms)).await;
    format!("slept {}", p.ms)
}

/// axum's own `ConnectInfo` extractor, as under `axum::serve` (TCP peers only).
async fn peer(ConnectInfo(addr): ConnectInfo<SocketAddr>) -> String {
    addr.ip().to_string()
}

/// `Upgrade: echo`: a tunnel that echoes every byte until the client closes.
async fn upgrade(mut req: Request) -> Response {
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(upgraded) = on_upgrade.await {
            let mut io = hyper_util::rt::TokioIo::new(upgraded);
            let (mut r, mut w) = tokio::io::split(&mut io);
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [(header::UPGRADE, "echo"), (header::CONNECTION, "upgrade")],
    )
        .into_response()
}

pub fn server() -> Server {
    let mut server = Server::new("kit-test").workers(2);
    if let Some(addr) = var("KIT_FALLBACK") {
        server = server.fallback_listen(&addr);
    }
    if let Some(name) = var("KIT_FD_NAME") {
        server = server.fd_name(&name);
    }
    if let Some(idle) = millis("KIT_IDLE_MS") {
        server = server.idle_exit_after(idle);
    }
    if let Some(timeout) = millis("KIT_SHUTDOWN_MS") {
        server = server.shutdown_timeout(timeout);
    }
    if var("KIT_HEALTH_FILE").is_some() {
        server = server.health_path("/healthz");
    }
    if let Some(file) = var("KIT_RELOAD_FILE") {
        server = server.on_reload(move || {
            let file = file.clone();
            async move {
                match std::fs::read_to_string(&file) {
                    Ok(text) if text.trim() == "ok" => Ok(()),
                    Ok(text) => Err(text.trim().to_owned()),
                    Err(e) => Err(format!("{file}: {e}")),
                }
            }
        });
    }
    server.status_interval(Duration::from_millis(200))
}

/// The child `router`: `Server::run`, or with `KIT_EARLY_HUP` the same by hand with a
/// SIGHUP raised before the signal handlers exist.
pub fn router_main() -> ExitCode {
    if var("KIT_EARLY_HUP").is_none() {
        return server().run(router());
    }
    let env = Environment::take();
    // SAFETY: raise(2) with a valid signal number.
    unsafe { libc::raise(libc::SIGHUP) };
    gatehouse_kit::log::init(&gatehouse_kit::log::LogOptions::new("kit-test"));
    let runtime = gatehouse_kit::lifecycle::build_runtime(1).expect("runtime");
    match runtime.block_on(server().serve(router(), env)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{e}");
            e.exit_code()
        }
    }
}
