//! What an app's deploys leave behind: the live instance persisted in the state directory
//! (`$STATE_DIRECTORY/apps/NAME.json`), the last deploy, the JSON the admin listener
//! reports, and the per-instance metrics.

use serde::{Deserialize, Serialize};
use std::io::Write;
use std::path::PathBuf;

/// The persisted part of an app.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct Persisted {
    pub(crate) live: Option<String>,
    #[serde(default)]
    pub(crate) previous: Option<String>,
    #[serde(default)]
    pub(crate) last_deploy: Option<DeployRecord>,
}

/// One deploy: when, from which instance to which, and how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DeployRecord {
    /// RFC 3339, UTC.
    pub(crate) at: String,
    pub(crate) from: Option<String>,
    pub(crate) to: String,
    /// "ok", "failed", or "switched" (the switch happened; the deploy did not report back).
    pub(crate) result: String,
    #[serde(default)]
    pub(crate) detail: String,
}

impl DeployRecord {
    pub(crate) fn now(from: Option<String>, to: &str, result: &str, detail: &str) -> DeployRecord {
        DeployRecord {
            at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            from,
            to: to.to_owned(),
            result: result.to_owned(),
            detail: detail.to_owned(),
        }
    }
}

/// An app as `GET /apps` reports it (and `gatehouse deploy` reads it).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct AppReport {
    pub(crate) name: String,
    pub(crate) live: Option<String>,
    /// The socket pattern (`%i` = instance).
    pub(crate) socket: String,
    pub(crate) health_check_path: String,
    pub(crate) deploy_timeout_ms: u64,
    pub(crate) drain_timeout_ms: u64,
    /// Live first, then instances still finishing requests and the previous one.
    pub(crate) instances: Vec<InstanceReport>,
    pub(crate) last_deploy: Option<DeployRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InstanceReport {
    pub(crate) name: String,
    pub(crate) socket: String,
    pub(crate) live: bool,
    pub(crate) in_flight: usize,
}

impl AppReport {
    pub(crate) fn of(app: &super::App) -> AppReport {
        let s = app.settings();
        let live = app.live();
        AppReport {
            name: app.name.to_string(),
            live: live.as_ref().map(|l| l.name.to_string()),
            socket: s.socket.clone(),
            health_check_path: s.health_check_path.clone(),
            deploy_timeout_ms: millis(s.deploy_timeout),
            drain_timeout_ms: millis(s.drain_timeout),
            instances: app
                .instances()
                .iter()
                .map(|i| InstanceReport {
                    name: i.name.to_string(),
                    socket: s.socket_for(&i.name).display().to_string(),
                    live: live.as_ref().is_some_and(|l| std::sync::Arc::ptr_eq(l, i)),
                    in_flight: i.in_flight(),
                })
                .collect(),
            last_deploy: app.last_deploy(),
        }
    }

    /// For STATUS=: "app shop@v2".
    pub(crate) fn short(&self) -> String {
        match &self.live {
            Some(live) => format!("app {}@{live}", self.name),
            None => format!("app {} NOT DEPLOYED", self.name),
        }
    }

    /// For `gatehouse status`: the live instance, in-flight requests, the last deploy.
    pub(crate) fn human(&self) -> String {
        let mut s = format!(
            "app {}: live {}",
            self.name,
            self.live.as_deref().unwrap_or("none (never deployed: 503)")
        );
        for i in &self.instances {
            s.push_str(&format!(
                "{} {}@{} {} in flight",
                if i.live { ";" } else { "," },
                self.name,
                i.name,
                i.in_flight
            ));
        }
        if let Some(d) = &self.last_deploy {
            s.push_str(&format!(
                "\n  last deploy {}: {} -> {}: {}",
                d.at,
                d.from.as_deref().unwrap_or("none"),
                d.to,
                d.result
            ));
            if let Some(line) = d.detail.lines().next().filter(|l| !l.is_empty()) {
                s.push_str(&format!(" ({line})"));
            }
        }
        s
    }

    pub(crate) fn in_flight(&self, instance: &str) -> usize {
        self.instances
            .iter()
            .find(|i| i.name == instance)
            .map_or(0, |i| i.in_flight)
    }
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `$STATE_DIRECTORY` (its first path: systemd sets one per `StateDirectory=` entry), else
/// where the packaged unit's `StateDirectory=gatehouse` is.
pub(crate) fn state_dir() -> PathBuf {
    std::env::var_os("STATE_DIRECTORY")
        .and_then(|v| {
            v.to_str()
                .and_then(|s| s.split(':').next())
                .filter(|s| s.starts_with('/'))
                .map(PathBuf::from)
        })
        .unwrap_or_else(|| PathBuf::from("/var/lib/gatehouse"))
}

fn path_of(app: &str) -> PathBuf {
    state_dir().join("apps").join(format!("{app}.json"))
}

/// The app's persisted state; empty if it was never deployed. An unreadable file is said
/// loudly: the route then has no live instance (503) until the next deploy.
pub(crate) fn load(app: &str) -> Persisted {
    let path = path_of(app);
    match std::fs::read(&path) {
        Ok(bytes) => match serde_json::from_slice::<Persisted>(&bytes) {
            Ok(p) if p.live.as_deref().is_none_or(super::valid_name) => p,
            Ok(_) | Err(_) => {
                tracing::error!(app, path = %path.display(), "app state unreadable: no live instance until the next deploy");
                Persisted::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Persisted::default(),
        Err(e) => {
            tracing::error!(app, path = %path.display(), "cannot read app state: {e}");
            Persisted::default()
        }
    }
}

/// Writes the app's state so that a crash at any point leaves the old file or the new one
/// whole: a temporary file, fsync, rename over, fsync of the directory.
pub(crate) fn save(app: &str, state: &Persisted) -> Result<(), String> {
    let path = path_of(app);
    let dir = path.parent().unwrap_or(std::path::Path::new("/"));
    let fail = |what: &str, e: std::io::Error| format!("{what} {}: {e}", dir.display());
    std::fs::create_dir_all(dir).map_err(|e| fail("cannot create", e))?;
    let json = serde_json::to_vec_pretty(state).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(".{app}.json.tmp"));
    let mut f = std::fs::File::create(&tmp).map_err(|e| fail("cannot write in", e))?;
    f.write_all(&json)
        .and_then(|()| f.sync_all())
        .map_err(|e| fail("cannot write in", e))?;
    std::fs::rename(&tmp, &path).map_err(|e| fail("cannot rename in", e))?;
    // The file now names the new instance: failing the switch here would leave it saying
    // so while the old one serves (and a restart would follow the file). The rename stands;
    // only its durability across a power cut is in doubt.
    if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
        tracing::warn!("{}", fail("cannot sync", e));
    }
    Ok(())
}

/// Sets the in-flight and live gauges from the registry, before a scrape.
pub(crate) fn refresh_metrics() {
    let apps = super::registry().all();
    let mut rows = Vec::new();
    for app in &apps {
        let live = app.live();
        for i in app.instances() {
            let is_live = live.as_ref().is_some_and(|l| std::sync::Arc::ptr_eq(l, &i));
            rows.push((app.name.clone(), i.name.clone(), i.in_flight(), is_live));
        }
    }
    crate::metrics::set_app_instances(rows.iter().map(|(a, i, n, live)| (&**a, &**i, *n, *live)));
}
