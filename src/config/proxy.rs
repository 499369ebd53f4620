//! The `proxy = { ... }` route action: its file format and its validation.

use crate::config::{parse_duration, ErrorSink, Upstream};
use serde::Deserialize;
use serde_spanned::Spanned;
use std::net::IpAddr;
use std::time::Duration;

/// `proxy = { ... }` exactly as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxy {
    /// Fixed upstreams; or `app`, never both.
    pub(crate) upstreams: Option<Spanned<Vec<Spanned<String>>>>,
    /// A deployable app: requests go to its live instance (see `crate::apps`).
    pub(crate) app: Option<Spanned<String>>,
    pub(crate) app_socket: Option<Spanned<String>>,
    pub(crate) health_check_path: Option<Spanned<String>>,
    pub(crate) deploy_timeout: Option<Spanned<DurationValue>>,
    pub(crate) drain_timeout: Option<Spanned<DurationValue>>,
    pub(crate) strip_prefix: Option<bool>,
    pub(crate) balance: Option<Spanned<String>>,
    pub(crate) connect_timeout: Option<Spanned<DurationValue>>,
    pub(crate) response_header_timeout: Option<Spanned<DurationValue>>,
    pub(crate) idle_timeout: Option<Spanned<DurationValue>>,
    pub(crate) retry_connect_for: Option<Spanned<DurationValue>>,
    pub(crate) eject_for: Option<Spanned<DurationValue>>,
    pub(crate) keepalive_timeout: Option<Spanned<DurationValue>>,
    pub(crate) max_body: Option<Spanned<SizeValue>>,
    pub(crate) rewrite_host: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) trusted_proxies: Vec<Spanned<String>>,
    pub(crate) http2: Option<bool>,
    pub(crate) health: Option<Spanned<RawHealth>>,
    /// Keep client header names containing `_` (nginx: `underscores_in_headers`).
    pub(crate) underscores_in_headers: Option<bool>,
    /// `Upgrade` protocols tunnelled to the upstream; default `["websocket"]`.
    pub(crate) upgrades: Option<Vec<Spanned<String>>>,
    pub(crate) buffer_requests: Option<bool>,
    pub(crate) buffer_responses: Option<bool>,
    pub(crate) buffer_memory: Option<Spanned<SizeValue>>,
    pub(crate) max_temp_file: Option<Spanned<SizeValue>>,
    pub(crate) temp_dir: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHealth {
    pub(crate) path: Spanned<String>,
    pub(crate) interval: Option<Spanned<DurationValue>>,
    pub(crate) timeout: Option<Spanned<DurationValue>>,
}

/// A duration as a string ("2s", "250ms") or whole seconds; checked during validation so the
/// error points at the value.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum DurationValue {
    Text(String),
    Seconds(i64),
}

