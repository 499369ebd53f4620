//! The one-line STATUS= that `systemctl status gatehouse` shows.

use crate::server::Shared;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

#[derive(Debug, Clone)]
pub struct ReloadOutcome {
    pub at: SystemTime,
    pub error: Option<String>,
}

pub type LastReload = Arc<Mutex<Option<ReloadOutcome>>>;

pub fn line(shared: &Shared, last_reload: &LastReload) -> String {
    let open = shared.conns.open();
    let requests = shared.requests.load(Ordering::Relaxed);
    let mut s = format!(
        "{open} connection{} open, {requests} request{} served",
        plural(open as u64),
        plural(requests)
    );
    if let Some((up, total)) = crate::proxy::upstreams_up(&shared.snapshot.load().config) {
        s.push_str(&format!("; upstreams {up}/{total} up"));
    }
    let last = last_reload
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    match last {
        None => {}
        Some(ReloadOutcome { at, error: None }) => {
            s.push_str(&format!(
                "; reload ok at {}",
                humantime::format_rfc3339_seconds(at)
            ));
        }
        Some(ReloadOutcome { at, error: Some(e) }) => {
            let first_line = e.lines().next().unwrap_or("");
            let short: String = first_line.chars().take(160).collect();
            s.push_str(&format!(
                "; reload FAILED at {}, serving previous config: {short}",
                humantime::format_rfc3339_seconds(at)
            ));
        }
    }
    s
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
