//! Active health checks: a GET to `health.path` on every upstream each `interval`. Passive
//! health (ejection after a failed connect or a timeout) lives on `UpstreamState`.
//!
//! The tasks belong to one configuration generation: `Background` aborts them when the
//! `Snapshot` holding it is dropped, and each task holds only a `Weak` to its pool, so a
//! replaced configuration never leaves checks running.

use super::balance::{Pool, UpstreamState};
use super::body::UpBody;
use crate::config::proxy::HealthConfig;
use std::sync::{Arc, Weak};
use tokio::task::JoinHandle;

/// Aborts this generation's health-check tasks when dropped.
#[derive(Default)]
pub(crate) struct Background {
    tasks: Vec<JoinHandle<()>>,
}

impl Background {
    pub(crate) fn spawn(&mut self, pool: &Arc<Pool>, health: &HealthConfig) {
        if tokio::runtime::Handle::try_current().is_err() {
            // `gatehouse check` validates without a runtime; nothing to run there.
            return;
        }
        for idx in 0..pool.upstreams.len() {
            let weak = Arc::downgrade(pool);
            let health = health.clone();
            self.tasks.push(tokio::spawn(check_loop(weak, idx, health)));
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn check_loop(pool: Weak<Pool>, idx: usize, health: HealthConfig) {
    let mut tick = tokio::time::interval(health.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(upstream) = pool.upgrade().and_then(|p| p.upstreams.get(idx).cloned()) else {
            return;
        };
        let up = check_once(&upstream, &health).await;
        upstream.set_active(up);
    }
}

/// One check: any 2xx or 3xx within `timeout` passes.
async fn check_once(u: &UpstreamState, health: &HealthConfig) -> bool {
    let authority = u.authority.as_str();
    // HTTP/2 takes :authority from an absolute URI; HTTP/1 sends the path alone.
    let uri = if u.conns.is_http2() {
        format!("http://{authority}{}", health.path)
    } else {
        health.path.clone()
    };
    let Ok(req) = http::Request::get(uri)
        .header(http::header::HOST, authority)
        .header(http::header::USER_AGENT, "gatehouse-health-check")
        .body(UpBody::empty())
    else {
        return false;
    };
    match tokio::time::timeout(health.timeout, u.conns.send(req, std::time::Instant::now())).await {
        Ok(Ok(resp)) => {
            let ok = resp.status().is_success() || resp.status().is_redirection();
            // Drain the (small) body so the connection goes back to the pool.
            let _ = tokio::time::timeout(
                health.timeout,
                http_body_util::BodyExt::collect(resp.into_body()),
            )
            .await;
            ok
        }
        Ok(Err(e)) => {
            tracing::debug!(upstream = %u.label, error = %e, "health check failed");
            false
        }
        Err(_) => false,
    }
}