/// A size as a string ("10MiB", "512k") or bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum SizeValue {
    Text(String),
    Bytes(i64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Balance {
    RoundRobin,
    LeastConn,
    /// Two random upstreams, the one with fewer requests in flight wins.
    RandomTwo,
}

#[derive(Debug, Clone)]
pub(crate) struct HealthConfig {
    pub(crate) path: String,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

/// A validated `proxy` route.
#[derive(Debug, Clone)]
pub(crate) struct ProxyConfig {
    pub(crate) upstreams: Vec<Upstream>,
    pub(crate) strip_prefix: bool,
    pub(crate) balance: Balance,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_header_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) retry_connect_for: Duration,
    pub(crate) eject_for: Duration,
    /// How long an idle upstream connection stays pooled: shorter than the app's own
    /// keep-alive timeout, so gatehouse, not the app, closes it (no request racing a close).
    pub(crate) keepalive_timeout: Duration,
    /// `None` = no limit.
    pub(crate) max_body: Option<u64>,
    pub(crate) rewrite_host: Option<http::HeaderValue>,
    pub(crate) trusted_proxies: Vec<Trusted>,
    pub(crate) http2: bool,
    pub(crate) health: Option<HealthConfig>,
    pub(crate) underscores_in_headers: bool,
    /// Lower-case protocol names (`websocket`) a client may upgrade to on this route.
    pub(crate) upgrades: Vec<String>,
    pub(crate) buffering: Buffering,
    /// `app = "..."`: the upstream is the app's live instance, not `upstreams`.
    /// Boxed: most routes have none, and a route action stays small.
    pub(crate) app: Option<Box<crate::apps::AppSettings>>,
}

/// How bodies are buffered between a client and the upstream (see `proxy::buffer`).
#[derive(Debug, Clone)]
pub(crate) struct Buffering {
    /// Read a request body whole before an upstream connection is taken.
    pub(crate) requests: bool,
    /// Read a response ahead of the client, so the upstream is free once it has answered.
    pub(crate) responses: bool,
    /// Bytes of one body held in memory; beyond them it goes to a temporary file.
    pub(crate) memory: usize,
    /// Most bytes of one response held in its temporary file; 0 = memory only. At the cap,
    /// reading from the upstream waits for the client.
    pub(crate) max_temp_file: u64,
    /// Where temporary files are created (unlinked from birth).
    pub(crate) temp_dir: std::sync::Arc<std::path::Path>,
}

/// The default `max_body`: 1 GiB, like the temporary-file cap of a buffered response
/// (nginx's `proxy_max_temp_file_size`). Large enough for any upload a web app takes
/// (nginx's 1 MiB `client_max_body_size` refuses a phone photo), small enough that one
/// client cannot fill the temporary directory's disk.
pub(crate) const DEFAULT_MAX_BODY: u64 = 1 << 30;

impl Default for Buffering {
    fn default() -> Buffering {
        Buffering {
            requests: true,
            responses: true,
            // nginx holds up to 64 KiB of a response (proxy_buffers 8 8k) and 16 KiB of a
            // request body in memory; 64 KiB for both keeps the bodies most requests have
            // off the disk.
            memory: 64 * 1024,
            max_temp_file: 1 << 30,
            // Disk-backed (/tmp may be a tmpfs, i.e. memory) and writable under the shipped
            // unit's PrivateTmp=yes + ProtectSystem=strict, where it is private to gatehouse.
            temp_dir: std::path::Path::new("/var/tmp").into(),
        }
    }
}

impl ProxyConfig {
    /// The defaults, also used by quick mode's `--proxy`.
    pub(crate) fn new(upstreams: Vec<Upstream>) -> ProxyConfig {
        ProxyConfig {
            upstreams,
            strip_prefix: false,
            balance: Balance::RoundRobin,
            connect_timeout: Duration::from_secs(5),
            response_header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            // An app that binds its own socket refuses connects while it restarts: up to
            // 3.4 s (4.3 s under heavier load) for gunicorn sync and gthread and uvicorn
            // (README, "Defaults measured against real app servers").
            retry_connect_for: Duration::from_secs(5),
            eject_for: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(1),
            max_body: Some(DEFAULT_MAX_BODY),
            rewrite_host: None,
            trusted_proxies: Vec::new(),
            http2: false,
            health: None,
            underscores_in_headers: false,
            upgrades: vec!["websocket".to_owned()],
            buffering: Buffering::default(),
            app: None,
        }
    }
}

/// A `trusted_proxies` entry: an address or CIDR block, or "unix" for unix-socket clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Trusted {
    Net { addr: IpAddr, prefix: u8 },
    Unix,
}

impl std::str::FromStr for Trusted {
    type Err = String;
    fn from_str(s: &str) -> Result<Trusted, String> {
        if s == "unix" {
            return Ok(Trusted::Unix);
        }
        let bad = || format!("{s:?} is not an IP address or CIDR block such as \"10.0.0.0/8\"");
        let (ip, prefix) = match s.split_once('/') {
            Some((ip, p)) => (ip, Some(p.parse::<u8>().map_err(|_| bad())?)),
            None => (s, None),
        };
        let addr: IpAddr = ip.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        if prefix > max {
            return Err(bad());
        }
        Ok(Trusted::Net { addr, prefix })
    }
}

