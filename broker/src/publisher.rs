//! The process's publisher: one broker connection and one confirm-mode
//! channel, opened on first use and reopened after a failure. Messages are
//! durable-queue, persistent and confirmed.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use finapp_shared::{
    config::{Config, QueueType},
    events::Event,
};
use lapin::{
    BasicProperties, Channel, Connection, PublisherConfirm,
    options::{BasicPublishOptions, ConfirmSelectOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use secrecy::{ExposeSecret, SecretString};
use tokio::sync::Mutex;

use crate::topology::{BROKER_TIMEOUT, connect_broker, declare_queues};

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

    /// The message with a W3C `traceparent` header, if there is one to carry:
    /// the consumer's span becomes a child of the span it names.
    pub fn with_traceparent(mut self, traceparent: Option<&str>) -> Self {
        if let Some(traceparent) = traceparent {
            self.headers.insert(
                "traceparent".into(),
                AMQPValue::LongString(LongString::from(traceparent)),
            );
        }
        self
    }
}

/// The process's publisher: one connection and one confirm-mode channel.
pub struct Publisher {
    uri: SecretString,
    queue_prefix: String,
    queue_type: QueueType,
    link: Mutex<Option<(Connection, Channel)>>,
}

impl Publisher {
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
        // connect_broker bounds each address of RABBITMQ_URI by itself.
        let connection = connect_broker(&self.uri, "finapp-publisher").await?;
        let channel = tokio::time::timeout(BROKER_TIMEOUT, self.open(&connection))
            .await
            .map_err(|_| PublishError::Timeout(BROKER_TIMEOUT))??;
        *link = Some((connection, channel.clone()));
        Ok(channel)
    }

    async fn open(&self, connection: &Connection) -> Result<Channel, lapin::Error> {
        declare_queues(connection, &self.queue_prefix, self.queue_type).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(channel)
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
