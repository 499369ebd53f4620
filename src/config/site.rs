//! `[[site]]` and `[[site.route]]`: hosts, listeners, routes, error pages and the site's
//! `tls`, validated with positions.

use super::error::ErrorSink;
use super::model::*;
use super::raw::*;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_spanned::Spanned;
use std::collections::HashSet;
use std::ops::Range;

/// Every host pattern as written: `(site index, pattern, span)`, for the overlap check.
pub(super) type HostSpans = Vec<(usize, HostPattern, Range<usize>)>;

/// The `[[site]]` tables; `names` are the listeners defined.
pub(super) fn sites(
    raw: &RawConfig,
    names: &HashSet<String>,
    acme: Option<&super::acme::AcmeSettings>,
    sink: &mut ErrorSink,
) -> (Vec<SiteConfig>, HostSpans) {
    let mut sites = Vec::new();
    let mut host_spans = Vec::new();
    for (site_idx, site) in raw.sites.iter().enumerate() {
        let span = site.span();
        let site = site.get_ref();
        let mut hosts = Vec::new();
        for h in site.hosts.get_ref() {
            match h.get_ref().parse::<HostPattern>() {
                Ok(p) => {
                    host_spans.push((site_idx, p.clone(), h.span()));
                    hosts.push(p);
                }
                Err(msg) => sink.push(Some(h.span()), msg, None),
            }
        }
        if site.hosts.get_ref().is_empty() {
            sink.push(
                Some(site.hosts.span()),
                "a [[site]] needs at least one host",
                Some("use hosts = [\"*\"] for the default site"),
            );
        }
        let site_listeners = site_listeners(site, raw, names, sink);
        let routes = routes(&site.routes, sink);
        if site.routes.is_empty() {
            sink.push(
                Some(span),
                "this [[site]] has no [[site.route]]",
                Some("add [[site.route]] with path = \"/\" and an action such as respond = { status = 200, body = \"hello\\n\" }"),
            );
        }
        let error_pages = error_pages(site, sink);
        let tls = site_cert(site, &hosts, acme, sink);
        sites.push(SiteConfig {
            hosts,
            listeners: site_listeners,
            routes,
            error_pages,
            tls,
            redirect_https: site.redirect_https.unwrap_or(false),
            hsts: site.hsts.as_ref().and_then(|h| super::tls::hsts(h, sink)),
        });
    }

    (sites, host_spans)
}

/// A site's `listeners`: only names a `[[listener]]` defines, and none with role "admin".
fn site_listeners(
    site: &RawSite,
    raw: &RawConfig,
    names: &HashSet<String>,
    sink: &mut ErrorSink,
) -> Option<Vec<String>> {
    site.listeners.as_ref().map(|ls| {
        ls.iter()
            .filter_map(|l| {
                let admin = raw.listeners.iter().any(|rl| {
                    rl.get_ref().name.get_ref() == l.get_ref()
                        && rl
                            .get_ref()
                            .role
                            .as_ref()
                            .is_some_and(|r| r.get_ref() == "admin")
                });
                if admin {
                    sink.push(
                        Some(l.span()),
                        format!(
                            "listener {:?} has role \"admin\" and serves no site",
                            l.get_ref()
                        ),
                        None,
                    );
                    None
                } else if names.contains(l.get_ref()) {
                    Some(l.get_ref().clone())
                } else {
                    sink.push(
                        Some(l.span()),
                        format!("no [[listener]] is named {:?}", l.get_ref()),
                        None,
                    );
                    None
                }
            })
            .collect::<Vec<_>>()
    })
}

/// A site's `error_pages`: status 400-599 → a URL path.
fn error_pages(site: &RawSite, sink: &mut ErrorSink) -> Vec<(u16, String)> {
    let mut error_pages = Vec::new();
    for (status, page) in &site.error_pages {
        match status.get_ref().parse::<u16>() {
            Ok(code) if (400..=599).contains(&code) => {}
            _ => {
                sink.push(
                    Some(status.span()),
                    format!(
                        "error_pages key {:?} is not a status between 400 and 599",
                        status.get_ref()
                    ),
                    None,
                );
                continue;
            }
        }
        if !page.get_ref().starts_with('/') {
            sink.push(
                Some(page.span()),
                "an error page is a URL path such as \"/404.html\", served by a `static` route of this site",
                None,
            );
            continue;
        }
        if let Ok(code) = status.get_ref().parse::<u16>() {
            error_pages.push((code, page.get_ref().clone()));
        }
    }
    error_pages
}

