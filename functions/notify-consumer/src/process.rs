//! Deciding what one message is, and recording it: the part both runtimes share.

use finapp_shared::{
    Deps,
    events::{Event, EventType},
    metrics,
    store::{AnalyticsDoc, StoreError},
    telemetry,
    trace_context::TraceParent,
};
use mongodb::bson::DateTime;
use tracing::{Instrument as _, Span};
use uuid::Uuid;

/// The largest message body accepted; events are a few hundred bytes.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// Namespace for the ids derived from messages in the original's plain-text
/// format, which carry none of their own.
const LEGACY_ID_NAMESPACE: Uuid = Uuid::from_u128(0x5b1e_4a1c_9f7e_4d2b_8c3a_f1a2_b3c4_d5e6);

/// One message as either runtime hands it over.
#[derive(Clone, Copy, Debug)]
pub struct Incoming<'a> {
    /// The queue name without the deployment prefix.
    pub queue: &'a str,
    pub body: &'a [u8],
    /// The `Authorization` header: `Bearer <jwt>`, or the bare JWT as the original sent it.
    pub authorization: Option<&'a str>,
    /// The AMQP `message_id` property, if any.
    pub message_id: Option<&'a str>,
    /// The `traceparent` header: the span of the request that recorded the
    /// event. Absent from older messages and the original's.
    pub traceparent: Option<&'a str>,
}

/// What became of a message. Only `Rejected` messages go to the dead-letter queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Recorded,
    /// Already recorded: a redelivery or a relayed copy.
    Duplicate,
    Rejected(Rejection),
}

/// Why a message can never be recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    UnknownQueue,
    TooLarge,
    MissingToken,
    InvalidToken,
    NotUtf8,
    MalformedJson,
    UnknownType,
    TypeMismatch,
    UserMismatch,
    NotBase64,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Rejection::UnknownQueue => "unknown queue",
            Rejection::TooLarge => "message larger than 64 KiB",
            Rejection::MissingToken => "no Authorization header",
            Rejection::InvalidToken => "token is forged or malformed",
            Rejection::NotUtf8 => "body is not UTF-8",
            Rejection::MalformedJson => "body is malformed JSON or lacks event fields",
            Rejection::UnknownType => "unknown event type",
            Rejection::TypeMismatch => "event type does not match its queue",
            Rejection::UserMismatch => "event username does not match its token",
            Rejection::NotBase64 => "Lambda message data is not base64",
        }
    }
}

/// Checks a message and records it. `Err` means the database failed and the
/// message should be retried; everything about the message itself is an [`Outcome`].
pub async fn process(deps: &Deps, message: Incoming<'_>) -> Result<Outcome, StoreError> {
    let mut outcomes = process_batch(deps, &[message]).await?;
    // One message in, one outcome out.
    Ok(outcomes.pop().unwrap_or(Outcome::Duplicate))
}

