//! Deployable apps: a `proxy = { app = "shop" }` route forwards to the app's *live
//! instance* (`shop@v2`, on its own unix socket), which is runtime state kept here and in
//! the state directory, not configuration: reloads, restarts and idle exits keep it, and
//! `gatehouse deploy` (src/deploy) changes it over the admin listener (`endpoints`).
//!
//! The switch is one pointer swap. A request takes a [`Lease`] on the live instance before
//! it is sent and holds it until its response has been delivered, so the per-instance
//! in-flight count that a deploy waits on covers every request the old instance still has.

pub(crate) mod endpoints;
pub(crate) mod state;

use arc_swap::ArcSwapOption;
use prometheus_client::metrics::counter::Counter;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

pub(crate) use state::{AppReport, DeployRecord};

/// The `proxy = { app = ... }` keys, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AppSettings {
    pub(crate) name: String,
    /// The instance's socket path: `%p` is the app's name, `%i` the instance, `%%` a `%`
    /// (systemd's specifiers, so the `.socket` template's `ListenStream=` reads the same).
    pub(crate) socket: String,
    /// GET this on a new instance's socket until it answers 2xx (`gatehouse deploy`).
    pub(crate) health_check_path: String,
    /// How long a new instance has to start and pass its health check.
    pub(crate) deploy_timeout: Duration,
    /// How long a deploy waits for the old instance's requests before stopping it.
    pub(crate) drain_timeout: Duration,
}

/// `socket` when the route sets none: the template's `ListenStream=/run/%p/%i.sock`.
pub(crate) const DEFAULT_SOCKET: &str = "/run/%p/%i.sock";

impl AppSettings {
    pub(crate) fn new(name: &str) -> AppSettings {
        AppSettings {
            name: name.to_owned(),
            socket: DEFAULT_SOCKET.to_owned(),
            health_check_path: "/".to_owned(),
            // Start-up of a Django or Spring app takes seconds; a minute covers a slow one
            // on a busy host without leaving a hung one waiting for long.
            deploy_timeout: Duration::from_secs(60),
            drain_timeout: Duration::from_secs(30),
        }
    }

    /// The socket of `instance`.
    pub(crate) fn socket_for(&self, instance: &str) -> PathBuf {
        expand(&self.socket, &self.name, instance).into()
    }
}

/// Expands `%p`, `%i` and `%%` in a socket pattern.
pub(crate) fn expand(pattern: &str, app: &str, instance: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + instance.len());
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('p') => out.push_str(app),
            Some('i') => out.push_str(instance),
            Some(other) => {
                out.push('%');
                if other != '%' {
                    out.push(other);
                }
            }
            None => out.push('%'),
        }
    }
    out
}

/// Checks a socket pattern: absolute, names the instance, no other specifier.
pub(crate) fn check_socket_pattern(pattern: &str) -> Result<(), String> {
    if !pattern.starts_with('/') {
        return Err("`app_socket` must be an absolute path".into());
    }
    let mut has_instance = false;
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c == '%' {
            match chars.next() {
                Some('i') => has_instance = true,
                Some('p' | '%') => {}
                _ => return Err("`app_socket` knows only %p (app), %i (instance) and %%".into()),
            }
        }
    }
    if !has_instance {
        return Err("`app_socket` must contain %i, the instance name".into());
    }
    Ok(())
}

/// An app or instance name: what systemd accepts in a unit name (`shop@v2.socket`) and is
/// safe in a path: ASCII letters, digits, `_`, `-`, `.`, `:`, starting with a letter or
/// digit (no `..`), at most 64 bytes.
pub(crate) fn valid_name(s: &str) -> bool {
    s.len() <= 64
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b':'))
}

/// One running release of an app, as requests see it.
#[derive(Debug)]
pub(crate) struct Instance {
    pub(crate) name: Arc<str>,
    /// Requests holding a lease: sent or about to be, until their response is delivered.
    in_flight: AtomicUsize,
    requests: Counter,
}

