//! Virtual hosts and path prefixes: which route answers a request.
//!
//! One `Router` per listener name, built once per configuration, so a request does a hash
//! lookup for its host and a short scan of that site's routes (longest prefix first).

use crate::acme::ManagedCert;
use crate::config::{Config, HostPattern, RespondConfig, RouteAction};
use crate::metrics::{Metrics, RouteCounters};
use crate::proxy::ProxyRoute;
use crate::static_files::StaticRoute;
use std::collections::HashMap;
use std::sync::Arc;

/// What a route does, built once per configuration generation and shared by the routers
/// of every listener the site is on.
#[derive(Debug, Clone)]
pub(crate) enum Handler {
    Respond(RespondConfig),
    /// The open root and file cache of a `static` route.
    Static(Arc<StaticRoute>),
    /// The upstream pool of a `proxy` route.
    Proxy(Arc<ProxyRoute>),
}

impl Handler {
    pub(crate) fn new(action: &RouteAction) -> Handler {
        match action {
            RouteAction::Respond(r) => Handler::Respond(r.clone()),
            RouteAction::Static(s) => Handler::Static(Arc::new(StaticRoute::new(s.clone()))),
            RouteAction::Proxy(p) => Handler::Proxy(ProxyRoute::new(p.clone())),
        }
    }

    /// Short name used in logs and metrics.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Handler::Respond(_) => "respond",
            Handler::Static(_) => "static",
            Handler::Proxy(_) => "proxy",
        }
    }
}

/// A site's runtime parts, built by `snapshot` and aligned with `Config::sites`.
#[derive(Debug, Clone, Default)]
pub(crate) struct SiteParts {
    /// Aligned with the site's `routes`.
    pub(crate) handlers: Vec<Handler>,
    /// The site's ACME certificate (`tls = "acme"`).
    pub(crate) acme: Option<Arc<ManagedCert>>,
}

impl SiteParts {
    /// Builds the handlers of `site`'s routes.
    pub(crate) fn new(
        site: &crate::config::SiteConfig,
        acme: Option<Arc<ManagedCert>>,
    ) -> SiteParts {
        SiteParts {
            handlers: site
                .routes
                .iter()
                .map(|r| Handler::new(&r.action))
                .collect(),
            acme,
        }
    }
}

#[derive(Debug)]
pub(crate) struct Router {
    exact: HashMap<String, usize>,
    /// `(".example.com", site)`, longest suffix first.
    suffixes: Vec<(String, usize)>,
    any: Option<usize>,
    sites: Vec<Site>,
    /// Requests no site claimed.
    pub(crate) no_site: RouteCounters,
    /// The listener's `redirect_https`, looked up once per configuration.
    pub(crate) redirect_https: bool,
}

#[derive(Debug)]
pub(crate) struct Site {
    /// Longest path first, so the first match is the longest prefix.
    routes: Vec<Route>,
    error_pages: Vec<(u16, String)>,
    /// Requests for this site that no route matched.
    pub(crate) no_route: RouteCounters,
    /// `redirect_https` and `hsts`.
    pub(crate) tls: crate::tls::SitePolicy,
}

/// A route with its handler and request counters, resolved once per configuration.
#[derive(Debug)]
pub(crate) struct Route {
    /// Path prefix; always starts with '/'.
    pub(crate) path: String,
    pub(crate) handler: Handler,
    pub(crate) counters: RouteCounters,
}

impl Site {
    /// The custom page for `status`, if the site has one.
    pub(crate) fn error_page(&self, status: u16) -> Option<&str> {
        self.error_pages
            .iter()
            .find(|(s, _)| *s == status)
            .map(|(_, p)| p.as_str())
    }

    pub(crate) fn route(&self, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| prefix_matches(&r.path, path))
    }
}

