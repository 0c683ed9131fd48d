//! The long-running runtime: consume the four queues with lapin until stopped.
//!
//! Prefetch is bounded. Messages already delivered are taken together, up to
//! [`BATCH`] at a time, and written with one `insert_many`: under load the
//! batches fill up, and a lone message is still written at once. Each message
//! is acked only after its write succeeded (or after it reached the dead-letter
//! queue), a database failure requeues the batch, and a lost connection is
//! re-established with exponential backoff.
//!
//! The same process is the outbox relay ([`finapp_broker::relay`]): the one
//! publisher of the functions' events. One process rather than a relay binary
//! of its own: it already holds the broker, the database and the keys, and
//! a deployment gains no second long-running workload to run and watch.

use std::{future::Future, sync::Arc, time::Duration};

use finapp_broker::{
    Outgoing, Publisher,
    topology::{BROKER_TIMEOUT, connect_broker, declare_queues},
};
use finapp_shared::{
    Deps,
    events::{DEAD_LETTER_QUEUE, EventType},
};
use futures_util::StreamExt as _;
use lapin::{
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicQosOptions},
    types::{AMQPValue, FieldTable, LongString},
};
use tokio::sync::watch;

use crate::{
    Worker,
    process::{Incoming, Outcome, process_batch},
};

/// Unacknowledged messages the broker may hand this process per queue.
pub const PREFETCH: u16 = 256;
/// Most messages written with one `insert_many`.
pub const BATCH: usize = 128;
/// Batches being written at once, so one batch's round trip overlaps the next.
pub const WRITERS: usize = 4;
const MIN_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a stop waits for the batches already delivered to be recorded.
const STOP_GRACE: Duration = Duration::from_secs(5);
/// Pause before requeueing after a database failure, so a down database is not hammered.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Consumes and relays until `shutdown` resolves, then lets in-flight work end.
pub async fn run(deps: Arc<Deps>, shutdown: impl Future<Output = ()>) {
    let worker = Arc::new(Worker::new(deps));
    let (stop, stopped) = watch::channel(false);
    let relay = tokio::spawn(relay_outbox(worker.clone(), stopped.clone()));
    let consumer = tokio::spawn(consume(worker.clone(), stopped));
    shutdown.await;
    let _ = stop.send(true);
    let _ = tokio::join!(relay, consumer);
    worker.publisher.close().await;
    tracing::info!("consumer stopped");
}

async fn relay_outbox(worker: Arc<Worker>, mut stopped: watch::Receiver<bool>) {
    let stop = async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    worker.relay().run(stop).await;
}

async fn consume(worker: Arc<Worker>, mut stopped: watch::Receiver<bool>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match session(&worker, &mut stopped, &mut backoff).await {
            Ok(()) if *stopped.borrow() => return,
            Ok(()) => tracing::warn!("broker connection lost"),
            Err(err) => tracing::warn!(error = %err, retry_in = ?backoff, "cannot consume"),
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life: returns when it drops or when asked to stop.
async fn session(
    worker: &Worker,
    stopped: &mut watch::Receiver<bool>,
    backoff: &mut Duration,
) -> Result<(), lapin::Error> {
    let deps = &worker.deps;
    let prefix = &deps.config.queue_prefix;
    // Bounded (each address of RABBITMQ_URI for BROKER_TIMEOUT, then the
    // next), so a broker that accepts TCP and never answers (a partition) is
    // retried with backoff, and a stop request is seen, instead of a hang.
    let connection = connect_broker(&deps.config.rabbitmq_uri, "finapp-notify-consumer").await?;
    // Bounded too: on a cluster that is electing a queue's leader, a
    // declaration waits until there is one.
    tokio::time::timeout(
        BROKER_TIMEOUT,
        declare_queues(&connection, prefix, deps.config.queue_type),
    )
    .await
    .map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("queue declarations took over {BROKER_TIMEOUT:?}"),
        )
    })??;
    let channel = connection.create_channel().await?;
    channel
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut streams = Vec::new();
    for kind in EventType::ALL {
        let queue = worker.publisher.queue_name(kind.queue());
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                consumer_tag(kind).as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        streams.push(consumer.map(move |delivery| (kind, delivery)));
    }
    *backoff = MIN_BACKOFF;
    tracing::info!("consuming");

    let work = futures_util::stream::select_all(streams)
        .take_while(|(_, delivery)| {
            if let Err(err) = delivery {
                tracing::warn!(error = %err, "consumer stream failed");
            }
            std::future::ready(delivery.is_ok())
        })
        .filter_map(|(kind, delivery)| std::future::ready(delivery.ok().map(|d| (kind, d))))
        .ready_chunks(BATCH)
        .for_each_concurrent(WRITERS, |batch| handle_batch(worker, batch));
    tokio::pin!(work);
    let stop_requested = tokio::select! {
        () = &mut work => false,
        _ = stopped.wait_for(|stop| *stop) => true,
    };
    if stop_requested {
        // No more deliveries; what was delivered is recorded and acked (for
        // up to STOP_GRACE), the rest returns to the queues with the connection.
        for kind in EventType::ALL {
            let _ = channel
                .basic_cancel(consumer_tag(kind).as_str().into(), Default::default())
                .await;
        }
        let _ = tokio::time::timeout(STOP_GRACE, work).await;
        let _ = connection.close(200, "shutting down".into()).await;
    }
    Ok(())
}