impl Trusted {
    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let Trusted::Net { addr, prefix } = self else {
            return false;
        };
        // "::ffff:10.0.0.1" from a dual-stack socket is the IPv4 client 10.0.0.1.
        match (addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(*prefix)).unwrap_or(0);
                u32::from(*net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(*prefix)).unwrap_or(0);
                u128::from(*net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

fn duration(
    v: &Option<Spanned<DurationValue>>,
    key: &str,
    default: Duration,
    allow_zero: bool,
    sink: &mut Sink,
) -> Duration {
    let Some(v) = v else { return default };
    let parsed = match v.get_ref() {
        DurationValue::Text(t) => parse_duration(t).map_err(|e| e.to_string()),
        DurationValue::Seconds(n) => u64::try_from(*n)
            .map(Duration::from_secs)
            .map_err(|_| "a duration cannot be negative".to_owned()),
    };
    match parsed {
        Ok(d) if d.is_zero() && !allow_zero => {
            sink.push(
                Some(v.span()),
                format!("`{key}` must be greater than 0"),
                None,
            );
            default
        }
        Ok(d) => d,
        Err(e) => {
            sink.push(
                Some(v.span()),
                format!("`{key}`: {e}"),
                Some("durations are strings such as \"250ms\", \"30s\" or \"5m\""),
            );
            default
        }
    }
}

/// A size key's value, or `None` (reported) when it is not a size.
fn size(v: &Spanned<SizeValue>, key: &str, sink: &mut Sink) -> Option<u64> {
    let parsed = match v.get_ref() {
        SizeValue::Text(t) => parse_size(t),
        SizeValue::Bytes(n) => u64::try_from(*n).map_err(|_| "a size cannot be negative".into()),
    };
    match parsed {
        Ok(n) => Some(n),
        Err(e) => {
            sink.push(Some(v.span()), format!("`{key}`: {e}"), None);
            None
        }
    }
}

/// "10MiB", "512k", "1G", "100" (bytes). k/M/G are powers of 1024 like nginx's.
pub(crate) fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size such as \"10MiB\" or \"512k\""))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("{s:?}: unknown size unit (use k, M or G)")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Validates a `proxy` table; every problem goes to `sink`.
pub(crate) fn validate(raw: &Spanned<RawProxy>, sink: &mut ErrorSink) -> Option<ProxyConfig> {
    let sink = &mut Sink {
        inner: sink,
        errors: 0,
    };
    let r = raw.get_ref();
    let mut upstreams = Vec::new();
    if let Some(list) = &r.upstreams {
        for u in list.get_ref() {
            match u.get_ref().parse::<Upstream>() {
                Ok(up) => upstreams.push(up),
                Err(e) => sink.push(Some(u.span()), e, None),
            }
        }
        if list.get_ref().is_empty() {
            sink.push(
                Some(list.span()),
                "`upstreams` needs at least one address",
                Some(
                    "e.g. upstreams = [\"unix:/run/app/gunicorn.sock\", \"http://127.0.0.1:8001\"]",
                ),
            );
        }
    }
    let app = app(raw, sink);
    let mut c = ProxyConfig::new(upstreams);
    c.app = app.map(Box::new);
    c.strip_prefix = r.strip_prefix.unwrap_or(false);
    c.http2 = r.http2.unwrap_or(false);
    if let Some(b) = &r.balance {
        c.balance = match b.get_ref().as_str() {
            "round_robin" => Balance::RoundRobin,
            "least_conn" => Balance::LeastConn,
            "random_two" => Balance::RandomTwo,
            other => {
                sink.push(
                    Some(b.span()),
                    format!("unknown balance {other:?}"),
                    Some("use \"round_robin\", \"least_conn\" or \"random_two\""),
                );
                Balance::RoundRobin
            }
        };
    }
    c.connect_timeout = duration(
        &r.connect_timeout,
        "connect_timeout",
        c.connect_timeout,
        false,
        sink,
    );
    c.response_header_timeout = duration(
        &r.response_header_timeout,
        "response_header_timeout",
        c.response_header_timeout,
        false,
        sink,
    );
    c.idle_timeout = duration(&r.idle_timeout, "idle_timeout", c.idle_timeout, false, sink);
    c.retry_connect_for = duration(
        &r.retry_connect_for,
        "retry_connect_for",
        c.retry_connect_for,
        true,
        sink,
    );
    c.eject_for = duration(&r.eject_for, "eject_for", c.eject_for, true, sink);
    c.keepalive_timeout = duration(
        &r.keepalive_timeout,
        "keepalive_timeout",
        c.keepalive_timeout,
        false,
        sink,
    );
    if let Some(m) = &r.max_body {
        // 0 = no limit, like nginx's client_max_body_size 0.
        if let Some(n) = size(m, "max_body", sink) {
            c.max_body = (n > 0).then_some(n);
        }
    }
    buffering(r, &mut c.buffering, sink);
    if let Some(h) = &r.rewrite_host {
        match http::HeaderValue::from_str(h.get_ref()) {
            Ok(v) if !h.get_ref().is_empty() => c.rewrite_host = Some(v),
            _ => sink.push(
                Some(h.span()),
                "`rewrite_host` is not a valid Host value",
                None,
            ),
        }
    }
    for t in &r.trusted_proxies {
        match t.get_ref().parse::<Trusted>() {
            Ok(v) => c.trusted_proxies.push(v),
            Err(e) => sink.push(
                Some(t.span()),
                e,
                Some("list addresses such as \"127.0.0.1\", \"10.0.0.0/8\", \"::1\" or \"unix\""),
            ),
        }
    }
    c.underscores_in_headers = r.underscores_in_headers.unwrap_or(false);
    if let Some(list) = &r.upgrades {
        c.upgrades.clear();
        for t in list {
            let token = t.get_ref();
            let valid = !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~/".contains(&b));
            if valid {
                c.upgrades.push(token.to_ascii_lowercase());
            } else {
                sink.push(
                    Some(t.span()),
                    format!("{token:?} is not an Upgrade protocol name"),
                    Some("e.g. upgrades = [\"websocket\"]"),
                );
            }
        }
    }
    if let Some(h) = &r.health {
        let hr = h.get_ref();
        let path = hr.path.get_ref();
        if !path.starts_with('/') || path.contains(char::is_whitespace) {
            sink.push(
                Some(hr.path.span()),
                "health `path` must start with '/' and hold no space",
                None,
            );
        }
        c.health = Some(HealthConfig {
            path: path.clone(),
            interval: duration(
                &hr.interval,
                "interval",
                Duration::from_secs(5),
                false,
                sink,
            ),
            timeout: duration(&hr.timeout, "timeout", Duration::from_secs(2), false, sink),
        });
    }
    (sink.errors == 0).then_some(c)
}

