//! The validated configuration that the server runs on. Everything here is already checked:
//! code that consumes it never needs to handle a malformed value.

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConfigSource {
    File(PathBuf),
    /// No file: the embedded welcome page.
    Builtin,
    /// No file: built from `serve --listen/--root/--proxy`.
    Quick,
    /// The configuration from `origin` could not be loaded: standby, every socket systemd
    /// passed answers 503 until a reload loads it (see `lifecycle::standby`).
    Invalid {
        origin: String,
        errors: String,
    },
}

impl fmt::Display for ConfigSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigSource::File(p) => write!(f, "{}", p.display()),
            ConfigSource::Builtin => f.write_str("built-in default"),
            ConfigSource::Quick => f.write_str("command line"),
            ConfigSource::Invalid { origin, .. } => write!(f, "{origin} (invalid)"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) source: ConfigSource,
    pub(crate) server: ServerSettings,
    pub(crate) listeners: Vec<ListenerConfig>,
    pub(crate) sites: Vec<SiteConfig>,
    /// `[acme]`, validated; `None` when no site needs it (and no state directory is known).
    pub(crate) acme: Option<super::acme::AcmeSettings>,
}

impl Config {
    /// Every certificate file a TLS listener may present (its own first, then its sites'),
    /// each once: for expiry warnings. ACME certificates report through their manager.
    pub(crate) fn listener_certs(
        &self,
        name: &str,
    ) -> Vec<std::sync::Arc<crate::certs::LoadedCert>> {
        let own = self.listener(name).and_then(|l| l.tls.as_ref());
        let mut out: Vec<std::sync::Arc<crate::certs::LoadedCert>> =
            own.and_then(|t| t.default.clone()).into_iter().collect();
        let on_listener = self.sites.iter().filter(|s| {
            s.listeners
                .as_ref()
                .is_none_or(|ls| ls.iter().any(|l| l == name))
        });
        for site in on_listener {
            if let Some(super::tls::SiteCert::Files(c)) = &site.tls {
                if !out.iter().any(|have| std::sync::Arc::ptr_eq(have, c)) {
                    out.push(c.clone());
                }
            }
        }
        out
    }

    pub(crate) fn listener(&self, name: &str) -> Option<&ListenerConfig> {
        self.listeners.iter().find(|l| l.name == name)
    }

    pub(crate) fn is_admin_listener(&self, name: &str) -> bool {
        self.listener(name)
            .is_some_and(|l| l.role == ListenerRole::Admin)
    }