impl Router {
    /// The router for connections arriving on listener `listener`; `parts` is aligned with
    /// `config.sites`.
    pub(crate) fn for_listener(
        config: &Config,
        parts: &[SiteParts],
        listener: &str,
        metrics: &Metrics,
    ) -> Router {
        let mut router = Router {
            exact: HashMap::new(),
            suffixes: Vec::new(),
            any: None,
            sites: Vec::new(),
            no_site: metrics.route_counters("-", "none"),
            redirect_https: config.listener(listener).is_some_and(|l| l.redirect_https),
        };
        let applicable = config.sites.iter().zip(parts).filter(|(s, _)| {
            s.listeners
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|l| l == listener))
        });
        for (site, parts) in applicable {
            let idx = router.sites.len();
            let label = site_label(&site.hosts);
            let mut routes: Vec<Route> = site
                .routes
                .iter()
                .zip(&parts.handlers)
                .map(|(r, handler)| Route {
                    path: r.path.clone(),
                    handler: handler.clone(),
                    counters: metrics.route_counters(&label, handler.kind()),
                })
                .collect();
            routes.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
            router.sites.push(Site {
                routes,
                error_pages: site.error_pages.clone(),
                no_route: metrics.route_counters(&label, "none"),
                tls: crate::tls::SitePolicy::for_site(site, parts.acme.clone()),
            });
            for host in &site.hosts {
                match host {
                    HostPattern::Any => {
                        router.any.get_or_insert(idx);
                    }
                    HostPattern::Exact(h) => {
                        router.exact.entry(h.clone()).or_insert(idx);
                    }
                    HostPattern::Suffix(s) => router.suffixes.push((s.clone(), idx)),
                }
            }
        }
        router
            .suffixes
            .sort_by_key(|(s, _)| std::cmp::Reverse(s.len()));
        router
    }

    /// False while the site for `host` waits for its first ACME certificate: the
    /// listener's `redirect_https` holds back until https works.
    pub(crate) fn https_ready(&self, host: &str) -> bool {
        match self.route(host, "/") {
            Lookup::Route(_, site) | Lookup::NoRoute(site) => site.tls.https_ready(),
            Lookup::NoSite => true,
        }
    }

    /// `host` must already be normalised by [`normalize_host`].
    pub(crate) fn route(&self, host: &str, path: &str) -> Lookup<'_> {
        let site = self
            .exact
            .get(host)
            .copied()
            .or_else(|| {
                self.suffixes
                    .iter()
                    .find(|(suffix, _)| host.ends_with(suffix.as_str()))
                    .map(|&(_, idx)| idx)
            })
            .or(self.any);
        let Some(site) = site.and_then(|i| self.sites.get(i)) else {
            return Lookup::NoSite;
        };
        match site.route(path) {
            Some(route) => Lookup::Route(route, site),
            None => Lookup::NoRoute(site),
        }
    }
}

/// The metrics label of a site: its first host as written ("*", "*.example.com").
fn site_label(hosts: &[HostPattern]) -> String {
    match hosts.first() {
        Some(HostPattern::Any) | None => "*".into(),
        Some(HostPattern::Suffix(s)) => format!("*{s}"),
        Some(HostPattern::Exact(h)) => h.clone(),
    }
}

pub(crate) enum Lookup<'a> {
    Route(&'a Route, &'a Site),
    /// No site claims this host (and there is no `*` site).
    NoSite,
    /// The site exists but none of its routes match the path.
    NoRoute(&'a Site),
}

/// Segment-aware prefix: "/api" matches "/api" and "/api/x" but not "/apiary";
/// "/api/" (trailing slash) matches everything below it.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    match path.strip_prefix(prefix) {
        None => false,
        Some(rest) => prefix.ends_with('/') || rest.is_empty() || rest.starts_with('/'),
    }
}