/// The `app` keys: exactly one of `upstreams` and `app`; the deploy keys only with `app`.
fn app(raw: &Spanned<RawProxy>, sink: &mut Sink) -> Option<crate::apps::AppSettings> {
    let r = raw.get_ref();
    let Some(name) = &r.app else {
        if r.upstreams.is_none() {
            sink.push(
                Some(raw.span()),
                "a proxy route needs `upstreams` or `app`",
                Some("e.g. upstreams = [\"unix:/run/app/gunicorn.sock\"], or app = \"shop\" for an app deployed with `gatehouse deploy`"),
            );
        }
        let stray = [
            r.app_socket.as_ref().map(Spanned::span),
            r.health_check_path.as_ref().map(Spanned::span),
            r.deploy_timeout.as_ref().map(Spanned::span),
            r.drain_timeout.as_ref().map(Spanned::span),
        ];
        for span in stray.into_iter().flatten() {
            sink.push(
                Some(span),
                "this key belongs to `app` routes",
                Some("add app = \"NAME\", or remove the key"),
            );
        }
        return None;
    };
    if let Some(u) = &r.upstreams {
        sink.push(
            Some(u.span()),
            "a proxy route has `upstreams` or `app`, not both",
            Some("an app's upstream is its live instance's socket (`app_socket`)"),
        );
    }
    if let Some(h) = &r.health {
        sink.push(
            Some(h.span()),
            "`health` checks fixed upstreams; an app's instance is checked by `gatehouse deploy` (`health_check_path`)",
            None,
        );
    }
    if !crate::apps::valid_name(name.get_ref()) {
        sink.push(
            Some(name.span()),
            format!("{:?} is not an app name", name.get_ref()),
            Some("letters, digits, _ - . : (it names the units APP@INSTANCE.socket/.service)"),
        );
    }
    let mut a = crate::apps::AppSettings::new(name.get_ref());
    if let Some(s) = &r.app_socket {
        match crate::apps::check_socket_pattern(s.get_ref()) {
            Ok(()) => a.socket = s.get_ref().clone(),
            Err(e) => sink.push(
                Some(s.span()),
                e,
                Some("e.g. app_socket = \"/run/%p/%i.sock\" (the default)"),
            ),
        }
    }
    if let Some(p) = &r.health_check_path {
        let path = p.get_ref();
        if path.starts_with('/') && !path.contains(|c: char| c.is_whitespace() || c.is_control()) {
            a.health_check_path = path.clone();
        } else {
            sink.push(
                Some(p.span()),
                "`health_check_path` must start with '/' and hold no space",
                None,
            );
        }
    }
    a.deploy_timeout = duration(
        &r.deploy_timeout,
        "deploy_timeout",
        a.deploy_timeout,
        false,
        sink,
    );
    a.drain_timeout = duration(
        &r.drain_timeout,
        "drain_timeout",
        a.drain_timeout,
        true,
        sink,
    );
    Some(a)
}

