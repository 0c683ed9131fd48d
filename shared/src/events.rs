//! Publishing domain events to RabbitMQ without ever losing one.
//!
//! [`Events::emit`] first records the event in the `outbox` collection, then
//! publishes it (durable queue, persistent message, publisher confirm) and
//! deletes the record. When the broker is down the request still succeeds and
//! the record stays; [`Events::relay_outbox`] publishes it once the broker is
//! back (the notify-consumer runs it continuously, and a publisher that saw a
//! failure runs it after its next success). The consumer records each event id
//! once, so an event relayed twice is still counted once.
//!
//! One connection and one confirm-mode channel per process, opened on first use
//! and reopened after a failure, so a function starts while the broker is down.
//! The user's JWT travels in the `Authorization` header, as the original sent it.

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString},
};
use mongodb::{
    Collection,
    bson::{DateTime, doc},
    options::ReturnDocument,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::{
    config::{Config, QueueType},
    store::StoreError,
};

/// How long a connect or a publish confirm may take before it counts as failed.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);
/// An outbox record younger than this may still be in its first publish.
const RELAY_GRACE: Duration = Duration::from_secs(10);
/// How long a relay holds a record before another relay may try it.
const RELAY_LEASE: Duration = Duration::from_secs(30);
/// The queue that receives messages the consumer refuses, under the deployment's prefix.
pub const DEAD_LETTER_QUEUE: &str = "finapp.dead_letter";

/// The kinds of event, each with its own queue (names kept from the original).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventType {
    UserRegistered,
    UserActivity,
    ApplicationSubmitted,
    FinancingOptionSelected,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::UserRegistered,
        EventType::UserActivity,
        EventType::ApplicationSubmitted,
        EventType::FinancingOptionSelected,
    ];

    /// The queue name without any deployment prefix.
    pub fn queue(self) -> &'static str {
        match self {
            EventType::UserRegistered => "user_registered",
            EventType::UserActivity => "user_activity",
            EventType::ApplicationSubmitted => "application_submitted",
            EventType::FinancingOptionSelected => "financing_option_selected",
        }
    }

    pub fn from_queue(queue: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.queue() == queue)
    }
}

/// The JSON body of every event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per event; the consumer records each id once.
    pub id: Uuid,
    #[serde(rename = "type")]
    pub kind: EventType,
    pub username: String,
    /// Milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// Human-readable, as the original's plain-text bodies were.
    pub message: String,
}

impl Event {
    pub fn new(kind: EventType, username: &str, message: impl Into<String>) -> Self {
        let timestamp_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
        Self {
            id: Uuid::now_v7(),
            kind,
            username: username.to_owned(),
            timestamp_ms,
            message: message.into(),
        }
    }
}

/// An event waiting in the `outbox` collection to be published.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The event id.
    #[serde(rename = "_id")]
    pub id: String,
    pub event: Event,
    /// The bearer token the event is published with.
    pub token: String,
    pub created_at: DateTime,
    /// Not relayed before this time.
    pub relay_after: DateTime,
}

/// Why a publish failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("broker error")]
    Broker(#[from] lapin::Error),
    #[error("broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("broker refused the message")]
    Nacked,
}

/// Why a relay round stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Publish(#[from] PublishError),
}

/// A message to publish as it travels: queue (without prefix), body, headers.
pub struct Outgoing<'a> {
    pub queue: &'a str,
    pub body: &'a [u8],
    pub message_id: &'a str,
    pub kind: &'a str,
    pub headers: FieldTable,
}

/// The process's publisher.
pub struct Events {
    uri: SecretString,
    queue_prefix: String,
    queue_type: QueueType,
    outbox: Collection<OutboxRecord>,
    link: Mutex<Option<(Connection, Channel)>>,
    /// Set when a publish failed, so the next success also relays the backlog.
    backlog: AtomicBool,
}

impl Events {
    /// Remembers where the broker is (it connects on first publish) and where the outbox is.
    pub fn new(config: &Config, outbox: Collection<OutboxRecord>) -> Self {
        Self {
            uri: config.rabbitmq_uri.clone(),
            queue_prefix: config.queue_prefix.clone(),
            queue_type: config.queue_type,
            outbox,
            link: Mutex::new(None),
            backlog: AtomicBool::new(false),
        }
    }

