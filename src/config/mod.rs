//! Configuration: the TOML file format, its validation into plain values, and the built-in
//! defaults. Each feature's section (`proxy`, `static_files`, `tls`, `acme`) is parsed and
//! validated here; the features depend on this module, never the other way round. Runtime
//! objects built from a `Config` (pools, acceptors, certificate managers, caches) are
//! `snapshot`'s.
//!
//! `gatehouse check`, startup and reload share this one code path, which reads files but
//! changes nothing and starts nothing: the configuration file itself, the certificate and
//! key files a `tls` key names (`$CREDENTIALS_DIRECTORY` included), `[acme] ca_roots`, and
//! whether a `static` root is a directory. It does not read the ACME state directory (the
//! snapshot does, for the stored certificates) or open any socket.

pub(crate) mod acme;
mod builtin;
mod error;
mod listener;
mod model;
pub(crate) mod proxy;
mod raw;
mod server;
mod site;
pub(crate) mod static_files;
pub(crate) mod tls;
mod units;
mod validate;

pub(crate) use builtin::{
    builtin_config, parse_proxy_arg, quick_config, standby_config, QuickArgs,
};
pub(crate) use error::{ConfigError, ConfigErrors};
pub(crate) use model::*;
pub(crate) use units::{parse_duration, HumanDuration};

pub(crate) use error::ErrorSink;
use std::path::{Path, PathBuf};

/// Where `serve` and `check` look when no `--config` is given.
pub(crate) const DEFAULT_CONFIG_PATH: &str = "/etc/gatehouse/gatehouse.toml";

/// Where the running configuration comes from; reload asks it again.
#[derive(Debug, Clone)]
pub(crate) enum ConfigOrigin {
    /// `--config PATH`: the file must exist.
    File(PathBuf),
    /// No flags: the default path if a file is there, else the built-in welcome page.
    Default,
    /// `--listen/--root/--proxy`.
    Quick(QuickArgs),
}

impl ConfigOrigin {
    pub(crate) fn load(&self) -> Result<Config, ConfigErrors> {
        match self {
            ConfigOrigin::File(path) => load_file(path),
            ConfigOrigin::Default => {
                let path = Path::new(DEFAULT_CONFIG_PATH);
                if path.exists() {
                    load_file(path)
                } else {
                    Ok(builtin_config())
                }
            }
            ConfigOrigin::Quick(args) => quick_config(args),
        }
    }
}

/// Reads and validates a config file.
pub(crate) fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        let mut err = ConfigError::new(format!("cannot read the configuration: {e}"));
        err.file = Some(path.to_path_buf());
        err
    })?;
    parse_str(&text, ConfigSource::File(path.to_path_buf()))
}

/// Parses and validates configuration text; positions in errors refer to `text`.
pub(crate) fn parse_str(text: &str, source: ConfigSource) -> Result<Config, ConfigErrors> {
    let file: Option<PathBuf> = match &source {
        ConfigSource::File(p) => Some(p.clone()),
        _ => None,
    };
    let mut sink = ErrorSink::new(file.as_deref(), text);
    let raw: raw::RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            sink.push(
                e.span(),
                e.message().trim().to_owned(),
                hint_for(e.message()),
            );
            return Err(sink
                .finish()
                .err()
                .unwrap_or_else(|| ConfigErrors(Vec::new())));
        }
    };
    let config = validate::validate(raw, source, &mut sink);
    sink.finish()?;
    config.ok_or_else(|| ConfigErrors(vec![ConfigError::new("invalid configuration")]))
}

fn hint_for(message: &str) -> Option<&'static str> {
    if message.contains("unknown field") {
        Some("see the configuration reference in README.md for the keys each section accepts")
    } else if message.contains("\"auto\" or a table") {
        Some(tls::SHAPE_HINT)
    } else if message.contains("duration") {
        Some("durations are strings such as \"250ms\", \"30s\" or \"5m\"")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        parse_str(text, ConfigSource::File("t.toml".into()))
    }

    const GOOD: &str = r#"
[server]
shutdown_timeout = "30s"
idle_exit_after = "0s"
max_connections = 10000
header_read_timeout = "10s"
status_interval = "5s"

[[listener]]
name = "http"
bind = ["127.0.0.1:8080", "unix:/run/x.sock"]

[[site]]
hosts = ["*"]
[[site.route]]
path = "/"
respond = { status = 200, body = "hello\n" }
"#;

    #[test]
    fn the_documented_example_is_valid() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.server.idle_exit_after, None);
        assert_eq!(c.listeners[0].bind.len(), 2);
        assert_eq!(c.sites[0].routes[0].path, "/");
    }

    #[test]
    fn unknown_key_is_reported_with_its_position() {
        let err = parse("[server]\nshutdown_timout = \"1s\"\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("t.toml:2:1: "), "{text}");
        assert!(text.contains("unknown field"), "{text}");
    }

    #[test]
    fn every_semantic_error_is_reported() {
        let text = GOOD
            .replace("127.0.0.1:8080", "nowhere")
            .replace("status = 200", "status = 999");
        let err = parse(&text).unwrap_err();
        assert_eq!(err.0.len(), 2, "{err}");
        assert!(err.to_string().contains("t.toml:11:9:"), "{err}");
        assert!(err.to_string().contains("t.toml:17:22:"), "{err}");
    }

    #[test]
    fn bad_duration_points_at_the_value() {
        let err = parse("[server]\nstatus_interval = \"soon\"\n").unwrap_err();
        assert!(err.to_string().starts_with("t.toml:2:19:"), "{err}");
    }

    #[test]
    fn builtin_config_is_valid() {
        let c = builtin_config();
        assert_eq!(c.listeners[0].name, "http");
    }
}
