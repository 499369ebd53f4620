//! One view of the server's state, shown three ways from the same counters: the STATUS=
//! line (`systemctl status`), /status (JSON) and `gatehouse status`.

use crate::shared::Shared;
use serde::{Deserialize, Serialize};
use std::sync::atomic::Ordering;
use std::time::SystemTime;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Report {
    pub(crate) version: String,
    pub(crate) pid: u32,
    pub(crate) started_at: String,
    pub(crate) uptime_seconds: u64,
    pub(crate) draining: bool,
    pub(crate) config: String,
    /// Standby: why the configuration could not be loaded (every request gets 503).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) config_error: Option<String>,
    pub(crate) open_connections: usize,
    pub(crate) connections_accepted: u64,
    pub(crate) requests_total: u64,
    pub(crate) received_bytes: u64,
    pub(crate) sent_bytes: u64,
    pub(crate) reloads_ok: u64,
    pub(crate) reloads_failed: u64,
    pub(crate) last_reload: Option<LastReload>,
    /// Proxy upstreams up / configured; absent without proxy routes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) upstreams: Option<Upstreams>,
    /// TLS certificates in use that expire within 14 days.
    #[serde(default)]
    pub(crate) tls_warnings: Vec<String>,
    /// Certificates managed by ACME.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) acme: Vec<AcmeCert>,
    /// Deployable apps: live instance, in-flight per instance, last deploy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) apps: Vec<crate::apps::AppReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AcmeCert {
    pub(crate) names: Vec<String>,
    /// "valid", "pending" (placeholder served) or "renewal failing".
    pub(crate) state: String,
    /// RFC 3339; absent while the placeholder is served.
    pub(crate) expires: Option<String>,
    pub(crate) next_attempt: String,
    pub(crate) failures: u32,
    pub(crate) last_error: Option<String>,
}

