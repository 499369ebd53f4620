//! The `tls`, `redirect_https` and `hsts` keys: their file format, where credential paths
//! point, and validation into loaded certificates with positions for every error.
//!
//! Validation reads the certificate and key files (so `gatehouse check` refuses a broken or
//! mismatched pair); the acceptors that present them are built by `snapshot`.

use crate::certs::{self, LoadedCert};
use crate::config::ErrorSink;
use http::HeaderValue;
use serde::Deserialize;
use serde_spanned::Spanned;
use std::path::PathBuf;
use std::sync::Arc;

/// The credential names `tls = "auto"` looks for in `$CREDENTIALS_DIRECTORY`.
pub(crate) const AUTO_CERT: &str = "gatehouse.tls.crt";
pub(crate) const AUTO_KEY: &str = "gatehouse.tls.key";
const CRED_PREFIX: &str = "cred:";

/// `tls = "auto"` or `tls = { cert = "...", key = "...", strict_sni = false }`.
#[derive(Debug)]
pub(crate) enum RawTls {
    Auto(String),
    Files(RawTlsFiles),
}

// By hand rather than `#[serde(untagged)]`: untagged buffers the value, which loses the
// spans of the fields inside (and turns every mistake into "did not match any variant").
impl<'de> Deserialize<'de> for RawTls {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Shape;
        impl<'de> serde::de::Visitor<'de> for Shape {
            type Value = RawTls;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"auto\" or a table { cert = \"...\", key = \"...\" }")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawTls, E> {
                Ok(RawTls::Auto(v.to_owned()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<RawTls, A::Error> {
                RawTlsFiles::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(RawTls::Files)
            }
        }
        d.deserialize_any(Shape)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTlsFiles {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
    /// Listener only: refuse the handshake for a server name no site of the listener has.
    pub(crate) strict_sni: Option<Spanned<bool>>,
}

/// A listener's TLS settings; its SNI table (which needs the sites) is built with the
/// snapshot (`tls::acceptor::build`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ListenerTlsConfig {
    /// `None` for `tls = "acme"`: the listener presents its sites' ACME certificates.
    pub(crate) default: Option<Arc<LoadedCert>>,
    pub(crate) strict_sni: bool,
}

/// Where a site's certificate comes from.
#[derive(Debug, Clone)]
pub(crate) enum SiteCert {
    Files(Arc<LoadedCert>),
    /// `tls = "acme"`: the DNS names to order it for (the site's hosts). The certificate
    /// itself is the snapshot's (`acme::managed`).
    Acme(Vec<String>),
}

/// A site's `tls` before `[acme]` is known: files are loaded, "acme" is resolved later.
pub(crate) enum SiteTlsChoice {
    Files(Arc<LoadedCert>),
    Acme,
}

/// What a config error says when `tls` has the wrong shape (serde's untagged message is vague).
pub(crate) const SHAPE_HINT: &str = "`tls` is \"auto\", \"acme\" or { cert = \"/path/or/cred:NAME\", key = \"...\" } (listeners may add strict_sni = true)";

/// Where credentials live: `$CREDENTIALS_DIRECTORY`, read at every load so a reload sees
/// what systemd set up for this service.
fn credentials_dir() -> Option<PathBuf> {
    std::env::var_os("CREDENTIALS_DIRECTORY")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Resolves `cred:NAME` against `$CREDENTIALS_DIRECTORY`; other paths must be absolute.
fn resolve(value: &Spanned<String>, sink: &mut ErrorSink) -> Option<PathBuf> {
    let v = value.get_ref();
    if let Some(name) = v.strip_prefix(CRED_PREFIX) {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            sink.push(
                Some(value.span()),
                format!("{v:?} is not a credential name"),
                Some("a credential is named like LoadCredential=NAME:PATH names it, e.g. \"cred:gatehouse.tls.key\""),
            );
            return None;
        }
        return match credentials_dir() {
            Some(dir) => Some(dir.join(name)),
            None => {
                sink.push(
                    Some(value.span()),
                    format!("{v:?} needs $CREDENTIALS_DIRECTORY, which is not set"),
                    Some("systemd sets it for a service with LoadCredential=; to check by hand, run with CREDENTIALS_DIRECTORY=/dir/with/the/files"),
                );
                None
            }
        };
    }
    if !v.starts_with('/') {
        sink.push(
            Some(value.span()),
            format!("{v:?} must be an absolute path or \"cred:NAME\""),
            Some("with LoadCredential=NAME:/etc/ssl/private/site.key in a drop-in, write \"cred:NAME\""),
        );
        return None;
    }
    Some(PathBuf::from(v))
}

/// Loads the certificate and key named by a `{ cert, key }` table.
fn load_files(files: &RawTlsFiles, sink: &mut ErrorSink) -> Option<Arc<LoadedCert>> {
    let cert = resolve(&files.cert, sink);
    let key = resolve(&files.key, sink);
    let (cert, key) = (cert?, key?);
    match certs::load(&cert, &key) {
        Ok(c) => Some(Arc::new(c)),
        Err(msg) => {
            // Point at the key when the pair does not match or the key is the broken file.
            let span =
                if msg.starts_with(&key.display().to_string()) || msg.contains("does not belong") {
                    files.key.span()
                } else {
                    files.cert.span()
                };
            sink.push(Some(span), msg, None);
            None
        }
    }
}

/// A `[[listener]]`'s `tls`.
pub(crate) fn listener_tls(
    raw: &Spanned<RawTls>,
    sink: &mut ErrorSink,
) -> Option<ListenerTlsConfig> {
    let span = raw.span();
    match raw.get_ref() {
        RawTls::Auto(word) if word == "auto" => {
            let Some(dir) = credentials_dir() else {
                sink.push(
                    Some(span),
                    "tls = \"auto\" needs $CREDENTIALS_DIRECTORY, which is not set",
                    Some("add LoadCredential=gatehouse.tls.crt:/path/fullchain.pem and LoadCredential=gatehouse.tls.key:/path/key.pem to the service (see units/examples/tls/)"),
                );
                return None;
            };
            match certs::load(&dir.join(AUTO_CERT), &dir.join(AUTO_KEY)) {
                Ok(c) => Some(ListenerTlsConfig {
                    default: Some(Arc::new(c)),
                    strict_sni: false,
                }),
                Err(msg) => {
                    sink.push(
                        Some(span),
                        format!("tls = \"auto\": {msg}"),
                        Some("the credentials gatehouse.tls.crt and gatehouse.tls.key come from LoadCredential= in the service"),
                    );
                    None
                }
            }
        }
        RawTls::Auto(word) if word == "acme" => Some(ListenerTlsConfig {
            default: None,
            strict_sni: false,
        }),
        RawTls::Auto(word) => {
            sink.push(
                Some(span),
                format!("tls = {word:?} is not understood"),
                Some(SHAPE_HINT),
            );
            None
        }
        RawTls::Files(files) => {
            let strict_sni = files.strict_sni.as_ref().is_some_and(|s| *s.get_ref());
            load_files(files, sink).map(|default| ListenerTlsConfig {
                default: Some(default),
                strict_sni,
            })
        }
    }
}

/// A `[[site]]`'s `tls`: `{ cert, key }` or `"acme"`, the certificate chosen by SNI for its
/// hosts.
pub(crate) fn site_tls(raw: &Spanned<RawTls>, sink: &mut ErrorSink) -> Option<SiteTlsChoice> {
    match raw.get_ref() {
        RawTls::Files(files) => {
            if let Some(s) = &files.strict_sni {
                sink.push(
                    Some(s.span()),
                    "`strict_sni` belongs to the listener's `tls`, not a site's",
                    None,
                );
            }
            load_files(files, sink).map(SiteTlsChoice::Files)
        }
        RawTls::Auto(word) if word == "acme" => Some(SiteTlsChoice::Acme),
        RawTls::Auto(_) => {
            sink.push(
                Some(raw.span()),
                "a site's `tls` is \"acme\" or { cert = \"...\", key = \"...\" }; \"auto\" is for listeners",
                None,
            );
            None
        }
    }
}

/// `hsts = "max-age=31536000; includeSubDomains"`: sent as is on responses over TLS.
pub(crate) fn hsts(raw: &Spanned<String>, sink: &mut ErrorSink) -> Option<HeaderValue> {
    let v = raw.get_ref();
    let has_max_age = v
        .split(';')
        .any(|d| d.trim().to_ascii_lowercase().starts_with("max-age="));
    match HeaderValue::from_str(v) {
        Ok(h) if has_max_age => Some(h),
        _ => {
            sink.push(
                Some(raw.span()),
                format!("{v:?} is not a Strict-Transport-Security value"),
                Some("e.g. hsts = \"max-age=31536000; includeSubDomains\" (RFC 6797 requires max-age)"),
            );
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{parse_str, ConfigSource};

    fn errors(text: &str) -> String {
        match parse_str(text, ConfigSource::File("t.toml".into())) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tls_mistakes_are_reported_where_they_are() {
        let text = r#"
[[listener]]
name = "https"
bind = ["127.0.0.1:1"]
tls = "yes"
redirect_https = true

[[site]]
hosts = ["*"]
tls = "auto"
hsts = "includeSubDomains"
[[site.route]]
path = "/"
respond = {}

[[site]]
hosts = ["b.test"]
tls = { cert = "cred:../x", key = "key.pem", strict_sni = true }
[[site.route]]
path = "/"
respond = {}
"#;
        let e = errors(text);
        for want in [
            "t.toml:5:7: tls = \"yes\" is not understood",
            "t.toml:6:18: `redirect_https` on a TLS listener",
            "t.toml:10:7: a site's `tls` is \"acme\" or { cert",
            "t.toml:11:8: \"includeSubDomains\" is not a Strict-Transport-Security value",
            "t.toml:18:16: \"cred:../x\" is not a credential name",
            "t.toml:18:35: \"key.pem\" must be an absolute path",
            "t.toml:18:59: `strict_sni` belongs to the listener",
        ] {
            assert!(e.contains(want), "missing {want:?} in:\n{e}");
        }
    }

    #[test]
    fn unknown_keys_in_tls_are_rejected_with_a_position() {
        let e = errors(
            "[[listener]]\nname = \"h\"\nbind = [\"127.0.0.1:1\"]\ntls = { cert = \"/a\", key = \"/b\", sni = 1 }\n",
        );
        assert!(
            e.contains("t.toml:4:") && e.contains("unknown field `sni`"),
            "{e}"
        );
    }
}