/// Lower-cases a Host value and strips the port and a trailing dot; `None` if it is not a
/// valid host (RFC 3986 reg-name or IP literal).
pub(crate) fn normalize_host(raw: &str) -> Option<String> {
    // The usual Host ("example.com", "127.0.0.1:8080"), already lower case, skips the
    // Authority parse (this runs on every request); anything else takes the full path.
    // A byte search: str::split_once(char) goes through the generic char searcher.
    let (name, port) = match raw.bytes().position(|b| b == b':') {
        Some(i) => (&raw[..i], Some(&raw[i + 1..])),
        None => (raw, None),
    };
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && port.is_none_or(|p| p.bytes().all(|b| b.is_ascii_digit()) && p.parse::<u16>().is_ok())
    {
        let host = name.trim_end_matches('.');
        return (!host.is_empty()).then(|| host.to_owned());
    }
    let authority: http::uri::Authority = raw.parse().ok()?;
    // Authority also accepts userinfo ("user@host"), which a Host header must not carry.
    if authority.as_str().contains('@') {
        return None;
    }
    let host = authority.host().trim_end_matches('.');
    if host.is_empty() {
        return None;
    }
    Some(host.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse_str, ConfigSource};

    fn router(text: &str, listener: &str) -> Router {
        let config = parse_str(text, ConfigSource::Quick).unwrap();
        let parts: Vec<SiteParts> = config
            .sites
            .iter()
            .map(|s| SiteParts::new(s, None))
            .collect();
        Router::for_listener(&config, &parts, listener, &Metrics::new())
    }

    fn body_of(lookup: Lookup<'_>) -> String {
        match lookup {
            Lookup::Route(
                Route {
                    handler: Handler::Respond(r),
                    ..
                },
                _,
            ) => String::from_utf8_lossy(&r.body).into(),
            Lookup::Route(..) => "other kind".into(),
            Lookup::NoSite => "no site".into(),
            Lookup::NoRoute(_) => "no route".into(),
        }
    }

    const SITES: &str = r#"
[[listener]]
name = "http"
[[listener]]
name = "internal"
[[site]]
hosts = ["*"]
listeners = ["http"]
[[site.route]]
path = "/"
respond = { body = "default" }
[[site.route]]
path = "/api"
respond = { body = "api" }
[[site.route]]
path = "/api/v2/"
respond = { body = "v2" }
[[site]]
hosts = ["example.com", "*.example.com"]
[[site.route]]
path = "/"
respond = { body = "example" }
[[site]]
hosts = ["*.deep.example.com"]
[[site.route]]
path = "/"
respond = { body = "deep" }
"#;

    #[test]
    fn longest_prefix_wins_on_segment_boundaries() {
        let r = router(SITES, "http");
        assert_eq!(body_of(r.route("other", "/")), "default");
        assert_eq!(body_of(r.route("other", "/api")), "api");
        assert_eq!(body_of(r.route("other", "/api/x")), "api");
        assert_eq!(body_of(r.route("other", "/apiary")), "default");
        assert_eq!(body_of(r.route("other", "/api/v2/x")), "v2");
        assert_eq!(body_of(r.route("other", "/api/v2")), "api");
    }

    #[test]
    fn hosts_exact_then_longest_wildcard_then_default() {
        let r = router(SITES, "http");
        assert_eq!(body_of(r.route("example.com", "/")), "example");
        assert_eq!(body_of(r.route("www.example.com", "/")), "example");
        assert_eq!(body_of(r.route("a.deep.example.com", "/")), "deep");
        assert_eq!(body_of(r.route("notexample.com", "/")), "default");
    }

    #[test]
    fn sites_can_be_limited_to_listeners() {
        let r = router(SITES, "internal");
        assert_eq!(body_of(r.route("other", "/")), "no site");
        assert_eq!(body_of(r.route("example.com", "/")), "example");
    }

    #[test]
    fn host_normalisation() {
        assert_eq!(
            normalize_host("Example.COM:8080").as_deref(),
            Some("example.com")
        );
        assert_eq!(
            normalize_host("example.com.").as_deref(),
            Some("example.com")
        );
        assert_eq!(normalize_host("[::1]:80").as_deref(), Some("[::1]"));
        assert_eq!(normalize_host("user@example.com"), None);
        assert_eq!(normalize_host("a b"), None);
        assert_eq!(normalize_host("a.b:80").as_deref(), Some("a.b"));
        assert_eq!(normalize_host("a.b.:80").as_deref(), Some("a.b"));
        assert_eq!(normalize_host("..:80"), None);
        assert_eq!(normalize_host(""), None);
    }
}