fn acme_certs(snapshot: &crate::snapshot::Snapshot) -> Vec<AcmeCert> {
    snapshot
        .managed_certs
        .iter()
        .map(|m| {
            let s = m.state();
            let state = match (s.issued, s.failures) {
                (None, _) => "pending",
                (Some(_), 0) => "valid",
                (Some(_), _) => "renewal failing",
            };
            AcmeCert {
                names: m.names.clone(),
                state: state.to_owned(),
                expires: s
                    .issued
                    .map(|v| humantime::format_rfc3339_seconds(v.not_after).to_string()),
                next_attempt: humantime::format_rfc3339_seconds(s.next_attempt).to_string(),
                failures: s.failures,
                last_error: s.last_error,
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(crate) struct Upstreams {
    pub(crate) up: usize,
    pub(crate) total: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LastReload {
    pub(crate) at: String,
    pub(crate) ok: bool,
    pub(crate) error: Option<String>,
}

pub(crate) fn collect(shared: &Shared) -> Report {
    let m = &shared.metrics;
    let last = shared
        .last_reload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Report {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        pid: std::process::id(),
        started_at: humantime::format_rfc3339_seconds(m.start_time).to_string(),
        uptime_seconds: m.start_time.elapsed().map(|d| d.as_secs()).unwrap_or(0),
        draining: shared.conns.is_draining(),
        config: shared.snapshot.load().config.source.to_string(),
        config_error: match &shared.snapshot.load().config.source {
            crate::config::ConfigSource::Invalid { errors, .. } => Some(errors.clone()),
            _ => None,
        },
        open_connections: shared.conns.open(),
        connections_accepted: shared.conns.accepted(),
        requests_total: shared.requests.load(Ordering::Relaxed),
        received_bytes: m.bytes_in.get(),
        sent_bytes: m.bytes_out.get(),
        reloads_ok: m.reloads(true),
        reloads_failed: m.reloads(false),
        upstreams: crate::proxy::upstreams_up(&shared.snapshot.load().proxy_routes)
            .map(|(up, total)| Upstreams { up, total }),
        last_reload: last.map(|r| LastReload {
            at: humantime::format_rfc3339_seconds(r.at).to_string(),
            ok: r.error.is_none(),
            error: r.error,
        }),
        tls_warnings: crate::tls::warnings(&shared.snapshot.load().config, SystemTime::now()),
        acme: acme_certs(&shared.snapshot.load()),
        apps: crate::apps::registry()
            .all()
            .iter()
            .map(|a| crate::apps::AppReport::of(a))
            .collect(),
    }
}

/// The STATUS= line: short, since systemctl shows one line.
pub(crate) fn line(r: &Report) -> String {
    let mut s = match &r.config_error {
        Some(e) => format!(
            "CONFIGURATION INVALID, answering 503 until it is fixed: {}; ",
            first_line(e)
        ),
        None => String::new(),
    };
    s += &format!(
        "{} connection{} open, {} request{} served",
        r.open_connections,
        plural(r.open_connections as u64),
        r.requests_total,
        plural(r.requests_total)
    );
    if let Some(u) = r.upstreams {
        s.push_str(&format!("; upstreams {}/{} up", u.up, u.total));
    }
    match &r.last_reload {
        None => {}
        Some(LastReload { at, ok: true, .. }) => s.push_str(&format!("; reload ok at {at}")),
        Some(LastReload { at, error, .. }) => {
            s.push_str(&format!(
                "; reload FAILED at {at}, serving previous config: {}",
                first_line(error.as_deref().unwrap_or(""))
            ));
        }
    }
    for app in &r.apps {
        s.push_str(&format!("; {}", app.short()));
    }
    if !r.acme.is_empty() {
        s.push_str(&acme_summary(&r.acme));
    }
    if let Some(w) = r.tls_warnings.first() {
        s.push_str(&format!("; WARNING: {w}"));
        if r.tls_warnings.len() > 1 {
            s.push_str(&format!(" (+{} more)", r.tls_warnings.len() - 1));
        }
    }
    s
}

/// An error's first line, cut to fit a status line.
fn first_line(error: &str) -> String {
    error
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(160)
        .collect()
}

/// `gatehouse status`: a few human lines.
pub(crate) fn human(r: &Report) -> String {
    let mut s = format!(
        "gatehouse {} (pid {}), up {}, started {}{}\n",
        r.version,
        r.pid,
        humantime::format_duration(std::time::Duration::from_secs(r.uptime_seconds)),
        r.started_at,
        if r.draining { ", DRAINING" } else { "" }
    );
    s.push_str(&format!("config: {}\n", r.config));
    s.push_str(&format!(
        "connections: {} open, {} accepted\nrequests: {}\ntraffic: {} bytes in, {} bytes out\n",
        r.open_connections,
        r.connections_accepted,
        r.requests_total,
        r.received_bytes,
        r.sent_bytes
    ));
    if let Some(u) = r.upstreams {
        s.push_str(&format!("upstreams: {} of {} up\n", u.up, u.total));
    }
    s.push_str(&format!(
        "reloads: {} ok, {} failed",
        r.reloads_ok, r.reloads_failed
    ));
    if let Some(last) = &r.last_reload {
        s.push_str(&format!(
            "; last at {}: {}",
            last.at,
            if last.ok { "ok" } else { "FAILED" }
        ));
        if let Some(e) = &last.error {
            s.push_str(&format!("\n  {}", e.lines().next().unwrap_or("")));
        }
    }
    for c in &r.acme {
        s.push_str(&format!(
            "\nacme: {} {}{}",
            c.names.join(","),
            c.state,
            c.expires
                .as_ref()
                .map_or(String::new(), |e| format!(", expires {e}"))
        ));
        if let Some(e) = &c.last_error {
            s.push_str(&format!(
                "\n  last error: {}",
                e.lines().next().unwrap_or("")
            ));
        }
    }
    for app in &r.apps {
        s.push('\n');
        s.push_str(&app.human());
    }
    for w in &r.tls_warnings {
        s.push_str(&format!("\nwarning: {w}"));
    }
    s.push('\n');
    s
}

/// "; acme 2/3 valid, a.test expires 2027-02-20T10:00:00Z": the soonest expiry, since that
/// is the one to watch.
fn acme_summary(certs: &[AcmeCert]) -> String {
    let valid = certs.iter().filter(|c| c.state == "valid").count();
    let mut s = format!("; acme {valid}/{} valid", certs.len());
    if let Some(c) = certs
        .iter()
        .filter(|c| c.expires.is_some())
        .min_by_key(|c| c.expires.clone())
    {
        let name = c.names.first().map_or("-", String::as_str);
        s.push_str(&format!(
            ", {name} expires {}",
            c.expires.as_deref().unwrap_or("-")
        ));
    }
    if let Some(c) = certs.iter().find(|c| c.state != "valid") {
        let name = c.names.first().map_or("-", String::as_str);
        s.push_str(&format!(", {name} {}", c.state));
    }
    s
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
