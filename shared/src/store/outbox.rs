//! The outbox: events recorded by requests, waiting for the relay to publish them.
//!
//! A request records its event with one insert ([`Store::record_event`]) and
//! never talks to the broker. The relay claims records in batches, oldest
//! first ([`Store::claim_outbox`]), publishes them and deletes them once the
//! broker confirmed them ([`Store::forget_outbox`]).
//!
//! A claim is a lease: `relay_after` moves past the lease's end and `claim`
//! names the claimant, so another relay skips the record until the lease
//! runs out (a relay that died mid-batch loses its records only for that
//! long). On MongoDB each document's update is atomic, so two relays never
//! hold one record at once; FerretDB 1.24 applies an update by reading and
//! rewriting the document, so two relays claiming in the same instant could
//! both publish one record, which the consumer then counts once by its id.
//!
//! A record holds no token: the relay signs an event token when it
//! publishes, so nothing stored here is accepted by any HTTP route.

use std::time::Duration;

use futures_util::TryStreamExt as _;
use mongodb::bson::{DateTime, Document, doc};
use serde::{Deserialize, Serialize};

use super::{Context as _, Store, StoreError};
use crate::events::Event;

/// An event waiting in the `outbox` collection to be published.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OutboxRecord {
    /// The event id, a UUIDv7, so the ids sort in the order they were created.
    #[serde(rename = "_id")]
    pub id: String,
    pub event: Event,
    pub created_at: DateTime,
    /// Not claimed before this time: the creation time, then a lease's end.
    pub relay_after: DateTime,
    /// The claim that holds the record's lease, if any did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim: Option<String>,
    /// The recording request's span as a W3C `traceparent`, while spans are
    /// exported; the relay passes it on in the message's headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
}

impl OutboxRecord {
    /// A record of `event`, claimable at once, in the current span's trace.
    pub fn new(event: &Event) -> Self {
        let now = DateTime::now();
        Self {
            id: event.id.to_string(),
            event: event.clone(),
            created_at: now,
            relay_after: now,
            claim: None,
            traceparent: crate::telemetry::current_traceparent().map(|parent| parent.to_string()),
        }
    }
}

/// Records one relay claimed together, under one lease.
#[derive(Debug, Default)]
pub struct OutboxClaim {
    /// Names the lease; only its holder's records carry it.
    pub id: String,
    /// Oldest first.
    pub records: Vec<OutboxRecord>,
}

/// How far behind the relay is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxBacklog {
    /// Records in the outbox, leased or not.
    pub depth: u64,
    /// How long ago the oldest of them was recorded; zero when there is none.
    pub oldest_age: Duration,
}

impl Store {
    /// Records `event` in the outbox: the request's one write for its event.
    pub async fn record_event(&self, event: &Event) -> Result<(), StoreError> {
        self.outbox
            .insert_one(OutboxRecord::new(event))
            .await
            .context("record event")?;
        crate::metrics::events_recorded(1);
        Ok(())
    }

    /// Claims up to `limit` of the oldest records no live lease holds, for
    /// `lease`. Three round trips: the candidates' ids (oldest first, from the
    /// `relay_after` index), one `update_many` that leases those still free,
    /// and a read of the ones this claim holds.
    pub async fn claim_outbox(
        &self,
        limit: usize,
        lease: Duration,
    ) -> Result<OutboxClaim, StoreError> {
        let now = DateTime::now();
        let free = doc! { "relay_after": { "$lte": now } };
        let ids: Vec<String> = self
            .outbox
            .clone_with_type::<Document>()
            .find(free.clone())
            .max_time(self.read_limit)
            .sort(doc! { "_id": 1 })
            .limit(i64::try_from(limit).unwrap_or(i64::MAX))
            .projection(doc! { "_id": 1 })
            .await
            .context("claim outbox records")?
            .try_filter_map(|doc| async move { Ok(doc.get_str("_id").ok().map(str::to_owned)) })
            .try_collect()
            .await
            .context("claim outbox records")?;
        let claim = uuid::Uuid::new_v4().to_string();
        if ids.is_empty() {
            return Ok(OutboxClaim {
                id: claim,
                records: Vec::new(),
            });
        }
        let until = DateTime::from_millis(
            now.timestamp_millis()
                .saturating_add(i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)),
        );
        let mut filter = free;
        filter.insert("_id", doc! { "$in": &ids });
        self.outbox
            .update_many(
                filter,
                doc! { "$set": { "relay_after": until, "claim": &claim } },
            )
            .await
            .context("claim outbox records")?;
        let records = self
            .outbox
            .find(doc! { "_id": { "$in": &ids }, "claim": &claim })
            .max_time(self.read_limit)
            .sort(doc! { "_id": 1 })
            .await
            .context("claim outbox records")?
            .try_collect()
            .await
            .context("claim outbox records")?;
        Ok(OutboxClaim { id: claim, records })
    }

    /// Deletes published records.
    pub async fn forget_outbox(&self, ids: &[&str]) -> Result<(), StoreError> {
        if !ids.is_empty() {
            self.outbox
                .delete_many(doc! { "_id": { "$in": ids } })
                .await
                .context("delete relayed outbox records")?;
        }
        Ok(())
    }

    /// Ends `claim`'s lease on the records of `ids` it still holds, so the
    /// next round may take them at once (after a failed publish).
    pub async fn release_outbox(&self, claim: &str, ids: &[&str]) -> Result<(), StoreError> {
        if !ids.is_empty() {
            self.outbox
                .update_many(
                    doc! { "_id": { "$in": ids }, "claim": claim },
                    doc! { "$set": { "relay_after": DateTime::now() } },
                )
                .await
                .context("release outbox records")?;
        }
        Ok(())
    }

    /// The outbox's depth and the age of its oldest record.
    pub async fn outbox_backlog(&self) -> Result<OutboxBacklog, StoreError> {
        let depth = self
            .outbox
            .count_documents(doc! {})
            .max_time(self.read_limit)
            .await
            .context("count outbox")?;
        if depth == 0 {
            return Ok(OutboxBacklog::default());
        }
        let oldest = self
            .outbox
            .clone_with_type::<Document>()
            .find_one(doc! {})
            .max_time(self.read_limit)
            .sort(doc! { "_id": 1 })
            .projection(doc! { "created_at": 1 })
            .await
            .context("find oldest outbox record")?;
        let created = oldest
            .as_ref()
            .and_then(|doc| doc.get_datetime("created_at").ok())
            .map_or(0, |at| at.timestamp_millis());
        let age_ms = DateTime::now().timestamp_millis().saturating_sub(created);
        Ok(OutboxBacklog {
            depth,
            oldest_age: Duration::from_millis(u64::try_from(age_ms).unwrap_or(0)),
        })
    }
}
