//! Turns the raw file structures into the typed model, reporting every problem at once.

use super::error::ErrorSink;
use super::model::*;
use super::raw::*;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use serde_spanned::Spanned;
use std::collections::{HashMap, HashSet};
use std::time::Duration;

pub fn validate(raw: RawConfig, source: ConfigSource, sink: &mut ErrorSink) -> Option<Config> {
    let server = server_settings(&raw.server, sink);
    let wants_acme = |tls: &Option<Spanned<super::tls::RawTls>>| matches!(tls.as_ref().map(|t| t.get_ref()), Some(super::tls::RawTls::Auto(w)) if w == "acme");
    let needs_acme = raw.sites.iter().any(|s| wants_acme(&s.get_ref().tls))
        || raw.listeners.iter().any(|l| wants_acme(&l.get_ref().tls));
    let acme = super::acme::validate(raw.acme.as_ref(), needs_acme, sink);

    let mut listeners = Vec::new();
    let mut names = HashSet::new();
    let mut pending_tls = Vec::new();
    for l in &raw.listeners {
        let l = l.get_ref();
        let name = l.name.get_ref();
        if !valid_fd_name(name) {
            sink.push(
                Some(l.name.span()),
                format!("invalid listener name {name:?}"),
                Some("a name is what FileDescriptorName= sets: 1-255 printable ASCII characters, no ':' or spaces"),
            );
        } else if !names.insert(name.clone()) {
            sink.push(
                Some(l.name.span()),
                format!("listener name {name:?} is used twice"),
                Some("several sockets with one name belong in one [[listener]] with several `bind` entries"),
            );
        }
        let mut bind = Vec::new();
        for b in &l.bind {
            match b.get_ref().parse::<BindAddr>() {
                Ok(addr) => bind.push(addr),
                Err(msg) => sink.push(Some(b.span()), msg, None),
            }
        }
        let role = match l.role.as_ref().map(|r| (r.get_ref().as_str(), r.span())) {
            None | Some(("public", _)) => ListenerRole::Public,
            Some(("admin", _)) => ListenerRole::Admin,
            Some((other, span)) => {
                sink.push(
                    Some(span),
                    format!("unknown listener role {other:?}"),
                    Some("use \"public\" (the default) or \"admin\""),
                );
                ListenerRole::Public
            }
        };
        let redirect_https = l.redirect_https.as_ref().is_some_and(|r| *r.get_ref());
        if let Some(tls) = &l.tls {
            if let (Some(r), true) = (&l.redirect_https, redirect_https) {
                sink.push(
                    Some(r.span()),
                    "`redirect_https` on a TLS listener would redirect https to itself",
                    Some("put redirect_https = true on the plain listener (port 80)"),
                );
            }
            if let Some(p) = super::tls::listener_tls(tls, sink) {
                pending_tls.push((listeners.len(), p, tls.span()));
            }
        }
        listeners.push(ListenerConfig {
            name: name.clone(),
            bind,
            role,
            tls: None,
            redirect_https,
        });
    }
    if raw.listeners.is_empty() {
        sink.push(
            None,
            "no [[listener]] is configured",
            Some("add [[listener]] with name = \"http\" and bind = [\"127.0.0.1:8080\"]"),
        );
    }

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
        let site_listeners = site.listeners.as_ref().map(|ls| {
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
        });
        let routes = routes(&site.routes, sink);
        if site.routes.is_empty() {
            sink.push(
                Some(span),
                "this [[site]] has no [[site.route]]",
                Some("add [[site.route]] with path = \"/\" and an action such as respond = { status = 200, body = \"hello\\n\" }"),
            );
        }
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
        let tls = site_cert(site, &hosts, acme.as_ref(), sink);
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

    // The same host on two sites of one listener would make routing depend on file order.
    let mut reported = HashSet::new();
    for listener in &listeners {
        let mut seen: HashMap<&HostPattern, usize> = HashMap::new();
        for (site_idx, pattern, span) in &host_spans {
            let on_listener = sites[*site_idx]
                .listeners
                .as_ref()
                .is_none_or(|ls: &Vec<String>| ls.contains(&listener.name));
            if !on_listener {
                continue;
            }
            if let Some(first) = seen.insert(pattern, *site_idx) {
                if first != *site_idx && reported.insert(span.start) {
                    sink.push(
                        Some(span.clone()),
                        format!(
                            "host {pattern:?} belongs to more than one [[site]] on listener {:?}",
                            listener.name
                        ),
                        Some("give one of the sites `listeners = [...]` or merge them"),
                    );
                }
            }
        }
    }

    // `tls = "acme"` on a listener presents its sites' certificates: it needs one.
    for (idx, pending, span) in pending_tls {
        let listener = &mut listeners[idx];
        let has_acme_site = sites.iter().any(|s| {
            matches!(s.tls, Some(super::tls::SiteCert::Acme(_)))
                && s.listeners
                    .as_ref()
                    .is_none_or(|ls| ls.contains(&listener.name))
        });
        if pending.default.is_none() && !has_acme_site {
            sink.push(
                Some(span),
                format!(
                    "listener {:?} has tls = \"acme\" but none of its sites has",
                    listener.name
                ),
                None,
            );
        } else {
            listener.tls = Some(pending);
        }
    }

    for (site, raw_site) in sites.iter().zip(&raw.sites) {
        let acme_site = matches!(site.tls, Some(super::tls::SiteCert::Acme(_)));
        let on_tls = listeners.iter().any(|l| {
            l.tls.is_some()
                && site
                    .listeners
                    .as_ref()
                    .is_none_or(|ls| ls.contains(&l.name))
        });
        if acme_site && !on_tls {
            let span = raw_site.get_ref().tls.as_ref().map(|t| t.span());
            sink.push(
                span,
                "tls = \"acme\" on a site that no TLS listener serves",
                Some("add [[listener]] name = \"https\" with tls = \"acme\" (port 443)"),
            );
        }
    }

    sink.is_empty().then_some(Config {
        source,
        server,
        listeners,
        sites,
        acme,
    })
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

fn server_settings(raw: &RawServer, sink: &mut ErrorSink) -> ServerSettings {
    let mut s = ServerSettings::default();
    let positive = |d: &Option<Spanned<super::units::HumanDuration>>,
                    key: &str,
                    sink: &mut ErrorSink|
     -> Option<Duration> {
        let d = d.as_ref()?;
        if d.get_ref().0.is_zero() {
            sink.push(
                Some(d.span()),
                format!("`{key}` must be greater than 0"),
                None,
            );
            return None;
        }
        Some(d.get_ref().0)
    };
    if let Some(d) = &raw.shutdown_timeout {
        s.shutdown_timeout = d.get_ref().0;
    }
    if let Some(d) = &raw.idle_exit_after {
        s.idle_exit_after = Some(d.get_ref().0).filter(|d| !d.is_zero());
    }
    if let Some(d) = positive(&raw.header_read_timeout, "header_read_timeout", sink) {
        s.header_read_timeout = d;
    }
    if let Some(d) = positive(&raw.status_interval, "status_interval", sink) {
        s.status_interval = d;
    }
    if let Some(d) = positive(&raw.send_timeout, "send_timeout", sink) {
        s.send_timeout = d;
    }
    if let Some(n) = &raw.http2_max_concurrent_streams {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (1..=1000).contains(&v) => s.http2_max_concurrent_streams = v,
            _ => sink.push(
                Some(n.span()),
                "`http2_max_concurrent_streams` must be between 1 and 1000",
                None,
            ),
        }
    }
    if let Some(n) = &raw.admin_max_connections {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if (1..=10_000).contains(&v) => s.admin_max_connections = v,
            _ => sink.push(
                Some(n.span()),
                "`admin_max_connections` must be between 1 and 10000",
                None,
            ),
        }
    }
    if let Some(n) = &raw.max_connections {
        match usize::try_from(*n.get_ref()) {
            // tokio's semaphore holds at most usize::MAX >> 3 permits.
            Ok(v) if (1..=1_000_000_000).contains(&v) => s.max_connections = v,
            _ => sink.push(
                Some(n.span()),
                "`max_connections` must be between 1 and 1000000000",
                None,
            ),
        }
    }
    if let Some(n) = &raw.workers {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if v <= 1024 => s.workers = v,
            _ => sink.push(
                Some(n.span()),
                "`workers` must be between 0 (one per CPU) and 1024",
                None,
            ),
        }
    }
    if let Some(mode) = &raw.access_log {
        match mode.get_ref().as_str() {
            "all" => s.access_log = AccessLog::All,
            "errors" => s.access_log = AccessLog::Errors,
            "off" => s.access_log = AccessLog::Off,
            other => sink.push(
                Some(mode.span()),
                format!("`access_log` must be \"all\", \"errors\" or \"off\", not {other:?}"),
                None,
            ),
        }
    }
    if let Some(n) = &raw.access_log_sample {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (1..=1_000_000).contains(&v) => s.access_log_sample = v,
            _ => sink.push(
                Some(n.span()),
                "`access_log_sample` must be between 1 (every request) and 1000000",
                None,
            ),
        }
    }
    if let Some(file) = &raw.access_log_file {
        let path = std::path::Path::new(file.get_ref());
        if !path.is_absolute() {
            sink.push(
                Some(file.span()),
                "`access_log_file` must be an absolute path",
                None,
            );
        } else if !path.parent().is_some_and(|dir| dir.is_dir()) {
            sink.push(
                Some(file.span()),
                format!(
                    "`access_log_file`: no directory {:?}",
                    path.parent().unwrap_or(path)
                ),
                Some("the shipped unit provides /var/log/gatehouse (LogsDirectory=gatehouse)"),
            );
        } else {
            s.access_log_file = Some(path.to_owned());
        }
    }
    if let Some(n) = &raw.max_header_size {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if (8192..=1 << 20).contains(&v) => s.max_header_size = v,
            _ => sink.push(
                Some(n.span()),
                "`max_header_size` must be between 8192 and 1048576 bytes",
                None,
            ),
        }
    }
    s
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

/// systemd's rule for FileDescriptorName=: printable ASCII, no ':' and at most 255 chars.
fn valid_fd_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}
