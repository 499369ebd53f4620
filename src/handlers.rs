//! The dispatcher: what a route does with a request. Each route kind lives in its own module
//! with its own config section; `dispatch` picks it by the route's `router::Handler`. Adding
//! a kind = a `RouteAction` variant with its section in `config/`, a `Handler` variant built
//! from it in `router`, and an arm here.

use crate::config::RespondConfig;
use crate::http_base::{full, Body, GeneratedError, RequestContext};
use crate::router::{Handler, Route};
use http::{header, Request, Response};
use hyper::body::Incoming;

pub(crate) async fn dispatch(
    route: &Route,
    req: Request<Incoming>,
    cx: &RequestContext<'_>,
) -> Response<Body> {
    match &route.handler {
        Handler::Respond(r) => respond(r, req),
        Handler::Static(s) => {
            crate::static_files::serve(s, &route.path, cx.path, req, cx.file_regions).await
        }
        Handler::Proxy(p) => crate::proxy::handle(p, &route.path, req, cx).await,
    }
}

/// A `respond` route: the configured status, content type and body (none for HEAD, which
/// hyper strips while keeping Content-Length).
fn respond(r: &RespondConfig, _req: Request<Incoming>) -> Response<Body> {
    let mut resp = Response::new(full(r.body.clone()));
    *resp.status_mut() = r.status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, r.content_type.clone());
    resp
}

/// Replaces gatehouse's own error response with the site's page for that status, if the
/// page is served by one of the site's `static` routes.
pub(crate) fn apply_error_page(
    site: &crate::router::Site,
    response: Response<Body>,
) -> Response<Body> {
    if response.extensions().get::<GeneratedError>().is_none() {
        return response;
    }
    let status = response.status();
    // A URL path as written in the file: made canonical like a request's.
    let Some(Ok(page)) = site
        .error_page(status.as_u16())
        .map(crate::request_path::canonicalize)
    else {
        return response;
    };
    let found = match site.route(&page) {
        Some(Route {
            handler: Handler::Static(route),
            path,
            ..
        }) => crate::static_files::error_page(route, path, &page),
        _ => None,
    };
    let Some((body, content_type)) = found else {
        return response;
    };
    // Only the body and its type change: status, Allow, Location, UPSTREAM and whatever
    // else the handler set stay as they were.
    let (mut parts, _) = response.into_parts();
    parts.headers.insert(header::CONTENT_TYPE, content_type);
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, full(body))
}
