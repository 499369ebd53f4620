//! Standby: the configuration cannot be loaded, but systemd passed sockets (socket activation).
//!
//! Exiting 78 would make it worse: the connection that started the service is still queued on
//! the socket, so systemd starts the service again at once, and after StartLimitBurst= starts
//! it fails the socket too (`service-start-limit-hit`): the port then refuses connections, even
//! after the file is fixed, until an admin runs `systemctl reset-failed` and restarts the
//! socket. So gatehouse stays up instead: every passed socket answers 503, the errors are in
//! the journal and in STATUS=, and the first reload that loads the configuration ends standby
//! — `systemctl reload` or `restart`, or on its own within a second of the file changing.

use crate::config::{self, Config, ConfigOrigin};
use gatehouse_kit::PassedSocket;
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

/// The standby configuration for `passed`, with the errors logged.
pub(crate) fn enter(passed: &[PassedSocket], origin: &ConfigOrigin, errors: &str) -> Config {
    let origin_text = match origin {
        ConfigOrigin::File(p) => p.display().to_string(),
        ConfigOrigin::Default => config::DEFAULT_CONFIG_PATH.to_owned(),
        ConfigOrigin::Quick(_) => "command line".to_owned(),
    };
    tracing::error!(
        "configuration invalid, answering 503 on the sockets systemd passed until it is fixed \
         (then `systemctl reload` or `restart`, or wait a second):\n{errors}"
    );
    let names: Vec<&str> = passed.iter().map(|s| s.name.as_str()).collect();
    config::standby_config(&names, origin_text, errors.to_owned())
}

pub(crate) fn is_standby(config: &Config) -> bool {
    matches!(config.source, config::ConfigSource::Invalid { .. })
}

/// What identifies a version of the file: any write, replace or chmod changes it.
type Stamp = (u64, u64, u64, i64, i64, i64, i64);

fn stamp(path: &std::path::Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some((
        m.dev(),
        m.ino(),
        m.size(),
        m.mtime(),
        m.mtime_nsec(),
        m.ctime(),
        m.ctime_nsec(),
    ))
}

/// The configuration file as of its last read, to notice a fix while in standby.
pub(crate) struct FileWatch {
    path: Option<PathBuf>,
    seen: Option<Stamp>,
}

const POLL: Duration = Duration::from_secs(1);

impl FileWatch {
    /// Taken before the file is read, so that a change made during the read counts as new.
    pub(crate) fn new(origin: &ConfigOrigin) -> FileWatch {
        let path = match origin {
            ConfigOrigin::File(p) => Some(p.clone()),
            ConfigOrigin::Default => Some(PathBuf::from(config::DEFAULT_CONFIG_PATH)),
            ConfigOrigin::Quick(_) => None,
        };
        let seen = path.as_deref().and_then(stamp);
        FileWatch { path, seen }
    }

    /// A reload is about to read the file.
    pub(crate) fn reading(&mut self) {
        self.seen = self.path.as_deref().and_then(stamp);
    }

    /// Resolves once the file differs from its last read (never without a file).
    pub(crate) async fn changed(&self) {
        let Some(path) = &self.path else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(POLL).await;
            if stamp(path) != self.seen {
                return;
            }
        }
    }
}
