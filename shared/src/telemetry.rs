//! Logging and tracing.
//!
//! Logs: one JSON line per event on stdout, in both runtimes, carrying the
//! spans it was logged in (and so the request id, and the trace id when the
//! request has one). `RUST_LOG` filters with `level` and `target=level`
//! directives (e.g. `info,finapp_shared=debug`); the default, and the fallback
//! for a value it cannot read, is `info`.
//!
//! Traces: OpenTelemetry spans, exported over OTLP/HTTP protobuf, only when
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is) or
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (plus `/v1/traces`) is set. Otherwise no
//! OpenTelemetry layer is installed and [`exporting`] is false, so the request
//! edge skips every step of it. The spans are the `tracing` spans that
//! `RUST_LOG` lets through, so the request spans need `info`. The flow
//! (request, outbox, relay, AMQP header, consumer) is in docs/operations.md.

use std::{
    fmt::{self, Write as _},
    sync::OnceLock,
    time::Duration,
};

use opentelemetry::{
    Context,
    trace::{
        SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState,
        TracerProvider as _,
    },
};
use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response, hyper::HyperClient};
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing::{
    Level, Span,
    field::{Field, Visit},
    span::Record,
};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{
    field::RecordFields,
    filter::Targets,
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::Writer,
        time::{FormatTime as _, SystemTime},
    },
    prelude::*,
    registry::LookupSpan,
};

use crate::trace_context::TraceParent;

/// How long one export may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's tracer provider, once [`init`] installed one.
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Installs the global subscriber for the process of `service` (its
/// `service.name` unless `OTEL_SERVICE_NAME` says otherwise), reading the
/// environment; a second call is a no-op.
pub fn init(service: &str) {
    init_from(service, |name| std::env::var(name).ok());
}

/// [`init`] with the variables `lookup` gives.
pub fn init_from(service: &str, lookup: impl Fn(&str) -> Option<String>) {
    let filter = filter(lookup("RUST_LOG").as_deref());
    let format = tracing_subscriber::fmt::layer()
        .fmt_fields(SpanFields)
        .event_format(JsonLines { timestamps: true })
        .with_writer(std::io::stdout);
    let exporter = traces_endpoint(&lookup).map(|endpoint| {
        let service = lookup("OTEL_SERVICE_NAME").is_none().then_some(service);
        tracer_provider(&endpoint, service).map(|provider| (endpoint, provider))
    });
    let (provider, failure) = match exporter {
        Some(Ok((endpoint, provider))) => (Some((endpoint, provider)), None),
        Some(Err(err)) => (None, Some(err)),
        None => (None, None),
    };
    let layer = provider.as_ref().map(|(_, provider)| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("finapp"))
            // Attributes no trace viewer needs here, each paid per span:
            // source location, thread, and the busy/idle times that cost
            // two clock reads every time a request's future is polled.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
    });
    let installed = tracing_subscriber::registry()
        .with(format)
        .with(layer)
        .with(filter)
        .try_init()
        .is_ok();
    match provider {
        Some((endpoint, provider)) if installed => {
            tracing::info!(endpoint = %without_userinfo(&endpoint), "exporting traces");
            let _ = PROVIDER.set(provider);
        }
        Some((_, provider)) => {
            let _ = provider.shutdown();
        }
        None => {}
    }
    if let Some(err) = failure {
        tracing::error!(error = %err, "traces not exported");
    }
}

/// Where spans go, if anywhere: the traces endpoint, else the OTLP endpoint's `/v1/traces`.
fn traces_endpoint(lookup: &impl Fn(&str) -> Option<String>) -> Option<String> {
    let set = |name| lookup(name).filter(|value| !value.trim().is_empty());
    set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| {
        set("OTEL_EXPORTER_OTLP_ENDPOINT")
            .map(|base| format!("{}/v1/traces", base.trim_end_matches('/')))
    })
}

/// `endpoint` with any `user:password@` taken out, for a log line.
fn without_userinfo(endpoint: &str) -> String {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("", endpoint));
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let host = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    if scheme.is_empty() {
        format!("{host}{path}")
    } else {
        format!("{scheme}://{host}{path}")
    }
}

