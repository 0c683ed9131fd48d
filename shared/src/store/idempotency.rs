//! Idempotency keys: one record per (user, key) in `idempotency_keys`, made
//! by the first request that uses the key and holding its response once done.
//!
//! The unique index on `{user, key}` is the only synchronisation: whoever
//! inserts the record owns the key and performs the write; everyone else
//! reads the record. Every record gets a fresh `_id`, and a live record is
//! only ever deleted by its `_id`, so a stale reader can never delete a newer claim
//! (FerretDB 1.x applies a filtered update as read, change, write back, so
//! conditional updates are no lock there; inserts on a unique index are).
//!
//! A record also holds the ids its request writes with ([`WriteIds`]). A
//! claim whose request failed with a 5xx, or stopped, is taken over by the
//! next request with the key, and that request keeps those ids: whatever the
//! first attempt wrote, the retry writes to the same documents, so the key
//! yields one application, one selection, one event.
//!
//! A record's `expires_at` carries a TTL index where the server has them
//! (see `Store::ensure_expiry`); FerretDB 1.x does not, so an expired record
//! is also treated as absent on every read, and a user's expired records are
//! purged whenever that user claims a new key.

use std::time::Duration;

use mongodb::{
    IndexModel,
    bson::{DateTime, doc, oid::ObjectId},
    options::IndexOptions,
};
use serde::{Deserialize, Serialize};

use super::{Context as _, IndexError, Store, StoreError, WriteIds, collections, is_duplicate_key};

/// A document of `idempotency_keys`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IdempotencyRecord {
    #[serde(rename = "_id")]
    pub id: ObjectId,
    /// The username the key belongs to: keys are scoped per user.
    pub user: String,
    /// The client's `Idempotency-Key`.
    pub key: String,
    /// What the first request asked (see `crate::idempotency::fingerprint`).
    pub fingerprint: String,
    /// While in progress: after this the claim counts as abandoned (its
    /// request cannot still be running, being past its timeout).
    pub lease_until: DateTime,
    /// After this the record counts as absent.
    pub expires_at: DateTime,
    /// The first request's answer; absent while it is in progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<StoredResponse>,
    /// The ids the request writes with, kept across takeovers. (Absent in
    /// records of earlier versions.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<StoredIds>,
}

/// [`WriteIds`] as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredIds {
    pub event: uuid::Uuid,
    pub document: ObjectId,
}

/// A response as sent, to be sent again.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredResponse {
    pub status: i32,
    /// The JSON body, byte for byte.
    pub body: String,
}

/// What a request is trying to do with a key.
#[derive(Clone, Copy, Debug)]
pub struct KeyClaim<'a> {
    pub user: &'a str,
    pub key: &'a str,
    pub fingerprint: &'a str,
    /// How long a claim may stay in progress before another request may take it over.
    pub lease: Duration,
    /// How long the record (and its response) is kept.
    pub ttl: Duration,
}

/// The proof that this request holds a key (the record it inserted), and
/// the ids it writes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClaimToken {
    record: ObjectId,
    pub writes: WriteIds,
}

/// The state of a key, as seen by one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Claim {
    /// This request holds the key: perform the write, then
    /// [`Store::complete_idempotency_key`], [`Store::release_idempotency_key`]
    /// (nothing written) or [`Store::abandon_idempotency_key`] (maybe written).
    Won(ClaimToken),
    /// An earlier request with the same fingerprint finished with this answer.
    Completed(StoredResponse),
    /// An earlier request with the same fingerprint is still running.
    InProgress,
    /// The key was used for a different request.
    Mismatch,
}

/// How often a claim is retried when the record it collided with vanished
/// (expired, abandoned or released) before it could be read.
const CLAIM_ATTEMPTS: usize = 4;

fn after(now: DateTime, duration: Duration) -> DateTime {
    let millis = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
    DateTime::from_millis(now.timestamp_millis().saturating_add(millis))
}

impl Store {
    /// A unique index on `{user, key}` (what makes a claim exclusive) and
    /// the expiry index on `expires_at`.
    pub(super) async fn ensure_idempotency_indexes(&self) -> Result<(), IndexError> {
        let unique = IndexModel::builder()
            .keys(doc! { "user": 1, "key": 1 })
            .options(IndexOptions::builder().unique(true).build())
            .build();
        self.idempotency_keys
            .create_index(unique)
            .await
            .map_err(|source| IndexError::Create {
                collection: collections::IDEMPOTENCY_KEYS,
                source,
            })?;
        self.ensure_expiry(&self.idempotency_keys, collections::IDEMPOTENCY_KEYS)
            .await
    }

    /// Deletes `user`'s expired records (one round trip, filtered on the
    /// user, which FerretDB pushes down): before a request claims a key.
    pub async fn purge_expired_idempotency_keys(&self, user: &str) -> Result<(), StoreError> {
        self.idempotency_keys
            .delete_many(doc! { "user": user, "expires_at": { "$lte": DateTime::now() } })
            .await
            .context("purge expired idempotency keys")?;
        Ok(())
    }

