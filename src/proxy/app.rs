//! A `proxy = { app = "shop" }` route: the upstream is the app's live instance (see
//! `crate::apps`), one pool per instance, built on the route's settings when a request
//! first meets that instance.

use super::balance::Pool;
use crate::apps::{App, AppSettings, Instance, Lease};
use crate::config::proxy::ProxyConfig;
use crate::config::Upstream;
use crate::http_base::{self, Body};
use arc_swap::ArcSwapOption;
use http::{header, HeaderValue, Response, StatusCode};
use std::sync::{Arc, OnceLock};

pub(crate) struct AppRoute {
    pub(crate) settings: AppSettings,
    app: OnceLock<Arc<App>>,
    /// The instance last sent to and its pool.
    current: ArcSwapOption<(Arc<Instance>, Arc<Pool>)>,
}

impl AppRoute {
    pub(crate) fn new(settings: AppSettings) -> AppRoute {
        AppRoute {
            settings,
            app: OnceLock::new(),
            current: ArcSwapOption::empty(),
        }
    }

    /// The registry's app, with this route's settings (the serving configuration's).
    pub(crate) fn register(&self) {
        let app = crate::apps::registry().app(&self.settings);
        let _ = self.app.set(app);
    }

    fn app(&self) -> &Arc<App> {
        self.app
            .get_or_init(|| crate::apps::registry().app(&self.settings))
    }

    /// The live instance's pool and a lease on it; `None` before the first deploy.
    pub(crate) fn target(&self, config: &ProxyConfig) -> Option<(Arc<Pool>, Lease)> {
        let lease = self.app().acquire()?;
        if let Some(cur) = &*self.current.load() {
            if Arc::ptr_eq(&cur.0, lease.instance()) {
                return Some((cur.1.clone(), lease));
            }
        }
        let socket = self.settings.socket_for(&lease.instance().name);
        let mut instance_config = config.clone();
        instance_config.upstreams = vec![Upstream::Unix(socket)];
        let pool = Arc::new(Pool::new(&instance_config));
        self.current
            .store(Some(Arc::new((lease.instance().clone(), pool.clone()))));
        Some((pool, lease))
    }
}

/// 503 for an app that was never deployed: nothing to send the request to yet.
pub(crate) fn no_live_instance(route: &AppRoute, used: &OnceLock<Arc<str>>) -> Response<Body> {
    let _ = used.set(format!("app:{}", route.settings.name).into());
    let mut resp = http_base::error(StatusCode::SERVICE_UNAVAILABLE);
    resp.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    resp
}
