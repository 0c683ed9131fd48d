//! The event pipeline, from either end: events published to the broker as the
//! relay publishes them (`finapp_broker::Publisher::publish`: persistent,
//! confirmed, an event token in `Authorization`), or recorded in the outbox as
//! the functions record them and relayed by notify-consumer itself. Either
//! way a running notify-consumer process consumes them, and they are counted
//! in `user_analytics` by event id.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use finapp_broker::Publisher;
use finapp_shared::{
    events::{DEAD_LETTER_QUEUE, Event, EventType},
    store::{OutboxRecord, Store, collections},
};
use futures_util::{StreamExt as _, TryStreamExt as _};
use lapin::{Connection, ConnectionProperties, options::QueueDeclareOptions, types::FieldTable};
use mongodb::bson::{Document, doc};
use secrecy::SecretString;

use crate::{
    error::{Error, Result},
    fixture::{Fixture, RABBITMQ_URI, Space, mongo},
};

/// Publishes awaiting their confirm at once.
pub const PUBLISH_CONCURRENCY: usize = 64;
/// How often the harness counts the recorded events while it waits.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// Where a run's events enter the pipeline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Source {
    /// Published straight to the broker: the consumer's half alone.
    #[default]
    Broker,
    /// Inserted into the outbox (in bulk, 1,000 per `insert_many`): the
    /// relay's claim, publish and delete, then the consumer.
    Outbox,
}

impl Source {
    pub const ALL: [Source; 2] = [Source::Broker, Source::Outbox];

    pub fn name(self) -> &'static str {
        match self {
            Source::Broker => "broker",
            Source::Outbox => "outbox",
        }
    }
}

/// Outbox records inserted per `insert_many` by an outbox run.
const OUTBOX_CHUNK: usize = 1_000;

/// One run of the pipeline.
#[derive(Clone, Debug, Default)]
pub struct PipelineRun {
    pub source: Source,
    pub events: usize,
    /// Publishes the broker did not confirm (outbox inserts that failed).
    pub publish_failures: usize,
    /// From the first publish to the last confirm (the first outbox insert to the last).
    pub publish: Duration,
    /// From the first publish (or insert) to the last `user_analytics` write.
    pub end_to_end: Duration,
    /// Published and confirmed, never recorded.
    pub lost: usize,
    /// Recorded more than once.
    pub duplicated: usize,
    /// Recorded without having been published in this run.
    pub unexpected: usize,
    pub dead_lettered: u32,
    /// Messages still in the event queues after the consumer stopped.
    pub left_in_queues: u32,
    /// The raw driver's `insert_one` rate for the consumer's documents.
    pub insert_ceiling: f64,
    /// The same documents through `insert_many` in batches.
    pub batched_ceiling: f64,
    /// `Store::record_analytics`, the consumer's whole write, alone (events/s).
    pub record_ceiling: f64,
}

impl PipelineRun {
    pub fn events_per_sec(&self) -> f64 {
        self.events as f64 / self.end_to_end.as_secs_f64()
    }

    pub fn published_per_sec(&self) -> f64 {
        self.events as f64 / self.publish.as_secs_f64()
    }
}

