//! The outbox: events recorded by requests, waiting for the relay to publish them.
//!
//! A request records its event with one insert ([`Store::record_event`], or
//! [`Store::commit`] with the change it makes, see `store::effects`) and
//! never talks to the broker. One relay at a time publishes: the holder of
//! the relay lock ([`Store::hold_relay_lock`]), a lease on one document of
//! `outbox_lock` that it renews every round and that another relay takes
//! over once it has run out. The holder reads a batch
//! ([`Store::next_outbox_batch`]), publishes it and deletes what the broker
//! confirmed ([`Store::forget_outbox`]); what it could not publish stays
//! where it is for the next round. A relay that dies between a confirm and a
//! delete leaves records that its successor publishes again, and the consumer
//! counts each event once by its id.
//!
//! Every query here is one that FerretDB 1.24 answers without reading the
//! whole outbox. It pushes a `limit` down to PostgreSQL only for a query with
//! neither filter nor sort, and a filter only when it is an equality on a
//! plain value; a sort, a range or an `$in` reads and decodes every record
//! (with 100,000 records waiting, a `delete_many` by `$in` of 128 ids took
//! 8 s and a count 6.7 s). So a batch is the first records in table order,
//! which is insertion order save where PostgreSQL reuses the room of deleted
//! rows, sorted by id (creation time) in memory; a delete is one `_id`
//! equality per record. On MongoDB the same queries read the first records in
//! natural order and delete by the `_id` index.
//!
//! A record holds no token: the relay signs an event token when it
//! publishes, so nothing stored here is accepted by any HTTP route.

use std::time::Duration;

use futures_util::TryStreamExt as _;
use mongodb::bson::{DateTime, Document, doc};
use serde::{Deserialize, Serialize};

use super::{Context as _, Effect, Store, StoreError, as_u64, is_duplicate_key};
use crate::events::Event;

/// The `_id` of the relay lock's one document.
const RELAY_LOCK: &str = "relay";
/// Delete statements sent in one command (a relay batch's worth).
const DELETES_PER_COMMAND: usize = 256;

/// An event waiting in the `outbox` collection to be published.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The event id, a UUIDv7, so the ids sort in the order they were created.
    #[serde(rename = "_id")]
    pub id: String,
    pub event: Event,
    pub created_at: DateTime,
    /// The recording request's span as a W3C `traceparent`, while spans are
    /// exported; the relay passes it on in the message's headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// What the recording request changes, for the relay to make if the
    /// request stopped before it did (see `store::effects`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<Effect>,
}

impl OutboxRecord {
    /// A record of `event`, created now, in the current span's trace.
    pub fn new(event: &Event) -> Self {
        Self {
            id: event.id.to_string(),
            event: event.clone(),
            created_at: DateTime::now(),
            traceparent: crate::telemetry::current_traceparent().map(|parent| parent.to_string()),
            effect: None,
        }
    }

    /// The same record carrying the change its request makes.
    pub fn with_effect(mut self, effect: Effect) -> Self {
        self.effect = Some(effect);
        self
    }
}

/// How far behind the relay is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    /// Records in the outbox.
    pub depth: u64,
    /// How long ago the oldest of them was recorded; zero when there is none.
    pub oldest_age: Duration,
}

impl OutboxBacklog {
    /// The backlog a batch shows: exact when the batch is the whole outbox
    /// (smaller than the limit it was read with); otherwise its depth is a
    /// lower bound, and its oldest record the oldest in table order.
    pub fn of(batch: &[OutboxRecord]) -> Self {
        let now = DateTime::now().timestamp_millis();
        let oldest = batch
            .iter()
            .map(|record| record.created_at.timestamp_millis())
            .min()
            .unwrap_or(now);
        Self {
            depth: batch.len() as u64,
            oldest_age: Duration::from_millis(u64::try_from(now - oldest).unwrap_or(0)),
        }
    }
}

impl Store {
    /// Records `event` in the outbox: the one write of a request that
    /// changes nothing else (a login, a visit).
    pub async fn record_event(&self, event: &Event) -> Result<(), StoreError> {
        self.commit(&OutboxRecord::new(event)).await.map(|_| ())
    }

