//! The process's life under systemd: start (READY), reload on SIGHUP (RELOADING → READY),
//! stop on SIGTERM/SIGINT or idleness (STOPPING, drain), and the watchdog.

mod fd_limit;
mod memory;
mod reload;
pub(crate) mod reload_status;
mod standby;

use crate::config::{Config, ConfigOrigin};
use crate::log::{self, LogTarget};
use crate::server::listener::{self, ListenerSet, OpenListener};
use crate::shared::Shared;
use crate::status;
use gatehouse_kit::lifecycle::{self as kit, StopReason};
use gatehouse_kit::liveness::Liveness;
use gatehouse_kit::signals::{Signal, Signals};
use gatehouse_kit::{notify, Environment, PassedSocket};
use std::collections::HashSet;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

/// EX_CONFIG (78): the configuration (or the sockets systemd passed) is wrong.
pub(crate) use gatehouse_kit::EXIT_CONFIG;

pub(crate) struct ServeOptions {
    pub(crate) origin: ConfigOrigin,
    pub(crate) log_level: Option<String>,
    pub(crate) log_target: LogTarget,
}

enum Failure {
    Config(String),
    Runtime(String),
}

pub(crate) fn run(opts: ServeOptions) -> ExitCode {
    // First, while no thread exists yet (clap ran on this one; the runtime starts below):
    // it also keeps a SIGHUP during start-up from killing the server (a reload, later).
    let env = Environment::take();
    log::init(opts.log_level.as_deref(), opts.log_target);
    for problem in &env.warnings {
        tracing::error!("{problem}");
    }
    fd_limit::raise();

    let sockets = match env.sockets {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let watch = standby::FileWatch::new(&opts.origin);
    let loaded = opts
        .origin
        .load()
        .map_err(|errors| errors.to_string())
        .and_then(|c| check_pairing(&c, &sockets).map(|()| c));
    let config = match loaded {
        Ok(c) => c,
        // Socket activation: exiting would only make systemd start us again (see standby).
        Err(errors) if !sockets.is_empty() => standby::enter(&sockets, &opts.origin, &errors),
        Err(errors) => {
            tracing::error!("configuration invalid:\n{errors}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    use_access_file_or_default(config.server.access_log_file.as_deref());
    // Its threads flush the buffered access entries whenever they run out of work.
    let runtime = match kit::build_runtime(config.server.workers) {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let signals = {
        let _in_runtime = runtime.enter();
        Signals::install()
    };
    let signals = match signals {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let start = Start {
        origin: opts.origin,
        config,
        passed: sockets,
        watchdog: env.watchdog,
        watch,
    };
    let outcome = runtime.block_on(serve(start, signals));
    log::flush_access();
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(msg)) => {
            tracing::error!("{msg}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Runtime(msg)) => {
            tracing::error!("{msg}");
            ExitCode::FAILURE
        }
    }
}

/// `server.access_log_file` at start. A file that cannot be opened must not keep the site
/// down: its entries go where they would without the key, and the error says why.
fn use_access_file_or_default(path: Option<&std::path::Path>) {
    match log::AccessFile::open(path) {
        Ok(file) => log::use_access_file(file),
        Err(e) => tracing::error!(
            "cannot open access_log_file {:?}: {e}; access entries go to the default log meanwhile",
            path.unwrap_or(std::path::Path::new(""))
        ),
    }
}

/// What `run` hands the serving runtime.
struct Start {
    origin: ConfigOrigin,
    config: Config,
    passed: Vec<PassedSocket>,
    watchdog: Option<Duration>,
    watch: standby::FileWatch,
}

async fn serve(start: Start, mut signals: Signals) -> Result<(), Failure> {
    let Start {
        origin,
        config,
        passed,
        watchdog,
        mut watch,
    } = start;
    let opened = open_listeners(&config, passed)?;
    let liveness = Liveness::new(Liveness::period_for(watchdog));
    crate::tls::log_warnings(&config);
    fd_limit::check(&config);
    let shared = Shared::new(config, liveness).map_err(|e| Failure::Config(e.to_string()))?;
    let mut listeners = ListenerSet::default();
    for open in opened {
        listeners.start(&shared, open);
    }
    let reload_file = reload_status::StatusFile::from_env();
    reload_file.started();

    // Logged before READY=1: whoever waits for READY (systemd, a test) finds the line
    // already in the log, ahead of the first request's.
    tracing::info!(
        config = %shared.snapshot.load().config.source,
        "gatehouse {} ready",
        env!("CARGO_PKG_VERSION")
    );
    notify::ready(&status::line(&status::collect(&shared)));
    let status_task = tokio::spawn(refresh_status(shared.clone()));
    let trim_task = tokio::spawn(memory::trim_when_idle(shared.clone()));
    let expiry_task = tokio::spawn(crate::tls::watch_warnings({
        let shared = shared.clone();
        move || crate::tls::log_warnings(&shared.snapshot.load().config)
    }));
    let acme_task = tokio::spawn(crate::acme::manager::run({
        let shared = shared.clone();
        move || {
            let snapshot = shared.snapshot.load();
            (snapshot.config.acme.clone(), snapshot.managed_certs.clone())
        }
    }));
    let noise_task = tokio::spawn(log::summarize_peer_noise());
    let watchdog_task = watchdog.map(|interval| {
        let liveness = shared.liveness.clone();
        tokio::spawn(gatehouse_kit::watchdog::run(interval, move || {
            let liveness = liveness.clone();
            async move { liveness.check(interval).await }
        }))
    });

    let reason = loop {
        let current = shared.snapshot.load();
        let idle_after = current.config.server.idle_exit_after;
        let standby = standby::is_standby(&current.config);
        drop(current);
        tokio::select! {
            signal = signals.recv() => match signal {
                Signal::Hangup => {}
                stop => break StopReason::Signal(stop),
            },
            () = watch.changed(), if standby => {
                tracing::info!("the configuration file changed: loading it");
            }
            idle = kit::idle_elapsed(&shared.conns, idle_after) => break StopReason::Idle(idle),
        }
        // A reload: asked for by SIGHUP, or a fix of the file while in standby.
        watch.reading();
        reload_file.reloading();
        let error = reload::reload(&origin, &shared, &mut listeners).await;
        reload_file.reloaded(error.as_deref());
        if error.is_none() {
            fd_limit::check(&shared.snapshot.load().config);
        }
    };

    drain(&shared, &mut listeners, &mut signals, &reason.to_string()).await;
    status_task.abort();
    trim_task.abort();
    expiry_task.abort();
    acme_task.abort();
    noise_task.abort();
    if let Some(t) = watchdog_task {
        t.abort();
    }
    Ok(())
}

/// Whether every socket systemd passed has its `[[listener]]`, and every listener a socket
/// or a `bind` address: what `open_listeners` needs.
fn check_pairing(config: &Config, passed: &[PassedSocket]) -> Result<(), String> {
    let mut served = HashSet::new();
    for socket in passed {
        let Some(name) = listener::listener_for_passed(config, &socket.name) else {
            return Err(format!(
                "{socket} passed by systemd is not claimed by any [[listener]]; add [[listener]] name = {:?} or change FileDescriptorName= in the .socket unit",
                socket.name
            ));
        };
        served.insert(name);
    }
    match config
        .listeners
        .iter()
        .find(|l| l.bind.is_empty() && !served.contains(l.name.as_str()))
    {
        Some(l) => Err(format!(
            "listener {:?} received no socket from systemd and has no `bind` address",
            l.name
        )),
        None => Ok(()),
    }
}

/// Pairs every passed socket with its `[[listener]]` and binds listeners that got none.
fn open_listeners(
    config: &Config,
    passed: Vec<PassedSocket>,
) -> Result<Vec<OpenListener>, Failure> {
    check_pairing(config, &passed).map_err(Failure::Config)?;
    let mut opened = Vec::new();
    let mut served = HashSet::new();
    for socket in passed {
        let name = listener::listener_for_passed(config, &socket.name)
            .unwrap_or_default()
            .to_owned();
        served.insert(name.clone());
        let desc = socket.to_string();
        opened.push(
            listener::adopt(socket, name)
                .map_err(|e| Failure::Runtime(format!("cannot use {desc}: {e}")))?,
        );
    }
    for l in config
        .listeners
        .iter()
        .filter(|l| !served.contains(&l.name))
    {
        for addr in &l.bind {
            opened.push(listener::bind(&l.name, addr).map_err(|e| {
                Failure::Runtime(format!(
                    "cannot listen on {addr} for listener {:?}: {e}",
                    l.name
                ))
            })?);
        }
    }
    Ok(opened)
}

async fn refresh_status(shared: Arc<Shared>) {
    loop {
        let every = shared.snapshot.load().config.server.status_interval;
        tokio::time::sleep(every).await;
        notify::status(&status::line(&status::collect(&shared)));
    }
}

/// STOPPING=1, stop accepting, let in-flight requests finish within `shutdown_timeout`.
async fn drain(shared: &Shared, listeners: &mut ListenerSet, signals: &mut Signals, reason: &str) {
    let timeout = shared.snapshot.load().config.server.shutdown_timeout;
    kit::begin_stop(&shared.conns, reason);
    // Closing our copies of systemd's sockets leaves them listening in systemd: clients
    // that connect now wait in the backlog for the next instance. Admin listeners stay
    // until the end, so the drain can be watched.
    let snapshot = shared.snapshot.load_full();
    listeners
        .stop_where(|name, _| !snapshot.config.is_admin_listener(name))
        .await;
    kit::wait_drained(&shared.conns, signals, timeout, reason).await;
    listeners.stop_all().await;
    tracing::info!("stopped");
}
