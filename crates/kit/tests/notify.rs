//! sd_notify from a real process to a real NOTIFY_SOCKET: every state the kit sends, on a
//! path and an abstract socket; addresses it must refuse, refused aloud.

mod common;
use common::*;
use gatehouse_kit::{notify, Environment};
use std::process::ExitCode;
use std::time::Duration;

fn main() -> ExitCode {
    common::main(
        &[
            (
                "every_state_reaches_a_path_socket",
                every_state_reaches_a_path_socket,
            ),
            ("an_abstract_socket_works_too", an_abstract_socket_works_too),
            (
                "a_relative_path_is_refused_and_said_so",
                a_relative_path_is_refused_and_said_so,
            ),
            (
                "a_vsock_address_without_a_cid_is_refused",
                a_vsock_address_without_a_cid_is_refused,
            ),
            (
                "an_unreachable_vsock_manager_is_logged_once",
                an_unreachable_vsock_manager_is_logged_once,
            ),
        ],
        &[("notify", notify_all)],
    )
}

/// The child: sends every state once (only READY, twice, with `KIT_ONLY_READY`).
fn notify_all() -> ExitCode {
    let env = Environment::take();
    gatehouse_kit::log::init(&gatehouse_kit::log::LogOptions::new("kit-test"));
    for w in &env.warnings {
        tracing::warn!("{w}");
    }
    if std::env::var_os("KIT_ONLY_READY").is_some() {
        notify::ready("one");
        notify::ready("two");
        return ExitCode::SUCCESS;
    }
    notify::ready("up");
    notify::status("working");
    notify::reloading();
    notify::stopping("bye");
    notify::extend_timeout(Duration::from_secs(5));
    notify::watchdog();
    ExitCode::SUCCESS
}

fn run(launch: Launch) -> App {
    let mut app = App::start(launch);
    let status = app.wait_exit(Duration::from_secs(20)).expect("exits");
    assert!(status.success(), "{status}: {}", app.stderr());
    app
}

fn every_state_reaches_a_path_socket() {
    let app = run(Launch::new("notify"));
    let got: Vec<String> = app
        .notify()
        .collect(Duration::from_millis(300))
        .into_iter()
        .map(|(_, m)| m)
        .collect();
    assert_eq!(got.len(), 6, "{got:?}");
    assert_eq!(got[0], "READY=1\nSTATUS=up\n");
    assert_eq!(got[1], "STATUS=working\n");
    let lines: Vec<&str> = got[2].lines().collect();
    assert_eq!(lines[0], "RELOADING=1", "{got:?}");
    let stamp: i128 = lines[1]
        .strip_prefix("MONOTONIC_USEC=")
        .expect("MONOTONIC_USEC in the RELOADING=1 datagram")
        .parse()
        .unwrap();
    let now = monotonic_usec();
    assert!(
        (now - stamp).abs() < 5_000_000,
        "MONOTONIC_USEC={stamp} is CLOCK_MONOTONIC (now {now})"
    );
    assert_eq!(got[3], "STOPPING=1\nSTATUS=bye\n");
    assert_eq!(got[4], "EXTEND_TIMEOUT_USEC=5000000\n");
    assert_eq!(got[5], "WATCHDOG=1\n");
}

fn an_abstract_socket_works_too() {
    let mut launch = Launch::new("notify");
    launch.notify = Notify::Abstract;
    let app = run(launch);
    assert!(app
        .notify()
        .wait_for_line("READY=1", Duration::from_secs(1))
        .is_some());
}

fn a_relative_path_is_refused_and_said_so() {
    let mut launch = Launch::new("notify");
    launch.notify = Notify::Relative;
    let app = run(launch);
    let got = app.notify().collect(Duration::from_millis(300));
    assert!(got.is_empty(), "nothing sent to a relative path: {got:?}");
    let log = app.stderr();
    assert!(
        log.contains("NOTIFY_SOCKET=\"notify.sock\" is unusable (a relative path"),
        "{log}"
    );
}

fn a_vsock_address_without_a_cid_is_refused() {
    let mut launch = Launch::new("notify");
    launch.notify = Notify::Value("vsock::9999".into());
    let app = run(launch);
    assert!(
        app.stderr().contains("vsock address without a CID"),
        "{}",
        app.stderr()
    );
}

fn an_unreachable_vsock_manager_is_logged_once() {
    // No manager listens on this port of the local machine (CID 1), if this host has vsock
    // at all: every message fails, which must be said, once, not lost silently.
    let mut launch = Launch::new("notify").env("KIT_ONLY_READY", "1");
    launch.notify = Notify::Value("vsock:1:4194304".into());
    let app = run(launch);
    let log = app.stderr();
    assert_eq!(log.matches("sd_notify failed").count(), 1, "{log}");
    assert!(log.contains("notify_socket=vsock:1:4194304"), "{log}");
}
