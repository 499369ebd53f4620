//! Configurations that do not come from a file: the embedded welcome page and quick mode.

use super::error::{ConfigError, ConfigErrors};
use super::model::*;
use super::static_files::StaticConfig;
use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use std::path::PathBuf;

const WELCOME_PAGE: &str = include_str!("../../assets/welcome.html");

/// Served by `gatehouse serve` when no config file exists at the default path.
pub(crate) fn builtin_config() -> Config {
    Config {
        source: ConfigSource::Builtin,
        server: ServerSettings::default(),
        listeners: vec![ListenerConfig {
            name: "http".into(),
            bind: vec![BindAddr::Tcp(([127, 0, 0, 1], 8080).into())],
            role: ListenerRole::Public,
            tls: None,
            redirect_https: false,
        }],
        sites: vec![SiteConfig {
            hosts: vec![HostPattern::Any],
            listeners: None,
            error_pages: Vec::new(),
            tls: None,
            redirect_https: false,
            hsts: None,
            routes: vec![RouteConfig {
                path: "/".into(),
                action: RouteAction::Respond(RespondConfig {
                    status: StatusCode::OK,
                    body: Bytes::from_static(WELCOME_PAGE.as_bytes()),
                    content_type: HeaderValue::from_static("text/html; charset=utf-8"),
                }),
            }],
        }],
        acme: None,
    }
}

const STANDBY_BODY: &str =
    "503 Service Unavailable: this server's configuration is invalid; its administrator can see why in the server's log.\n";

/// Standby while the configuration cannot be loaded: one plain listener per socket name
/// systemd passed, every request answered 503 (see `lifecycle::standby`).
pub(crate) fn standby_config(fd_names: &[&str], origin: String, errors: String) -> Config {
    let mut config = builtin_config();
    config.source = ConfigSource::Invalid { origin, errors };
    let mut names: Vec<&str> = fd_names.to_vec();
    names.sort_unstable();
    names.dedup();
    config.listeners = names
        .into_iter()
        .map(|name| ListenerConfig {
            name: name.to_owned(),
            bind: Vec::new(),
            role: ListenerRole::Public,
            tls: None,
            redirect_https: false,
        })
        .collect();
    config.sites[0].routes[0].action = RouteAction::Respond(RespondConfig {
        status: StatusCode::SERVICE_UNAVAILABLE,
        body: Bytes::from_static(STANDBY_BODY.as_bytes()),
        content_type: HeaderValue::from_static("text/plain; charset=utf-8"),
    });
    config
}

/// `serve --listen ADDR --root DIR --proxy PREFIX=UPSTREAM`, already syntax-checked by clap.
#[derive(Debug, Clone, Default)]
pub(crate) struct QuickArgs {
    pub(crate) listen: Vec<BindAddr>,
    pub(crate) root: Option<PathBuf>,
    pub(crate) proxy: Vec<(String, Upstream)>,
}

impl QuickArgs {
    pub(crate) fn is_empty(&self) -> bool {
        self.listen.is_empty() && self.root.is_none() && self.proxy.is_empty()
    }
}

/// Builds the quick-mode config. Every socket systemd passes is claimed by its one listener.
pub(crate) fn quick_config(args: &QuickArgs) -> Result<Config, ConfigErrors> {
    let mut errors = Vec::new();
    let mut root_route = None;
    if let Some(root) = &args.root {
        // Absolute, so the route keeps working whatever the working directory becomes.
        match std::fs::canonicalize(root) {
            Ok(abs) if abs.is_dir() => {
                root_route = Some(RouteConfig {
                    path: "/".into(),
                    action: RouteAction::Static(StaticConfig::for_root(abs)),
                })
            }
            Ok(_) => errors.push(ConfigError::new(format!(
                "--root {}: not a directory",
                root.display()
            ))),
            Err(e) => errors.push(ConfigError::new(format!("--root {}: {e}", root.display()))),
        }
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    let mut config = builtin_config();
    config.source = ConfigSource::Quick;
    if !args.listen.is_empty() {
        config.listeners[0].bind = args.listen.clone();
    }
    if let Some(route) = root_route {
        config.sites[0].routes = vec![route];
    }
    config.sites[0]
        .routes
        .extend(quick_proxy_routes(&args.proxy));
    // The last route with a path wins (a `--proxy /=...` replaces the welcome page).
    let mut seen = std::collections::HashSet::new();
    let routes = std::mem::take(&mut config.sites[0].routes);
    let mut routes: Vec<RouteConfig> = routes
        .into_iter()
        .rev()
        .filter(|r| seen.insert(r.path.clone()))
        .collect();
    routes.reverse();
    config.sites[0].routes = routes;
    Ok(config)
}

/// `--proxy PREFIX=UPSTREAM` routes with the documented defaults; a prefix given several
/// times gets one route balancing over all its upstreams.
fn quick_proxy_routes(proxy: &[(String, Upstream)]) -> Vec<RouteConfig> {
    let mut by_prefix: Vec<(String, Vec<Upstream>)> = Vec::new();
    for (prefix, upstream) in proxy {
        match by_prefix.iter_mut().find(|(p, _)| p == prefix) {
            Some((_, ups)) => ups.push(upstream.clone()),
            None => by_prefix.push((prefix.clone(), vec![upstream.clone()])),
        }
    }
    by_prefix
        .into_iter()
        .map(|(path, upstreams)| RouteConfig {
            path,
            action: RouteAction::Proxy(super::proxy::ProxyConfig::new(upstreams)),
        })
        .collect()
}

/// Parses `PREFIX=UPSTREAM` for `--proxy`.
pub(crate) fn parse_proxy_arg(s: &str) -> Result<(String, Upstream), String> {
    let (prefix, upstream) = s.split_once('=').ok_or_else(|| {
        format!("{s:?}: expected PREFIX=UPSTREAM, e.g. /api/=http://127.0.0.1:8001")
    })?;
    if !prefix.starts_with('/') {
        return Err(format!("{prefix:?}: the prefix must start with '/'"));
    }
    Ok((prefix.to_owned(), upstream.parse()?))
}
