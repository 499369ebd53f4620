//! The admin listener's `/apps` endpoints, which `gatehouse deploy` and `gatehouse status`
//! use:
//!
//! - `GET /apps`: every app (`AppReport`: live instance, in-flight per instance, settings,
//!   last deploy);
//! - `POST /apps/NAME/switch` with `{"instance": "v2"}`: make it live (persisted, then
//!   one atomic swap); answers `{"live": "v2", "previous": "v1"}`;
//! - `POST /apps/NAME/deploys` with a `DeployRecord`: store how a deploy ended.
//!
//! Changes are accepted only over a unix-socket admin listener, whose file mode says who
//! may connect (root only for the packaged one); a TCP admin listener (metrics scrapers)
//! can read, never switch.

use super::state::{AppReport, DeployRecord};
use http::{Method, StatusCode};
use serde::{Deserialize, Serialize};

/// What the admin listener answers: status and a JSON (or text) body.
pub(crate) type Answer = (StatusCode, String);

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SwitchRequest {
    pub(crate) instance: String,
    /// The instance the caller saw live (`null`: none): if another deploy switched since,
    /// the switch is refused (409), so two deploys cannot undo each other unseen.
    #[serde(
        default,
        deserialize_with = "present",
        skip_serializing_if = "Option::is_none"
    )]
    pub(crate) expect: Option<Option<String>>,
}

/// `"expect": null` is `Some(None)` (the caller saw no live instance), an absent key `None`:
/// serde's default reads both as `None`, which would skip the check on a first deploy.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SwitchAnswer {
    pub(crate) live: String,
    pub(crate) previous: Option<String>,
}

/// Whether `path` is one of ours.
pub(crate) fn owns(path: &str) -> bool {
    path == "/apps" || path.starts_with("/apps/")
}

/// Answers one `/apps` request. `from_unix`: it came over a unix-socket admin listener.
pub(crate) fn handle(method: &Method, path: &str, body: &[u8], from_unix: bool) -> Answer {
    let rest = path.strip_prefix("/apps").unwrap_or("");
    if rest.is_empty() || rest == "/" {
        if method != Method::GET && method != Method::HEAD {
            return (StatusCode::METHOD_NOT_ALLOWED, "GET only\n".into());
        }
        let apps: Vec<AppReport> = super::registry()
            .all()
            .iter()
            .map(|a| AppReport::of(a))
            .collect();
        return json(StatusCode::OK, &apps);
    }
    let mut parts = rest.trim_start_matches('/').splitn(2, '/');
    let name = parts.next().unwrap_or("");
    let action = parts.next().unwrap_or("");
    let Some(app) = super::registry().get(name) else {
        return (
            StatusCode::NOT_FOUND,
            format!("no proxy route names the app {name:?}\n"),
        );
    };
    match (action, method) {
        ("", &Method::GET) => json(StatusCode::OK, &AppReport::of(&app)),
        ("switch" | "deploys", &Method::POST) if !from_unix => (
            StatusCode::FORBIDDEN,
            "deploy actions are accepted on a unix-socket admin listener only\n".into(),
        ),
        ("switch", &Method::POST) => switch(&app, body),
        ("deploys", &Method::POST) => match serde_json::from_slice::<DeployRecord>(body) {
            Ok(record) if super::valid_name(&record.to) => match app.record_deploy(record) {
                Ok(()) => (StatusCode::NO_CONTENT, String::new()),
                Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            },
            Ok(_) => (StatusCode::BAD_REQUEST, "invalid instance name\n".into()),
            Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")),
        },
        ("" | "switch" | "deploys", _) => (StatusCode::METHOD_NOT_ALLOWED, String::new()),
        _ => (StatusCode::NOT_FOUND, String::new()),
    }
}

fn switch(app: &super::App, body: &[u8]) -> Answer {
    let req: SwitchRequest = match serde_json::from_slice(body) {
        Ok(r) => r,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")),
    };
    if !super::valid_name(&req.instance) {
        return (
            StatusCode::BAD_REQUEST,
            format!(
                "{:?} is not an instance name (letters, digits, _ - . :)\n",
                req.instance
            ),
        );
    }
    match app.switch(&req.instance, req.expect.as_ref().map(Option::as_deref)) {
        Ok(previous) => json(
            StatusCode::OK,
            &SwitchAnswer {
                live: req.instance,
                previous,
            },
        ),
        Err(super::SwitchError::Moved(live)) => (
            StatusCode::CONFLICT,
            format!(
                "another deploy switched the app meanwhile: {} is live now\n",
                live.as_deref().unwrap_or("no instance")
            ),
        ),
        // Nothing switched: the state could not be persisted.
        Err(super::SwitchError::Persist(e)) => {
            (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n"))
        }
    }
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Answer {
    match serde_json::to_string_pretty(value) {
        Ok(s) => (status, s + "\n"),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
