//! One HTTP/1.1 request over a fresh connection, to gatehouse's admin listener or to an
//! app instance's unix socket; hyper parses the answer.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use std::time::Duration;

#[derive(Debug)]
pub(crate) enum ClientError {
    /// Nothing listens there (no socket file, connection refused).
    Unreachable(String),
    /// Connected, then the exchange failed or took too long.
    Failed(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Unreachable(e) | ClientError::Failed(e) => f.write_str(e),
        }
    }
}

/// `addr`: "/path" or "unix:/path" for a unix socket, else "IP:PORT".
pub(crate) async fn request(
    addr: &str,
    method: Method,
    path: &str,
    host: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ClientError> {
    match tokio::time::timeout(timeout, exchange(addr, method, path, host, body)).await {
        Ok(r) => r,
        Err(_) => Err(ClientError::Failed(format!(
            "{addr}: no answer within {}",
            humantime::format_duration(timeout)
        ))),
    }
}

async fn exchange(
    addr: &str,
    method: Method,
    path: &str,
    host: &str,
    body: Option<Vec<u8>>,
) -> Result<(StatusCode, Bytes), ClientError> {
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, host);
    if body.is_some() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default())))
        .map_err(|e| ClientError::Failed(e.to_string()))?;
    let unreachable = |e: std::io::Error| ClientError::Unreachable(format!("{addr}: {e}"));
    let unix_path = addr.strip_prefix("unix:").unwrap_or(addr);
    let answer = if unix_path.starts_with('/') {
        let stream = tokio::net::UnixStream::connect(unix_path)
            .await
            .map_err(unreachable)?;
        send(stream, req).await
    } else {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(unreachable)?;
        send(stream, req).await
    };
    answer.map_err(|e| ClientError::Failed(format!("{addr}: {e}")))
}

async fn send<S>(stream: S, req: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let io = hyper_util::rt::TokioIo::new(stream);
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = resp.status();
    // An answer body is small (JSON, a health page); cap what we keep of it.
    let body = http_body_util::Limited::new(resp.into_body(), 1 << 20)
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, body))
}