/// Checks every message and records the acceptable ones with one insert (and
/// the counters' updates, a few per user); one outcome per message, in order. `Err` means the database failed: retry
/// the whole batch (the write is idempotent, so nothing is counted twice).
pub async fn process_batch(
    deps: &Deps,
    messages: &[Incoming<'_>],
) -> Result<Vec<Outcome>, StoreError> {
    let checked: Vec<Result<AnalyticsDoc, Rejection>> = messages
        .iter()
        .map(|message| analytics_doc(deps, *message))
        .collect();
    let docs: Vec<&AnalyticsDoc> = checked.iter().filter_map(|doc| doc.as_ref().ok()).collect();
    let (batch, per_event) = write_spans(messages, &checked);
    let inserted = deps.store.record_analytics(&docs).instrument(batch).await;
    drop(per_event);
    let mut inserted = inserted?.into_iter();
    let outcomes: Vec<Outcome> = checked
        .iter()
        .map(|doc| match doc {
            Err(rejection) => Outcome::Rejected(*rejection),
            Ok(_) if inserted.next() == Some(true) => Outcome::Recorded,
            Ok(_) => Outcome::Duplicate,
        })
        .collect();
    let count = |wanted: &Outcome| outcomes.iter().filter(|o| *o == wanted).count() as u64;
    metrics::events_consumed(count(&Outcome::Recorded));
    metrics::events_duplicates(count(&Outcome::Duplicate));
    Ok(outcomes)
}

/// The spans of a batch's write, while spans are exported: `record analytics`
/// around the one insert, linked to the request of every traced event, and
/// for each traced event a `record event` span over the same write, a child
/// of its request's span. A span has one parent, and a batch holds events of
/// many traces: the links show the batch from each trace, the children put
/// the write in each request's own trace.
fn write_spans(
    messages: &[Incoming<'_>],
    checked: &[Result<AnalyticsDoc, Rejection>],
) -> (Span, Vec<Span>) {
    if !telemetry::exporting() {
        return (Span::none(), Vec::new());
    }
    let batch = tracing::info_span!("record analytics", events = checked.len());
    let per_event = messages
        .iter()
        .zip(checked)
        .filter_map(|(message, doc)| {
            let doc = doc.as_ref().ok()?;
            let parent = TraceParent::parse(message.traceparent?)?;
            telemetry::add_link(&batch, parent);
            let span = tracing::info_span!(
                "record event",
                event_id = %doc.event_id,
                queue = message.queue,
                trace_id = %parent.trace_id_hex(),
            );
            telemetry::set_remote_parent(&span, parent, None);
            Some(span)
        })
        .collect();
    (batch, per_event)
}

/// Everything short of the write: authenticate, parse, and shape the document.
pub fn analytics_doc(deps: &Deps, message: Incoming<'_>) -> Result<AnalyticsDoc, Rejection> {
    let kind = EventType::from_queue(message.queue).ok_or(Rejection::UnknownQueue)?;
    if message.body.len() > MAX_MESSAGE_BYTES {
        return Err(Rejection::TooLarge);
    }
    let token = message
        .authorization
        .map(|value| bearer_token(value.trim()))
        .filter(|token| !token.is_empty())
        .ok_or(Rejection::MissingToken)?;
    // An event token, or a plain token as the original services sent: the
    // signature counts, not expiry, so a genuine event stays valid however
    // long it waited.
    let claims = deps
        .tokens
        .verify_event(token)
        .map_err(|_| Rejection::InvalidToken)?;
    let text = std::str::from_utf8(message.body).map_err(|_| Rejection::NotUtf8)?;
    let now = DateTime::now();

    if !text.trim_start().starts_with('{') {
        // The original's format: plain text, the user known only from the token.
        let id = match message.message_id.filter(|id| !id.is_empty()) {
            Some(id) => id.to_owned(),
            None => legacy_id(message.queue, token, text).to_string(),
        };
        return Ok(AnalyticsDoc {
            id: id.clone(),
            event_id: id,
            kind: kind.queue().to_owned(),
            username: claims.sub,
            event: text.to_owned(),
            timestamp: now,
            received_at: now,
            pending: true,
        });
    }

    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| Rejection::MalformedJson)?;
    let declared = value
        .get("type")
        .and_then(serde_json::Value::as_str)
        .ok_or(Rejection::MalformedJson)?;
    let declared = EventType::from_queue(declared).ok_or(Rejection::UnknownType)?;
    if declared != kind {
        return Err(Rejection::TypeMismatch);
    }
    let event: Event = serde_json::from_value(value).map_err(|_| Rejection::MalformedJson)?;
    if event.username != claims.sub {
        return Err(Rejection::UserMismatch);
    }
    let id = event.id.to_string();
    Ok(AnalyticsDoc {
        id: id.clone(),
        event_id: id,
        kind: kind.queue().to_owned(),
        username: event.username,
        event: event.message,
        timestamp: DateTime::from_millis(event.timestamp_ms),
        received_at: now,
        pending: true,
    })
}

fn bearer_token(value: &str) -> &str {
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => value,
    }
}

/// A stable id for a plain-text message, so its redeliveries are recognised.
fn legacy_id(queue: &str, token: &str, text: &str) -> Uuid {
    let key = [queue, token, text].join("\n");
    Uuid::new_v5(&LEGACY_ID_NAMESPACE, key.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_optional_as_the_original_sent_bare_tokens() {
        assert_eq!(bearer_token("Bearer abc"), "abc");
        assert_eq!(bearer_token("bearer  abc"), "abc");
        assert_eq!(bearer_token("abc"), "abc");
    }

    #[test]
    fn a_plain_text_message_gets_the_same_id_on_every_delivery() {
        let first = legacy_id("user_activity", "t", "User x logged in");
        assert_eq!(first, legacy_id("user_activity", "t", "User x logged in"));
        assert_ne!(
            first,
            legacy_id("user_activity", "t", "User x logged in again")
        );
    }
}