    /// In quick mode every socket systemd passes is a plain HTTP listener, whatever its name.
    pub(crate) fn claims_every_passed_socket(&self) -> bool {
        self.source == ConfigSource::Quick
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ServerSettings {
    pub(crate) shutdown_timeout: Duration,
    /// `None` = never exit for idleness.
    pub(crate) idle_exit_after: Option<Duration>,
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) status_interval: Duration,
    pub(crate) max_header_size: usize,
    /// Runtime threads; 0 = one per CPU this process may use. Read at start only.
    pub(crate) workers: usize,
    /// Longest a client may take nothing of a response (nginx's `send_timeout`).
    pub(crate) send_timeout: Duration,
    /// Streams an HTTP/2 client may have open at once on one connection.
    pub(crate) http2_max_concurrent_streams: u32,
    /// Connections at once on `role = "admin"` listeners, apart from `max_connections`.
    pub(crate) admin_max_connections: usize,
    /// Which requests get an access-log entry.
    pub(crate) access_log: AccessLog,
    /// One entry for every this many requests answered below 400 (1 = all of them).
    pub(crate) access_log_sample: u32,
    /// Access lines to this file (buffered, appended) instead of the journal or stderr;
    /// reopened on every reload, for logrotate.
    pub(crate) access_log_file: Option<std::path::PathBuf>,
}

/// `server.access_log`: which requests get an entry in the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum AccessLog {
    #[default]
    All,
    /// Status 400 and above only.
    Errors,
    Off,
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            shutdown_timeout: Duration::from_secs(30),
            idle_exit_after: None,
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            status_interval: Duration::from_secs(5),
            max_header_size: 16 * 1024,
            workers: 0,
            send_timeout: Duration::from_secs(60),
            http2_max_concurrent_streams: 128,
            admin_max_connections: 16,
            access_log: AccessLog::All,
            access_log_sample: 1,
            access_log_file: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerConfig {
    pub(crate) name: String,
    pub(crate) bind: Vec<BindAddr>,
    pub(crate) role: ListenerRole,
    /// Certificates when the listener speaks TLS.
    pub(crate) tls: Option<super::tls::ListenerTlsConfig>,
    /// A plain listener that redirects every request to https.
    pub(crate) redirect_https: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum ListenerRole {
    /// Serves the sites.
    #[default]
    Public,
    /// Serves only the admin endpoints; never a site.
    Admin,
}

/// Where a listener binds when systemd passed no socket for it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum BindAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for BindAddr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if !path.starts_with('/') {
                return Err(format!("unix socket path must be absolute: {s:?}"));
            }
            return Ok(BindAddr::Unix(PathBuf::from(path)));
        }
        s.parse::<SocketAddr>().map(BindAddr::Tcp).map_err(|_| {
            format!("{s:?} is neither IP:PORT (\"127.0.0.1:8080\", \"[::]:80\") nor \"unix:/absolute/path\"")
        })
    }
}

impl fmt::Display for BindAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BindAddr::Tcp(a) => write!(f, "{a}"),
            BindAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct SiteConfig {
    pub(crate) hosts: Vec<HostPattern>,
    /// Listener names this site answers on; `None` = all.
    pub(crate) listeners: Option<Vec<String>>,
    pub(crate) routes: Vec<RouteConfig>,
    /// Status → URL path of the page shown instead of gatehouse's own error text.
    pub(crate) error_pages: Vec<(u16, String)>,
    /// This site's own certificate, picked by SNI on TLS listeners.
    pub(crate) tls: Option<super::tls::SiteCert>,
    pub(crate) redirect_https: bool,
    pub(crate) hsts: Option<HeaderValue>,
}

/// A `hosts` entry: `*`, `*.example.com` or an exact name; stored lower-case.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum HostPattern {
    Any,
    /// `*.example.com` stored as `.example.com`.
    Suffix(String),
    Exact(String),
}

impl fmt::Display for HostPattern {
    /// As written in the configuration.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Exact(h) => f.write_str(h),
            HostPattern::Suffix(s) => write!(f, "*{s}"),
            HostPattern::Any => f.write_str("*"),
        }
    }
}

impl FromStr for HostPattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let lower = s.trim_end_matches('.').to_ascii_lowercase();
        if lower == "*" {
            return Ok(HostPattern::Any);
        }
        let (suffix, name) = match lower.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, lower.as_str()),
        };
        let valid_label = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        let is_ip = name.parse::<std::net::IpAddr>().is_ok()
            || name
                .strip_prefix('[')
                .and_then(|n| n.strip_suffix(']'))
                .is_some_and(|n| n.parse::<std::net::Ipv6Addr>().is_ok());
        if name.is_empty() || !(is_ip || name.split('.').all(valid_label)) {
            return Err(format!(
                "{s:?} is not a host name: use \"example.com\", \"*.example.com\" or \"*\" (no port, no scheme)"
            ));
        }
        Ok(if suffix {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_owned())
        })
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RouteConfig {
    /// Path prefix; always starts with '/'.
    pub(crate) path: String,
    pub(crate) action: RouteAction,
}

#[derive(Debug, Clone)]
pub(crate) enum RouteAction {
    Respond(RespondConfig),
    Static(super::static_files::StaticConfig),
    Proxy(super::proxy::ProxyConfig),
}

