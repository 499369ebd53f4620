//! Plain-HTTP → HTTPS redirects (`redirect_https`) and HSTS (`hsts`), applied per request.

use crate::http_base::{self, Body};
use http::{header, HeaderValue, Response, StatusCode, Uri};

/// What a site asks of the request pipeline about TLS; resolved once per configuration.
#[derive(Debug, Clone, Default)]
pub(crate) struct SitePolicy {
    /// Requests that arrived without TLS get a 308 to https.
    pub(crate) redirect_https: bool,
    /// `Strict-Transport-Security` value, sent only over TLS (RFC 6797 §7.2: a browser must
    /// ignore it over plain HTTP, and sending it there only invites a downgrade to fake it).
    pub(crate) hsts: Option<HeaderValue>,
    /// The site's ACME certificate: redirects wait until it is issued, since https would
    /// only show the placeholder.
    pub(crate) acme: Option<std::sync::Arc<crate::acme::ManagedCert>>,
}

impl SitePolicy {
    /// `acme` is the site's managed certificate, if it has one.
    pub(crate) fn for_site(
        site: &crate::config::SiteConfig,
        acme: Option<std::sync::Arc<crate::acme::ManagedCert>>,
    ) -> SitePolicy {
        SitePolicy {
            redirect_https: site.redirect_https,
            hsts: site.hsts.clone(),
            acme,
        }
    }

    /// Whether https is ready for this site: no ACME certificate pending.
    pub(crate) fn https_ready(&self) -> bool {
        self.acme.as_ref().is_none_or(|m| m.is_issued())
    }

    /// `redirect_https` applies to a request that arrived without TLS.
    pub(crate) fn redirects(&self, tls: bool) -> bool {
        self.redirect_https && !tls && self.https_ready()
    }

    /// Adds HSTS to a response sent over TLS.
    pub(crate) fn finish(&self, tls: bool, mut response: Response<Body>) -> Response<Body> {
        if let (true, Some(v)) = (tls, &self.hsts) {
            response
                .headers_mut()
                .insert(header::STRICT_TRANSPORT_SECURITY, v.clone());
        }
        response
    }
}

/// 308 (method and body kept, unlike 301) to the same host, path and query over https.
/// `host` is the normalised request host (no port): https goes to its default port 443.
pub(crate) fn redirect_https(host: &str, uri: &Uri) -> Response<Body> {
    if host.is_empty() {
        // HTTP/1.0 without Host: there is no name to send the client to.
        return http_base::error(StatusCode::BAD_REQUEST);
    }
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    // An IPv6 literal arrives normalised as "[::1]", already bracketed for a URL.
    let location = format!("https://{host}{path}");
    let Ok(value) = HeaderValue::from_str(&location) else {
        return http_base::error(StatusCode::BAD_REQUEST);
    };
    let mut resp = Response::new(http_base::full(bytes::Bytes::from(format!(
        "308 Permanent Redirect: {location}\n"
    ))));
    *resp.status_mut() = StatusCode::PERMANENT_REDIRECT;
    resp.headers_mut().insert(header::LOCATION, value);
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirect_keeps_path_and_query() {
        let uri: Uri = "/a/b?x=1&y=%20".parse().unwrap();
        let r = redirect_https("example.com", &uri);
        assert_eq!(r.status(), StatusCode::PERMANENT_REDIRECT);
        assert_eq!(
            r.headers()[header::LOCATION],
            "https://example.com/a/b?x=1&y=%20"
        );
        let absolute: Uri = "http://example.com/p?q".parse().unwrap();
        assert_eq!(
            redirect_https("example.com", &absolute).headers()[header::LOCATION],
            "https://example.com/p?q"
        );
        assert_eq!(redirect_https("", &uri).status(), StatusCode::BAD_REQUEST);
    }

    #[test]
    fn hsts_only_over_tls() {
        let p = SitePolicy {
            redirect_https: false,
            hsts: Some(HeaderValue::from_static("max-age=60")),
            acme: None,
        };
        let plain = p.finish(false, http_base::error(StatusCode::OK));
        assert!(plain
            .headers()
            .get(header::STRICT_TRANSPORT_SECURITY)
            .is_none());
        let tls = p.finish(true, http_base::error(StatusCode::OK));
        assert_eq!(
            tls.headers()[header::STRICT_TRANSPORT_SECURITY],
            "max-age=60"
        );
    }
}
