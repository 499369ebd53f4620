//! Counters for /metrics, /status and STATUS=. Handles that the request path touches are
//! resolved once per configuration (see `RouteCounters`), so counting a request is a few
//! atomic increments, not a label lookup. The duration histogram is the exception:
//! prometheus-client guards it with a mutex, one uncontended lock per request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RequestLabels {
    /// The site's first host pattern ("*", "example.com"); "-" when no site matched.
    pub(crate) site: String,
    /// Route kind ("respond", "static", "proxy"); "none" when no route matched.
    pub(crate) kind: String,
    /// "1xx" … "5xx".
    pub(crate) class: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct UpstreamLabels {
    pub(crate) upstream: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabels {
    pub(crate) result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct VersionLabels {
    pub(crate) version: String,
}

pub(crate) struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    pub(crate) duration: Histogram,
    pub(crate) open_connections: Gauge,
    pub(crate) connections_accepted: Counter,
    pub(crate) bytes_in: Counter,
    pub(crate) bytes_out: Counter,
    reloads: Family<ResultLabels, Counter>,
    pub(crate) last_reload_success: Gauge,
    pub(crate) last_reload_timestamp: Gauge,
    pub(crate) start_time: SystemTime,
}

// The statics from here on are process-wide (see `crate::shared`): fed from deep in the
// proxy, logging and ACME code, which holds no `Metrics`; `Metrics::new` registers them.

/// Per-upstream series live for the whole process: proxy pools are rebuilt by every reload,
/// and a counter must never go back to zero.
struct UpstreamFamilies {
    up: Family<UpstreamLabels, Gauge>,
    requests: Family<UpstreamLabels, Counter>,
    errors: Family<UpstreamLabels, Counter>,
}

static UPSTREAMS: LazyLock<UpstreamFamilies> = LazyLock::new(|| UpstreamFamilies {
    up: Family::default(),
    requests: Family::default(),
    errors: Family::default(),
});

/// Protocol errors that a peer caused and a library logged (see `log::peer_noise`); counted
/// before there is a `Metrics`, from the logging layer.
pub(crate) static PROTOCOL_ERRORS: LazyLock<Counter> = LazyLock::new(Counter::default);

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DirectionLabels {
    /// "request" (client → upstream) or "response".
    pub(crate) direction: String,
}

/// Proxy buffering (`proxy::buffer`), process-wide like the upstream series.
pub(crate) struct BufferMetrics {
    pub(crate) requests: Counter,
    pub(crate) responses: Counter,
    pub(crate) spilled_request_bytes: Counter,
    pub(crate) spilled_response_bytes: Counter,
    /// Bytes in temporary files right now.
    pub(crate) temp_file_bytes: Gauge,
    spilled: Family<DirectionLabels, Counter>,
}

pub(crate) static BUFFERS: LazyLock<BufferMetrics> = LazyLock::new(|| {
    let spilled = Family::<DirectionLabels, Counter>::default();
    let direction = |d: &str| {
        spilled
            .get_or_create(&DirectionLabels {
                direction: d.to_owned(),
            })
            .clone()
    };
    BufferMetrics {
        requests: Counter::default(),
        responses: Counter::default(),
        spilled_request_bytes: direction("request"),
        spilled_response_bytes: direction("response"),
        temp_file_bytes: Gauge::default(),
        spilled,
    }
});

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CertLabels {
    /// The certificate's first name, "+N" when it has more.
    pub(crate) certificate: String,
}

/// ACME certificates outlive configuration generations like upstreams do.
struct AcmeFamilies {
    expiry: Family<CertLabels, Gauge>,
    failures: Family<CertLabels, Counter>,
    /// The labels of `expiry` (a Family cannot list them).
    labels: std::sync::Mutex<std::collections::HashSet<String>>,
}

static ACME: LazyLock<AcmeFamilies> = LazyLock::new(|| AcmeFamilies {
    expiry: Family::default(),
    failures: Family::default(),
    labels: Default::default(),
});

pub(crate) fn set_certificate_expiry(certificate: &str, not_after: SystemTime) {
    ACME.labels
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(certificate.to_owned());
    ACME.expiry
        .get_or_create(&CertLabels {
            certificate: certificate.to_owned(),
        })
        .set(unix_seconds(not_after));
}

pub(crate) fn count_acme_failure(certificate: &str) {
    ACME.failures
        .get_or_create(&CertLabels {
            certificate: certificate.to_owned(),
        })
        .inc();
}

/// Drops the expiry series of certificates no longer served (a site removed or renamed by a
/// reload), so an expiry alert never fires for a certificate nobody uses.
pub(crate) fn retain_certificates(current: &[String]) {
    let mut set = ACME.labels.lock().unwrap_or_else(|e| e.into_inner());
    set.retain(|certificate| {
        let keep = current.contains(certificate);
        if !keep {
            ACME.expiry.remove(&CertLabels {
                certificate: certificate.clone(),
            });
        }
        keep
    });
}

/// The request and error counters of one upstream ("unix:/run/app.sock", "http://h:p").
#[derive(Clone, Debug)]
pub(crate) struct UpstreamCounters {
    pub(crate) requests: Counter,
    pub(crate) errors: Counter,
}

pub(crate) fn upstream_counters(label: &str) -> UpstreamCounters {
    let labels = UpstreamLabels {
        upstream: label.to_owned(),
    };
    UpstreamCounters {
        requests: UPSTREAMS.requests.get_or_create(&labels).clone(),
        errors: UPSTREAMS.errors.get_or_create(&labels).clone(),
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct InstanceLabels {
    pub(crate) app: String,
    pub(crate) instance: String,
}

/// Deployable apps' instances (`crate::apps`), process-wide like the upstreams.
struct AppFamilies {
    requests: Family<InstanceLabels, Counter>,
    in_flight: Family<InstanceLabels, Gauge>,
    live: Family<InstanceLabels, Gauge>,
}

static APPS: LazyLock<AppFamilies> = LazyLock::new(|| AppFamilies {
    requests: Family::default(),
    in_flight: Family::default(),
    live: Family::default(),
});

fn instance_labels(app: &str, instance: &str) -> InstanceLabels {
    InstanceLabels {
        app: app.to_owned(),
        instance: instance.to_owned(),
    }
}

/// The request counter of one app instance.
pub(crate) fn app_instance_requests(app: &str, instance: &str) -> Counter {
    APPS.requests
        .get_or_create(&instance_labels(app, instance))
        .clone()
}

/// Replaces the in-flight and live series with the instances known now:
/// `(app, instance, in flight, live)`.
pub(crate) fn set_app_instances<'a>(
    current: impl Iterator<Item = (&'a str, &'a str, usize, bool)>,
) {
    APPS.in_flight.clear();
    APPS.live.clear();
    for (app, instance, in_flight, live) in current {
        let labels = instance_labels(app, instance);
        let in_flight = i64::try_from(in_flight).unwrap_or(i64::MAX);
        APPS.in_flight.get_or_create(&labels).set(in_flight);
        APPS.live.get_or_create(&labels).set(i64::from(live));
    }
}

/// Replaces the up/down series with the upstreams of the running configuration.
pub(crate) fn set_upstreams_up(current: impl Iterator<Item = (String, bool)>) {
    UPSTREAMS.up.clear();
    for (upstream, up) in current {
        UPSTREAMS
            .up
            .get_or_create(&UpstreamLabels { upstream })
            .set(i64::from(up));
    }
}

impl Metrics {
    pub(crate) fn new() -> Metrics {
        let mut registry = Registry::with_prefix("gatehouse");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "http_requests",
            "Requests answered, by site, route kind and status class",
            requests.clone(),
        );
        // 50 µs … ~52 s.
        let duration = Histogram::new(exponential_buckets(0.00005, 4.0, 11));
        registry.register(
            "http_request_duration_seconds",
            "Time from request head to response head",
            duration.clone(),
        );
        let open_connections = Gauge::default();
        registry.register(
            "open_connections",
            "Client connections open now",
            open_connections.clone(),
        );
        let connections_accepted = Counter::default();
        registry.register(
            "connections_accepted",
            "Client connections accepted",
            connections_accepted.clone(),
        );
        let bytes_in = Counter::default();
        registry.register(
            "received_bytes",
            "Bytes read from clients",
            bytes_in.clone(),
        );
        let bytes_out = Counter::default();
        registry.register("sent_bytes", "Bytes written to clients", bytes_out.clone());
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "reloads",
            "Configuration reloads by result",
            reloads.clone(),
        );
        let last_reload_success = Gauge::default();
        last_reload_success.set(1);
        registry.register(
            "last_reload_success",
            "1 if the last reload (or the start) applied its configuration",
            last_reload_success.clone(),
        );
        let last_reload_timestamp = Gauge::default();
        registry.register(
            "last_reload_timestamp_seconds",
            "Unix time of the last reload attempt (or the start)",
            last_reload_timestamp.clone(),
        );
        registry.register(
            "upstream_up",
            "1 if the upstream is in rotation (not ejected, passing its health check)",
            UPSTREAMS.up.clone(),
        );
        registry.register(
            "upstream_requests",
            "Requests sent to each upstream",
            UPSTREAMS.requests.clone(),
        );
        registry.register(
            "app_instance_requests",
            "Requests sent to a deployable app's instance (attempts, like upstream_requests)",
            APPS.requests.clone(),
        );
        registry.register(
            "app_instance_in_flight",
            "Requests an app instance has not finished answering",
            APPS.in_flight.clone(),
        );
        registry.register(
            "app_instance_live",
            "1 for the instance that new requests of the app go to",
            APPS.live.clone(),
        );
        registry.register(
            "upstream_errors",
            "Failed connects, timeouts and connections lost before a response, per upstream",
            UPSTREAMS.errors.clone(),
        );
        registry.register(
            "protocol_errors",
            "Protocol errors caused by peers that hyper, h2 or rustls reported (a client's rapid stream resets, a TLS renegotiation attempt); the log sums them up once a minute",
            PROTOCOL_ERRORS.clone(),
        );
        registry.register(
            "proxy_buffered_requests",
            "Request bodies read whole before an upstream connection was taken",
            BUFFERS.requests.clone(),
        );
        registry.register(
            "proxy_buffered_responses",
            "Responses read ahead of the client, so the upstream was free once it had answered",
            BUFFERS.responses.clone(),
        );
        registry.register(
            "proxy_spilled_bytes",
            "Body bytes written to temporary files by proxy buffering",
            BUFFERS.spilled.clone(),
        );
        registry.register(
            "proxy_temp_file_bytes",
            "Bytes held in proxy buffering's temporary files now",
            BUFFERS.temp_file_bytes.clone(),
        );
        registry.register(
            "acme_certificate_expiry_timestamp_seconds",
            "Unix time the ACME certificate in use expires (absent until one is issued)",
            ACME.expiry.clone(),
        );
        registry.register(
            "acme_failures",
            "Failed attempts to obtain or renew an ACME certificate",
            ACME.failures.clone(),
        );
        let build = Family::<VersionLabels, Gauge>::default();
        build
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        registry.register("build_info", "Version of the running binary", build);
        let start_time = SystemTime::now();
        let start = Gauge::<i64, AtomicI64Compat>::default();
        start.set(unix_seconds(start_time));
        registry.register(
            "process_start_time_seconds",
            "Unix time the process started",
            start,
        );
        last_reload_timestamp.set(unix_seconds(start_time));
        Metrics {
            registry,
            requests,
            duration,
            open_connections,
            connections_accepted,
            bytes_in,
            bytes_out,
            reloads,
            last_reload_success,
            last_reload_timestamp,
            start_time,
        }
    }

    /// The five status-class counters of one (site, kind).
    pub(crate) fn route_counters(&self, site: &str, kind: &str) -> RouteCounters {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx"].map(|class| {
            self.requests
                .get_or_create(&RequestLabels {
                    site: site.to_owned(),
                    kind: kind.to_owned(),
                    class: class.to_owned(),
                })
                .clone()
        });
        RouteCounters(classes)
    }

    pub(crate) fn reload(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .inc();
        self.last_reload_success.set(i64::from(ok));
        self.last_reload_timestamp
            .set(unix_seconds(SystemTime::now()));
    }

    pub(crate) fn reloads(&self, ok: bool) -> u64 {
        let result = if ok { "ok" } else { "failed" };
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.to_owned(),
            })
            .get()
    }

    /// Prometheus text exposition format.
    pub(crate) fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

type AtomicI64Compat = std::sync::atomic::AtomicI64;

fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Request counters of one route (or of "no route"), indexed by status class.
#[derive(Clone, Debug)]
pub(crate) struct RouteCounters([Counter<u64, AtomicU64>; 5]);

impl RouteCounters {
    pub(crate) fn count(&self, status: u16) {
        let idx = usize::from((status / 100).clamp(1, 5) - 1);
        self.0[idx].inc();
    }
}