/// A site's certificate: files, or the managed certificate for its hosts.
fn site_cert(
    site: &RawSite,
    hosts: &[HostPattern],
    acme: Option<&super::acme::AcmeSettings>,
    sink: &mut ErrorSink,
) -> Option<super::tls::SiteCert> {
    use super::tls::{SiteCert, SiteTlsChoice};
    let raw = site.tls.as_ref()?;
    match super::tls::site_tls(raw, sink)? {
        SiteTlsChoice::Files(c) => Some(SiteCert::Files(c)),
        SiteTlsChoice::Acme => {
            // Without settings the reason (no state directory) is reported already.
            acme?;
            let mut names = Vec::new();
            for h in hosts {
                match h {
                    HostPattern::Exact(n)
                        if !n.starts_with('[') && n.parse::<std::net::IpAddr>().is_err() =>
                    {
                        names.push(n.clone())
                    }
                    other => {
                        sink.push(
                            Some(raw.span()),
                            format!("tls = \"acme\" cannot cover the host \"{other}\""),
                            Some("ACME certificates here are for DNS names; wildcards need DNS-01, which gatehouse does not do: list each name, or use tls = { cert, key }"),
                        );
                        return None;
                    }
                }
            }
            Some(SiteCert::Acme(names))
        }
    }
}

fn routes(raw: &[Spanned<RawRoute>], sink: &mut ErrorSink) -> Vec<RouteConfig> {
    let mut out = Vec::new();
    let mut paths = HashSet::new();
    for r in raw {
        let span = r.span();
        let r = r.get_ref();
        let path = r.path.get_ref();
        if !path.starts_with('/') || path.contains(['?', '#']) || path.contains(char::is_whitespace)
        {
            sink.push(
                Some(r.path.span()),
                format!(
                    "route path {path:?} must start with '/' and hold no query, fragment or space"
                ),
                None,
            );
        } else if !paths.insert(path.clone()) {
            sink.push(
                Some(r.path.span()),
                format!("route path {path:?} appears twice in this site"),
                None,
            );
        }
        let kinds = usize::from(r.respond.is_some())
            + usize::from(r.static_files.is_some())
            + usize::from(r.proxy.is_some());
        let action = if kinds != 1 {
            sink.push(
                Some(span),
                if kinds == 0 {
                    "this route has no action"
                } else {
                    "this route has more than one action"
                },
                Some(
                    "give it exactly one of `respond = {...}`, `static = {...}` or `proxy = {...}`",
                ),
            );
            None
        } else if let Some(resp) = &r.respond {
            respond(resp, sink).map(RouteAction::Respond)
        } else if let Some(st) = &r.static_files {
            super::static_files::StaticConfig::from_raw(st.get_ref(), sink).map(RouteAction::Static)
        } else if let Some(p) = &r.proxy {
            super::proxy::validate(p, sink).map(RouteAction::Proxy)
        } else {
            None
        };
        if let Some(action) = action {
            out.push(RouteConfig {
                path: path.clone(),
                action,
            });
        }
    }
    out
}

fn respond(raw: &Spanned<RawRespond>, sink: &mut ErrorSink) -> Option<RespondConfig> {
    let r = raw.get_ref();
    let status = match &r.status {
        None => StatusCode::OK,
        Some(s) => match u16::try_from(*s.get_ref())
            .ok()
            .filter(|c| (200..=599).contains(c))
            .and_then(|c| StatusCode::from_u16(c).ok())
        {
            Some(code) => code,
            None => {
                sink.push(Some(s.span()), "`status` must be between 200 and 599", None);
                return None;
            }
        },
    };
    let content_type = match &r.content_type {
        None => HeaderValue::from_static("text/plain; charset=utf-8"),
        Some(ct) => match HeaderValue::from_str(ct.get_ref()) {
            Ok(v) => v,
            Err(_) => {
                sink.push(
                    Some(ct.span()),
                    "`content_type` is not a valid header value",
                    None,
                );
                return None;
            }
        },
    };
    Some(RespondConfig {
        status,
        body: Bytes::from(r.body.clone()),
        content_type,
    })
}
