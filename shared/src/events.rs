//! The event contract and the broker: what an event is, how it travels
//! (durable queue, persistent message, publisher confirm), and the queues.
//!
//! Nothing here touches MongoDB. A request never publishes: it records its
//! event in the outbox (`store::outbox`), and the relay (`relay`) publishes
//! from there with [`Events`], the process's one broker connection, opened on
//! first use and reopened after a failure. Each message carries an event
//! token in its `Authorization` header (see `auth::TokenKeys::issue_event`),
//! as the original carried the user's token.

use std::{
    collections::BTreeSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    protocol::{AMQPErrorKind, AMQPSoftError},
    types::{AMQPValue, FieldTable, LongString},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::config::{Config, QueueType};

/// How long a connect, or a batch's publishes and confirms, may take before it counts as failed.
pub const BROKER_TIMEOUT: Duration = Duration::from_secs(3);
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

/// A message to publish as it travels: queue (without prefix), body, headers.
pub struct Outgoing<'a> {
    pub queue: &'a str,
    pub body: &'a [u8],
    pub message_id: &'a str,
    pub kind: &'a str,
    pub headers: FieldTable,
}

impl<'a> Outgoing<'a> {
    /// `event`, serialized as `body`, with `token` in its `Authorization` header.
    pub fn event(event: &Event, body: &'a [u8], message_id: &'a str, token: &SecretString) -> Self {
        let mut headers = FieldTable::default();
        headers.insert(
            "Authorization".into(),
            AMQPValue::LongString(LongString::from(format!(
                "Bearer {}",
                token.expose_secret()
            ))),
        );
        Self {
            queue: event.kind.queue(),
            body,
            message_id,
            kind: event.kind.queue(),
            headers,
        }
    }
}

/// The process's publisher: one connection and one confirm-mode channel.
pub struct Events {
    uri: SecretString,
    queue_prefix: String,
    queue_type: QueueType,
    link: Mutex<Option<(Connection, Channel)>>,
}

impl Events {
    /// Remembers where the broker is; it connects on first publish.
    pub fn new(config: &Config) -> Self {
        Self {
            uri: config.rabbitmq_uri.clone(),
            queue_prefix: config.queue_prefix.clone(),
            queue_type: config.queue_type,
            link: Mutex::new(None),
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

    /// Publishes `event` with `token` in its `Authorization` header and waits
    /// for the broker's confirm. Handlers never call this: they record the
    /// event in the outbox, and the relay publishes it.
    pub async fn publish(&self, event: &Event, token: &SecretString) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).expect("an Event always serializes");
        let message_id = event.id.to_string();
        self.publish_raw(Outgoing::event(event, &body, &message_id, token))
            .await
    }

    /// Publishes any message, persistent and confirmed, to a queue of this deployment.
    pub async fn publish_raw(&self, message: Outgoing<'_>) -> Result<(), PublishError> {
        match self.publish_batch(vec![message]).await?.as_slice() {
            [true] => Ok(()),
            _ => Err(PublishError::Nacked),
        }
    }

    /// Publishes `messages` in order on the one channel, then waits for all
    /// their confirms together (one round trip for the batch, not one per
    /// message). `Ok` holds, per message, whether the broker took it
    /// (acked and routed to its queue); `Err` means the channel failed or the
    /// broker did not answer within [`BROKER_TIMEOUT`], and none may be counted
    /// as published.
    pub async fn publish_batch(
        &self,
        messages: Vec<Outgoing<'_>>,
    ) -> Result<Vec<bool>, PublishError> {
        let channel = self.channel().await?;
        let sent = tokio::time::timeout(BROKER_TIMEOUT, async {
            let mut confirms = Vec::with_capacity(messages.len());
            for message in messages {
                confirms.push(self.send(&channel, message).await?);
            }
            let mut taken = Vec::with_capacity(confirms.len());
            for confirm in confirms {
                let confirmation = confirm.await?;
                taken.push(confirmation.is_ack() && confirmation.take_message().is_none());
            }
            Ok::<_, lapin::Error>(taken)
        })
        .await;
        let result = match sent {
            Ok(Ok(taken)) => Ok(taken),
            Ok(Err(err)) => Err(PublishError::Broker(err)),
            Err(_) => Err(PublishError::Timeout(BROKER_TIMEOUT)),
        };
        let in_doubt = match &result {
            Ok(taken) => taken.contains(&false),
            Err(_) => true,
        };
        if in_doubt {
            // Reconnect next time rather than go on with a channel in doubt.
            self.forget_channel(&channel).await;
        }
        result
    }

    /// Sends one message (mandatory, so an unroutable one comes back) and
    /// returns its confirm, still to be awaited.
    async fn send(
        &self,
        channel: &Channel,
        message: Outgoing<'_>,
    ) -> Result<PublisherConfirm, lapin::Error> {
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
            .await
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