fn buffering(r: &RawProxy, b: &mut Buffering, sink: &mut Sink) {
    b.requests = r.buffer_requests.unwrap_or(b.requests);
    b.responses = r.buffer_responses.unwrap_or(b.responses);
    if let Some(m) = &r.buffer_memory {
        match size(m, "buffer_memory", sink).map(usize::try_from) {
            Some(Ok(n)) if n > 0 => b.memory = n,
            Some(_) => sink.push(
                Some(m.span()),
                "`buffer_memory` must be greater than 0",
                None,
            ),
            None => {}
        }
    }
    if let Some(m) = &r.max_temp_file {
        b.max_temp_file = size(m, "max_temp_file", sink).unwrap_or(b.max_temp_file);
    }
    if let Some(d) = &r.temp_dir {
        let dir = std::path::Path::new(d.get_ref());
        if !dir.is_absolute() {
            sink.push(Some(d.span()), "`temp_dir` must be an absolute path", None);
        } else if !dir.is_dir() {
            sink.push(
                Some(d.span()),
                format!("`temp_dir` {} is not a directory", dir.display()),
                Some("create it (writable by gatehouse), or fix the path"),
            );
        }
        b.temp_dir = dir.into();
    }
}

/// Counts what this validator reports, so it can tell whether *it* found a problem.
struct Sink<'s, 'a> {
    inner: &'s mut ErrorSink<'a>,
    errors: usize,
}

impl Sink<'_, '_> {
    fn push(
        &mut self,
        span: Option<std::ops::Range<usize>>,
        msg: impl Into<String>,
        hint: Option<&str>,
    ) {
        self.errors += 1;
        self.inner.push(span, msg, hint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_valid() {
        let text = r#"
[[listener]]
name = "http"
[[site]]
hosts = ["app1.example.com"]
[[site.route]]
path = "/api/"
proxy = { upstreams = ["unix:/run/app1/gunicorn.sock", "http://127.0.0.1:8001"], strip_prefix = false, balance = "least_conn", connect_timeout = "2s", response_header_timeout = "30s", idle_timeout = "60s", max_body = "10MiB", retry_connect_for = "5s", health = { path = "/healthz", interval = "5s" } }
"#;
        let c = crate::config::parse_str(text, crate::config::ConfigSource::Quick).unwrap();
        let crate::config::RouteAction::Proxy(p) = &c.sites[0].routes[0].action else {
            panic!("not a proxy route");
        };
        assert_eq!(p.upstreams.len(), 2);
        assert_eq!(p.balance, Balance::LeastConn);
        assert_eq!(p.connect_timeout, Duration::from_secs(2));
        assert_eq!(p.max_body, Some(10 << 20));
        assert_eq!(p.retry_connect_for, Duration::from_secs(5));
        assert_eq!(
            p.health.as_ref().map(|h| h.timeout),
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MiB"), Ok(10 << 20));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("1T").is_err());
    }

    #[test]
    fn trusted_nets() {
        let t: Trusted = "10.0.0.0/8".parse().unwrap();
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        let one: Trusted = "::1".parse().unwrap();
        assert!(one.contains("::1".parse().unwrap()));
        assert!(!one.contains("::2".parse().unwrap()));
        let all: Trusted = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        assert!("10.0.0.0/33".parse::<Trusted>().is_err());
        assert!("example.com".parse::<Trusted>().is_err());
    }
}
