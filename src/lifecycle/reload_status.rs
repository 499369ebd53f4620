//! Makes `systemctl reload` synchronous on systemd < 253 (Type=notify): the server records
//! each reload's outcome in `$RUNTIME_DIRECTORY/reload.status`, and `gatehouse reload --pid`
//! (the unit's ExecReload=) signals the server and waits for a newer record.
//!
//! File format: first line `<generation> <started|ok|failed> <pid>`, then the error, if any.

use crate::config::ConfigOrigin;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

const FILE_NAME: &str = "reload.status";

/// Writes the reload records; a no-op without RUNTIME_DIRECTORY.
pub struct StatusFile {
    path: Option<PathBuf>,
    generation: AtomicU64,
}

impl StatusFile {
    pub fn from_env() -> StatusFile {
        let path = std::env::var_os("RUNTIME_DIRECTORY").map(|dirs| {
            // systemd separates several RuntimeDirectory= entries with ':'; ours is the first.
            let first = std::env::split_paths(&dirs).next().unwrap_or_default();
            first.join(FILE_NAME)
        });
        StatusFile {
            path,
            generation: AtomicU64::new(0),
        }
    }

    pub fn started(&self) {
        self.write("started", None);
    }

    pub fn reloaded(&self, error: Option<&str>) {
        self.generation.fetch_add(1, Ordering::Relaxed);
        match error {
            None => self.write("ok", None),
            Some(e) => self.write("failed", Some(e)),
        }
    }

    fn write(&self, outcome: &str, detail: Option<&str>) {
        let Some(path) = &self.path else { return };
        let text = format!(
            "{} {outcome} {}\n{}",
            self.generation.load(Ordering::Relaxed),
            std::process::id(),
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

fn read_record(path: &Path) -> Option<(String, String)> {
    let text = std::fs::read_to_string(path).ok()?;
    let (head, detail) = text.split_once('\n').unwrap_or((&text, ""));
    Some((head.to_owned(), detail.trim_end().to_owned()))
}

/// `gatehouse reload --pid PID`: validate, SIGHUP, wait for the outcome.
pub fn request_reload(pid: i32, origin: &ConfigOrigin, timeout: Duration) -> ExitCode {
    if let Err(errors) = origin.load() {
        eprintln!("{errors}");
        eprintln!("reload refused: the configuration is invalid; the server keeps its current one");
        return ExitCode::from(super::EXIT_CONFIG);
    }
    let path = StatusFile::from_env().path;
    let before = path.as_deref().and_then(read_record);
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
        let Some((head, detail)) = read_record(&path) else {
            continue;
        };
        let fresh = before.as_ref().is_none_or(|(old, _)| *old != head);
        let mut fields = head.split(' ');
        let (_, outcome) = (fields.next(), fields.next());
        match (fresh, outcome) {
            (true, Some("ok")) => {
                println!("configuration reloaded");
                return ExitCode::SUCCESS;
            }
            (true, Some("failed")) => {
                eprintln!("{detail}");
                eprintln!("reload refused; the server keeps serving its previous configuration");
                return ExitCode::from(super::EXIT_CONFIG);
            }
            _ => {}
        }
    }
    eprintln!("no reload outcome from pid {pid} within {timeout:?}");
    ExitCode::FAILURE
}
