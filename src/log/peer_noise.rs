//! Warnings the protocol libraries log about what a peer did: h2's "remotely-reset streams
//! reached limit" for a rapid-reset client, rustls' "Sending warning alert NoRenegotiation"
//! for a TLS renegotiation attempt, and the like. A client can cause them at will, one per
//! connection, so a WARN line each would let anyone fill the journal. They are counted
//! (`gatehouse_protocol_errors_total`), summed up in one line a minute at most, and shown one by
//! one only when debug logging is asked for their library (`--log-level debug`,
//! `--log-level info,h2=debug`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::{Context, Layer};

/// Libraries whose WARN and ERROR events report a peer's behaviour, not gatehouse's health.
const PEER_LIBRARIES: &[&str] = &["h2", "hyper", "hyper_util", "rustls", "tokio_rustls"];

/// How often at most the summary line is written.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// Events held back since the last summary, and the text of the latest one.
static HELD: AtomicU64 = AtomicU64::new(0);
static LATEST: Mutex<String> = Mutex::new(String::new());

pub(crate) struct PeerNoise {
    /// The log filter as targets: which libraries' debug output was asked for. `None` when
    /// the filter uses span or field directives, which this cannot evaluate: then nothing is
    /// shown one by one (all is still counted).
    debug: Option<Targets>,
}

impl PeerNoise {
    pub(crate) fn new(filter: &str) -> PeerNoise {
        PeerNoise {
            debug: filter.parse().ok(),
        }
    }
}

fn from_peer_library(target: &str) -> bool {
    PEER_LIBRARIES.iter().any(|lib| {
        target
            .strip_prefix(lib)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// The target that the `log` crate's events (rustls logs through it) arrive with; their
/// own target is in the `log.target` field.
const LOG_BRIDGE_TARGET: &str = "log";

impl<S: Subscriber> Layer<S> for PeerNoise {
    fn event_enabled(&self, event: &Event<'_>, _: Context<'_, S>) -> bool {
        let meta = event.metadata();
        if *meta.level() > Level::WARN {
            return true;
        }
        let bridged = meta.target() == LOG_BRIDGE_TARGET;
        if !bridged && !from_peer_library(meta.target()) {
            return true;
        }
        let mut seen = Seen::default();
        event.record(&mut seen);
        let target = if bridged {
            seen.log_target.as_str()
        } else {
            meta.target()
        };
        if !from_peer_library(target) {
            return true;
        }
        crate::metrics::PROTOCOL_ERRORS.inc();
        HELD.fetch_add(1, Ordering::Relaxed);
        *LATEST.lock().unwrap_or_else(|e| e.into_inner()) = format!("{target}: {}", seen.message);
        self.debug
            .as_ref()
            .is_some_and(|t| t.would_enable(target, &Level::DEBUG))
    }
}

/// An event's message and, for a `log` record, its target; not the `log.file` and
/// `log.line` of a library's source on the build machine.
#[derive(Default)]
struct Seen {
    message: String,
    log_target: String,
}

impl Visit for Seen {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "log.target" => value.clone_into(&mut self.log_target),
            "message" => value.clone_into(&mut self.message),
            _ => {}
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.message = format!("{value:?}");
        }
    }
}

/// Writes the summary line every [`SUMMARY_EVERY`] while events were held back; runs for the
/// life of the server.
pub(crate) async fn summarize() {
    let mut every = tokio::time::interval(SUMMARY_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Some(line) = take_summary() {
            tracing::info!("{line}");
        }
    }
}

/// The summary of what was held back since the last one, if anything was.
fn take_summary() -> Option<String> {
    let held = HELD.swap(0, Ordering::Relaxed);
    if held == 0 {
        return None;
    }
    let latest = std::mem::take(&mut *LATEST.lock().unwrap_or_else(|e| e.into_inner()));
    Some(format!(
        "{held} protocol error{} caused by peers in the last {}s (latest: {latest}); \
         --log-level debug shows each",
        if held == 1 { "" } else { "s" },
        SUMMARY_EVERY.as_secs()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing_subscriber::layer::SubscriberExt;

    /// Counts the events that reach the output.
    struct Output(std::sync::Arc<AtomicU64>);

    impl<S: Subscriber> Layer<S> for Output {
        fn on_event(&self, _: &Event<'_>, _: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn peer_warnings_are_held_counted_summed_up_and_shown_only_for_debug() {
        let shown = std::sync::Arc::new(AtomicU64::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(PeerNoise::new("info"))
            .with(Output(shown.clone()));
        let before = crate::metrics::PROTOCOL_ERRORS.get();
        tracing::subscriber::with_default(subscriber, || {
            for _ in 0..3 {
                tracing::warn!(target: "h2::proto::streams", "remotely-reset streams reached limit");
            }
            tracing::warn!(target: "gatehouse::proxy", "our own warning");
            tracing::info!(target: "h2::codec", "a library's info");
        });
        // Our own warning and the library's info line, not the three peer warnings.
        assert_eq!(shown.load(Ordering::Relaxed), 2);
        assert!(crate::metrics::PROTOCOL_ERRORS.get() >= before + 3);
        let line = take_summary().expect("a summary");
        assert!(
            line.starts_with("3 protocol errors caused by peers in the last 60s"),
            "{line}"
        );
        assert!(
            line.contains("h2::proto::streams: remotely-reset streams reached limit"),
            "{line}"
        );
        assert_eq!(take_summary(), None);

        // Debug asked for the library: each is shown (and still counted).
        let shown = std::sync::Arc::new(AtomicU64::new(0));
        let subscriber = tracing_subscriber::registry()
            .with(PeerNoise::new("info,rustls=debug"))
            .with(Output(shown.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::warn!(target: "rustls::common_state", "Sending warning alert NoRenegotiation");
        });
        assert_eq!(shown.load(Ordering::Relaxed), 1);
        assert!(take_summary().is_some_and(|l| l.starts_with("1 protocol error")));
    }

    #[test]
    fn library_targets_match_by_path_segment() {
        assert!(from_peer_library("h2"));
        assert!(from_peer_library("h2::proto::streams::recv"));
        assert!(from_peer_library("rustls::common_state"));
        assert!(!from_peer_library("h2o"));
        assert!(!from_peer_library("gatehouse::proxy"));
        assert!(!from_peer_library("hyperx::y"));
    }
}
