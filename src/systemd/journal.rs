//! The systemd journal: is our stderr connected to it, and a tracing layer that speaks its
//! native protocol (tracing-journald) with our field names unprefixed.

use std::os::fd::AsRawFd;

/// True when JOURNAL_STREAM names the device:inode of our stderr, i.e. systemd connected
/// stderr to journald (systemd.exec(5)). tracing-journald does not check this itself.
pub fn stderr_is_journal() -> bool {
    let Ok(value) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.split_once(':') else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes into `st` and we read it only on success.
    let rc = unsafe { libc::fstat(std::io::stderr().as_raw_fd(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    let st = unsafe { st.assume_init() };
    st.st_dev == dev && st.st_ino == ino
}

/// A tracing layer that writes structured entries to /run/systemd/journal/socket; custom
/// fields keep their own names (HTTP_STATUS, not F_HTTP_STATUS) so `journalctl` filters work.
/// Levels map to syslog priorities as other daemons use them: INFO is 6 (info), not
/// tracing-journald's default 5 (notice), so `journalctl -p notice` hides the access log.
pub fn layer() -> std::io::Result<tracing_journald::Layer> {
    use tracing_journald::{Priority, PriorityMappings};
    Ok(tracing_journald::layer()?
        .with_field_prefix(None)
        .with_syslog_identifier("gatehouse".to_owned())
        .with_priority_mappings(PriorityMappings {
            error: Priority::Error,
            warn: Priority::Warning,
            info: Priority::Informational,
            debug: Priority::Debug,
            trace: Priority::Debug,
        }))
}