impl Instance {
    fn new(app: &str, name: &str) -> Arc<Instance> {
        Arc::new(Instance {
            name: name.into(),
            in_flight: AtomicUsize::new(0),
            requests: crate::metrics::app_instance_requests(app, name),
        })
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }
}

/// A request's hold on the instance it was sent to; dropped with its response.
#[derive(Debug)]
pub(crate) struct Lease(Arc<Instance>);

impl Lease {
    pub(crate) fn instance(&self) -> &Arc<Instance> {
        &self.0
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One deployable app: its live instance and the ones still finishing requests.
pub(crate) struct App {
    pub(crate) name: Arc<str>,
    settings: Mutex<AppSettings>,
    live: ArcSwapOption<Instance>,
    /// Instances known to this process (live, and earlier ones while they have requests,
    /// plus the last one before the live one), for the in-flight counts a deploy reads.
    instances: Mutex<Vec<Arc<Instance>>>,
    /// What is persisted: live, previous, last deploy.
    record: Mutex<state::Persisted>,
}

impl App {
    pub(crate) fn settings(&self) -> AppSettings {
        lock(&self.settings).clone()
    }

    pub(crate) fn live(&self) -> Option<Arc<Instance>> {
        self.live.load_full()
    }

    /// A lease on the live instance; `None` before the first deploy.
    pub(crate) fn acquire(&self) -> Option<Lease> {
        loop {
            let instance = self.live.load_full()?;
            instance.in_flight.fetch_add(1, Ordering::SeqCst);
            // Paired with the fence in `switch`: either the switch's count sees this
            // lease, or this load sees the switch (and the lease moves to the new one).
            fence(Ordering::SeqCst);
            let still = self
                .live
                .load()
                .as_ref()
                .is_some_and(|now| Arc::ptr_eq(now, &instance));
            if still {
                instance.requests.inc();
                return Some(Lease(instance));
            }
            instance.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }

    /// Makes `instance` live: persisted first (a switch that would not survive a restart is
    /// refused), then one atomic swap. Returns the instance that was live before. `expect`:
    /// refused unless that is the one live now.
    pub(crate) fn switch(
        &self,
        instance: &str,
        expect: Option<Option<&str>>,
    ) -> Result<Option<String>, SwitchError> {
        let mut record = lock(&self.record);
        let before = record.live.clone();
        if expect.is_some_and(|e| e != before.as_deref()) {
            return Err(SwitchError::Moved(before));
        }
        if before.as_deref() == Some(instance) {
            return Ok(before);
        }
        let mut next = record.clone();
        next.previous = before.clone();
        next.live = Some(instance.to_owned());
        next.last_deploy = Some(DeployRecord::now(before.clone(), instance, "switched", ""));
        state::save(&self.name, &next).map_err(SwitchError::Persist)?;
        *record = next;
        let new = self.instance(instance);
        self.live.store(Some(new));
        fence(Ordering::SeqCst);
        // Switches are serialised by `record` until here; `prune` takes it again.
        drop(record);
        self.prune();
        tracing::info!(app = %self.name, from = before.as_deref().unwrap_or("-"), to = instance, "app switched");
        Ok(before)
    }

    /// Stores the outcome of a deploy (`gatehouse deploy` reports it when done).
    pub(crate) fn record_deploy(&self, deploy: DeployRecord) -> Result<(), String> {
        let mut record = lock(&self.record);
        let mut next = record.clone();
        next.last_deploy = Some(deploy);
        state::save(&self.name, &next)?;
        *record = next;
        Ok(())
    }

    pub(crate) fn last_deploy(&self) -> Option<DeployRecord> {
        lock(&self.record).last_deploy.clone()
    }

    /// The instances this process knows, live first.
    pub(crate) fn instances(&self) -> Vec<Arc<Instance>> {
        self.prune();
        lock(&self.instances).clone()
    }

    /// The known instance called `name`, or a new one.
    fn instance(&self, name: &str) -> Arc<Instance> {
        let mut list = lock(&self.instances);
        if let Some(i) = list.iter().find(|i| &*i.name == name) {
            return i.clone();
        }
        let i = Instance::new(&self.name, name);
        list.push(i.clone());
        i
    }

    /// Forgets instances that are neither live, nor the previous one, nor busy.
    fn prune(&self) {
        let live = self.live.load_full();
        let previous = lock(&self.record).previous.clone();
        let mut list = lock(&self.instances);
        list.retain(|i| {
            live.as_ref().is_some_and(|l| Arc::ptr_eq(l, i))
                || previous.as_deref() == Some(&*i.name)
                || i.in_flight() > 0
        });
        if let Some(l) = &live {
            if let Some(pos) = list.iter().position(|i| Arc::ptr_eq(i, l)) {
                list.swap(0, pos);
            }
        }
    }
}

/// Why a switch was refused; nothing changed.
#[derive(Debug)]
pub(crate) enum SwitchError {
    /// The live instance is not the one the caller expected (now this one).
    Moved(Option<String>),
    /// The state file could not be written.
    Persist(String),
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Plain data: consistent whatever a panicking holder did.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Every app this process has seen in a configuration, for the life of the process:
/// a reload that drops a route must not forget which instance is live.
pub(crate) struct Registry {
    apps: Mutex<HashMap<String, Arc<App>>>,
}

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| Registry {
    apps: Mutex::new(HashMap::new()),
});

pub(crate) fn registry() -> &'static Registry {
    &REGISTRY
}

impl Registry {
    /// The app named in `settings` (its persisted live instance loaded on first sight);
    /// the settings of the latest configuration win.
    pub(crate) fn app(&self, settings: &AppSettings) -> Arc<App> {
        let mut apps = lock(&self.apps);
        if let Some(app) = apps.get(&settings.name) {
            *lock(&app.settings) = settings.clone();
            return app.clone();
        }
        let record = state::load(&settings.name);
        let app = Arc::new(App {
            name: settings.name.as_str().into(),
            settings: Mutex::new(settings.clone()),
            live: ArcSwapOption::empty(),
            instances: Mutex::new(Vec::new()),
            record: Mutex::new(record.clone()),
        });
        if let Some(live) = &record.live {
            app.live.store(Some(app.instance(live)));
        }
        apps.insert(settings.name.clone(), app.clone());
        app
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<App>> {
        lock(&self.apps).get(name).cloned()
    }

    /// Every app, by name.
    pub(crate) fn all(&self) -> Vec<Arc<App>> {
        let mut v: Vec<Arc<App>> = lock(&self.apps).values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_patterns_expand_like_systemd_specifiers() {
        assert_eq!(expand("/run/%p/%i.sock", "shop", "v2"), "/run/shop/v2.sock");
        assert_eq!(expand("/run/x/100%%-%i", "a", "b"), "/run/x/100%-b");
        assert!(check_socket_pattern("/run/%p/%i.sock").is_ok());
        assert!(check_socket_pattern("/run/shop.sock").is_err());
        assert!(check_socket_pattern("run/%i.sock").is_err());
        assert!(check_socket_pattern("/run/%n/%i.sock").is_err());
    }

    #[test]
    fn names_fit_unit_names_and_paths() {
        assert!(valid_name("shop"));
        assert!(valid_name("v2.1-rc1"));
        for bad in ["", "..", ".x", "a/b", "a@b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_lease_follows_the_switch() {
        let app = App {
            name: "t".into(),
            settings: Mutex::new(AppSettings::new("t")),
            live: ArcSwapOption::empty(),
            instances: Mutex::new(Vec::new()),
            record: Mutex::new(state::Persisted::default()),
        };
        assert!(app.acquire().is_none());
        app.live.store(Some(app.instance("v1")));
        let old = app.acquire().map(|l| l.instance().clone());
        let held = app.acquire();
        app.live.store(Some(app.instance("v2")));
        let new = app.acquire();
        assert_eq!(old.map(|i| i.name.to_string()), Some("v1".into()));
        assert_eq!(new.as_ref().map(|l| &*l.instance().name), Some("v2"));
        let v1 = app.instance("v1");
        assert_eq!(v1.in_flight(), 1);
        drop(held);
        assert_eq!(v1.in_flight(), 0);
    }
}
