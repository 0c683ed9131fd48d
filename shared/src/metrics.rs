//! Metrics: one set of names in both runtimes (docs/operations.md lists them).
//!
//! Everything is recorded through the `metrics` facade. In plain HTTP mode a
//! Prometheus recorder is installed and `GET /metrics` is served on a port of
//! its own (`METRICS_PORT`), never on the function's main port, so the
//! ingress (which routes only the main port) cannot expose it. Under Lambda no
//! recorder is installed (the facade calls are no-ops) and each request or
//! invocation prints one CloudWatch Embedded Metric Format line instead
//! ([`emf`]).
//!
//! The request path takes its handles from a small table per route template,
//! so counting a request is an atomic add, with no allocation and no label
//! hashing once a route has been seen.
//!
//! This module imports only `config` in this crate, so every other module
//! may import it.

use std::{
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{
    Router,
    http::{StatusCode, header},
    response::IntoResponse,
    routing::get,
};
use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::config::under_lambda;

pub const HTTP_REQUESTS_TOTAL: &str = "finapp_http_requests_total";
pub const HTTP_REQUEST_DURATION_SECONDS: &str = "finapp_http_request_duration_seconds";
pub const HTTP_REQUESTS_IN_FLIGHT: &str = "finapp_http_requests_in_flight";
pub const BCRYPT_QUEUE_DEPTH: &str = "finapp_bcrypt_queue_depth";
pub const MONGODB_ERRORS_TOTAL: &str = "finapp_mongodb_errors_total";
pub const EVENTS_RECORDED_TOTAL: &str = "finapp_events_recorded_total";
pub const EVENTS_RELAYED_TOTAL: &str = "finapp_events_relayed_total";
pub const EVENTS_CONSUMED_TOTAL: &str = "finapp_events_consumed_total";
pub const EVENTS_DUPLICATES_TOTAL: &str = "finapp_events_duplicates_total";
pub const EVENTS_DEAD_LETTERED_TOTAL: &str = "finapp_events_dead_lettered_total";
pub const OUTBOX_DEPTH: &str = "finapp_outbox_depth";
pub const OUTBOX_OLDEST_AGE_SECONDS: &str = "finapp_outbox_oldest_age_seconds";

/// The `route` of a request no route template matched.
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// The request duration histogram's buckets, in seconds: a cheap request
/// takes about a millisecond, a login a bcrypt (about 250 ms at cost 12),
/// and the request timeout is 5 s.
const DURATION_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// How often the recorder's histogram buffers are folded in between scrapes.
const UPKEEP: Duration = Duration::from_secs(5);

static FUNCTION: OnceLock<&'static str> = OnceLock::new();

/// The `function` label: the name [`start`] was given, `unknown` before.
pub fn function() -> &'static str {
    FUNCTION.get().copied().unwrap_or("unknown")
}

/// Why the metrics endpoint is not served.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot listen on METRICS_PORT {port}")]
    Bind { port: u16, source: std::io::Error },
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    #[error("cannot start the metrics upkeep thread")]
    Upkeep(#[source] std::io::Error),
}

/// Names this process `function` in every metric and, outside Lambda,
/// installs the Prometheus recorder and serves `GET /metrics` on `port`
/// (`None`: recorded but not served; `Some(0)`: a free port, logged as
/// `metrics listening`). Call once, before serving. A port that cannot be
/// bound is an error for the caller to log: the function still serves.
pub async fn start(function: &'static str, port: Option<u16>) -> Result<(), MetricsError> {
    let _ = FUNCTION.set(function);
    if under_lambda() {
        return Ok(());
    }
    let handle = install_recorder()?;
    let Some(port) = port else {
        return Ok(());
    };
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
        .await
        .map_err(|source| MetricsError::Bind { port, source })?;
    tracing::info!(
        port = listener.local_addr().map_or(port, |a| a.port()),
        "metrics listening"
    );
    tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, endpoint(handle)).await {
            tracing::error!(error = %err, "metrics endpoint stopped");
        }
    });
    Ok(())
}

fn install_recorder() -> Result<PrometheusHandle, MetricsError> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(handle) = HANDLE.get() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(HTTP_REQUEST_DURATION_SECONDS.into()),
            DURATION_BUCKETS,
        )
        .map_err(|err| MetricsError::Recorder(err.to_string()))?
        .install_recorder()
        .map_err(|err| MetricsError::Recorder(err.to_string()))?;
    // Once, with the recorder; on a thread rather than a tokio timer, which,
    // always pending, would make each idle worker work out when to wake every
    // time it parks: a cost on every cheap request (BENCHMARKS.md, section 3).
    let upkeep = handle.clone();
    std::thread::Builder::new()
        .name("metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP);
                upkeep.run_upkeep();
            }
        })
        .map_err(MetricsError::Upkeep)?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// The metrics port's whole router: `GET /metrics` in the Prometheus text
