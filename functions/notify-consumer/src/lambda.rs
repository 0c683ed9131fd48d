//! The Lambda runtime: Amazon MQ for RabbitMQ event batches, and the
//! scheduled outbox relay.
//!
//! The event is parsed with our own lenient types: real events carry fields such
//! as `"priority": null` that stricter types reject. Each queue's messages are
//! written with one `insert_many`. Amazon MQ retries a whole batch when the
//! function fails, so every queue is processed before a database failure is
//! reported (a failed queue's refused messages are dead-lettered on the retry,
//! not twice), and the idempotent write makes the retry count each event once.
//!
//! An EventBridge schedule (`source: aws.events`, template.yaml) invokes the
//! same function to relay the outbox: a mode of this handler rather than a
//! function of its own, since it needs exactly this function's broker,
//! database and keys, and a second bootstrap would add a build and a deploy
//! for some twenty lines. The invocation polls the outbox as the Kubernetes
//! relay does (a round every [`IDLE_POLL`](finapp_broker::relay::IDLE_POLL) while idle) until [`RELAY_MARGIN`]
//! before its deadline, so with a timeout longer than the schedule's period
//! one invocation is always polling and an event waits for it well under a
//! second rather than up to a minute. It then gives the relay lock up, so the
//! next invocation, already polling, takes over at once, and closes its broker
//! connection before it returns, so nothing is left running while Lambda
//! freezes the instance.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use base64::Engine as _;
use finapp_broker::RelayError;
use finapp_shared::{
    Deps,
    metrics::{
        self,
        emf::{self, Unit},
    },
    telemetry,
};
use lambda_runtime::{LambdaEvent, service_fn};
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    Worker,
    amqp::dead_letter,
    process::{Incoming, Outcome, Rejection, process_batch},
};

/// An Amazon MQ for RabbitMQ event (`eventSource: aws:rmq`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RabbitMqEvent {
    #[serde(default)]
    pub event_source: Option<String>,
    /// Keyed `queue::vhost`.
    #[serde(default)]
    pub rmq_messages_by_queue: HashMap<String, Vec<RabbitMqMessage>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RabbitMqMessage {
    #[serde(default)]
    pub basic_properties: BasicProperties,
    #[serde(default)]
    pub redelivered: bool,
    /// The body, base64-encoded.
    #[serde(default)]
    pub data: String,
}

/// Only the properties the consumer reads; every other field, null or not, is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BasicProperties {
    #[serde(default)]
    pub headers: Option<HashMap<String, Value>>,
    #[serde(default)]
    pub message_id: Option<String>,
}

impl BasicProperties {
    /// A header as text: Amazon MQ sends AMQP strings as `{"bytes": [...]}`.
    pub fn header(&self, name: &str) -> Option<String> {
        let value = self.headers.as_ref()?.get(name)?;
        match value {
            Value::String(text) => Some(text.clone()),
            Value::Object(object) => bytes_to_text(object.get("bytes")?),
            Value::Array(_) => bytes_to_text(value),
            _ => None,
        }
    }
}

fn bytes_to_text(value: &Value) -> Option<String> {
    let bytes: Vec<u8> = value
        .as_array()?
        .iter()
        .map(|byte| byte.as_i64().map(|b| b as u8))
        .collect::<Option<_>>()?;
    String::from_utf8(bytes).ok()
}

/// What one batch came to; returned as the invocation's result.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchReport {
    pub recorded: usize,
    pub duplicates: usize,
    pub dead_lettered: usize,
}

/// Why a batch must be retried.
#[derive(Debug, thiserror::Error)]
#[error("{failed} of the batch's messages could not be recorded or dead-lettered; retry the batch")]
pub struct BatchError {
    pub failed: usize,
}

/// How long before its deadline a scheduled invocation starts its last round:
/// one round takes 11 s at worst (a broker connect and a batch's confirms,
/// 3 s each, and five database operations), and closing the connection a
/// moment more. template.yaml's timeout minus this is how long each
/// invocation relays.
pub const RELAY_MARGIN: Duration = Duration::from_secs(12);

/// What a scheduled relay invocation did; returned as its result.
#[derive(Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayReport {
    pub published: usize,
    /// The oldest record any round found: how late delivery ran (EMF only).
    #[serde(skip)]
    pub oldest_age: Duration,
}

/// The result of either kind of invocation.
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Report {
    Batch(BatchReport),
    Relay(RelayReport),
}