    /// The full name of `queue` in this deployment.
    pub fn queue_name(&self, queue: &str) -> String {
        format!("{}{queue}", self.queue_prefix)
    }

    /// The queue name `full` stands for once this deployment's prefix is removed.
    pub fn strip_prefix<'a>(&self, full: &'a str) -> &'a str {
        full.strip_prefix(self.queue_prefix.as_str())
            .unwrap_or(full)
    }

    /// Records `event` in the outbox, then publishes it; never fails the caller.
    /// Whatever goes wrong is logged, and the outbox keeps the event until it
    /// is delivered.
    pub async fn emit(self: &Arc<Self>, event: &Event, token: &SecretString) {
        let now = DateTime::now();
        let record = OutboxRecord {
            id: event.id.to_string(),
            event: event.clone(),
            token: token.expose_secret().to_owned(),
            created_at: now,
            relay_after: later(now, RELAY_GRACE),
        };
        let recorded = match self.outbox.insert_one(&record).await {
            Ok(_) => true,
            Err(err) => {
                tracing::error!(event_id = %event.id, error = %err, "event not recorded in the outbox");
                false
            }
        };
        match self.publish(event, token).await {
            Ok(()) => {
                tracing::debug!(event_id = %event.id, kind = ?event.kind, "event published");
                if recorded {
                    self.forget_record(&record.id).await;
                }
                if self.backlog.swap(false, Ordering::AcqRel) {
                    self.relay_in_background();
                }
            }
            Err(err) => {
                self.backlog.store(true, Ordering::Release);
                tracing::warn!(
                    event_id = %event.id,
                    kind = ?event.kind,
                    error = %err,
                    cause = ?std::error::Error::source(&err),
                    in_outbox = recorded,
                    "event not published; the outbox relay will deliver it"
                );
            }
        }
    }

    /// Publishes outbox records whose grace period has passed, until none is
    /// left or the broker fails; returns how many were published.
    pub async fn relay_outbox(&self) -> Result<usize, RelayError> {
        let mut relayed = 0;
        loop {
            let now = DateTime::now();
            let claimed = self
                .outbox
                .find_one_and_update(
                    doc! { "relay_after": { "$lte": now } },
                    doc! { "$set": { "relay_after": later(now, RELAY_LEASE) } },
                )
                .return_document(ReturnDocument::After)
                .await
                .map_err(StoreError::from)?;
            let Some(record) = claimed else {
                return Ok(relayed);
            };
            self.publish(&record.event, &record.token.clone().into())
                .await?;
            self.forget_record(&record.id).await;
            relayed += 1;
        }
    }

    /// Relays whatever a failure left behind, without holding up the request.
    fn relay_in_background(self: &Arc<Self>) {
        let events = Arc::clone(self);
        tokio::spawn(async move {
            match events.relay_outbox().await {
                Ok(count) => tracing::info!(count, "outbox backlog relayed"),
                Err(err) => {
                    events.backlog.store(true, Ordering::Release);
                    tracing::warn!(error = %err, "outbox backlog not relayed yet");
                }
            }
        });
    }

    async fn forget_record(&self, id: &str) {
        if let Err(err) = self.outbox.delete_one(doc! { "_id": id }).await {
            // The relay will publish it again; the consumer counts it once.
            tracing::warn!(event_id = id, error = %err, "published event left in the outbox");
        }
    }

    /// Publishes `event` with `token` in its `Authorization` header and waits
    /// for the broker's confirm. Prefer [`Events::emit`], which cannot lose it.
    pub async fn publish(&self, event: &Event, token: &SecretString) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).expect("an Event always serializes");
        let mut headers = FieldTable::default();
        headers.insert(
            "Authorization".into(),
            AMQPValue::LongString(LongString::from(format!(
                "Bearer {}",
                token.expose_secret()
            ))),
        );
        let message_id = event.id.to_string();
        self.publish_raw(Outgoing {
            queue: event.kind.queue(),
            body: &body,
            message_id: &message_id,
            kind: event.kind.queue(),
            headers,
        })
        .await
    }

    /// Publishes any message, persistent and confirmed, to a queue of this deployment.
    pub async fn publish_raw(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let result = self.publish_on(&channel, message).await;
        if result.is_err() {
            // Reconnect next time rather than retrying on a channel in doubt.
            self.forget_channel(&channel).await;
        }
        result
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        message: Outgoing<'_>,
    ) -> Result<(), PublishError> {
        let timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(message.message_id.into())
            .with_type(message.kind.into())
            .with_timestamp(timestamp)
            .with_headers(message.headers);
        let queue = self.queue_name(message.queue);
        let confirm = tokio::time::timeout(BROKER_TIMEOUT, async {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    message.body,
                    properties,
                )
                .await?
                .await
        })
        .await
        .map_err(|_| PublishError::Timeout(BROKER_TIMEOUT))??;
        if confirm.is_ack() && confirm.take_message().is_none() {
            Ok(())
        } else {
            Err(PublishError::Nacked)
        }
    }

    async fn channel(&self) -> Result<Channel, PublishError> {
        let mut link = self.link.lock().await;
        if let Some((connection, channel)) = link.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        let (connection, channel) = tokio::time::timeout(BROKER_TIMEOUT, self.open())
            .await
            .map_err(|_| PublishError::Timeout(BROKER_TIMEOUT))??;
        *link = Some((connection, channel.clone()));
        Ok(channel)
    }

    async fn open(&self) -> Result<(Connection, Channel), lapin::Error> {
        let connection = connect_broker(&self.uri, "finapp-publisher").await?;
        declare_queues(&connection, &self.queue_prefix, self.queue_type).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok((connection, channel))
    }

    async fn forget_channel(&self, failed: &Channel) {
        let mut link = self.link.lock().await;
        if link
            .as_ref()
            .is_some_and(|(_, channel)| channel.id() == failed.id())
        {
            *link = None;
        }
    }

    /// Closes the broker connection, if one is open.
    pub async fn close(&self) {
        if let Some((connection, _)) = self.link.lock().await.take() {
            let _ = connection.close(200, "bye".into()).await;
        }
    }
}

