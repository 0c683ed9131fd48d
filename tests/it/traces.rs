//! Traces as a collector sees them: real apply and notify-consumer processes
//! exporting over OTLP/HTTP protobuf to a collector in this test, and one
//! `POST /apply` followed from the caller's span to the consumer's write
//! (docs/operations.md, "Traces").

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, body::Bytes, extract::State, http::StatusCode, routing::post};
use finapp_broker::{Outgoing, Publisher};
use finapp_shared::{
    events::{Event, EventType},
    trace_context::TraceParent,
};
use finapp_tests::{FunctionProcess, Process, TestEnv, function_binary, user_token, wait_for};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value as AnyValue,
    trace::v1::Span,
};
use prost::Message as _;
use serde_json::Value;

/// A span as the collector received it, with the `service.name` of its process.
#[derive(Clone, Debug)]
pub(crate) struct Received {
    pub service: String,
    pub span: Span,
}

/// An OTLP/HTTP collector on a free port, keeping every span it is sent.
pub(crate) struct Collector {
    pub endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
}

impl Collector {
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new()
            .route("/v1/traces", post(receive))
            .with_state(spans.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { endpoint, spans }
    }

    /// The first span `pick` chooses among those received so far.
    pub fn find(&self, pick: impl Fn(&Received) -> bool) -> Option<Received> {
        self.spans.lock().unwrap().iter().find(|r| pick(r)).cloned()
    }
}

/// One export: protobuf `ExportTraceServiceRequest`, answered with an empty
/// `ExportTraceServiceResponse` (all spans accepted).
async fn receive(State(spans): State<Arc<Mutex<Vec<Received>>>>, body: Bytes) -> StatusCode {
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return StatusCode::BAD_REQUEST;
    };
    let mut spans = spans.lock().unwrap();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|resource| &resource.attributes)
            .find(|attribute| attribute.key == "service.name")
            .and_then(
                |attribute| match attribute.value.as_ref()?.value.as_ref()? {
                    AnyValue::StringValue(name) => Some(name.clone()),
                    _ => None,
                },
            )
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            spans.extend(scope_spans.spans.into_iter().map(|span| Received {
                service: service.clone(),
                span,
            }));
        }
    }
    StatusCode::OK
}

fn trace_id_bytes(parent: &TraceParent) -> Vec<u8> {
    parent.trace_id.to_be_bytes().to_vec()
}

fn span_id_bytes(parent: &TraceParent) -> Vec<u8> {
    parent.span_id.to_be_bytes().to_vec()
}