impl Report {
    /// The invocation's EMF line: what it recorded, or what it relayed.
    pub fn emf_line(&self, timestamp_ms: u64) -> String {
        // Counts far below 2^53.
        #[allow(clippy::cast_precision_loss)]
        let count = |n: usize| n as f64;
        let dimensions = [("function", "notify-consumer")];
        match self {
            Report::Batch(batch) => emf::line(
                timestamp_ms,
                &dimensions,
                &[
                    (
                        metrics::EVENTS_CONSUMED_TOTAL,
                        Unit::Count,
                        count(batch.recorded),
                    ),
                    (
                        metrics::EVENTS_DUPLICATES_TOTAL,
                        Unit::Count,
                        count(batch.duplicates),
                    ),
                    (
                        metrics::EVENTS_DEAD_LETTERED_TOTAL,
                        Unit::Count,
                        count(batch.dead_lettered),
                    ),
                ],
            ),
            Report::Relay(relay) => emf::line(
                timestamp_ms,
                &dimensions,
                &[
                    (
                        metrics::EVENTS_RELAYED_TOTAL,
                        Unit::Count,
                        count(relay.published),
                    ),
                    // template.yaml's OutboxLateAlarm watches it.
                    (
                        metrics::OUTBOX_OLDEST_AGE_SECONDS,
                        Unit::Seconds,
                        relay.oldest_age.as_secs_f64(),
                    ),
                ],
            ),
        }
    }
}

/// Why an invocation failed, so that it is retried.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("outbox relay failed: {0}")]
    Relay(#[from] RelayError),
    #[error("neither an Amazon MQ event nor a scheduled event: {0}")]
    Unrecognised(serde_json::Error),
}

impl From<InvocationError> for lambda_runtime::Diagnostic {
    fn from(err: InvocationError) -> Self {
        let error_type = match &err {
            InvocationError::Batch(_) => "BatchRetry",
            InvocationError::Relay(_) => "RelayFailed",
            InvocationError::Unrecognised(_) => "UnrecognisedEvent",
        };
        Self {
            error_type: error_type.into(),
            error_message: err.to_string(),
        }
    }
}

/// Whether `event` is an EventBridge scheduled event (what a `Schedule`
/// event in template.yaml delivers).
pub fn is_scheduled(event: &Value) -> bool {
    event.get("source").and_then(Value::as_str) == Some("aws.events")
        || event.get("detail-type").and_then(Value::as_str) == Some("Scheduled Event")
}

/// Serves Lambda invocations until the runtime stops.
pub async fn run(deps: Arc<Deps>) -> Result<(), lambda_runtime::Error> {
    let worker = Arc::new(Worker::new(deps));
    lambda_runtime::run(service_fn(move |event: LambdaEvent<Value>| {
        let worker = worker.clone();
        async move {
            let deadline = event.context.deadline();
            let report = handle(&worker, event.payload, deadline).await;
            if let Ok(report) = &report {
                emf::print(&report.emf_line(emf::now_ms()));
            }
            // Lambda freezes the instance once it has the result.
            telemetry::flush().await;
            report
        }
    }))
    .await
}

/// One invocation: a scheduled relay or an Amazon MQ batch, by its shape.
/// `deadline` is when Lambda ends the invocation.
pub async fn handle(
    worker: &Worker,
    event: Value,
    deadline: SystemTime,
) -> Result<Report, InvocationError> {
    if is_scheduled(&event) {
        let left = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let stop = Instant::now() + left.saturating_sub(RELAY_MARGIN);
        return Ok(Report::Relay(relay(worker, stop).await?));
    }
    let batch: RabbitMqEvent =
        serde_json::from_value(event).map_err(InvocationError::Unrecognised)?;
    Ok(Report::Batch(handle_batch(worker, batch).await?))
}

/// Relays the outbox in rounds until `stop` (the next at once after a full
/// batch, after [`IDLE_POLL`](finapp_broker::relay::IDLE_POLL) otherwise, with backoff after a failure), then
/// one last round that gives the relay lock up, and closes the broker
/// connection: a frozen instance's connection would be dead by the next run.
/// Fails, so that the invocation counts as an error, when that last round
/// fails: the outbox could not be relayed at the end of the window.
pub async fn relay(worker: &Worker, stop: Instant) -> Result<RelayReport, RelayError> {
    let relay = worker.relay();
    let totals = relay
        .rounds_until(tokio::time::sleep_until(stop.into()))
        .await;
    let mut report = RelayReport {
        published: totals.published,
        oldest_age: totals.oldest_age,
    };
    // drain with no budget is one round, then the lock is given up.
    let last = relay.drain(Duration::ZERO).await;
    worker.publisher.close().await;
    report.published += last?;
    tracing::info!(
        published = report.published,
        oldest_age = ?report.oldest_age,
        "scheduled outbox relay done"
    );
    Ok(report)
}

