//! The admin endpoints, served only on `role = "admin"` listeners: /metrics (Prometheus
//! text), /status (JSON), /healthz. No site or route can reach them.

use crate::http_base::{self, Body};
use crate::shared::Shared;
use crate::status;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

/// `from_unix`: the connection came over a unix socket (see `apps::endpoints`).
pub(crate) async fn handle(
    req: Request<Incoming>,
    shared: &Shared,
    from_unix: bool,
) -> Response<Body> {
    let path = req.uri().path();
    if crate::apps::endpoints::owns(path) {
        return apps(req, from_unix).await;
    }
    if !matches!(path, "/metrics" | "/status" | "/healthz") {
        return http_base::error(StatusCode::NOT_FOUND);
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = http_base::error(StatusCode::METHOD_NOT_ALLOWED);
        resp.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/metrics" => {
            // Gauges read from live state at scrape time, not maintained per request.
            let open = i64::try_from(shared.conns.open()).unwrap_or(i64::MAX);
            shared.metrics.open_connections.set(open);
            let routes = &shared.snapshot.load().proxy_routes;
            crate::metrics::set_upstreams_up(crate::proxy::upstream_health(routes).into_iter());
            crate::apps::state::refresh_metrics();
            text(
                StatusCode::OK,
                shared.metrics.encode(),
                "text/plain; version=0.0.4; charset=utf-8",
            )
        }
        "/status" => {
            let report = status::collect(shared);
            match serde_json::to_string_pretty(&report) {
                Ok(json) => text(StatusCode::OK, json + "\n", "application/json"),
                Err(_) => http_base::error(StatusCode::INTERNAL_SERVER_ERROR),
            }
        }
        _ => {
            if shared.conns.is_draining() {
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "draining\n".into(),
                    "text/plain",
                )
            } else {
                text(StatusCode::OK, "ok\n".into(), "text/plain")
            }
        }
    }
}

/// `/apps…`: the deploy endpoints. Their bodies are small JSON documents.
async fn apps(req: Request<Incoming>, from_unix: bool) -> Response<Body> {
    use http_body_util::BodyExt;
    let (parts, body) = req.into_parts();
    let body = match http_body_util::Limited::new(body, 64 * 1024)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(_) => return http_base::error(StatusCode::PAYLOAD_TOO_LARGE),
    };
    let (method, path) = (parts.method, parts.uri.path().to_owned());
    // A switch writes and fsyncs the state file (and holds the record's lock meanwhile):
    // not on a thread that serves requests, least of all with `workers = 1`.
    let answered = tokio::task::spawn_blocking(move || {
        crate::apps::endpoints::handle(&method, &path, &body, from_unix)
    })
    .await;
    let Ok((status, answer)) = answered else {
        return http_base::error(StatusCode::INTERNAL_SERVER_ERROR);
    };
    let content_type = if answer.starts_with(['{', '[']) {
        "application/json"
    } else {
        "text/plain; charset=utf-8"
    };
    text(status, answer, content_type)
}

fn text(status: StatusCode, body: String, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(http_base::full(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// Where `gatehouse status` looks by default (the packaged admin socket).
pub(crate) const DEFAULT_ADMIN_SOCKET: &str = "/run/gatehouse/admin.sock";

/// Why `gatehouse status` has no report; each message starts with the address asked.
#[derive(Debug, thiserror::Error)]
pub(crate) enum QueryError {
    #[error("{0}")]
    Runtime(std::io::Error),
    #[error("{addr}: no answer within 5s")]
    Timeout { addr: String },
    #[error("{addr}: {reason}")]
    Connection { addr: String, reason: String },
    #[error("{addr}: {path} answered {status}")]
    Status {
        addr: String,
        path: String,
        status: StatusCode,
    },
    #[error("{addr}: unexpected /status reply: {source}")]
    Reply {
        addr: String,
        source: serde_json::Error,
    },
}

/// `gatehouse status`: GET /status from the admin listener at `addr` ("/path",
/// "unix:/path" or "IP:PORT") and return the human summary.
pub(crate) fn query_status(addr: &str) -> Result<String, QueryError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(QueryError::Runtime)?;
    let body = runtime.block_on(async {
        tokio::time::timeout(std::time::Duration::from_secs(5), get(addr, "/status"))
            .await
            .map_err(|_| QueryError::Timeout {
                addr: addr.to_owned(),
            })?
    })?;
    let report: status::Report =
        serde_json::from_slice(&body).map_err(|source| QueryError::Reply {
            addr: addr.to_owned(),
            source,
        })?;
    Ok(status::human(&report))
}

async fn get(addr: &str, path: &str) -> Result<bytes::Bytes, QueryError> {
    use http_body_util::BodyExt;
    let unix_path = addr.strip_prefix("unix:").unwrap_or(addr);
    let req = Request::get(path)
        .header(header::HOST, "admin")
        .body(http_body_util::Empty::<bytes::Bytes>::new());
    let fail = |e: &dyn std::fmt::Display| QueryError::Connection {
        addr: addr.to_owned(),
        reason: e.to_string(),
    };
    let req = req.map_err(|e| fail(&e))?;
    let response = if unix_path.starts_with('/') {
        let stream = tokio::net::UnixStream::connect(unix_path)
            .await
            .map_err(|e| fail(&e))?;
        send(stream, req).await
    } else {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| fail(&e))?;
        send(stream, req).await
    }
    .map_err(|e| fail(&e))?;
    if !response.status().is_success() {
        return Err(QueryError::Status {
            addr: addr.to_owned(),
            path: path.to_owned(),
            status: response.status(),
        });
    }
    let body = response.into_body().collect().await.map_err(|e| fail(&e))?;
    Ok(body.to_bytes())
}

async fn send<S>(
    stream: S,
    req: Request<http_body_util::Empty<bytes::Bytes>>,
) -> Result<Response<Incoming>, hyper::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    sender.send_request(req).await
}
