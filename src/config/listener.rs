//! `[[listener]]`: names, bind addresses, roles and `tls`, validated with positions.

use super::error::ErrorSink;
use super::model::*;
use super::raw::*;
use super::tls::ListenerTlsConfig;
use std::collections::HashSet;
use std::ops::Range;

/// A listener's `tls`, validated; attached to the listener once the sites are known (see
/// `validate::attach_tls`). `(listener index, settings, span of the value)`.
pub(super) type PendingTls = (usize, ListenerTlsConfig, Range<usize>);

/// The `[[listener]]` tables, the names they define, and their `tls` settings.
pub(super) fn listeners(
    raw: &RawConfig,
    sink: &mut ErrorSink,
) -> (Vec<ListenerConfig>, HashSet<String>, Vec<PendingTls>) {
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

    (listeners, names, pending_tls)
}

/// systemd's rule for FileDescriptorName=: printable ASCII, no ':' and at most 255 chars.
fn valid_fd_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 255 && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}