fn later(from: DateTime, by: Duration) -> DateTime {
    DateTime::from_millis(
        from.timestamp_millis()
            .saturating_add(by.as_millis() as i64),
    )
}
/// The AMQP frame size asked for when `RABBITMQ_URI` names none. lapin keeps
/// two I/O buffers of 32 frames each. With no `frame_max` in the URI it starts
/// them at the protocol's minimum and, after negotiating RabbitMQ's default
/// (128 KiB), grows each to 4 MiB, touching every page: 8 MB of RSS. Stated up
/// front, the buffers are only touched as frames arrive. Events are well under
/// 8 KiB, and a larger message is only split over more frames.
pub const DEFAULT_FRAME_MAX: u32 = 8 * 1024;

/// Opens a broker connection named `name` (shown in the management UI),
/// with [`DEFAULT_FRAME_MAX`] unless the URI sets `frame_max` itself.
pub async fn connect_broker(uri: &SecretString, name: &str) -> Result<Connection, lapin::Error> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    match uri.expose_secret().parse::<lapin::uri::AMQPUri>() {
        Ok(mut parsed) => {
            parsed.query.frame_max.get_or_insert(DEFAULT_FRAME_MAX);
            Connection::connect_uri(parsed, properties).await
        }
        // lapin reports the unreadable URI in its own words.
        Err(_) => Connection::connect(uri.expose_secret(), properties).await,
    }
}