#[tokio::test]
async fn one_apply_is_one_trace_from_the_callers_span_to_the_consumers_write() {
    let collector = Collector::start().await;
    let env = TestEnv::new()
        .with_var("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint)
        .with_var("OTEL_BSP_SCHEDULE_DELAY", 100);
    let deps = env.deps().await;
    let token = user_token(&deps, "traced_user").await;
    let apply = FunctionProcess::start("apply", &env).await;
    let mut command = tokio::process::Command::new(function_binary("notify-consumer"));
    command.env_clear().envs(env.vars());
    let consumer = Process::spawn(command);
    consumer
        .wait_for_line("\"consuming\"", Duration::from_secs(15))
        .await;

    // The caller's own span, in a trace of its own.
    let caller = TraceParent {
        trace_id: uuid::Uuid::new_v4().as_u128(),
        span_id: uuid::Uuid::new_v4().as_u64_pair().0 | 1,
        sampled: true,
    };
    let response = reqwest::Client::new()
        .post(format!("{}/apply", apply.base_url))
        .bearer_auth(&token)
        .header("traceparent", caller.to_string())
        .header("tracestate", "caller=test")
        .json(&serde_json::json!({"loan_types": ["personal"], "amount": 900.0, "purpose": "Car"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let answered = response
        .headers()
        .get("traceparent")
        .and_then(|value| value.to_str().ok())
        .and_then(TraceParent::parse)
        .expect("the response names the request's span in traceparent");
    assert_eq!(
        answered.trace_id, caller.trace_id,
        "the request joined the caller's trace"
    );
    assert_ne!(
        answered.span_id, caller.span_id,
        "the request has a span of its own"
    );

    let in_trace = |received: &Received| received.span.trace_id == trace_id_bytes(&caller);
    let (request, write) = wait_for(
        "the request's span and the consumer's write span",
        Duration::from_secs(30),
        || async {
            let request = collector
                .find(|r| in_trace(r) && r.service == "apply" && r.span.name == "POST /apply")?;
            let write = collector.find(|r| {
                in_trace(r) && r.service == "notify-consumer" && r.span.name == "record event"
            })?;
            Some((request, write))
        },
    )
    .await;
    assert_eq!(request.span.parent_span_id, span_id_bytes(&caller));
    assert_eq!(request.span.span_id, span_id_bytes(&answered));
    assert_eq!(request.span.trace_state, "caller=test");
    // The write's parent is the span the event was recorded in: the request's
    // or, as in apply, its handler's inside it.
    let recorded_in = collector
        .find(|r| r.service == "apply" && r.span.span_id == write.span.parent_span_id)
        .expect("the write's parent span is one of apply's");
    assert!(
        recorded_in.span.span_id == request.span.span_id
            || recorded_in.span.parent_span_id == request.span.span_id,
        "the consumer's write descends from the request's span: {recorded_in:?}"
    );

    // The batch's one insert links to the span each of its events was recorded in.
    let batch = wait_for("the batch span", Duration::from_secs(30), || async {
        collector.find(|r| {
            r.service == "notify-consumer"
                && r.span.name == "record analytics"
                && r.span.links.iter().any(|link| {
                    link.trace_id == trace_id_bytes(&caller)
                        && link.span_id == write.span.parent_span_id
                })
        })
    })
    .await;
    assert_ne!(
        batch.span.trace_id,
        trace_id_bytes(&caller),
        "a batch span has its own trace"
    );

    // The logs carry the trace id next to the request id.
    let line = apply
        .process
        .wait_for_line("application submitted", Duration::from_secs(5))
        .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    let request_span = &line["spans"][0];
    assert_eq!(request_span["trace_id"], caller.trace_id_hex(), "{line}");
    assert!(request_span["request_id"].is_string(), "{line}");

    // A message without a traceparent (published before tracing, or by the
    // original services) is still recorded.
    let event = Event::new(
        EventType::UserActivity,
        "traced_user",
        "User traced_user logged in",
    );
    let publisher = Publisher::new(&env.config());
    let body = serde_json::to_vec(&event).unwrap();
    let id = event.id.to_string();
    let event_token = deps.tokens.issue_event(&event.username);
    publisher
        .publish_raw(Outgoing::event(&event, &body, &id, &event_token))
        .await
        .unwrap();
    publisher.close().await;
    wait_for(
        "the untraced event recorded",
        Duration::from_secs(20),
        || async { (env.count("user_analytics").await == 2).then_some(()) },
    )
    .await;
}

#[tokio::test]
async fn without_an_otlp_endpoint_nothing_is_exported_and_no_traceparent_is_answered() {
    let collector = Collector::start().await;
    // The collector exists, but nothing names it.
    let env = TestEnv::new();
    let deps = env.deps().await;
    let token = user_token(&deps, "untraced_user").await;
    let apply = FunctionProcess::start("apply", &env).await;
    let caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let response = reqwest::Client::new()
        .post(format!("{}/apply", apply.base_url))
        .bearer_auth(&token)
        .header("traceparent", caller)
        .json(&serde_json::json!({"loan_types": ["personal"], "amount": 900.0, "purpose": "Car"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert!(response.headers().get("traceparent").is_none());
    // The caller's trace id still reaches the logs.
    let line = apply
        .process
        .wait_for_line("application submitted", Duration::from_secs(5))
        .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        line["spans"][0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
        "{line}"
    );
    assert!(!apply.process.logged("exporting traces"));
    assert!(collector.spans.lock().unwrap().is_empty());
    // And the outbox record carries no trace context.
    let record = env
        .any_document("outbox")
        .await
        .expect("the event waits in the outbox: no relay runs");
    assert!(!record.contains_key("traceparent"), "{record}");
}