/// One message of a batch, its body decoded from base64.
struct Decoded<'a> {
    message: &'a RabbitMqMessage,
    /// `None` when the data is not base64.
    body: Option<Vec<u8>>,
    authorization: Option<String>,
    traceparent: Option<String>,
}

impl<'a> Decoded<'a> {
    fn new(message: &'a RabbitMqMessage) -> Self {
        Self {
            body: base64::engine::general_purpose::STANDARD
                .decode(message.data.trim())
                .ok(),
            authorization: message.basic_properties.header("Authorization"),
            traceparent: message.basic_properties.header("traceparent"),
            message,
        }
    }

    /// The message as the processor takes it; `None` if its body is not base64.
    fn incoming<'b>(&'b self, queue: &'b str) -> Option<Incoming<'b>> {
        Some(Incoming {
            queue,
            body: self.body.as_ref()?,
            authorization: self.authorization.as_deref(),
            message_id: self.message.basic_properties.message_id.as_deref(),
            traceparent: self.traceparent.as_deref(),
        })
    }

    /// What goes to the dead-letter queue: the decoded body, or the raw text.
    fn raw_body(&self) -> &[u8] {
        self.body.as_deref().unwrap_or(self.message.data.as_bytes())
    }

    /// The headers kept on a dead-lettered copy.
    fn headers(&self) -> FieldTable {
        let mut headers = FieldTable::default();
        for (name, value) in [
            ("Authorization", &self.authorization),
            ("traceparent", &self.traceparent),
        ] {
            if let Some(value) = value {
                headers.insert(
                    name.into(),
                    AMQPValue::LongString(LongString::from(value.as_str())),
                );
            }
        }
        headers
    }
}

/// Processes every message of `event`; fails (so the batch is retried) if any
/// message could not be settled.
pub async fn handle_batch(
    worker: &Worker,
    event: RabbitMqEvent,
) -> Result<BatchReport, BatchError> {
    let mut report = BatchReport::default();
    let mut failed = 0;
    for (key, messages) in &event.rmq_messages_by_queue {
        let full_queue = key.split("::").next().unwrap_or(key);
        let queue = worker.publisher.strip_prefix(full_queue);
        let decoded: Vec<Decoded> = messages.iter().map(Decoded::new).collect();
        let incoming: Vec<Incoming<'_>> = decoded
            .iter()
            .filter_map(|message| message.incoming(queue))
            .collect();
        let mut outcomes = match process_batch(&worker.deps, &incoming).await {
            Ok(outcomes) => outcomes.into_iter(),
            Err(err) => {
                tracing::error!(error = %err, cause = ?std::error::Error::source(&err), queue, "batch not recorded");
                failed += messages.len();
                continue;
            }
        };
        for message in &decoded {
            let outcome = match &message.body {
                Some(_) => outcomes.next(),
                None => Some(Outcome::Rejected(Rejection::NotBase64)),
            };
            match outcome {
                Some(Outcome::Recorded) => report.recorded += 1,
                Some(Outcome::Duplicate) => report.duplicates += 1,
                Some(Outcome::Rejected(rejection)) => {
                    tracing::warn!(queue, reason = rejection.reason(), "message dead-lettered");
                    if dead_letter(
                        &worker.publisher,
                        queue,
                        message.raw_body(),
                        message.headers(),
                        rejection.reason(),
                    )
                    .await
                    {
                        report.dead_lettered += 1;
                    } else {
                        failed += 1;
                    }
                }
                // process_batch returns one outcome per message.
                None => failed += 1,
            }
        }
    }
    tracing::info!(?report, failed, "batch processed");
    if failed > 0 {
        Err(BatchError { failed })
    } else {
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scheduled_event_is_told_from_an_amazon_mq_batch() {
        let scheduled: Value =
            serde_json::from_str(include_str!("../fixtures/schedule-event.json")).unwrap();
        assert!(is_scheduled(&scheduled));
        let batch: Value =
            serde_json::from_str(include_str!("../fixtures/rmq-event.json")).unwrap();
        assert!(!is_scheduled(&batch));
    }

    #[test]
    fn a_real_event_with_null_fields_and_byte_headers_parses() {
        let event: RabbitMqEvent =
            serde_json::from_str(include_str!("../fixtures/rmq-event.json")).unwrap();
        let messages = &event.rmq_messages_by_queue["user_activity::/"];
        let properties = &messages[0].basic_properties;
        assert_eq!(
            properties.header("Authorization").as_deref(),
            Some("Bearer TOKEN")
        );
        assert_eq!(properties.header("numberInHeader"), None);
        assert_eq!(event.event_source.as_deref(), Some("aws:rmq"));
    }
}
