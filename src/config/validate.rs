//! Turns the raw file structures into the typed model, reporting every problem at once.
//! Each section has its own file (`server`, `listener`, `site`, and the features' `proxy`,
//! `static_files`, `tls`, `acme`); this one runs them in order and checks what spans
//! sections. Errors are reported in the order they are found, so the order of the steps is
//! the order of `gatehouse check`'s messages.

use super::error::ErrorSink;
use super::listener::PendingTls;
use super::model::*;
use super::raw::*;
use super::site::HostSpans;
use serde_spanned::Spanned;
use std::collections::{HashMap, HashSet};

pub(crate) fn validate(
    raw: RawConfig,
    source: ConfigSource,
    sink: &mut ErrorSink,
) -> Option<Config> {
    let server = super::server::server_settings(&raw.server, sink);
    let wants_acme = |tls: &Option<Spanned<super::tls::RawTls>>| matches!(tls.as_ref().map(|t| t.get_ref()), Some(super::tls::RawTls::Auto(w)) if w == "acme");
    let needs_acme = raw.sites.iter().any(|s| wants_acme(&s.get_ref().tls))
        || raw.listeners.iter().any(|l| wants_acme(&l.get_ref().tls));
    let acme = super::acme::validate(raw.acme.as_ref(), needs_acme, sink);
    let (mut listeners, names, pending_tls) = super::listener::listeners(&raw, sink);
    let (sites, host_spans) = super::site::sites(&raw, &names, acme.as_ref(), sink);
    hosts_on_one_site(&listeners, &sites, &host_spans, sink);
    attach_tls(pending_tls, &mut listeners, &sites, sink);
    acme_sites_served(&raw, &listeners, &sites, sink);
    sink.is_empty().then_some(Config {
        source,
        server,
        listeners,
        sites,
        acme,
    })
}

/// The same host on two sites of one listener would make routing depend on file order.
fn hosts_on_one_site(
    listeners: &[ListenerConfig],
    sites: &[SiteConfig],
    host_spans: &HostSpans,
    sink: &mut ErrorSink,
) {
    let mut reported = HashSet::new();
    for listener in listeners {
        let mut seen: HashMap<&HostPattern, usize> = HashMap::new();
        for (site_idx, pattern, span) in host_spans {
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
}

/// `tls = "acme"` on a listener presents its sites' certificates: it needs one.
fn attach_tls(
    pending_tls: Vec<PendingTls>,
    listeners: &mut [ListenerConfig],
    sites: &[SiteConfig],
    sink: &mut ErrorSink,
) {
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
}

/// A site with `tls = "acme"` needs a TLS listener to present its certificate.
fn acme_sites_served(
    raw: &RawConfig,
    listeners: &[ListenerConfig],
    sites: &[SiteConfig],
    sink: &mut ErrorSink,
) {
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
}