#[derive(Debug, Clone)]
pub(crate) struct RespondConfig {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    pub(crate) content_type: HeaderValue,
}

/// An upstream address as written in `--proxy` or a `proxy` route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Upstream {
    Http { authority: String },
    Unix(PathBuf),
}

impl FromStr for Upstream {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.starts_with('/') {
                return Ok(Upstream::Unix(PathBuf::from(path)));
            }
            return Err(format!("unix upstream path must be absolute: {s:?}"));
        }
        // Messages quote the address with any credentials masked: they end up in terminals,
        // the journal and CI logs.
        let shown = redact_userinfo(s);
        let uri: http::Uri = s
            .parse()
            .map_err(|e| format!("{shown:?} is not an upstream URL: {e}"))?;
        match (uri.scheme_str(), uri.authority()) {
            (Some("http"), Some(auth)) if auth.as_str().contains('@') => Err(format!(
                "{shown:?}: credentials in an upstream URL are not supported (gatehouse would never send them, and would print them in metrics and logs)"
            )),
            (Some("http"), Some(auth)) if uri.path() == "/" || uri.path().is_empty() => {
                Ok(Upstream::Http {
                    authority: auth.to_string(),
                })
            }
            _ => Err(format!(
                "{shown:?}: an upstream is \"http://HOST:PORT\" (no path) or \"unix:/absolute/path\""
            )),
        }
    }
}

/// `scheme://user:secret@host…` → `scheme://***@host…`: whatever precedes the last '@' of
/// the authority is masked.
fn redact_userinfo(s: &str) -> std::borrow::Cow<'_, str> {
    let start = s.find("://").map_or(0, |i| i + 3);
    let end = s[start..]
        .find(['/', '?', '#'])
        .map_or(s.len(), |i| start + i);
    match s[start..end].rfind('@') {
        Some(at) => format!("{}***{}", &s[..start], &s[start + at..]).into(),
        None => s.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_patterns() {
        assert_eq!("*".parse(), Ok(HostPattern::Any));
        assert_eq!(
            "*.Example.com".parse(),
            Ok(HostPattern::Suffix(".example.com".into()))
        );
        assert_eq!(
            "www.example.com.".parse(),
            Ok(HostPattern::Exact("www.example.com".into()))
        );
        assert_eq!(
            "127.0.0.1".parse(),
            Ok(HostPattern::Exact("127.0.0.1".into()))
        );
        assert!("example.com:80".parse::<HostPattern>().is_err());
        assert!("http://x".parse::<HostPattern>().is_err());
        assert!("a..b".parse::<HostPattern>().is_err());
    }

    #[test]
    fn bind_addresses() {
        assert_eq!(
            "unix:/run/x.sock".parse(),
            Ok(BindAddr::Unix("/run/x.sock".into()))
        );
        assert!("unix:relative".parse::<BindAddr>().is_err());
        assert!("[::1]:80".parse::<BindAddr>().is_ok());
        assert!("localhost:80".parse::<BindAddr>().is_err());
    }

    #[test]
    fn upstreams() {
        assert_eq!(
            "http://127.0.0.1:8001".parse(),
            Ok(Upstream::Http {
                authority: "127.0.0.1:8001".into()
            })
        );
        assert_eq!(
            "unix:/run/app.sock".parse(),
            Ok(Upstream::Unix("/run/app.sock".into()))
        );
        assert!("ftp://x".parse::<Upstream>().is_err());
        assert!("http://x/path".parse::<Upstream>().is_err());
        for with_credentials in [
            "http://user:s3cretpass@127.0.0.1:18001",
            "http://user@127.0.0.1:18001",
            "http://user:s3cretpass@127.0.0.1:18001/path",
        ] {
            let err = with_credentials.parse::<Upstream>().unwrap_err();
            assert!(
                err.contains("credentials") || err.contains("no path"),
                "{err}"
            );
            assert!(
                !err.contains("s3cretpass") && !err.contains("user"),
                "{err}"
            );
        }
    }
}
