//! `gatehouse deploy APP INSTANCE`: blue/green under systemd. Run by root; it talks to
//! systemd (`systemd`) and to the running gatehouse over its admin listener (`client`,
//! `crate::apps::endpoints`):
//!
//! 1. start `APP@INSTANCE.socket`;
//! 2. GET the app's `health_check_path` on the instance's own socket (which starts the
//!    service) until it answers 2xx, within `deploy_timeout`;
//! 3. switch the app's live instance in gatehouse (new requests go there; those in flight
//!    finish on the old one), and enable the new socket so a reboot keeps it;
//! 4. wait up to `drain_timeout` for the old instance's requests, then stop and disable
//!    its socket and service.
//!
//! If step 2 fails, nothing switches: the new instance is stopped, its journal shown, and
//! the exit status is 1. Deploying the previous instance again is the rollback.

pub(crate) mod client;
mod lock;
pub(crate) mod systemd;

use crate::apps::endpoints::{SwitchAnswer, SwitchRequest};
use crate::apps::{AppReport, DeployRecord};
use client::ClientError;
use http::Method;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

/// What `deploy` needs to know.
#[derive(Debug, Clone)]
pub(crate) struct DeployOptions {
    pub(crate) app: String,
    pub(crate) instance: String,
    /// The admin listener: a unix socket path or IP:PORT.
    pub(crate) admin: String,
    /// Started when the admin listener does not answer (gatehouse exited when idle).
    pub(crate) service: String,
    pub(crate) deploy_timeout: Option<Duration>,
    pub(crate) drain_timeout: Option<Duration>,
    /// The units are not systemd's to start and stop: the instance already runs (started
    /// some other way); only check, switch and drain.
    pub(crate) no_systemd: bool,
}

/// EX_UNAVAILABLE, as `gatehouse status` uses it.
const EXIT_UNREACHABLE: u8 = 69;

pub(crate) fn main(opts: DeployOptions) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("gatehouse deploy: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(&opts))
}

async fn run(opts: &DeployOptions) -> ExitCode {
    let say = |msg: &str| println!("deploy {}: {msg}", opts.app);
    if !crate::apps::valid_name(&opts.app) || !crate::apps::valid_name(&opts.instance) {
        eprintln!(
            "gatehouse deploy: app and instance names are letters, digits, _ - . : (at most 64)"
        );
        return ExitCode::from(2);
    }
    // Held until this deploy ends: a rollback started while an earlier deploy still drains
    // would otherwise be undone by it (it stops what it retires, live again or not).
    let _lock = match lock::exclusive(&opts.app) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("gatehouse deploy: {e}");
            return ExitCode::FAILURE;
        }
    };
    let report = match app_report(opts).await {
        Ok(r) => r,
        Err((code, e)) => {
            eprintln!("gatehouse deploy: {e}");
            return ExitCode::from(code);
        }
    };
    let new = Unit::new(&opts.app, &opts.instance);
    if report.live.as_deref() == Some(opts.instance.as_str()) {
        say(&format!("{} is already live; nothing to do", new.name));
        return ExitCode::SUCCESS;
    }
    let started = Instant::now();
    let since = SystemTime::now();
    let old = report.live.as_deref().map(|i| Unit::new(&opts.app, i));
    let checked = start_and_check(opts, &report, &new).await;
    if let Err(e) = checked {
        return refuse(opts, &report, &new, &e, since).await;
    }
    let healthy_after = started.elapsed().as_secs_f64();
    say(&format!(
        "{} answered GET {} with 2xx after {healthy_after:.1}s",
        new.name, report.health_check_path,
    ));
    let previous = match switch(opts, &new, report.live.clone()).await {
        Ok(p) => p,
        Err(e) => return refuse(opts, &report, &new, &e, since).await,
    };
    say(&format!(
        "switched: new requests go to {} (was {})",
        new.name,
        old.as_ref().map_or("none", |o| o.name.as_str())
    ));
    let enabled = if opts.no_systemd {
        Ok(())
    } else {
        systemd::systemctl(&["enable", "--quiet", &new.socket])
    };
    if let Err(e) = enabled {
        eprintln!("warning: {e} (the new instance serves, but a reboot will not start it)");
    }
    let mut detail = format!("healthy after {healthy_after:.1}s");
    if let Some(old) = previous.filter(|p| *p != opts.instance) {
        let old = Unit::new(&opts.app, &old);
        detail += &retire(opts, &report, &old).await;
    }
    let record = DeployRecord::now(report.live.clone(), &opts.instance, "ok", &detail);
    report_deploy(opts, &record).await;
    say(&format!(
        "done in {:.1}s: {} is live ({detail})",
        started.elapsed().as_secs_f64(),
        new.name
    ));
    ExitCode::SUCCESS
}

