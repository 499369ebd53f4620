//! The file format exactly as written by the user: serde structures with source spans.
//! Validation into the typed model lives in `validate.rs`.

use super::units::HumanDuration;
use serde::Deserialize;
use serde_spanned::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub server: RawServer,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "site")]
    pub sites: Vec<Spanned<RawSite>>,
    /// Settings for sites with `tls = "acme"`.
    pub acme: Option<super::acme::RawAcme>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    pub shutdown_timeout: Option<Spanned<HumanDuration>>,
    pub idle_exit_after: Option<Spanned<HumanDuration>>,
    pub max_connections: Option<Spanned<i64>>,
    pub header_read_timeout: Option<Spanned<HumanDuration>>,
    pub status_interval: Option<Spanned<HumanDuration>>,
    pub max_header_size: Option<Spanned<i64>>,
    pub workers: Option<Spanned<i64>>,
    /// "all" (default), "errors" or "off".
    pub access_log: Option<Spanned<String>>,
    pub access_log_sample: Option<Spanned<i64>>,
    /// An absolute path: access lines go to this file instead of the journal or stderr.
    pub access_log_file: Option<Spanned<String>>,
    pub send_timeout: Option<Spanned<HumanDuration>>,
    pub http2_max_concurrent_streams: Option<Spanned<i64>>,
    pub admin_max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawListener {
    pub name: Spanned<String>,
    #[serde(default)]
    pub bind: Vec<Spanned<String>>,
    /// "public" (default): serves the sites; "admin": /metrics, /status, /healthz only.
    pub role: Option<Spanned<String>>,
    /// `"auto"` or `{ cert, key, strict_sni }`: this listener speaks TLS.
    pub tls: Option<Spanned<super::tls::RawTls>>,
    /// Plain listener: answer every request with a 308 to https.
    pub redirect_https: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSite {
    pub hosts: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub listeners: Option<Vec<Spanned<String>>>,
    #[serde(default, rename = "route")]
    pub routes: Vec<Spanned<RawRoute>>,
    /// `{ 404 = "/404.html" }`: status → a path served by one of this site's static routes.
    #[serde(default)]
    pub error_pages: std::collections::BTreeMap<Spanned<String>, Spanned<String>>,
    /// `{ cert, key }`: chosen by SNI for this site's hosts on TLS listeners.
    pub tls: Option<Spanned<super::tls::RawTls>>,
    /// On plain listeners, 308 to https for this site.
    pub redirect_https: Option<bool>,
    /// Strict-Transport-Security value, sent over TLS only.
    pub hsts: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRoute {
    pub path: Spanned<String>,
    pub respond: Option<Spanned<RawRespond>>,
    #[serde(rename = "static")]
    pub static_files: Option<Spanned<super::static_files::RawStatic>>,
    pub proxy: Option<Spanned<super::proxy::RawProxy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRespond {
    pub status: Option<Spanned<i64>>,
    #[serde(default)]
    pub body: String,
    pub content_type: Option<Spanned<String>>,
}
