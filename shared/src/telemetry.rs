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

use std::{sync::OnceLock, time::Duration};

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
use tracing::{Level, Span};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::{filter::Targets, fmt, prelude::*};

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
    let format = fmt::layer()
        .json()
        .flatten_event(true)
        // The whole span list, so a line logged inside a handler's own span
        // still carries the enclosing request span's `request_id`.
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
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
            tracing::info!(%endpoint, "exporting traces");
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