/// format, 404 for anything else.
pub fn endpoint(handle: PrometheusHandle) -> Router {
    Router::new().route(
        "/metrics",
        get(move || {
            in_flight().set(REQUESTS_IN_FLIGHT.load(Ordering::Relaxed) as f64);
            let body = handle.render();
            async move {
                (
                    StatusCode::OK,
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    body,
                )
                    .into_response()
            }
        }),
    )
}

/// The `status_class` label of a status code: `1xx` to `5xx`.
pub fn status_class(status: StatusCode) -> &'static str {
    STATUS_CLASSES[class_index(status)]
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Where `status`'s class is in [`STATUS_CLASSES`]; `StatusCode` is 100-999,
/// and anything past 5xx counts as 5xx.
fn class_index(status: StatusCode) -> usize {
    usize::from(status.as_u16() / 100).clamp(1, 5) - 1
}

/// One route template's request handles (templates, not paths: a function
/// has a handful). Made once per route and kept by it (`http::app`), so a
/// request touches no map.
pub struct RouteMetrics {
    route: String,
    /// By status class, in [`STATUS_CLASSES`] order.
    requests: [Counter; 5],
    duration: Histogram,
}

impl RouteMetrics {
    /// The handles of `route` (a template, or [`UNMATCHED_ROUTE`]).
    pub fn of(route: &str) -> Self {
        let function = function();
        Self {
            route: route.to_owned(),
            requests: STATUS_CLASSES.map(|class| {
                counter!(HTTP_REQUESTS_TOTAL, "function" => function, "route" => route.to_owned(), "status_class" => class)
            }),
            duration: histogram!(HTTP_REQUEST_DURATION_SECONDS, "function" => function, "route" => route.to_owned()),
        }
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    /// Counts one finished request.
    pub fn finished(&self, status: StatusCode, elapsed: Duration) {
        self.requests[class_index(status)].increment(1);
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// Holds one unit of a gauge until dropped, so work that is dropped midway
/// (a cancelled request, a panic) still leaves it.
pub struct Queued(&'static Gauge);

impl Queued {
    pub fn enter(gauge: &'static Gauge) -> Self {
        gauge.increment(1.0);
        Self(gauge)
    }
}

impl Drop for Queued {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Requests being handled, process-wide: a plain count, which each scrape
/// sets `finapp_http_requests_in_flight` to. Moving the gauge itself would
/// cost each request two of its updates, several atomic operations each.
static REQUESTS_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// One request counted in `finapp_http_requests_in_flight` until dropped, so
/// a cancelled request still leaves it.
pub struct InFlightRequest(());

impl InFlightRequest {
    pub fn enter() -> Self {
        REQUESTS_IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
        Self(())
    }
}

impl Drop for InFlightRequest {
    fn drop(&mut self) {
        REQUESTS_IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `finapp_http_requests_in_flight`: requests being handled, as of the last
/// scrape ([`InFlightRequest`]).
fn in_flight() -> &'static Gauge {
    static GAUGE: OnceLock<Gauge> = OnceLock::new();
    GAUGE.get_or_init(|| gauge!(HTTP_REQUESTS_IN_FLIGHT, "function" => function()))
}

/// `finapp_bcrypt_queue_depth`: hashes submitted to the bcrypt pool and not
/// finished (waiting for a thread, or running).
pub fn bcrypt_queue() -> &'static Gauge {
    static GAUGE: OnceLock<Gauge> = OnceLock::new();
    GAUGE.get_or_init(|| gauge!(BCRYPT_QUEUE_DEPTH, "function" => function()))
}

/// Counts a failed MongoDB operation that reached a client as an error.
pub fn mongodb_error(operation: &'static str) {
    counter!(MONGODB_ERRORS_TOTAL, "function" => function(), "operation" => operation).increment(1);
}

macro_rules! event_counter {
    ($(#[$doc:meta])* $fn:ident, $name:expr) => {
        $(#[$doc])*
        pub fn $fn(count: u64) {
            static COUNTER: OnceLock<Counter> = OnceLock::new();
            if count > 0 {
                COUNTER
                    .get_or_init(|| counter!($name, "function" => function()))
                    .increment(count);
            }
        }
    };
}

event_counter!(
    /// Events a handler recorded in the outbox.
    events_recorded,
    EVENTS_RECORDED_TOTAL
);
event_counter!(
    /// Outbox events the broker confirmed and the relay deleted.
    events_relayed,
    EVENTS_RELAYED_TOTAL
);
event_counter!(
    /// Events the consumer recorded for the first time.
    events_consumed,
    EVENTS_CONSUMED_TOTAL
);
event_counter!(
    /// Events the consumer had already recorded (redeliveries, relayed copies).
    events_duplicates,
    EVENTS_DUPLICATES_TOTAL
);
event_counter!(
    /// Messages the consumer refused and published to the dead-letter queue.
    events_dead_lettered,
    EVENTS_DEAD_LETTERED_TOTAL
);

/// Sets the outbox gauges from what a relay round found.
pub fn outbox_backlog(depth: u64, oldest_age: Duration) {
    static GAUGES: OnceLock<(Gauge, Gauge)> = OnceLock::new();
    let (depth_gauge, age_gauge) = GAUGES.get_or_init(|| {
        let function = function();
        (
            gauge!(OUTBOX_DEPTH, "function" => function),
            gauge!(OUTBOX_OLDEST_AGE_SECONDS, "function" => function),
        )
    });
    // Precision past 2^53 records is not a concern.
    #[allow(clippy::cast_precision_loss)]
    depth_gauge.set(depth as f64);
    age_gauge.set(oldest_age.as_secs_f64());
}

/// CloudWatch Embedded Metric Format: the JSON line under Lambda.
pub mod emf {
    use serde_json::{Map, Value, json};

    /// The CloudWatch namespace of every metric.
    pub const NAMESPACE: &str = "FinApp";

    /// A metric's CloudWatch unit.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum Unit {
        Count,
        Seconds,
    }

    impl Unit {
        pub fn as_str(self) -> &'static str {
            match self {
                Unit::Count => "Count",
                Unit::Seconds => "Seconds",
            }
        }
    }

    /// One EMF line: the `_aws` metadata naming `metrics` under one dimension
    /// set made of every key of `dimensions`, then the dimension values and
    /// the metric values as top-level members. `timestamp_ms` is the epoch
    /// milliseconds.
    pub fn line(
        timestamp_ms: u64,
        dimensions: &[(&str, &str)],
        metrics: &[(&str, Unit, f64)],
    ) -> String {
        let mut root = Map::new();
        root.insert(
            "_aws".into(),
            json!({
                "Timestamp": timestamp_ms,
                "CloudWatchMetrics": [{
                    "Namespace": NAMESPACE,
                    "Dimensions": [dimensions.iter().map(|(key, _)| *key).collect::<Vec<_>>()],
                    "Metrics": metrics
                        .iter()
                        .map(|(name, unit, _)| json!({"Name": name, "Unit": unit.as_str()}))
                        .collect::<Vec<_>>(),
                }],
            }),
        );
        for (key, value) in dimensions {
            root.insert((*key).into(), Value::from(*value));
        }
        for (name, _, value) in metrics {
            root.insert((*name).into(), json!(value));
        }
        Value::Object(root).to_string()
    }

    /// The epoch milliseconds now.
    pub fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| {
                u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX)
            })
    }

    /// Prints `line` on stdout, where the Lambda runtime hands it to
    /// CloudWatch Logs, which extracts the metrics.
    pub fn print(line: &str) {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }

    /// The EMF line of one HTTP request.
    pub fn request_line(
        timestamp_ms: u64,
        function: &str,
        route: &str,
        status_class: &str,
        seconds: f64,
    ) -> String {
        line(
            timestamp_ms,
            &[
                ("function", function),
                ("route", route),
                ("status_class", status_class),
            ],
            &[
                (super::HTTP_REQUESTS_TOTAL, Unit::Count, 1.0),
                (super::HTTP_REQUEST_DURATION_SECONDS, Unit::Seconds, seconds),
            ],
        )
    }

    /// Every rule of the EMF specification a line must follow, checked by
    /// hand: `Err` names the first one broken.
    /// <https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/CloudWatch_Embedded_Metric_Format_Specification.html>
    pub fn check(line: &str) -> Result<Value, String> {
        let root: Value = serde_json::from_str(line).map_err(|err| format!("not JSON: {err}"))?;
        let object = root.as_object().ok_or("root is not an object")?;
        let aws = object
            .get("_aws")
            .and_then(Value::as_object)
            .ok_or("_aws is missing or not an object")?;
        aws.get("Timestamp")
            .and_then(Value::as_u64)
            .ok_or("_aws.Timestamp is not a non-negative integer")?;
        let directives = aws
            .get("CloudWatchMetrics")
            .and_then(Value::as_array)
            .ok_or("_aws.CloudWatchMetrics is not an array")?;
        if directives.is_empty() {
            return Err("_aws.CloudWatchMetrics is empty".into());
        }
        for directive in directives {
            let namespace = directive
                .get("Namespace")
                .and_then(Value::as_str)
                .ok_or("Namespace is not a string")?;
            if namespace.is_empty() || namespace.len() > 1024 {
                return Err("Namespace must be 1 to 1024 characters".into());
            }
            let sets = directive
                .get("Dimensions")
                .and_then(Value::as_array)
                .ok_or("Dimensions is not an array")?;
            for set in sets {
                let keys = set.as_array().ok_or("a dimension set is not an array")?;
                if keys.len() > 30 {
                    return Err("a dimension set has more than 30 keys".into());
                }
                for key in keys {
                    let key = key.as_str().ok_or("a dimension key is not a string")?;
                    if key.is_empty() || key.len() > 250 {
                        return Err(format!("dimension {key:?} must be 1 to 250 characters"));
                    }
                    if !object.get(key).is_some_and(Value::is_string) {
                        return Err(format!("dimension {key} has no string value"));
                    }
                }
            }
            let metrics = directive
                .get("Metrics")
                .and_then(Value::as_array)
                .ok_or("Metrics is not an array")?;
            if metrics.len() > 100 {
                return Err("more than 100 metrics".into());
            }
            for metric in metrics {
                let name = metric
                    .get("Name")
                    .and_then(Value::as_str)
                    .ok_or("a metric's Name is not a string")?;
                if name.is_empty() || name.len() > 1024 {
                    return Err(format!("metric name {name:?} must be 1 to 1024 characters"));
                }
                if let Some(unit) = metric.get("Unit") {
                    let unit = unit.as_str().ok_or("a Unit is not a string")?;
                    if !UNITS.contains(&unit) {
                        return Err(format!("unit {unit} is not a CloudWatch unit"));
                    }
                }
                let value = object
                    .get(name)
                    .ok_or_else(|| format!("metric {name} has no value"))?;
                let numeric = |v: &Value| v.is_number();
                let ok = numeric(value)
                    || value
                        .as_array()
                        .is_some_and(|values| values.len() <= 100 && values.iter().all(numeric));
                if !ok {
                    return Err(format!("metric {name}'s value is not a number"));
                }
            }
        }
        Ok(root)
    }

    /// CloudWatch's `StandardUnit` values.
    const UNITS: &[&str] = &[
        "Seconds",
        "Microseconds",
        "Milliseconds",
        "Bytes",
        "Kilobytes",
        "Megabytes",
        "Gigabytes",
        "Terabytes",
        "Bits",
        "Kilobits",
        "Megabits",
        "Gigabits",
        "Terabits",
        "Percent",
        "Count",
        "Bytes/Second",
        "Kilobytes/Second",
        "Megabytes/Second",
        "Gigabytes/Second",
        "Terabytes/Second",
        "Bits/Second",
        "Kilobits/Second",
        "Megabits/Second",
        "Gigabits/Second",
        "Terabits/Second",
        "Count/Second",
        "None",
    ];

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_request_line_has_the_documented_shape() {
            let line = request_line(1_700_000_000_123, "login", "/login", "2xx", 0.25);
            let value = check(&line).unwrap();
            assert_eq!(
                value,
                json!({
                    "_aws": {
                        "Timestamp": 1_700_000_000_123_u64,
                        "CloudWatchMetrics": [{
                            "Namespace": "FinApp",
                            "Dimensions": [["function", "route", "status_class"]],
                            "Metrics": [
                                {"Name": "finapp_http_requests_total", "Unit": "Count"},
                                {"Name": "finapp_http_request_duration_seconds", "Unit": "Seconds"},
                            ],
                        }],
                    },
                    "function": "login",
                    "route": "/login",
                    "status_class": "2xx",
                    "finapp_http_requests_total": 1.0,
                    "finapp_http_request_duration_seconds": 0.25,
                })
            );
            assert!(!line.contains('\n'), "one line");
        }

        #[test]
        fn the_check_refuses_what_the_specification_refuses() {
            let good = line(1, &[("function", "f")], &[("m", Unit::Count, 2.0)]);
            assert!(check(&good).is_ok());
            for bad in [
                "[]".to_owned(),
                good.replace("\"_aws\"", "\"aws\""),
                good.replace("\"Timestamp\":1", "\"Timestamp\":\"1\""),
                good.replace("\"function\":\"f\"", "\"other\":\"f\""),
                good.replace("\"m\":2.0", "\"n\":2.0"),
                good.replace("\"Count\"", "\"Things\""),
                good.replace("\"Namespace\":\"FinApp\"", "\"Namespace\":\"\""),
            ] {
                assert!(check(&bad).is_err(), "{bad}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_cover_every_code() {
        assert_eq!(status_class(StatusCode::CONTINUE), "1xx");
        assert_eq!(status_class(StatusCode::CREATED), "2xx");
        assert_eq!(status_class(StatusCode::NOT_MODIFIED), "3xx");
        assert_eq!(status_class(StatusCode::UNAUTHORIZED), "4xx");
        assert_eq!(status_class(StatusCode::SERVICE_UNAVAILABLE), "5xx");
    }
}