    /// Claims `claim.key` for `claim.user`, or reports why not: inserts an
    /// in-progress record; on a collision, reads the record that is there.
    /// A record that has expired is deleted and the key claimed afresh; one
    /// in progress past its lease (its request failed or stopped) is taken
    /// over with its write ids.
    pub async fn claim_idempotency_key(&self, claim: &KeyClaim<'_>) -> Result<Claim, StoreError> {
        let mut carried = None;
        for _ in 0..CLAIM_ATTEMPTS {
            let now = DateTime::now();
            let writes = match carried {
                Some(StoredIds { event, document }) => WriteIds {
                    event,
                    document,
                    resumed: true,
                },
                None => WriteIds::fresh(),
            };
            let record = IdempotencyRecord {
                id: ObjectId::new(),
                user: claim.user.to_owned(),
                key: claim.key.to_owned(),
                fingerprint: claim.fingerprint.to_owned(),
                lease_until: after(now, claim.lease),
                expires_at: after(now, claim.ttl),
                response: None,
                writes: Some(StoredIds {
                    event: writes.event,
                    document: writes.document,
                }),
            };
            match self.idempotency_keys.insert_one(&record).await {
                Ok(_) => {
                    return Ok(Claim::Won(ClaimToken {
                        record: record.id,
                        writes,
                    }));
                }
                Err(err) if is_duplicate_key(&err) => {}
                Err(err) => return Err(StoreError::new("claim idempotency key", err)),
            }
            match self.inspect_idempotency_key(claim).await? {
                Held(state) => return Ok(state),
                Vacant(writes) => carried = writes.or(carried),
            }
        }
        // Claimed and gone again every time: as good as in progress.
        Ok(Claim::InProgress)
    }

    /// The state of the record for `claim`'s user and key. A record that has
    /// expired, or is in progress past its lease, is deleted on the way; the
    /// latter's write ids are handed on.
    async fn inspect_idempotency_key(&self, claim: &KeyClaim<'_>) -> Result<Lookup, StoreError> {
        let Some(record) = self
            .idempotency_keys
            .find_one(doc! { "user": claim.user, "key": claim.key })
            .max_time(self.read_limit)
            .await
            .context("find idempotency key")?
        else {
            return Ok(Vacant(None));
        };
        let now = DateTime::now();
        let expired = record.expires_at <= now;
        let abandoned = record.response.is_none() && record.lease_until <= now;
        if expired || abandoned {
            self.idempotency_keys
                .delete_one(doc! { "_id": record.id })
                .await
                .context("delete expired idempotency key")?;
            // An expired key is a new request's; an abandoned one is a retry
            // of a request that may have written.
            return Ok(Vacant(if expired { None } else { record.writes }));
        }
        Ok(Held(if record.fingerprint != claim.fingerprint {
            Claim::Mismatch
        } else if let Some(response) = record.response {
            Claim::Completed(response)
        } else {
            Claim::InProgress
        }))
    }

    /// Stores the answer of the request holding `token`; `false` when its
    /// claim was no longer there (taken over after its lease).
    pub async fn complete_idempotency_key(
        &self,
        token: ClaimToken,
        response: &StoredResponse,
    ) -> Result<bool, StoreError> {
        let stored = doc! { "status": response.status, "body": &response.body };
        let result = self
            .idempotency_keys
            .update_one(
                doc! { "_id": token.record },
                doc! { "$set": { "response": stored } },
            )
            .await
            .context("complete idempotency key")?;
        Ok(result.matched_count == 1)
    }

    /// Gives up the claim `token` proves, so that a retry with the same key
    /// runs afresh: for a request refused before it wrote anything.
    pub async fn release_idempotency_key(&self, token: ClaimToken) -> Result<(), StoreError> {
        self.idempotency_keys
            .delete_one(doc! { "_id": token.record })
            .await
            .context("release idempotency key")?;
        Ok(())
    }

    /// Ends the lease of the claim `token` proves, keeping its write ids: for
    /// a request that failed after it may have written. The next request
    /// with the key takes it over at once and writes to the same ids.
    pub async fn abandon_idempotency_key(&self, token: ClaimToken) -> Result<(), StoreError> {
        self.idempotency_keys
            .update_one(
                doc! { "_id": token.record },
                doc! { "$set": { "lease_until": DateTime::now() } },
            )
            .await
            .context("abandon idempotency key")?;
        Ok(())
    }
}

/// A record as [`Store::inspect_idempotency_key`] found it.
enum Lookup {
    /// A record to respect.
    Held(Claim),
    /// None to respect: the key may be claimed, with these write ids if an
    /// earlier attempt may have written.
    Vacant(Option<StoredIds>),
}
use Lookup::{Held, Vacant};
