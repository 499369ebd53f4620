//! Serving an axum [`Router`] the systemd way (feature `axum`).
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use gatehouse_kit::server::Server;
//! use std::time::Duration;
//!
//! fn main() -> std::process::ExitCode {
//!     let app = Router::new()
//!         .route("/", get(|| async { "hello\n" }))
//!         .route("/healthz", get(|| async { "ok\n" }));
//!     Server::new("hello")
//!         .fallback_listen("127.0.0.1:3000")
//!         .health_path("/healthz")
//!         .idle_exit_after(Duration::from_secs(60))
//!         .on_reload(|| async { Ok(()) /* re-read your settings here */ })
//!         .run(app)
//! }
//! ```
//!
//! The life of that process under `hello.socket` + `hello.service` (`Type=notify`):
//!
//! 1. **Start.** The sockets systemd passed are taken (strictly: `LISTEN_PID` must be this
//!    process; each fd must be a listening stream socket); run by hand, the fallback
//!    addresses are bound instead. The open-file limit is raised to the hard limit.
//! 2. **READY=1** once every socket accepts. With a [`health_path`](Server::health_path),
//!    nothing is accepted before the router answers it with a 2xx (asked in-process, not
//!    over the network): the request that made systemd start the service waits in the
//!    socket's backlog meanwhile, and `STATUS=` says what the start waits for. Then
//!    `STATUS=` counts open connections and requests served.
//! 3. **Watchdog.** With `WatchdogSec=`, `WATCHDOG=1` every half interval, only while the
//!    runtime runs tasks promptly, every accept loop is alive and the health path answers.
//! 4. **SIGHUP** runs the [`on_reload`](Server::on_reload) hook between `RELOADING=1`
//!    (with `MONOTONIC_USEC=`, for `Type=notify-reload`) and `READY=1`.
//! 5. **Stop.** On SIGTERM/SIGINT, or after [`idle_exit_after`](Server::idle_exit_after)
//!    with no connection open: `STOPPING=1`, no more accepting (systemd keeps the socket
//!    and queues new clients for the next start), open connections finish their requests
//!    (HTTP/1 keep-alive and HTTP/2 are closed gracefully) within the
//!    [`shutdown_timeout`](Server::shutdown_timeout), `EXTEND_TIMEOUT_USEC=` each second
//!    so systemd waits for it; a second signal exits at once. Upgraded connections
//!    (WebSockets) count as open until they close.
//! 6. **Exit status** 0 after a stop, 78 (`EX_CONFIG`) when the sockets or addresses are
//!    wrong (`RestartPreventExitStatus=78`), 1 on other failures.
//!
//! Every request is logged by the [`AccessLogLayer`](crate::access::AccessLogLayer) around
//! the whole router, as journal fields under systemd.

mod conn;
mod listen;

pub use listen::ListenAddr;

use crate::activation::{assign_roles, PassedSocket};
use crate::connections::Connections;
use crate::lifecycle::{self, StopReason, EXIT_CONFIG};
use crate::liveness::Liveness;
use crate::log::{LogOptions, LogTarget};
use crate::notify;
use crate::signals::{Signal, Signals};
use crate::Environment;
use axum::Router;
use conn::ConnShared;
use listen::{Listeners, OpenListener};
use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

type ReloadHook =
    Box<dyn FnMut() -> Pin<Box<dyn Future<Output = Result<(), String>> + Send>> + Send>;

/// A builder for serving a [`Router`] under systemd. See the [module docs](self).
pub struct Server {
    log: LogOptions,
    fallback: Vec<String>,
    fd_names: Vec<String>,
    idle_exit_after: Option<Duration>,
    shutdown_timeout: Duration,
    header_read_timeout: Duration,
    health_path: Option<String>,
    max_connections: usize,
    workers: usize,
    access_log: bool,
    status_interval: Duration,
    reload: Option<ReloadHook>,
}

/// Why [`Server::serve`] failed.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The sockets systemd passed or the fallback addresses are wrong: fix the unit or
    /// the code; exit with [`EXIT_CONFIG`] so systemd does not restart into it.
    #[error("{0}")]
    Config(String),
    /// Anything else (an address in use, no signal handlers).
    #[error("{0}")]
    Runtime(String),
}

impl ServeError {
    /// 78 for [`ServeError::Config`], 1 otherwise.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ServeError::Config(_) => ExitCode::from(EXIT_CONFIG),
            ServeError::Runtime(_) => ExitCode::FAILURE,
        }
    }
}

