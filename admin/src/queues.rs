//! `migrate-queues`: moves queues declared with other arguments (the original
//! services' non-durable ones) to the bundle's durable definition, without
//! losing a message.
//!
//! Per queue: its messages move to a durable holding queue, the old queue is
//! deleted (only once empty), the queue is declared anew, and the messages move
//! back. A message is acknowledged on its old queue only after the broker
//! confirmed its copy, so a crash can at worst duplicate one, and the consumer
//! records each event once. Run it after the old publishers are stopped: a
//! publisher that declares the queue non-durable again would fail against the
//! new one.

use finapp_broker::topology::{
    connect_broker, declare_durable, is_precondition_failed, probe_queue, queue_names,
};
use finapp_shared::config::{Config, QueueType};
use lapin::{
    BasicProperties, Channel, Connection,
    options::{
        BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::FieldTable,
};

/// How many times the old queue is drained and deleted before giving up,
/// should something keep publishing to it.
const DELETE_ATTEMPTS: usize = 5;

/// One queue moved: its name and how many messages it held.
#[derive(Debug, PartialEq, Eq)]
pub struct MovedQueue {
    pub queue: String,
    pub messages: u64,
}

/// Moves every queue of the deployment whose definition differs from ours;
/// queues that already match are left alone.
pub async fn migrate_queues(config: &Config) -> Result<Vec<MovedQueue>, lapin::Error> {
    let connection = connect_broker(&config.rabbitmq_uri, "finapp-admin").await?;
    let mut moved = Vec::new();
    for name in queue_names(&config.queue_prefix) {
        if probe_queue(&connection, &name, config.queue_type)
            .await?
            .is_none()
        {
            continue;
        }
        let messages = migrate_queue(&connection, config, &name).await?;
        moved.push(MovedQueue {
            queue: name,
            messages,
        });
    }
    let _ = connection.close(200, "done".into()).await;
    Ok(moved)
}

async fn migrate_queue(
    connection: &Connection,
    config: &Config,
    name: &str,
) -> Result<u64, lapin::Error> {
    let holding = format!("{name}.finapp-migrating");
    let mut channel = confirmed_channel(connection).await?;
    declare_durable(&channel, &holding, config.queue_type).await?;
    let mut messages = 0;
    for attempt in 1..=DELETE_ATTEMPTS {
        messages += move_all(&channel, name, &holding).await?;
        let deleted = channel
            .queue_delete(
                name.into(),
                QueueDeleteOptions {
                    if_empty: true,
                    ..Default::default()
                },
            )
            .await;
        match deleted {
            Ok(_) => break,
            // A message arrived between the drain and the delete (the broker
            // closed the channel to say so): drain again.
            Err(err) if is_precondition_failed(&err) && attempt < DELETE_ATTEMPTS => {
                channel = confirmed_channel(connection).await?;
            }
            Err(err) => return Err(err),
        }
    }
    // A channel that knew the old queue keeps its type for the name: RabbitMQ
    // 3.10 crashes the channel (INTERNAL_ERROR) on the first publish to a
    // queue of the same name and another type. A fresh channel knows only the new one.
    let _ = channel.close(200, "old queue deleted".into()).await;
    let channel = confirmed_channel(connection).await?;
    declare_durable(&channel, name, config.queue_type).await?;
    move_all(&channel, &holding, name).await?;
    delete_holding(&channel, &holding, config.queue_type).await?;
    let _ = channel.close(200, "migrated".into()).await;
    Ok(messages)
}

/// Deletes the holding queue, which only this tool publishes to, once it is
/// empty. Quorum queues refuse a delete with `if_empty` (NOT_IMPLEMENTED,
/// closing the connection), so for them emptiness is checked just before.
async fn delete_holding(
    channel: &Channel,
    holding: &str,
    queue_type: QueueType,
) -> Result<(), lapin::Error> {
    let mut options = QueueDeleteOptions::default();
    if queue_type == QueueType::Quorum {
        let left = channel
            .queue_declare(
                holding.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?
            .message_count();
        if left > 0 {
            return Err(lapin::Error::from(std::io::Error::other(format!(
                "{holding} still holds {left} messages; it is kept"
            ))));
        }
    } else {
        options.if_empty = true;
    }
    channel.queue_delete(holding.into(), options).await?;
    Ok(())
}

async fn confirmed_channel(connection: &Connection) -> Result<Channel, lapin::Error> {
    let channel = connection.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    Ok(channel)
}

/// Moves every message of `from` to `to`, persistent, acking each original
/// only after the broker confirmed its copy. Returns how many moved.
async fn move_all(channel: &Channel, from: &str, to: &str) -> Result<u64, lapin::Error> {
    let mut moved = 0;
    while let Some(message) = channel
        .basic_get(from.into(), BasicGetOptions { no_ack: false })
        .await?
    {
        let delivery = message.delivery;
        let properties: BasicProperties = delivery.properties.clone().with_delivery_mode(2);
        let confirm = channel
            .basic_publish(
                "".into(),
                to.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &delivery.data,
                properties,
            )
            .await?
            .await?;
        if !confirm.is_ack() || confirm.take_message().is_some() {
            return Err(lapin::Error::from(std::io::Error::other(format!(
                "the broker did not take a message moved from {from} to {to}"
            ))));
        }
        delivery.ack(BasicAckOptions::default()).await?;
        moved += 1;
    }
    Ok(moved)
}