/// Sends `count` events into `space` from `source`, while its consumer is
/// running, and waits until they are recorded (or until a deadline counts the
/// rest lost).
pub async fn publish_and_wait(
    fixture: &Fixture,
    space: &Space,
    count: usize,
    source: Source,
) -> Result<PipelineRun> {
    let config = fixture.config_in(space)?;
    let store = Store::connect(&config).await.map_err(mongo)?;
    let events = Arc::new(Publisher::new(&config));
    let batch: Vec<(Event, SecretString)> = (0..count)
        .map(|i| {
            let user = &fixture.users[i % fixture.users.len()];
            let token = SecretString::from(fixture.tokens[i % fixture.tokens.len()].clone());
            let kind = EventType::ALL[i % EventType::ALL.len()];
            (Event::new(kind, user, message(kind, user)), token)
        })
        .collect();
    let published: HashSet<String> = batch
        .iter()
        .map(|(event, _)| event.id.to_string())
        .collect();

    let started_at = unix_millis();
    let started = Instant::now();
    let publish_failures = match source {
        Source::Broker => {
            futures_util::stream::iter(&batch)
                .map(|(event, token)| events.publish(event, token))
                .buffer_unordered(PUBLISH_CONCURRENCY)
                .filter(|result| std::future::ready(result.is_err()))
                .count()
                .await
        }
        Source::Outbox => {
            let outbox = store
                .database()
                .collection::<OutboxRecord>(collections::OUTBOX);
            let mut failed = 0;
            for chunk in batch.chunks(OUTBOX_CHUNK) {
                let records = chunk.iter().map(|(event, _)| OutboxRecord::new(event));
                if outbox.insert_many(records).await.is_err() {
                    failed += chunk.len();
                }
            }
            failed
        }
    };
    let publish = started.elapsed();
    events.close().await;

    let expected = (count - publish_failures) as u64;
    let deadline = Instant::now() + Duration::from_secs(60 + count as u64 / 500);
    while store
        .database()
        .collection::<Document>(collections::ANALYTICS)
        .count_documents(doc! {})
        .await?
        < expected
        && Instant::now() < deadline
    {
        tokio::time::sleep(POLL_INTERVAL).await;
    }

    let analytics = store
        .database()
        .collection::<Document>(collections::ANALYTICS);
    let last_write = analytics
        .find_one(doc! {})
        .sort(doc! { "received_at": -1 })
        .await?
        .and_then(|doc| doc.get_datetime("received_at").ok().copied())
        .map_or(started_at, |at| at.timestamp_millis());
    let stored: Vec<String> = analytics
        .find(doc! {})
        .projection(doc! { "event_id": 1 })
        .await?
        .map_ok(|doc| doc.get_str("event_id").unwrap_or_default().to_owned())
        .try_collect()
        .await?;
    let mut times_stored: HashMap<&str, usize> = HashMap::new();
    for id in &stored {
        *times_stored.entry(id.as_str()).or_default() += 1;
    }
    Ok(PipelineRun {
        source,
        events: count,
        publish_failures,
        publish,
        end_to_end: Duration::from_millis(u64::try_from(last_write - started_at).unwrap_or(0)),
        lost: published
            .iter()
            .filter(|id| !times_stored.contains_key(id.as_str()))
            .count()
            .saturating_sub(publish_failures),
        duplicated: times_stored.values().map(|times| times - 1).sum(),
        unexpected: times_stored
            .keys()
            .filter(|id| !published.contains(**id))
            .count(),
        ..PipelineRun::default()
    })
}

/// Messages waiting in `space`'s event queues, and in its dead-letter queue.
pub async fn queue_depths(space: &Space) -> Result<(u32, u32)> {
    let connection = Connection::connect(RABBITMQ_URI, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    let depth = |queue: String| {
        let channel = channel.clone();
        async move {
            let options = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            channel
                .queue_declare(queue.as_str().into(), options, FieldTable::default())
                .await
                .map(|queue| queue.message_count())
                .map_err(Error::from)
        }
    };
    let mut events = 0;
    for kind in EventType::ALL {
        events += depth(format!("{}{}", space.queue_prefix, kind.queue())).await?;
    }
    let dead = depth(format!("{}{DEAD_LETTER_QUEUE}", space.queue_prefix)).await?;
    connection.close(200, "done".into()).await?;
    Ok((events, dead))
}

/// The text the functions give each kind of event.
fn message(kind: EventType, user: &str) -> String {
    match kind {
        EventType::UserRegistered => format!("User {user} registered"),
        EventType::UserActivity => format!("User {user} logged in"),
        EventType::ApplicationSubmitted => format!("Application by {user} for 15000"),
        EventType::FinancingOptionSelected => format!("User {user} selected a financing option"),
    }
}

fn unix_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}
