//! The file format exactly as written by the user: serde structures with source spans.
//! Validation into the typed model lives in `validate.rs`.

use super::units::HumanDuration;
use serde::Deserialize;
use serde_spanned::Spanned;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    #[serde(default, rename = "listener")]
    pub(crate) listeners: Vec<Spanned<RawListener>>,
    #[serde(default, rename = "site")]
    pub(crate) sites: Vec<Spanned<RawSite>>,
    /// Settings for sites with `tls = "acme"`.
    pub(crate) acme: Option<super::acme::RawAcme>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) shutdown_timeout: Option<Spanned<HumanDuration>>,
    pub(crate) idle_exit_after: Option<Spanned<HumanDuration>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) header_read_timeout: Option<Spanned<HumanDuration>>,
    pub(crate) status_interval: Option<Spanned<HumanDuration>>,
    pub(crate) max_header_size: Option<Spanned<i64>>,
    pub(crate) workers: Option<Spanned<i64>>,
    /// "all" (default), "errors" or "off".
    pub(crate) access_log: Option<Spanned<String>>,
    pub(crate) access_log_sample: Option<Spanned<i64>>,
    /// An absolute path: access lines go to this file instead of the journal or stderr.
    pub(crate) access_log_file: Option<Spanned<String>>,
    pub(crate) send_timeout: Option<Spanned<HumanDuration>>,
    pub(crate) http2_max_concurrent_streams: Option<Spanned<i64>>,
    pub(crate) admin_max_connections: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: Spanned<String>,
    #[serde(default)]
    pub(crate) bind: Vec<Spanned<String>>,
    /// "public" (default): serves the sites; "admin": /metrics, /status, /healthz only.
    pub(crate) role: Option<Spanned<String>>,
    /// `"auto"` or `{ cert, key, strict_sni }`: this listener speaks TLS.
    pub(crate) tls: Option<Spanned<super::tls::RawTls>>,
    /// Plain listener: answer every request with a 308 to https.
    pub(crate) redirect_https: Option<Spanned<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSite {
    pub(crate) hosts: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub(crate) listeners: Option<Vec<Spanned<String>>>,
    #[serde(default, rename = "route")]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    /// `{ 404 = "/404.html" }`: status → a path served by one of this site's static routes.
    #[serde(default)]
    pub(crate) error_pages: std::collections::BTreeMap<Spanned<String>, Spanned<String>>,
    /// `{ cert, key }`: chosen by SNI for this site's hosts on TLS listeners.
    pub(crate) tls: Option<Spanned<super::tls::RawTls>>,
    /// On plain listeners, 308 to https for this site.
    pub(crate) redirect_https: Option<bool>,
    /// Strict-Transport-Security value, sent over TLS only.
    pub(crate) hsts: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) path: Spanned<String>,
    pub(crate) respond: Option<Spanned<RawRespond>>,
    #[serde(rename = "static")]
    pub(crate) static_files: Option<Spanned<super::static_files::RawStatic>>,
    pub(crate) proxy: Option<Spanned<super::proxy::RawProxy>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRespond {
    pub(crate) status: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) body: String,
    pub(crate) content_type: Option<Spanned<String>>,
}