impl Server {
    /// A server called `name`: the `SYSLOG_IDENTIFIER` of its journal entries.
    pub fn new(name: &str) -> Server {
        Server {
            log: LogOptions::new(name),
            fallback: Vec::new(),
            fd_names: Vec::new(),
            idle_exit_after: None,
            shutdown_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            health_path: None,
            max_connections: 10_000,
            workers: 0,
            access_log: true,
            status_interval: Duration::from_secs(10),
            reload: None,
        }
    }

    /// An address to listen on when systemd passed no socket (run by hand, or under a
    /// plain `.service`): `127.0.0.1:3000`, `[::]:8080`, `unix:/run/app/app.sock`. May be
    /// given several times. Ignored when systemd passed sockets.
    pub fn fallback_listen(mut self, addr: &str) -> Server {
        self.fallback.push(addr.to_owned());
        self
    }

    /// Serve only the passed sockets with this `FileDescriptorName=`; a passed socket with
    /// another name is then an error at start (exit 78) instead of silently served. May be
    /// given several times. Without it every passed socket is served.
    pub fn fd_name(mut self, name: &str) -> Server {
        self.fd_names.push(name.to_owned());
        self
    }

    /// Exit (status 0) once no connection has been open for `after`; systemd starts the
    /// service again on the next connection. `Duration::ZERO` (the default) never exits.
    pub fn idle_exit_after(mut self, after: Duration) -> Server {
        self.idle_exit_after = (!after.is_zero()).then_some(after);
        self
    }

    /// How long a stop waits for open connections (default 30 s). Longer than the unit's
    /// `TimeoutStopSec=` is fine: the drain sends `EXTEND_TIMEOUT_USEC=`.
    pub fn shutdown_timeout(mut self, timeout: Duration) -> Server {
        self.shutdown_timeout = timeout;
        self
    }

