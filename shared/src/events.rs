//! Publishing domain events to RabbitMQ.
//!
//! One connection and one confirm-mode channel per process, opened on first use
//! and reopened after a failure, so a function starts (and serves) while the
//! broker is down. Queues are durable, messages persistent, and each publish
//! waits for the broker's confirm. The user's JWT travels in the `Authorization`
//! header, as the original services sent it, so the consumer can reject forgeries.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties,
    options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::config::Config;

/// How long a connect or a publish confirm may take before it counts as failed.
const BROKER_TIMEOUT: Duration = Duration::from_secs(3);

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

/// The process's publisher.
pub struct Events {
    uri: SecretString,
    queue_prefix: String,
    link: Mutex<Option<(Connection, Channel)>>,
}

impl Events {
    /// Remembers where the broker is; connects on first publish.
    pub fn new(config: &Config) -> Self {
        Self {
            uri: config.rabbitmq_uri.clone(),
            queue_prefix: config.queue_prefix.clone(),
            link: Mutex::new(None),
        }
    }

    /// The full queue name for `kind` in this deployment.
    pub fn queue_name(&self, kind: EventType) -> String {
        format!("{}{}", self.queue_prefix, kind.queue())
    }

    /// Publishes `event` with `token` in its `Authorization` header and waits
    /// for the broker's confirm.
    pub async fn publish(&self, event: &Event, token: &SecretString) -> Result<(), PublishError> {
        let channel = self.channel().await?;
        let result = self.publish_on(&channel, event, token).await;
        if result.is_err() {
            // Reconnect next time rather than retrying on a channel in doubt.
            self.forget(&channel).await;
        }
        result
    }

    /// Publishes and logs a failure instead of returning it: an event must
    /// never fail the user's request.
    pub async fn emit(&self, event: &Event, token: &SecretString) {
        match self.publish(event, token).await {
            Ok(()) => tracing::debug!(event_id = %event.id, kind = ?event.kind, "event published"),
            Err(err) => tracing::error!(
                event_id = %event.id,
                kind = ?event.kind,
                error = %err,
                cause = ?std::error::Error::source(&err),
                "event not published"
            ),
        }
    }

    async fn publish_on(
        &self,
        channel: &Channel,
        event: &Event,
        token: &SecretString,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(event).expect("an Event always serializes");
        let mut headers = FieldTable::default();
        headers.insert(
            "Authorization".into(),
            AMQPValue::LongString(LongString::from(format!(
                "Bearer {}",
                token.expose_secret()
            ))),
        );
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(event.id.to_string().into())
            .with_type(event.kind.queue().into())
            .with_timestamp(u64::try_from(event.timestamp_ms / 1000).unwrap_or(0))
            .with_headers(headers);
        let queue = self.queue_name(event.kind);
        let confirm = tokio::time::timeout(BROKER_TIMEOUT, async {
            channel
                .basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &body,
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
        let connection = Connection::connect(
            self.uri.expose_secret(),
            ConnectionProperties::default().with_connection_name("finapp-publisher".into()),
        )
        .await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        for kind in EventType::ALL {
            declare_queue(&channel, &self.queue_name(kind)).await?;
        }
        Ok((connection, channel))
    }

    async fn forget(&self, failed: &Channel) {
        let mut link = self.link.lock().await;
        if link
            .as_ref()
            .is_some_and(|(_, channel)| channel.id() == failed.id())
        {
            *link = None;
        }
    }
}

/// Declares a durable event queue. Publisher and consumer both call this, so
/// the arguments must stay identical on both sides.
pub async fn declare_queue(channel: &Channel, name: &str) -> Result<(), lapin::Error> {
    channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .map(|_| ())
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
