//! The deploy's side of systemd, through `systemctl` and `journalctl`: the command-line
//! contract every admin knows, and what a root shell would type (no D-Bus client to keep
//! in step with systemd versions).

use std::process::Command;
use std::time::SystemTime;

/// `systemctl ARGS…`; the error is systemctl's own message.
pub(crate) fn systemctl(args: &[&str]) -> Result<(), String> {
    let out = Command::new("systemctl")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run systemctl: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    Err(format!(
        "systemctl {} failed: {}",
        args.join(" "),
        if err.is_empty() {
            out.status.to_string()
        } else {
            err
        }
    ))
}

/// A unit's properties, as `systemctl show` prints them.
fn show(unit: &str, properties: &str) -> Option<String> {
    let out = Command::new("systemctl")
        .args(["show", unit, &format!("--property={properties}")])
        .output()
        .ok()?;
    Some(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether a service just started gave up: failed, waiting to be restarted, or restarted
/// already (with systemd's 100 ms RestartSec= a crash loop spends little time in the
/// states a poll could see).
pub(crate) fn start_failed(service: &str) -> bool {
    let Some(text) = show(service, "ActiveState,SubState,NRestarts") else {
        return false;
    };
    let value = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or("")
    };
    value("ActiveState") == "failed"
        || value("SubState") == "auto-restart"
        || value("NRestarts").parse::<u32>().is_ok_and(|n| n > 0)
}

/// The unit's journal since `since`: the last `lines` entries, as the app wrote them.
pub(crate) fn journal_tail(unit: &str, since: SystemTime, lines: usize) -> String {
    let secs = since
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let out = Command::new("journalctl")
        .args([
            "--no-pager",
            "--quiet",
            "--output=short-iso",
            &format!("--unit={unit}"),
            &format!("--since=@{secs}"),
            &format!("--lines={lines}"),
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).into_owned(),
        Ok(o) => String::from_utf8_lossy(&o.stderr).into_owned(),
        Err(e) => format!("cannot run journalctl: {e}\n"),
    }
}