/// Why traces cannot be exported.
#[derive(Debug, thiserror::Error)]
enum TracesError {
    #[error("an OpenTelemetry exporter needs a Tokio runtime")]
    NoRuntime,
    #[error(transparent)]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// A provider batching spans to `endpoint` (the SDK's `OTEL_BSP_*` and
/// `OTEL_TRACES_SAMPLER` variables apply; the default sampler follows the
/// caller's sampled flag and samples every new trace).
fn tracer_provider(
    endpoint: &str,
    service: Option<&str>,
) -> Result<SdkTracerProvider, TracesError> {
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| TracesError::NoRuntime)?;
    let client = OnRuntime {
        client: HyperClient::with_default_connector(EXPORT_TIMEOUT, None),
        runtime,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(endpoint)
        .with_timeout(EXPORT_TIMEOUT)
        .with_http_client(client)
        .build()?;
    let mut resource = Resource::builder();
    if let Some(service) = service {
        resource = resource.with_service_name(service.to_owned());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// hyper's client, run on the process's Tokio runtime: the SDK's batch
/// processor exports from a thread of its own, where hyper finds no reactor.
#[derive(Debug)]
struct OnRuntime {
    client: HyperClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for OnRuntime {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

/// Whether spans are exported: an OTLP endpoint was configured.
pub fn exporting() -> bool {
    PROVIDER.get().is_some()
}

/// Exports every span ended so far, and waits for it. Lambda freezes the
/// process once an invocation returns, and a frozen process exports nothing.
pub async fn flush() {
    if let Some(provider) = PROVIDER.get() {
        // Off the runtime's workers: the export itself runs on them, and a
        // Lambda instance may have only one.
        let flushed = tokio::task::spawn_blocking(|| provider.force_flush()).await;
        if let Ok(Err(err)) = flushed {
            tracing::warn!(error = %err, "traces not flushed");
        }
    }
}

/// Exports what is left and stops exporting; for a graceful exit.
pub async fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let stopped = tokio::task::spawn_blocking(|| provider.shutdown()).await;
        if let Ok(Err(err)) = stopped {
            tracing::warn!(error = %err, "traces not flushed at exit");
        }
    }
}

/// Makes `span`, not yet entered, a child of the remote span `parent`, with
/// the caller's `tracestate` if it sent one. A no-op unless [`exporting`].
pub fn set_remote_parent(span: &Span, parent: TraceParent, tracestate: Option<&str>) {
    if exporting() {
        let context = Context::new().with_remote_span_context(span_context(parent, tracestate));
        let _ = span.set_parent(context);
    }
}

/// Links `span`, not yet entered, to the remote span `linked`: for a batch,
/// whose events come from many traces. A no-op unless [`exporting`].
pub fn add_link(span: &Span, linked: TraceParent) {
    if exporting() {
        span.add_link(span_context(linked, None));
    }
}

fn span_context(parent: TraceParent, tracestate: Option<&str>) -> SpanContext {
    let flags = if parent.sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = tracestate
        .and_then(|value| value.parse::<TraceState>().ok())
        .unwrap_or_default();
    SpanContext::new(
        TraceId::from(parent.trace_id),
        SpanId::from(parent.span_id),
        flags,
        true,
        state,
    )
}

/// `span`'s own place in its trace, as a `traceparent` names it; `None`
/// unless [`exporting`] and the span is enabled.
pub fn traceparent_of(span: &Span) -> Option<TraceParent> {
    if !exporting() {
        return None;
    }
    let context = span.context();
    let own = context.span().span_context().clone();
    own.is_valid().then(|| TraceParent {
        trace_id: u128::from_be_bytes(own.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(own.span_id().to_bytes()),
        sampled: own.is_sampled(),
    })
}

/// The current span's [`traceparent_of`]: what an event recorded inside a
/// request carries to the consumer.
pub fn current_traceparent() -> Option<TraceParent> {
    traceparent_of(&Span::current())
}

/// The request a task is serving, for its log lines: what the request span
/// carries while spans are exported. Without export there is no request span,
/// which would cost more than the rest of a cheap request, and the ids live in
/// a task-local instead ([`in_request`]).
pub struct RequestIds {
    /// A header value, as the request carries it and its response echoes it;
    /// always visible ASCII.
    pub request_id: axum::http::HeaderValue,
    /// The caller's trace, if it named one.
    pub trace_id: Option<u128>,
}

tokio::task_local! {
    static REQUEST: RequestIds;
}

/// Runs `future` as the request `ids` names: every line it logs (on its own
/// task) carries them as a `request` entry first in its `spans`, as a line
/// logged inside a request span does. Once it is done, `take_value` gives
/// the ids back.
pub fn in_request<F: Future>(
    ids: RequestIds,
    future: F,
) -> tokio::task::futures::TaskLocalFuture<RequestIds, F> {
    REQUEST.scope(ids, future)
}

/// One JSON object per line, as tracing-subscriber's JSON format writes it
/// with `flatten_event(true)`, `with_span_list(true)`, no target and no
/// current span: `timestamp`, `level`, the event's fields, then `spans`
/// (each span's fields and its `name`, outermost first). A request served
/// [`in_request`] adds its entry first. Fields are written straight out, as
/// [`SpanFields`] writes them; tracing-subscriber parses each span's fields
/// back into a map for every line.
struct JsonLines {
    timestamps: bool,
}

impl<S> FormatEvent<S, SpanFields> for JsonLines
where
    S: tracing::Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn format_event(
        &self,
        context: &FmtContext<'_, S, SpanFields>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        writer.write_char('{')?;
        if self.timestamps {
            writer.write_str("\"timestamp\":\"")?;
            SystemTime.format_time(&mut writer)?;
            writer.write_str("\",")?;
        }
        write!(writer, "\"level\":\"{}\"", event.metadata().level())?;
        let mut fields = JsonEntries::new(&mut writer, false);
        event.record(&mut fields);
        fields.result?;
        let scope = event
            .parent()
            .and_then(|id| context.span(id))
            .or_else(|| context.lookup_current())
            .map(|span| span.scope().from_root());
        let mut separator = ",\"spans\":[";
        let request = REQUEST.try_with(|ids| {
            writer.write_str(separator)?;
            separator = ",";
            writer.write_str("{\"request_id\":\"")?;
            JsonEscaped(&mut writer).write_str(ids.request_id.to_str().unwrap_or_default())?;
            if let Some(trace_id) = ids.trace_id {
                write!(writer, "\",\"trace_id\":\"{trace_id:032x}")?;
            }
            writer.write_str("\",\"name\":\"request\"}")
        });
        if let Ok(written) = request {
            written?;
        }
        for span in scope.into_iter().flatten() {
            writer.write_str(separator)?;
            separator = ",";
            let extensions = span.extensions();
            let fields = extensions
                .get::<FormattedFields<SpanFields>>()
                .map_or("{", |fields| fields.fields.strip_suffix('}').unwrap_or("{"));
            writer.write_str(fields)?;
            if fields != "{" {
                writer.write_char(',')?;
            }
            writer.write_str("\"name\":\"")?;
            JsonEscaped(&mut writer).write_str(span.name())?;
            writer.write_str("\"}")?;
        }
        if separator == "," {
            writer.write_char(']')?;
        }
        writer.write_str("}\n")
    }
}

/// Span fields as the JSON object the JSON formatter expects, written
/// straight into the span's buffer: tracing-subscriber's `JsonFields` builds a
/// map of `serde_json::Value`s and serializes it for every span, and on a
/// later `record` parses it back. The values are the same (strings escaped as
/// serde_json does, `Debug` values as strings); keys keep their order.
struct SpanFields;

impl<'writer> FormatFields<'writer> for SpanFields {
    fn format_fields<R: RecordFields>(
        &self,
        mut writer: Writer<'writer>,
        fields: R,
    ) -> fmt::Result {
        writer.write_char('{')?;
        let mut visitor = JsonEntries::new(&mut writer, true);
        fields.record(&mut visitor);
        visitor.result?;
        writer.write_char('}')
    }

    fn add_fields(
        &self,
        current: &'writer mut FormattedFields<Self>,
        fields: &Record<'_>,
    ) -> fmt::Result {
        if current.fields.pop() != Some('}') {
            current.fields.clear();
            current.fields.push('{');
        }
        let first = current.fields.ends_with('{');
        let mut visitor = JsonEntries::new(&mut current.fields, first);
        fields.record(&mut visitor);
        let result = visitor.result;
        current.fields.push('}');
        result
    }
}

/// Writes each field it visits as a `"name":value` entry, comma-separated.
struct JsonEntries<'a> {
    writer: &'a mut dyn fmt::Write,
    first: bool,
    result: fmt::Result,
}

impl<'a> JsonEntries<'a> {
    fn new(writer: &'a mut dyn fmt::Write, first: bool) -> Self {
        Self {
            writer,
            first,
            result: Ok(()),
        }
    }

    fn entry(&mut self, field: &Field, value: impl FnOnce(&mut dyn fmt::Write) -> fmt::Result) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        let name = name.strip_prefix("r#").unwrap_or(name);
        let separator = if std::mem::take(&mut self.first) {
            ""
        } else {
            ","
        };
        self.result = (|| {
            self.writer.write_str(separator)?;
            self.writer.write_char('"')?;
            JsonEscaped(&mut *self.writer).write_str(name)?;
            self.writer.write_str("\":")?;
            value(&mut *self.writer)
        })();
    }
}

impl Visit for JsonEntries<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.entry(field, |writer| {
            writer.write_char('"')?;
            JsonEscaped(&mut *writer).write_str(value)?;
            writer.write_char('"')
        });
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.entry(field, |writer| {
            writer.write_char('"')?;
            write!(JsonEscaped(&mut *writer), "{value:?}")?;
            writer.write_char('"')
        });
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.entry(field, |writer| write!(writer, "{value}"));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.entry(field, |writer| write!(writer, "{value}"));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.entry(field, |writer| write!(writer, "{value}"));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.entry(field, |writer| {
            write!(writer, "{}", serde_json::Value::from(value))
        });
    }
}