/// Steps 1 and 2: the new instance's socket started, and its answer checked.
async fn start_and_check(
    opts: &DeployOptions,
    report: &AppReport,
    new: &Unit,
) -> Result<(), String> {
    let deploy_timeout = opts
        .deploy_timeout
        .unwrap_or(Duration::from_millis(report.deploy_timeout_ms));
    let socket = crate::apps::expand(&report.socket, &opts.app, &opts.instance);
    if !opts.no_systemd {
        println!("deploy {}: starting {}", opts.app, new.socket);
        // An earlier failed attempt must not count against this one (NRestarts, start
        // limits); a unit that was never loaded has nothing to reset.
        let _ = systemd::systemctl(&["reset-failed", &new.socket, &new.service]);
        systemd::systemctl(&["start", &new.socket])?;
    }
    let service = (!opts.no_systemd).then_some(new.service.as_str());
    let path = &report.health_check_path;
    health_check(&new.name, service, &socket, path, deploy_timeout).await
}

/// `shop@v2.socket`, `shop@v2.service`.
struct Unit {
    name: String,
    socket: String,
    service: String,
}

impl Unit {
    fn new(app: &str, instance: &str) -> Unit {
        let name = format!("{app}@{instance}");
        Unit {
            socket: format!("{name}.socket"),
            service: format!("{name}.service"),
            name,
        }
    }
}

/// The app as gatehouse reports it.
async fn app_report(opts: &DeployOptions) -> Result<AppReport, (u8, String)> {
    let path = format!("/apps/{}", opts.app);
    match admin(opts, Method::GET, &path, None).await {
        Ok((status, body)) if status.is_success() => serde_json::from_slice(&body)
            .map_err(|e| (1, format!("unexpected answer from {}: {e}", opts.admin))),
        Ok((status, body)) => {
            let why = String::from_utf8_lossy(&body);
            Err((1, format!("{}: {status}: {}", opts.admin, why.trim())))
        }
        Err(e) => Err((EXIT_UNREACHABLE, e.to_string())),
    }
}

/// One request to the admin listener. If nothing listens (gatehouse exited when idle, and
/// its admin socket with it), the service is started and the request tried again.
async fn admin(
    opts: &DeployOptions,
    method: Method,
    path: &str,
    body: Option<Vec<u8>>,
) -> Result<(http::StatusCode, bytes::Bytes), ClientError> {
    let ask = || {
        client::request(
            &opts.admin,
            method.clone(),
            path,
            "admin",
            body.clone(),
            Duration::from_secs(10),
        )
    };
    let first = ask().await;
    let Err(ClientError::Unreachable(why)) = first else {
        return first;
    };
    println!("deploy {}: {why}; starting {}", opts.app, opts.service);
    if let Err(e) = systemd::systemctl(&["start", &opts.service]) {
        return Err(ClientError::Unreachable(format!("{why}; {e}")));
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match ask().await {
            Err(ClientError::Unreachable(_)) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

/// Polls the instance's socket until it answers 2xx; fails early when its service failed.
/// `service`: the unit to watch for a failed start (none without systemd). An app that
/// never accepts (it failed to load) leaves the check's connection waiting in the socket's
/// backlog, so the service's state is watched while each attempt waits.
async fn health_check(
    name: &str,
    service: Option<&str>,
    socket: &str,
    path: &str,
    timeout: Duration,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut last = String::from("no answer yet");
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "{name} did not answer GET {path} with 2xx within {}: {last}",
                humantime::format_duration(timeout)
            ));
        }
        // Host: localhost, as a local check; apps that check Host must allow it.
        let probe = client::request(socket, Method::GET, path, "localhost", None, left);
        tokio::pin!(probe);
        let answer = loop {
            tokio::select! {
                r = &mut probe => break Some(r),
                _ = tokio::time::sleep(Duration::from_millis(250)) => {
                    if service.is_some_and(systemd::start_failed) {
                        break None;
                    }
                }
            }
        };
        match answer {
            Some(Ok((status, _))) if status.is_success() => return Ok(()),
            Some(Ok((status, _))) => last = format!("last answer {status}"),
            Some(Err(e)) => last = e.to_string(),
            None => {}
        }
        if let Some(service) = service.filter(|s| systemd::start_failed(s)) {
            return Err(format!("{service} failed to start ({last})"));
        }
        tokio::time::sleep(Duration::from_millis(100).min(left)).await;
    }
}

/// `expect`: the instance live when the deploy began.
async fn switch(
    opts: &DeployOptions,
    new: &Unit,
    expect: Option<String>,
) -> Result<Option<String>, String> {
    let body = serde_json::to_vec(&SwitchRequest {
        instance: opts.instance.clone(),
        expect: Some(expect),
    })
    .map_err(|e| e.to_string())?;
    let path = format!("/apps/{}/switch", opts.app);
    match admin(opts, Method::POST, &path, Some(body)).await {
        Ok((status, body)) if status.is_success() => serde_json::from_slice::<SwitchAnswer>(&body)
            .map(|a| a.previous)
            .map_err(|e| format!("unexpected answer from {}: {e}", opts.admin)),
        Ok((status, body)) => Err(format!(
            "gatehouse refused to switch to {}: {status}: {}",
            new.name,
            String::from_utf8_lossy(&body).trim()
        )),
        Err(e) => Err(format!("cannot switch to {}: {e}", new.name)),
    }
}

