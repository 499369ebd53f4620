//! Makes `systemctl reload` synchronous on systemd < 253 (Type=notify): the server records
//! each reload in `$RUNTIME_DIRECTORY/reload.status`, and `gatehouse reload --pid` (the
//! unit's ExecReload=) signals the server and waits for the outcome of *its* reload.
//!
//! File format: first line `<generation> <started|reloading|ok|failed> <pid> <since>`, then
//! the error, if any. The generation counts reloads; `since` is when this generation began
//! (CLOCK_MONOTONIC, microseconds; the whole host shares that clock). A reload answers a
//! request when it began after the request's SIGHUP was sent: one already under way when the
//! signal came read the configuration before it, and a SIGHUP arriving meanwhile (ours, and
//! any others, merged by the kernel) starts the next one. So a concurrent reload's outcome
//! is never taken for this request's.

use crate::config::ConfigOrigin;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FILE_NAME: &str = "reload.status";

/// Writes the reload records; a no-op without RUNTIME_DIRECTORY.
pub(crate) struct StatusFile {
    path: Option<PathBuf>,
    generation: AtomicU64,
    /// When the current generation began (monotonic microseconds).
    since: AtomicU64,
}

impl StatusFile {
    pub(crate) fn from_env() -> StatusFile {
        let path = std::env::var_os("RUNTIME_DIRECTORY").map(|dirs| {
            // systemd separates several RuntimeDirectory= entries with ':'; ours is the first.
            let first = std::env::split_paths(&dirs).next().unwrap_or_default();
            first.join(FILE_NAME)
        });
        StatusFile {
            path,
            generation: AtomicU64::new(0),
            since: AtomicU64::new(monotonic_usec()),
        }
    }

    pub(crate) fn started(&self) {
        self.write("started", None);
    }

    /// A reload begins (before the configuration is read): a new generation.
    pub(crate) fn reloading(&self) {
        self.since.store(monotonic_usec(), Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Relaxed);
        self.write("reloading", None);
    }

    pub(crate) fn reloaded(&self, error: Option<&str>) {
        match error {
            None => self.write("ok", None),
            Some(e) => self.write("failed", Some(e)),
        }
    }

    fn write(&self, outcome: &str, detail: Option<&str>) {
        let Some(path) = &self.path else { return };
        let text = format!(
            "{} {outcome} {} {}\n{}",
            self.generation.load(Ordering::Relaxed),
            std::process::id(),
            self.since.load(Ordering::Relaxed),
            detail.unwrap_or("")
        );
        // Written whole and renamed, so a reader never sees half a record.
        let tmp = path.with_extension("tmp");
        let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = result {
            tracing::warn!(path = %path.display(), error = %e, "cannot write the reload status file");
        }
    }
}

/// CLOCK_MONOTONIC in microseconds: one clock for the server and `gatehouse reload`.
fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we own; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

#[derive(Debug, PartialEq, Eq)]
struct Record {
    head: String,
    generation: u64,
    outcome: String,
    pid: i32,
    /// Absent in records of servers older than the generation check.
    since: Option<u64>,
    detail: String,
}

fn parse_record(text: &str) -> Option<Record> {
    let (head, detail) = text.split_once('\n').unwrap_or((text, ""));
    let mut fields = head.split(' ');
    Some(Record {
        generation: fields.next()?.parse().ok()?,
        outcome: fields.next()?.to_owned(),
        pid: fields.next()?.parse().ok()?,
        since: fields.next().and_then(|t| t.parse().ok()),
        head: head.to_owned(),
        detail: detail.trim_end().to_owned(),
    })
}

fn read_record(path: &Path) -> Option<Record> {
    parse_record(&std::fs::read_to_string(path).ok()?)
}

/// Whether `record` is the outcome of the reload our SIGHUP (sent at `sent_at`) asked for.
fn answers_request(record: &Record, pid: i32, sent_at: u64, before: Option<&Record>) -> bool {
    record.pid == pid
        && match record.since {
            Some(since) => since >= sent_at,
            // An older server: any record newer than the one read before the signal.
            None => before.is_none_or(|b| b.head != record.head),
        }
}

/// `gatehouse reload --pid PID`: validate, SIGHUP, wait for the outcome.
pub(crate) fn request_reload(pid: i32, origin: &ConfigOrigin, timeout: Duration) -> ExitCode {
    if let Err(errors) = origin.load() {
        eprintln!("{errors}");
        eprintln!("reload refused: the configuration is invalid; the server keeps its current one");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let path = StatusFile::from_env().path;
    let before = path.as_deref().and_then(read_record);
    let sent_at = monotonic_usec();
    // SAFETY: kill(2) has no memory-safety preconditions.
    if pid <= 0 || unsafe { libc::kill(pid, libc::SIGHUP) } != 0 {
        eprintln!(
            "cannot signal pid {pid}: {}",
            std::io::Error::last_os_error()
        );
        return ExitCode::FAILURE;
    }
    let Some(path) = path else {
        println!("SIGHUP sent to {pid} (RUNTIME_DIRECTORY unset: not waiting for the outcome)");
        return ExitCode::SUCCESS;
    };
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
        let Some(record) = read_record(&path) else {
            continue;
        };
        if !answers_request(&record, pid, sent_at, before.as_ref()) {
            continue;
        }
        match record.outcome.as_str() {
            "ok" => {
                println!("configuration reloaded (reload {})", record.generation);
                return ExitCode::SUCCESS;
            }
            "failed" => {
                eprintln!("{}", record.detail);
                eprintln!(
                    "reload {} refused; the server keeps serving its previous configuration",
                    record.generation
                );
                return ExitCode::from(super::EXIT_CONFIG);
            }
            _ => {}
        }
    }
    eprintln!("no reload outcome from pid {pid} within {timeout:?}");
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_reload_begun_after_the_signal_answers() {
        let rec = |text: &str| parse_record(text).unwrap();
        let ours = rec("4 ok 77 2000\n");
        assert!(answers_request(&ours, 77, 2000, None));
        assert!(answers_request(&ours, 77, 1500, None));
        // Under way when the signal was sent: it read the configuration before it.
        assert!(!answers_request(
            &rec("3 failed 77 1000\nbad"),
            77,
            1500,
            None
        ));
        // Another process (a restarted server) is not the one signalled.
        assert!(!answers_request(&ours, 78, 1500, None));
        let failed = rec("5 failed 77 3000\nline 1\nline 2\n");
        assert_eq!(failed.detail, "line 1\nline 2");
        assert_eq!((failed.generation, failed.outcome.as_str()), (5, "failed"));
    }

    #[test]
    fn records_of_older_servers_fall_back_to_any_change() {
        let before = parse_record("1 ok 9\n").unwrap();
        let same = parse_record("1 ok 9\n").unwrap();
        let newer = parse_record("2 ok 9\n").unwrap();
        assert!(!answers_request(&same, 9, 5, Some(&before)));
        assert!(answers_request(&newer, 9, 5, Some(&before)));
    }
}