    /// How long a client may take to send a request head (default 30 s; HTTP/1).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Server {
        self.header_read_timeout = timeout;
        self
    }

    /// A path of the router that answers 2xx when the service can serve (a database
    /// reachable, caches loaded). READY=1 waits for it, and the watchdog pings only while
    /// it answers. It is called in-process and is not access-logged.
    pub fn health_path(mut self, path: &str) -> Server {
        self.health_path = Some(path.to_owned());
        self
    }

    /// At most this many connections at once (default 10 000); more wait in the backlog.
    pub fn max_connections(mut self, max: usize) -> Server {
        self.max_connections = max.max(1);
        self
    }

    /// Runtime worker threads for [`run`](Self::run): 0 (the default) = one per CPU,
    /// 1 = a current-thread runtime.
    pub fn workers(mut self, workers: usize) -> Server {
        self.workers = workers;
        self
    }

    /// Whether to log every request (default true).
    pub fn access_log(mut self, enabled: bool) -> Server {
        self.access_log = enabled;
        self
    }

    /// How often `STATUS=` is refreshed (default 10 s).
    pub fn status_interval(mut self, every: Duration) -> Server {
        self.status_interval = every.max(Duration::from_millis(10));
        self
    }

    /// The log filter for [`run`](Self::run) (`info`, `hello=debug`); default `RUST_LOG`,
    /// else `info`.
    pub fn log_filter(mut self, filter: &str) -> Server {
        self.log.filter = Some(filter.to_owned());
        self
    }

    /// Where [`run`](Self::run) logs (default: journald under systemd, else stderr).
    pub fn log_target(mut self, target: LogTarget) -> Server {
        self.log.target = target;
        self
    }

    /// What SIGHUP does (`systemctl reload`). `Err(reason)` keeps the service running as
    /// it was and logs the reason. Without a hook, SIGHUP is acknowledged and changes
    /// nothing.
    pub fn on_reload<F, Fut>(mut self, mut hook: F) -> Server
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        self.reload = Some(Box::new(move || Box::pin(hook())));
        self
    }

    /// Takes the [`Environment`], sets up logging, builds the runtime and serves `router`
    /// until stopped; returns the exit status. Call it from a plain `fn main` (not under
    /// `#[tokio::main]`), before any other thread starts.
    pub fn run(self, router: Router) -> ExitCode {
        let env = Environment::take();
        crate::log::init(&self.log);
        for warning in &env.warnings {
            tracing::warn!("{warning}");
        }
        let runtime = match lifecycle::build_runtime(self.workers) {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!("cannot start the async runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        let outcome = runtime.block_on(self.serve(router, env));
        drop(runtime);
        crate::log::flush_access();
        match outcome {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!("{e}");
                crate::log::flush_access();
                e.exit_code()
            }
        }
    }

    /// Serves `router` on the sockets of `env` until stopped, on the current tokio
    /// runtime (for a program that builds its own; [`run`](Self::run) does all of it).
    pub async fn serve(mut self, router: Router, env: Environment) -> Result<(), ServeError> {
        // Before anything else: SIGHUP's default action would kill us.
        let mut signals = Signals::install()
            .map_err(|e| ServeError::Runtime(format!("cannot install signal handlers: {e}")))?;
        raise_open_file_limit(self.max_connections);
        let passed = env.sockets.map_err(|e| ServeError::Config(e.to_string()))?;
        let opened = self.open_listeners(passed)?;
        let conns = Arc::new(Connections::new(self.max_connections));
        let liveness = Liveness::new(Liveness::period_for(env.watchdog));
        let shared = Arc::new(ConnShared {
            conns: conns.clone(),
            router: router.clone(),
            access_log: self.access_log,
            http: http_builder(self.header_read_timeout),
            requests: Default::default(),
            reload_error: Default::default(),
        });
        // Not accepting until healthy: the request that made systemd start us waits in
        // the socket's backlog rather than meeting an app that cannot serve it yet.
        let early_stop = match &self.health_path {
            Some(path) => wait_until_healthy(&router, path, &mut signals).await,
            None => None,
        };
        let mut listeners = Listeners::default();
        for open in opened {
            let heartbeat = liveness.register(format!("accept loop on {}", open.description));
            listeners.start(&shared, open, heartbeat);
        }
        let mut status_task = None;
        let mut watchdog_task = None;
        let reason = match early_stop {
            Some(signal) => StopReason::Signal(signal),
            None => {
                // Logged before READY=1: whoever waits for READY (systemd, a test) finds the
                // line already in the log, ahead of the first request's.
                let addresses: Vec<&str> = listeners.descriptions().collect();
                tracing::info!(listening = %addresses.join(", "), "{} ready", self.log.identifier);
                notify::ready(&status_line(&shared));
                status_task = Some(tokio::spawn(refresh_status(
                    shared.clone(),
                    self.status_interval,
                )));
                watchdog_task = env.watchdog.map(|interval| {
                    tokio::spawn(watch(
                        interval,
                        liveness.clone(),
                        router.clone(),
                        self.health_path.clone(),
                    ))
                });
                loop {
                    tokio::select! {
                        signal = signals.recv() => match signal {
                            Signal::Hangup => {
                                let work = self.reload.as_mut().map(|hook| hook());
                                lifecycle::reload(
                                    async move { match work { Some(w) => w.await, None => Ok(()) } },
                                    |outcome| {
                                        *shared.reload_error.lock().unwrap_or_else(|e| e.into_inner()) =
                                            outcome.as_ref().err().cloned();
                                        status_line(&shared)
                                    },
                                ).await.ok();
                            }
                            stop => break StopReason::Signal(stop),
                        },
                        idle = lifecycle::idle_elapsed(&conns, self.idle_exit_after) => {
                            break StopReason::Idle(idle);
                        }
                    }
                }
            }
        };

        let reason = reason.to_string();
        lifecycle::begin_stop(&conns, &reason);
        let connection_tasks = listeners.stop_all().await;
        lifecycle::wait_drained(&conns, &mut signals, self.shutdown_timeout, &reason).await;
        // Whatever is still open is cut here.
        drop(connection_tasks);
        for task in [status_task, watchdog_task].into_iter().flatten() {
            task.abort();
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// The passed sockets (those of our `fd_name`s), or else the fallback addresses.
    fn open_listeners(&self, passed: Vec<PassedSocket>) -> Result<Vec<OpenListener>, ServeError> {
        let passed = if self.fd_names.is_empty() {
            passed
        } else {
            let names: Vec<&str> = self.fd_names.iter().map(String::as_str).collect();
            assign_roles(passed, &names)
                .map_err(|e| ServeError::Config(e.to_string()))?
                .into_values()
                .flatten()
                .collect()
        };
        if !passed.is_empty() {
            return passed
                .into_iter()
                .map(|socket| {
                    let desc = socket.to_string();
                    listen::adopt(socket)
                        .map_err(|e| ServeError::Runtime(format!("cannot use {desc}: {e}")))
                })
                .collect();
        }
        if self.fallback.is_empty() {
            return Err(ServeError::Config(
                "no socket from systemd (LISTEN_FDS) and no fallback address: start it through its .socket unit, or give Server::fallback_listen".to_owned(),
            ));
        }
        let mut opened = Vec::new();
        for text in &self.fallback {
            let addr: ListenAddr = text.parse().map_err(ServeError::Config)?;
            opened.push(
                listen::bind(&addr)
                    .map_err(|e| ServeError::Runtime(format!("cannot listen on {addr}: {e}")))?,
            );
        }
        Ok(opened)
    }
}

fn http_builder(
    header_read_timeout: Duration,
) -> hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor> {
    let mut builder =
        hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    builder.http2().timer(hyper_util::rt::TokioTimer::new());
    builder
}

/// Raises the soft open-file limit; warns when even the hard limit cannot hold
/// `max_connections` (each is one fd, plus a few for the process itself).
fn raise_open_file_limit(max_connections: usize) {
    match crate::rlimit::raise_nofile() {
        Ok(limit) => {
            if limit.soft != limit.before {
                tracing::debug!(from = limit.before, to = limit.soft, "raised RLIMIT_NOFILE");
            }
            let needed = max_connections as u64 + 64;
            if limit.soft < needed {
                tracing::warn!(
                    limit = limit.soft,
                    max_connections,
                    "the open-file limit is below max_connections; raise LimitNOFILE= in the unit"
                );
            }
        }
        Err(e) => tracing::warn!(error = %e, "cannot raise RLIMIT_NOFILE"),
    }
}

/// Asks the router for `path` in-process, as the readiness and liveness check.
async fn probe(router: &Router, path: &str) -> Result<(), String> {
    let request = http::Request::get(path)
        .header(http::header::HOST, "localhost")
        .body(axum::body::Body::empty())
        .map_err(|e| format!("health path {path:?}: {e}"))?;
    let response = match tower_service::Service::call(&mut router.clone(), request).await {
        Ok(r) => r,
        Err(never) => match never {},
    };
    if response.status().is_success() {
        Ok(())
    } else {
        Err(format!("GET {path} answered {}", response.status()))
    }
}

/// Polls the health path until it answers 2xx (systemd's `TimeoutStartSec=` bounds the
/// wait); `Some(signal)` if a stop was asked for meanwhile.
async fn wait_until_healthy(router: &Router, path: &str, signals: &mut Signals) -> Option<Signal> {
    let mut wait = Duration::from_millis(20);
    let mut logged = false;
    loop {
        match probe(router, path).await {
            Ok(()) => return None,
            Err(why) => {
                notify::status(&format!("starting: {why}"));
                if !logged {
                    tracing::info!("waiting for the health check before READY: {why}");
                    logged = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            s = signals.recv_stop() => return Some(s),
        }
        wait = (wait * 2).min(Duration::from_secs(1));
    }
}

/// The watchdog: pings while the runtime, the accept loops and the health path are alive.
async fn watch(
    interval: Duration,
    liveness: Liveness,
    router: Router,
    health_path: Option<String>,
) {
    crate::watchdog::run(interval, move || {
        let liveness = liveness.clone();
        let router = router.clone();
        let health_path = health_path.clone();
        async move {
            liveness.check(interval).await?;
            match health_path {
                Some(path) => tokio::time::timeout(interval / 2, probe(&router, &path))
                    .await
                    .map_err(|_| format!("GET {path} did not answer within {:?}", interval / 2))?,
                None => Ok(()),
            }
        }
    })
    .await;
}

/// The `STATUS=` line: `3 connections open, 1207 requests served`, and the last reload's
/// failure until a reload succeeds.
fn status_line(shared: &ConnShared) -> String {
    let mut line = format!(
        "{} connections open, {} requests served",
        shared.conns.open(),
        shared.requests.load(Ordering::Relaxed)
    );
    if let Some(e) = &*shared
        .reload_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
    {
        line.push_str("; reload FAILED: ");
        line.push_str(e.lines().next().unwrap_or(e));
    }
    line
}

async fn refresh_status(shared: Arc<ConnShared>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        notify::status(&status_line(&shared));
    }
}