    /// Takes or renews the relay lock for `holder`, until `lease` from now;
    /// `false` while another holder's lease runs. One conditional upsert: it
    /// matches the lock when it is `holder`'s or has run out, creates it when
    /// there is none, and fails on its `_id` when another holds it. (On
    /// FerretDB, which applies an update as read then write, two relays
    /// taking an expired lock in the same instant could both get it; the
    /// consumer then still counts each event once.)
    pub async fn hold_relay_lock(&self, holder: &str, lease: Duration) -> Result<bool, StoreError> {
        let now = DateTime::now();
        let until = DateTime::from_millis(
            now.timestamp_millis()
                .saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)),
        );
        match self
            .outbox_lock
            .update_one(
                doc! {
                    "_id": RELAY_LOCK,
                    "$or": [{ "holder": holder }, { "until": { "$lte": now } }],
                },
                doc! { "$set": { "holder": holder, "until": until } },
            )
            .upsert(true)
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if is_duplicate_key(&err) => Ok(false),
            Err(err) => Err(StoreError::new("hold the relay lock", err)),
        }
    }

    /// Gives the relay lock up if `holder` has it, so the next relay need not
    /// wait for the lease to run out.
    pub async fn release_relay_lock(&self, holder: &str) -> Result<(), StoreError> {
        self.outbox_lock
            .delete_one(doc! { "_id": RELAY_LOCK, "holder": holder })
            .await
            .context("release the relay lock")?;
        Ok(())
    }

    /// Up to `limit` records, the first in table order, sorted by id.
    pub async fn next_outbox_batch(&self, limit: usize) -> Result<Vec<OutboxRecord>, StoreError> {
        let mut records: Vec<OutboxRecord> = self
            .outbox
            .find(doc! {})
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .max_time(self.read_limit)
            .await
            .context("read outbox records")?
            .try_collect()
            .await
            .context("read outbox records")?;
        records.sort_unstable_by(|a, b| a.id.cmp(&b.id));
        Ok(records)
    }

    /// Deletes published records: one `delete` command whose statements are
    /// an `_id` equality each (what FerretDB pushes down; one `$in` would
    /// read the whole outbox there), so a batch costs one round trip.
    pub async fn forget_outbox(&self, ids: &[&str]) -> Result<(), StoreError> {
        for chunk in ids.chunks(DELETES_PER_COMMAND) {
            let deletes: Vec<Document> = chunk
                .iter()
                .map(|id| doc! { "q": { "_id": *id }, "limit": 1 })
                .collect();
            let answer = self
                .db
                .run_command(doc! {
                    "delete": super::collections::OUTBOX,
                    "deletes": deletes,
                    "ordered": false,
                })
                .await
                .context("delete relayed outbox records")?;
            if let Ok(errors) = answer.get_array("writeErrors")
                && !errors.is_empty()
            {
                return Err(StoreError::new(
                    "delete relayed outbox records",
                    mongodb::error::Error::custom(format!("{} deletes failed", errors.len())),
                ));
            }
        }
        Ok(())
    }

    /// The server's count of outbox records, without reading them: MongoDB's
    /// from its metadata, FerretDB's PostgreSQL's estimate after an `ANALYZE`
    /// (an exact count would read every record). For a backlog too deep for
    /// one batch to measure.
    pub async fn outbox_depth_estimate(&self) -> Result<u64, StoreError> {
        let stats = self
            .db
            .run_command(doc! { "collStats": super::collections::OUTBOX })
            .await
            .context("estimate the outbox depth")?;
        Ok(stats.get("count").and_then(as_u64).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventType;

    #[test]
    fn a_batch_tells_its_size_and_the_age_of_its_oldest_record() {
        assert_eq!(OutboxBacklog::of(&[]), OutboxBacklog::default());
        let event = Event::new(EventType::UserActivity, "ann", "logged in");
        let mut old = OutboxRecord::new(&event);
        old.created_at = DateTime::from_millis(DateTime::now().timestamp_millis() - 60_000);
        let backlog = OutboxBacklog::of(&[OutboxRecord::new(&event), old]);
        assert_eq!(backlog.depth, 2);
        assert!(backlog.oldest_age >= Duration::from_secs(60), "{backlog:?}");
        assert!(backlog.oldest_age < Duration::from_secs(70), "{backlog:?}");
    }
}