fn consumer_tag(kind: EventType) -> String {
    format!("notify-consumer.{}", kind.queue())
}

/// What a delivery carries that the handler reads, owned.
struct Received {
    kind: EventType,
    delivery: Delivery,
    headers: FieldTable,
    authorization: Option<String>,
    message_id: Option<String>,
    traceparent: Option<String>,
}

impl Received {
    fn new(kind: EventType, delivery: Delivery) -> Self {
        let headers = delivery.properties.headers().clone().unwrap_or_default();
        Self {
            kind,
            authorization: header_text(&headers, "Authorization"),
            traceparent: header_text(&headers, "traceparent"),
            message_id: delivery
                .properties
                .message_id()
                .as_ref()
                .map(|id| id.to_string()),
            headers,
            delivery,
        }
    }

    fn incoming(&self) -> Incoming<'_> {
        Incoming {
            queue: self.kind.queue(),
            body: &self.delivery.data,
            authorization: self.authorization.as_deref(),
            message_id: self.message_id.as_deref(),
            traceparent: self.traceparent.as_deref(),
        }
    }
}

async fn handle_batch(worker: &Worker, batch: Vec<(EventType, Delivery)>) {
    let received: Vec<Received> = batch
        .into_iter()
        .map(|(kind, delivery)| Received::new(kind, delivery))
        .collect();
    let incoming: Vec<Incoming<'_>> = received.iter().map(Received::incoming).collect();
    let outcomes = match process_batch(&worker.deps, &incoming).await {
        Ok(outcomes) => outcomes,
        Err(err) => {
            tracing::error!(
                error = %err,
                cause = ?std::error::Error::source(&err),
                messages = received.len(),
                "batch not recorded; requeueing"
            );
            tokio::time::sleep(RETRY_PAUSE).await;
            let requeue = received
                .iter()
                .map(|message| settle(&message.delivery, false));
            futures_util::future::join_all(requeue).await;
            return;
        }
    };
    let settled = received
        .into_iter()
        .zip(outcomes)
        .map(|(message, outcome)| async move {
            let done = match outcome {
                Outcome::Recorded | Outcome::Duplicate => true,
                Outcome::Rejected(rejection) => {
                    let queue = message.kind.queue();
                    tracing::warn!(queue, reason = rejection.reason(), "message dead-lettered");
                    let body = &message.delivery.data;
                    dead_letter(
                        &worker.publisher,
                        queue,
                        body,
                        message.headers,
                        rejection.reason(),
                    )
                    .await
                }
            };
            settle(&message.delivery, done).await;
        });
    futures_util::future::join_all(settled).await;
}

/// Acks a message that is done with, or requeues one that is not.
async fn settle(delivery: &Delivery, done: bool) {
    let result = if done {
        delivery.ack(BasicAckOptions::default()).await
    } else {
        delivery
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
    };
    if let Err(err) = result {
        // The broker will redeliver; the write is idempotent.
        tracing::warn!(error = %err, "acknowledgement failed");
    }
}

/// Publishes a refused message to the dead-letter queue with its reason;
/// `false` if that failed, so the message is requeued rather than lost.
pub async fn dead_letter(
    publisher: &Publisher,
    queue: &str,
    body: &[u8],
    mut headers: FieldTable,
    reason: &str,
) -> bool {
    headers.insert(
        "x-finapp-reason".into(),
        AMQPValue::LongString(LongString::from(reason)),
    );
    headers.insert(
        "x-finapp-queue".into(),
        AMQPValue::LongString(LongString::from(queue)),
    );
    let id = uuid::Uuid::new_v4().to_string();
    let outgoing = Outgoing {
        queue: DEAD_LETTER_QUEUE,
        body,
        message_id: &id,
        kind: "dead_letter",
        headers,
    };
    match publisher.publish_raw(outgoing).await {
        Ok(()) => {
            finapp_shared::metrics::events_dead_lettered(1);
            true
        }
        Err(err) => {
            tracing::error!(error = %err, "dead-letter publish failed; requeueing");
            false
        }
    }
}

/// A header as text, whichever string type the publisher used.
pub fn header_text(headers: &FieldTable, name: &str) -> Option<String> {
    match headers.inner().get(name)? {
        AMQPValue::LongString(value) => {
            Some(String::from_utf8_lossy(value.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(value) => Some(value.to_string()),
        AMQPValue::ByteArray(value) => Some(String::from_utf8_lossy(value.as_slice()).into_owned()),
        _ => None,
    }
}
