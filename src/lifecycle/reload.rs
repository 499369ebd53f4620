//! SIGHUP: re-read the configuration and swap it in without dropping a connection.
//! A configuration that fails validation or whose new sockets cannot be bound changes nothing.

use crate::config::{BindAddr, Config, ConfigErrors, ConfigOrigin};
use crate::server::listener::{self, ListenerSet, OpenListener, Origin};
use crate::shared::ReloadOutcome;
use crate::shared::Shared;
use crate::status;
use gatehouse_kit::notify;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::SystemTime;

/// Why a reload was refused; the previous configuration keeps serving. The messages are
/// what the journal, STATUS= and `gatehouse reload` show.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReloadError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("the new configuration has no [[listener]] named {fd_name:?} for the socket systemd passed; listeners of passed sockets cannot be removed by a reload")]
    PassedSocketUnclaimed { fd_name: String },
    #[error("listener {0:?} has no socket from systemd and no `bind` address")]
    NoSocket(String),
    #[error("{addr} moves from listener {from:?} to {to:?}; moving an address between listeners needs a restart")]
    AddressMoves {
        addr: BindAddr,
        from: String,
        to: String,
    },
    #[error("cannot listen on {addr} for listener {listener:?}: {source}")]
    Bind {
        addr: BindAddr,
        listener: String,
        source: std::io::Error,
    },
    #[error("cannot open access_log_file {path:?}: {source}")]
    AccessLogFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Build(#[from] crate::snapshot::BuildError),
}

pub(crate) async fn reload(
    origin: &ConfigOrigin,
    shared: &Arc<Shared>,
    listeners: &mut ListenerSet,
) -> Option<String> {
    notify::reloading();
    tracing::info!("reloading configuration");
    let result = try_reload(origin, shared, listeners).await;
    match &result {
        Ok(()) => tracing::info!(
            config = %shared.snapshot.load().config.source,
            "configuration reloaded"
        ),
        Err(e) => tracing::error!("reload refused, still serving the previous configuration:\n{e}"),
    }
    shared.metrics.reload(result.is_ok());
    let error = result.err().map(|e| e.to_string());
    *shared.last_reload.lock().unwrap_or_else(|e| e.into_inner()) = Some(ReloadOutcome {
        at: SystemTime::now(),
        error: error.clone(),
    });
    // READY=1 ends the reload for systemd either way; STATUS tells whether it took.
    notify::ready(&status::line(&status::collect(shared)));
    error
}

async fn try_reload(
    origin: &ConfigOrigin,
    shared: &Arc<Shared>,
    listeners: &mut ListenerSet,
) -> Result<(), ReloadError> {
    let config = origin.load()?;
    let plan = plan_listeners(&config, listeners)?;
    let log_path = config.server.access_log_file.as_deref();
    let access_file =
        crate::log::AccessFile::open(log_path).map_err(|source| ReloadError::AccessLogFile {
            path: log_path.unwrap_or(std::path::Path::new("")).to_owned(),
            source,
        })?;
    crate::tls::log_warnings(&config);
    let snapshot = shared.snapshot_for(config)?;

    let mut opened: Vec<OpenListener> = Vec::new();
    for (name, addr) in &plan.bind {
        match listener::bind(name, addr) {
            Ok(l) => opened.push(l),
            Err(e) => {
                for l in opened {
                    if let Origin::Bound(BindAddr::Unix(path)) = &l.origin {
                        let _ = std::fs::remove_file(path);
                    }
                }
                return Err(ReloadError::Bind {
                    addr: addr.clone(),
                    listener: name.clone(),
                    source: e,
                });
            }
        }
    }

    let max_connections = snapshot.config.server.max_connections;
    let admin_max_connections = snapshot.config.server.admin_max_connections;
    shared.snapshot.store(Arc::new(snapshot));
    crate::log::use_access_file(access_file);
    crate::acme::config_changed();
    shared
        .conns
        .set_limit(max_connections, admin_max_connections);
    for l in opened {
        listeners.start(shared, l);
    }
    let stop = plan.stop;
    listeners
        .stop_where(|name, origin| match origin {
            Origin::Bound(addr) => stop.contains(&(name.to_owned(), addr.clone())),
            Origin::Passed { .. } => false,
        })
        .await;
    Ok(())
}

struct ListenerPlan {
    bind: Vec<(String, BindAddr)>,
    stop: HashSet<(String, BindAddr)>,
}

/// Sockets systemd passed stay as they are; only `bind` listeners may come and go.
fn plan_listeners(config: &Config, running: &ListenerSet) -> Result<ListenerPlan, ReloadError> {
    let mut with_passed = HashSet::new();
    for fd_name in running.passed_fd_names() {
        match listener::listener_for_passed(config, fd_name) {
            Some(name) => {
                with_passed.insert(name.to_owned());
            }
            None => {
                return Err(ReloadError::PassedSocketUnclaimed {
                    fd_name: fd_name.to_owned(),
                })
            }
        }
    }
    let mut wanted = HashSet::new();
    for l in config
        .listeners
        .iter()
        .filter(|l| !with_passed.contains(&l.name))
    {
        if l.bind.is_empty() {
            return Err(ReloadError::NoSocket(l.name.clone()));
        }
        for addr in &l.bind {
            wanted.insert((l.name.clone(), addr.clone()));
        }
    }
    let current: HashSet<(String, BindAddr)> = running
        .bound()
        .map(|(n, a)| (n.to_owned(), a.clone()))
        .collect();
    let bind: Vec<_> = wanted.difference(&current).cloned().collect();
    let stop: HashSet<_> = current.difference(&wanted).cloned().collect();
    for (name, addr) in &bind {
        if let Some((old, _)) = stop.iter().find(|(_, a)| a == addr) {
            return Err(ReloadError::AddressMoves {
                addr: addr.clone(),
                from: old.clone(),
                to: name.clone(),
            });
        }
    }
    Ok(ListenerPlan { bind, stop })
}