/// Declares every event queue and the dead-letter queue under `prefix`, as
/// durable `queue_type` queues. Publishers and the consumer both call this, so
/// the arguments stay identical.
///
/// A queue that already exists with other arguments (the original services
/// declared theirs non-durable, and a queue keeps its type) is adopted as it
/// is, with one warning per queue and process saying what differs;
/// `finapp-admin migrate-queues` moves it to this definition. The declarations
/// run on a channel of their own, because the broker closes a channel that
/// declares a queue inequivalently.
pub async fn declare_queues(
    connection: &Connection,
    prefix: &str,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    let mut channel = connection.create_channel().await?;
    for name in queue_names(prefix) {
        match declare_durable(&channel, &name, queue_type).await {
            Ok(()) => {}
            Err(err) if is_precondition_failed(&err) => {
                channel = connection.create_channel().await?;
                channel
                    .queue_declare(
                        name.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        FieldTable::default(),
                    )
                    .await?;
                warn_adopted_once(&name, &err);
            }
            Err(err) => return Err(err),
        }
    }
    let _ = channel.close(200, "declared".into()).await;
    Ok(())
}

/// Every queue of a deployment under `prefix`: the event queues, then the dead-letter queue.
pub fn queue_names(prefix: &str) -> impl Iterator<Item = String> + '_ {
    EventType::ALL
        .iter()
        .map(|kind| kind.queue())
        .chain([DEAD_LETTER_QUEUE])
        .map(move |name| format!("{prefix}{name}"))
}

/// Declares `name` with the bundle's definition: durable, and for quorum
/// queues an `x-queue-type`. Classic queues get no argument at all, exactly as
/// earlier versions declared them, so their queues still match.
pub async fn declare_durable(
    channel: &Channel,
    name: &str,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    let mut arguments = FieldTable::default();
    if queue_type == QueueType::Quorum {
        arguments.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(queue_type.as_str())),
        );
    }
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            arguments,
        )
        .await?;
    Ok(())
}

/// Declares `name` with the bundle's definition on a channel of its own:
/// `Ok(None)` when the queue matches it (or did not exist and now does),
/// `Ok(Some(err))` when it exists with other arguments, `err` saying which.
pub async fn probe_queue(
    connection: &Connection,
    name: &str,
    queue_type: QueueType,
) -> Result<Option<lapin::Error>, lapin::Error> {
    let channel = connection.create_channel().await?;
    match declare_durable(&channel, name, queue_type).await {
        Ok(()) => {
            let _ = channel.close(200, "declared".into()).await;
            Ok(None)
        }
        Err(err) if is_precondition_failed(&err) => Ok(Some(err)),
        Err(err) => Err(err),
    }
}

/// Whether the broker refused a declaration because the queue exists with
/// other arguments (AMQP 406 PRECONDITION_FAILED).
pub fn is_precondition_failed(err: &lapin::Error) -> bool {
    matches!(
        err.kind(),
        lapin::ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    )
}

fn warn_adopted_once(queue: &str, err: &lapin::Error) {
    static WARNED: std::sync::Mutex<BTreeSet<String>> = std::sync::Mutex::new(BTreeSet::new());
    let first = WARNED
        .lock()
        .map(|mut warned| warned.insert(queue.to_owned()))
        .unwrap_or(true);
    if first {
        let difference = match err.kind() {
            lapin::ErrorKind::ProtocolError(amqp) => amqp.get_message().to_string(),
            _ => err.to_string(),
        };
        tracing::warn!(
            queue,
            difference,
            "queue exists with other arguments and is used as it is; if it is not durable, \
             its messages die with the broker: run finapp-admin migrate-queues once the old \
             publishers are stopped"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_type_maps_to_the_original_queue_and_back() {
        let names: Vec<_> = EventType::ALL.iter().map(|kind| kind.queue()).collect();
        assert_eq!(
            names,
            [
                "user_registered",
                "user_activity",
                "application_submitted",
                "financing_option_selected"
            ]
        );
        for kind in EventType::ALL {
            assert_eq!(EventType::from_queue(kind.queue()), Some(kind));
        }
        assert_eq!(EventType::from_queue("nope"), None);
    }

    #[test]
    fn the_body_names_its_type_in_snake_case() {
        let event = Event::new(EventType::UserActivity, "ann", "logged in");
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "user_activity");
        assert_eq!(json["username"], "ann");
        assert_eq!(json["id"], event.id.to_string());
    }
}