/// The deploy failed before the switch: stop the new instance, show why, exit 1.
async fn refuse(
    opts: &DeployOptions,
    report: &AppReport,
    new: &Unit,
    why: &str,
    since: SystemTime,
) -> ExitCode {
    eprintln!("deploy {}: FAILED: {why}", opts.app);
    // Another deploy may have made this very instance live meanwhile: then it stays. So it
    // does when gatehouse cannot say (a switch that timed out may have taken effect).
    let now_live = app_report(opts).await.map(|r| r.live);
    let live = report.live.as_deref().unwrap_or("no instance");
    if let Err((_, e)) = &now_live {
        eprintln!(
            "deploy {}: cannot tell which instance is live ({e}): {} left running; check `gatehouse status`",
            opts.app, new.name
        );
    } else if now_live
        .as_ref()
        .is_ok_and(|l| l.as_deref() == Some(opts.instance.as_str()))
    {
        eprintln!(
            "deploy {}: {} is live (another deploy): left running",
            opts.app, new.name
        );
    } else if opts.no_systemd {
        eprintln!(
            "deploy {}: nothing switched: {live} keeps serving",
            opts.app
        );
    } else {
        if let Err(e) = systemd::systemctl(&["stop", &new.socket, &new.service]) {
            eprintln!("warning: {e}");
        }
        // A failed start leaves the units "failed"; the next attempt starts clean.
        let _ = systemd::systemctl(&["reset-failed", &new.socket, &new.service]);
        eprintln!(
            "--- journalctl -u {} (since the deploy began) ---",
            new.service
        );
        eprint!("{}", systemd::journal_tail(&new.service, since, 30));
        eprintln!("---");
        eprintln!(
            "deploy {}: nothing switched: {live} keeps serving; {} stopped",
            opts.app, new.name
        );
    }
    let record = DeployRecord::now(report.live.clone(), &opts.instance, "failed", why);
    report_deploy(opts, &record).await;
    ExitCode::FAILURE
}

/// Waits (bounded) for the old instance's requests, then stops and disables it.
async fn retire(opts: &DeployOptions, report: &AppReport, old: &Unit) -> String {
    let limit = opts
        .drain_timeout
        .unwrap_or(Duration::from_millis(report.drain_timeout_ms));
    let waited = Instant::now();
    let path = format!("/apps/{}", opts.app);
    let instance = old.name.split_once('@').map_or("", |(_, i)| i);
    // Unknown until gatehouse answers: a failed poll must not read as "drained".
    let mut left_over = usize::MAX;
    loop {
        match admin(opts, Method::GET, &path, None).await {
            Ok((status, body)) if status.is_success() => {
                if let Ok(r) = serde_json::from_slice::<AppReport>(&body) {
                    // Made live again meanwhile (a switch by hand): it must keep serving.
                    if r.live.as_deref() == Some(instance) {
                        println!(
                            "deploy {}: {} is live again (switched meanwhile): left running",
                            opts.app, old.name
                        );
                        return format!(", {} live again", old.name);
                    }
                    left_over = r.in_flight(instance);
                }
            }
            // gatehouse has exited (idle): nothing of the old instance's is in flight.
            Err(ClientError::Unreachable(_)) => left_over = 0,
            _ => {}
        }
        if left_over == 0 || waited.elapsed() >= limit {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = waited.elapsed().as_secs_f64();
    match left_over {
        0 => println!("deploy {}: {} finished its requests in {drained:.1}s", opts.app, old.name),
        usize::MAX => println!(
            "deploy {}: gatehouse did not report {}'s requests for {drained:.1}s (drain_timeout); stopping it anyway",
            opts.app, old.name
        ),
        n => println!(
            "deploy {}: {} still has {n} request(s) after {drained:.1}s (drain_timeout); stopping it anyway",
            opts.app, old.name
        ),
    }
    if opts.no_systemd {
        return format!(", {} drained in {drained:.1}s", old.name);
    }
    let stopped = systemd::systemctl(&["stop", &old.socket, &old.service])
        .and_then(|()| systemd::systemctl(&["disable", "--quiet", &old.socket]));
    match stopped {
        Ok(()) => println!("deploy {}: stopped and disabled {}", opts.app, old.socket),
        Err(e) => eprintln!("warning: {e}"),
    }
    format!(", {} drained in {drained:.1}s", old.name)
}

/// Tells gatehouse how the deploy ended (`gatehouse status` shows it); best effort.
async fn report_deploy(opts: &DeployOptions, record: &DeployRecord) {
    let Ok(body) = serde_json::to_vec(record) else {
        return;
    };
    let path = format!("/apps/{}/deploys", opts.app);
    match admin(opts, Method::POST, &path, Some(body)).await {
        Ok((status, _)) if status.is_success() => {}
        Ok((status, _)) => eprintln!("warning: recording the deploy: {status}"),
        Err(e) => eprintln!("warning: recording the deploy: {e}"),
    }
}
