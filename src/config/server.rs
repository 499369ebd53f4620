//! `[server]`: limits, timeouts and the access log, validated with positions.

use super::error::ErrorSink;
use super::model::*;
use super::raw::*;
use serde_spanned::Spanned;
use std::time::Duration;

pub(super) fn server_settings(raw: &RawServer, sink: &mut ErrorSink) -> ServerSettings {
    let mut s = ServerSettings::default();
    let positive = |d: &Option<Spanned<super::units::HumanDuration>>,
                    key: &str,
                    sink: &mut ErrorSink|
     -> Option<Duration> {
        let d = d.as_ref()?;
        if d.get_ref().0.is_zero() {
            sink.push(
                Some(d.span()),
                format!("`{key}` must be greater than 0"),
                None,
            );
            return None;
        }
        Some(d.get_ref().0)
    };
    if let Some(d) = &raw.shutdown_timeout {
        s.shutdown_timeout = d.get_ref().0;
    }
    if let Some(d) = &raw.idle_exit_after {
        s.idle_exit_after = Some(d.get_ref().0).filter(|d| !d.is_zero());
    }
    if let Some(d) = positive(&raw.header_read_timeout, "header_read_timeout", sink) {
        s.header_read_timeout = d;
    }
    if let Some(d) = positive(&raw.status_interval, "status_interval", sink) {
        s.status_interval = d;
    }
    if let Some(d) = positive(&raw.send_timeout, "send_timeout", sink) {
        s.send_timeout = d;
    }
    if let Some(n) = &raw.http2_max_concurrent_streams {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (1..=1000).contains(&v) => s.http2_max_concurrent_streams = v,
            _ => sink.push(
                Some(n.span()),
                "`http2_max_concurrent_streams` must be between 1 and 1000",
                None,
            ),
        }
    }
    if let Some(n) = &raw.admin_max_connections {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if (1..=10_000).contains(&v) => s.admin_max_connections = v,
            _ => sink.push(
                Some(n.span()),
                "`admin_max_connections` must be between 1 and 10000",
                None,
            ),
        }
    }
    if let Some(n) = &raw.max_connections {
        match usize::try_from(*n.get_ref()) {
            // tokio's semaphore holds at most usize::MAX >> 3 permits.
            Ok(v) if (1..=1_000_000_000).contains(&v) => s.max_connections = v,
            _ => sink.push(
                Some(n.span()),
                "`max_connections` must be between 1 and 1000000000",
                None,
            ),
        }
    }
    if let Some(n) = &raw.workers {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if v <= 1024 => s.workers = v,
            _ => sink.push(
                Some(n.span()),
                "`workers` must be between 0 (one per CPU) and 1024",
                None,
            ),
        }
    }
    if let Some(mode) = &raw.access_log {
        match mode.get_ref().as_str() {
            "all" => s.access_log = AccessLog::All,
            "errors" => s.access_log = AccessLog::Errors,
            "off" => s.access_log = AccessLog::Off,
            other => sink.push(
                Some(mode.span()),
                format!("`access_log` must be \"all\", \"errors\" or \"off\", not {other:?}"),
                None,
            ),
        }
    }
    if let Some(n) = &raw.access_log_sample {
        match u32::try_from(*n.get_ref()) {
            Ok(v) if (1..=1_000_000).contains(&v) => s.access_log_sample = v,
            _ => sink.push(
                Some(n.span()),
                "`access_log_sample` must be between 1 (every request) and 1000000",
                None,
            ),
        }
    }
    if let Some(file) = &raw.access_log_file {
        let path = std::path::Path::new(file.get_ref());
        if !path.is_absolute() {
            sink.push(
                Some(file.span()),
                "`access_log_file` must be an absolute path",
                None,
            );
        } else if !path.parent().is_some_and(|dir| dir.is_dir()) {
            sink.push(
                Some(file.span()),
                format!(
                    "`access_log_file`: no directory {:?}",
                    path.parent().unwrap_or(path)
                ),
                Some("the shipped unit provides /var/log/gatehouse (LogsDirectory=gatehouse)"),
            );
        } else {
            s.access_log_file = Some(path.to_owned());
        }
    }
    if let Some(n) = &raw.max_header_size {
        match usize::try_from(*n.get_ref()) {
            Ok(v) if (8192..=1 << 20).contains(&v) => s.max_header_size = v,
            _ => sink.push(
                Some(n.span()),
                "`max_header_size` must be between 8192 and 1048576 bytes",
                None,
            ),
        }
    }
    s
}