/// Escapes what it is given as the inside of a JSON string, as serde_json does.
struct JsonEscaped<'a>(&'a mut dyn fmt::Write);

impl fmt::Write for JsonEscaped<'_> {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        let mut start = 0;
        for (at, byte) in text.bytes().enumerate() {
            let escaped = match byte {
                b'"' => "\\\"",
                b'\\' => "\\\\",
                b'\n' => "\\n",
                b'\r' => "\\r",
                b'\t' => "\\t",
                0x08 => "\\b",
                0x0c => "\\f",
                0x00..=0x1f => "",
                _ => continue,
            };
            self.0.write_str(&text[start..at])?;
            if escaped.is_empty() {
                write!(self.0, "\\u{byte:04x}")?;
            } else {
                self.0.write_str(escaped)?;
            }
            start = at + 1;
        }
        self.0.write_str(&text[start..])
    }
}

/// The filter `RUST_LOG` asks for. `Targets` rather than `EnvFilter`: the same
/// level directives minus span and field filters, without a regex engine in
/// every binary.
fn filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .filter(|value| !value.trim().is_empty())
        .and_then(|value| value.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_endpoint_is_logged_without_its_credentials() {
        assert_eq!(
            without_userinfo("https://ann:s3cret@collector:4318/v1/traces"),
            "https://collector:4318/v1/traces"
        );
        assert_eq!(
            without_userinfo("http://127.0.0.1:4318/v1/traces"),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(without_userinfo("collector:4318"), "collector:4318");
    }

    #[test]
    fn rust_log_directives_set_levels_per_target() {
        let filter = filter(Some("warn,finapp_shared=debug"));
        assert!(filter.would_enable("finapp_shared::events", &Level::DEBUG));
        assert!(!filter.would_enable("lapin", &Level::INFO));
        assert!(filter.would_enable("lapin", &Level::WARN));
    }

    #[test]
    fn no_empty_or_unreadable_rust_log_means_info() {
        for rust_log in [None, Some(""), Some("info,=nonsense=")] {
            let filter = filter(rust_log);
            assert!(filter.would_enable("signup", &Level::INFO), "{rust_log:?}");
            assert!(
                !filter.would_enable("signup", &Level::DEBUG),
                "{rust_log:?}"
            );
        }
    }

    type Layer = Box<dyn tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync>;

    /// The log lines of `log`, written by the layer `format` makes for a writer.
    fn lines_of(
        format: impl FnOnce(Box<dyn Fn() -> Sink + Send + Sync>) -> Layer,
        log: impl FnOnce(),
    ) -> Vec<serde_json::Value> {
        let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let layer = format(Box::new(move || Sink(sink.clone())));
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        let text = String::from_utf8(buffer.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| serde_json::from_str(line).expect(line))
            .collect()
    }

    /// Lines as tracing-subscriber's JSON format writes them, with `fields`
    /// as the span field formatter and no timestamps.
    fn theirs<N>(fields: N, log: impl FnOnce()) -> Vec<serde_json::Value>
    where
        N: for<'writer> FormatFields<'writer> + Send + Sync + 'static,
    {
        lines_of(
            |writer| {
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_span_list(true)
                    .fmt_fields(fields)
                    .with_target(false)
                    .without_time()
                    .with_writer(writer)
                    .boxed()
            },
            log,
        )
    }

    /// Lines as [`init`] writes them, with or without timestamps.
    fn ours(timestamps: bool, log: impl FnOnce()) -> Vec<serde_json::Value> {
        lines_of(
            |writer| {
                tracing_subscriber::fmt::layer()
                    .fmt_fields(SpanFields)
                    .event_format(JsonLines { timestamps })
                    .with_writer(writer)
                    .boxed()
            },
            log,
        )
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn span_fields_log_as_tracing_subscribers_json_fields_do() {
        let log = || {
            let request = tracing::info_span!(
                "request",
                request_id = %"id \"quoted\" \\ \n\u{1}",
                trace_id = tracing::field::Empty
            );
            let _request = request.enter();
            request.record("trace_id", tracing::field::display("4bf92f35"));
            tracing::info!("in the request span");
            let inner = tracing::info_span!(
                "handler",
                r#type = "user",
                count = 3_u64,
                delta = -2_i64,
                ok = true,
                ratio = 1.5,
                whole = 2.0,
                list = ?vec!["a", "b"],
                late = tracing::field::Empty,
            );
            let _inner = inner.enter();
            inner.record("late", "été");
            inner.record("count", 4_u64);
            tracing::info!(extra = 1, "in both spans");
            let empty = tracing::info_span!("empty");
            let _empty = empty.enter();
            tracing::warn!("in an empty span");
        };
        let fields_only = theirs(SpanFields, log);
        let reference = theirs(tracing_subscriber::fmt::format::JsonFields::new(), log);
        assert_eq!(fields_only.len(), 3);
        assert_eq!(fields_only, reference);
        assert_eq!(ours(false, log), reference);
        assert_eq!(
            reference[0]["spans"][0]["request_id"],
            "id \"quoted\" \\ \n\u{1}"
        );
        assert_eq!(reference[1]["spans"][1]["count"], 4);
    }

    #[test]
    fn a_line_outside_any_span_has_no_span_list_and_a_timestamp() {
        let log = || tracing::error!(error = "refused", code = 7_u64, "no span");
        let lines = ours(true, log);
        let timestamp = lines[0]["timestamp"].as_str().unwrap().to_owned();
        assert!(
            timestamp.starts_with("20") && timestamp.ends_with('Z') && timestamp.contains('T'),
            "{timestamp}"
        );
        let mut line = lines[0].clone();
        line.as_object_mut().unwrap().remove("timestamp");
        assert_eq!(
            line,
            serde_json::json!({"level": "ERROR", "message": "no span", "error": "refused", "code": 7})
        );
        assert_eq!(vec![line], theirs(SpanFields, log));
    }

    #[test]
    fn a_request_served_in_request_logs_as_one_in_a_request_span_does() {
        let ids = || RequestIds {
            request_id: axum::http::HeaderValue::from_static("req \"1\""),
            trace_id: Some(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736),
        };
        let inner = || {
            tracing::info!("in the request");
            let handler = tracing::info_span!("handler", user = "ann");
            let _handler = handler.enter();
            tracing::warn!(status = 409_u64, "in a handler span");
        };
        let served = ours(false, || REQUEST.sync_scope(ids(), inner));
        let spanned = theirs(tracing_subscriber::fmt::format::JsonFields::new(), || {
            let ids = ids();
            let request = tracing::info_span!(
                "request",
                request_id = ids.request_id.to_str().unwrap(),
                trace_id = %"4bf92f3577b34da6a3ce929d0e0e4736",
            );
            request.in_scope(inner);
        });
        assert_eq!(served.len(), 2);
        assert_eq!(served, spanned);
        assert_eq!(served[1]["spans"][1]["name"], "handler");
        let untraced = ours(false, || {
            REQUEST.sync_scope(
                RequestIds {
                    trace_id: None,
                    ..ids()
                },
                || tracing::info!("untraced"),
            )
        });
        assert_eq!(
            untraced[0]["spans"],
            serde_json::json!([{"request_id": "req \"1\"", "name": "request"}])
        );
    }

    #[test]
    fn traces_go_to_the_traces_endpoint_or_the_otlp_endpoints_path_and_nowhere_by_default() {
        let endpoint = |vars: &[(&str, &str)]| {
            traces_endpoint(&|name: &str| {
                vars.iter()
                    .find(|(key, _)| *key == name)
                    .map(|(_, value)| (*value).to_owned())
            })
        };
        assert_eq!(endpoint(&[]), None);
        assert_eq!(endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), None);
        assert_eq!(
            endpoint(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/")]).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        assert_eq!(
            endpoint(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                    "http://other:4318/traces"
                ),
            ])
            .as_deref(),
            Some("http://other:4318/traces")
        );
    }
}
