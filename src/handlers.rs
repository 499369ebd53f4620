//! What a route does with a request. One function per route kind; `dispatch` picks it.

use crate::config::{RespondConfig, RouteAction};
use bytes::Bytes;
use http::{header, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Every response body: fixed bytes now, streams for later route kinds.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

pub fn full(bytes: Bytes) -> Body {
    Full::new(bytes).map_err(|never| match never {}).boxed()
}

pub fn dispatch(action: &RouteAction, method: &Method) -> Response<Body> {
    match action {
        RouteAction::Respond(r) => respond(r, method),
    }
}

/// A `respond` route: the configured status, content type and body (none for HEAD, which
/// hyper strips while keeping Content-Length).
fn respond(r: &RespondConfig, _method: &Method) -> Response<Body> {
    let mut resp = Response::new(full(r.body.clone()));
    *resp.status_mut() = r.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, r.content_type.clone());
    resp
}

/// A small plain-text error page, e.g. "404 Not Found".
pub fn error(status: StatusCode) -> Response<Body> {
    let text = format!(
        "{} {}\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or("Error")
    );
    let mut resp = Response::new(full(Bytes::from(text)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
