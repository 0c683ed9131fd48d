//! A request's change and its event as one write.
//!
//! A request that changes something (a sign-up, an application, a
//! selection) writes its outbox record first, and the record carries the
//! change as an [`Effect`]. That insert is the request's commit point: once
//! it is stored, the change happens, whoever makes it. The request makes it
//! at once ([`Store::commit`]); if the request stops first (a crash, a
//! timeout, the database going away between the two), the relay makes it
//! before it publishes the event ([`Store::apply_effect`]). Every effect is
//! keyed by ids chosen before the record was written ([`WriteIds`]), so
//! making it twice changes nothing, and a retry under the same
//! `Idempotency-Key` writes to the same ids.
//!
//! docs/events.md says why this design and not the others.

use mongodb::{
    Collection,
    bson::{self, DateTime, Document, doc, oid::ObjectId},
    error::ErrorKind,
};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{
    ApplicationDoc, Context as _, DUPLICATE_KEY, OutboxRecord, Store, StoreError, UserDoc,
    is_duplicate_key,
};

/// The ids a request's write takes, chosen before anything is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteIds {
    /// The event's id, which is also its outbox record's `_id`.
    pub event: Uuid,
    /// The `_id` of the document the request creates, if it creates one.
    pub document: ObjectId,
    /// Whether an earlier attempt under the same `Idempotency-Key` may have
    /// written with these ids already.
    pub resumed: bool,
}

impl WriteIds {
    /// New ids, for a request that nothing was written for yet.
    pub fn fresh() -> Self {
        Self {
            event: Uuid::now_v7(),
            document: ObjectId::new(),
            resumed: false,
        }
    }
}

/// What a request changes besides recording its event.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    /// A sign-up: this user, its `_id` set, unless the name is someone else's.
    InsertUser(UserDoc),
    /// An application, under this `_id`.
    InsertApplication {
        id: ObjectId,
        application: ApplicationDoc,
    },
    /// `option` becomes `user`'s selection, unless a later selection is stored.
    Select {
        user: String,
        option: Document,
        at: DateTime,
    },
}

/// What became of an effect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Applied {
    /// The change is stored (by this call or an earlier one).
    Done,
    /// The change cannot be made: the username belongs to another user.
    Conflict,
}

impl Store {
    /// Records `record` and makes its effect: a request's write. The record
    /// is stored first, so a request that stops after it is finished by the
    /// relay. A record already stored (a retry's) counts as recorded.
    pub async fn commit(&self, record: &OutboxRecord) -> Result<Applied, StoreError> {
        match self.outbox.insert_one(record).await {
            Ok(_) => crate::metrics::events_recorded(1),
            Err(err) if is_duplicate_key(&err) && self.is_recorded(&record.id).await? => {}
            Err(err) => return Err(StoreError::new("record event", err)),
        }
        match &record.effect {
            Some(effect) => self.apply_effect(&record.id, effect).await,
            None => Ok(Applied::Done),
        }
    }

    /// Whether the outbox holds the record `id`: what a duplicate key on
    /// inserting it means, unless another unique index refused it.
    async fn is_recorded(&self, id: &str) -> Result<bool, StoreError> {
        let found = self
            .outbox
            .clone_with_type::<Document>()
            .find_one(doc! { "_id": id })
            .projection(doc! { "_id": 1 })
            .max_time(self.read_limit)
            .await
            .context("find outbox record")?;
        Ok(found.is_some())
    }

    /// Makes `effect` of the outbox record `record_id`, if it is not made yet.
    pub async fn apply_effect(
        &self,
        record_id: &str,
        effect: &Effect,
    ) -> Result<Applied, StoreError> {
        match effect {
            Effect::InsertUser(user) => self.insert_user_once(user).await,
            Effect::InsertApplication { id, application } => {
                let document = application_document(*id, application);
                match self
                    .applications
                    .clone_with_type::<Document>()
                    .insert_one(document)
                    .await
                {
                    Err(err) if !is_duplicate_key(&err) => {
                        Err(StoreError::new("insert application", err))
                    }
                    _ => Ok(Applied::Done),
                }
            }
            Effect::Select { user, option, at } => {
                // Matches unless a selection recorded after this one is stored
                // (event ids are UUIDv7, in creation order); the original's
                // selections have no `event_id`. When a later one is stored,
                // the upsert's insert fails on the unique `user`: done too.
                let filter = doc! {
                    "user": user,
                    "$or": [
                        { "event_id": { "$lte": record_id } },
                        { "event_id": { "$exists": false } },
                    ],
                };
                let update = doc! {
                    "$set": { "selected_option": option, "updated_at": at, "event_id": record_id },
                    "$setOnInsert": { "selected_at": at },
                };
                match self
                    .selections
                    .update_one(filter, update)
                    .upsert(true)
                    .await
                {
                    Err(err) if !is_duplicate_key(&err) => {
                        Err(StoreError::new("select financing option", err))
                    }
                    _ => Ok(Applied::Done),
                }
            }
        }
    }

    /// Makes the effects of `records`, as [`Store::apply_effect`] does one
    /// by one, in a few round trips: the relay's work before it publishes a
    /// batch. Applications and users go in one unordered insert each (a
    /// duplicate is an earlier insert of the same one, or for a user a name
    /// taken, which is checked); selections are one conditional upsert each.
    pub async fn apply_effects(
        &self,
        records: &[OutboxRecord],
    ) -> Result<Vec<Applied>, StoreError> {
        let mut outcomes = vec![Applied::Done; records.len()];
        let mut applications = Vec::new();
        let mut users = Vec::new();
        for (i, record) in records.iter().enumerate() {
            match &record.effect {
                Some(Effect::InsertApplication { id, application }) => {
                    applications.push(application_document(*id, application));
                }
                Some(Effect::InsertUser(user)) => users.push((i, user)),
                Some(effect @ Effect::Select { .. }) => {
                    outcomes[i] = self.apply_effect(&record.id, effect).await?;
                }
                None => {}
            }
        }
        if !applications.is_empty() {
            let collection = self.applications.clone_with_type::<Document>();
            insert_unordered("insert applications", &collection, applications).await?;
        }
        if !users.is_empty() {
            let documents = users.iter().map(|(_, user)| *user);
            let taken = insert_unordered("insert users", &self.users, documents).await?;
            for n in taken {
                let (i, user) = users[n];
                outcomes[i] = self.user_holder(user).await?;
            }
        }
        Ok(outcomes)
    }

    /// Inserts `user` (its `_id` set); on a duplicate key, done when the name
    /// is held by this very `_id` (an earlier attempt's insert), a conflict
    /// when by another user.
    async fn insert_user_once(&self, user: &UserDoc) -> Result<Applied, StoreError> {
        match self.users.insert_one(user).await {
            Ok(_) => Ok(Applied::Done),
            Err(err) if is_duplicate_key(&err) => self.user_holder(user).await,
            Err(err) => Err(StoreError::new("insert user", err)),
        }
    }

    /// After `user`'s insert met a duplicate key: done when its name is held
    /// by its own `_id`, a conflict when by another user's.
    async fn user_holder(&self, user: &UserDoc) -> Result<Applied, StoreError> {
        let holder = self
            .users
            .clone_with_type::<Document>()
            .find_one(doc! { "username": &user.username })
            .projection(doc! { "_id": 1 })
            .max_time(self.read_limit)
            .await
            .context("find user")?;
        let ours = holder.and_then(|holder| holder.get_object_id("_id").ok());
        Ok(if ours.is_some() && ours == user.id {
            Applied::Done
        } else {
            Applied::Conflict
        })
    }
}

/// `application` as stored under `id`.
fn application_document(id: ObjectId, application: &ApplicationDoc) -> Document {
    let mut document = bson::to_document(application).expect("an application serializes");
    document.insert("_id", id);
    document
}

/// Inserts `documents` unordered; returns the positions of those refused
/// for a duplicate key. Any other failure is an error.
async fn insert_unordered<T: Serialize + Send + Sync>(
    operation: &'static str,
    collection: &Collection<T>,
    documents: impl IntoIterator<Item = impl std::borrow::Borrow<T>>,
) -> Result<Vec<usize>, StoreError> {
    let Err(err) = collection.insert_many(documents).ordered(false).await else {
        return Ok(Vec::new());
    };
    if let ErrorKind::InsertMany(failure) = err.kind.as_ref()
        && failure.write_concern_error.is_none()
        && let Some(errors) = &failure.write_errors
        && errors.iter().all(|error| error.code == DUPLICATE_KEY)
    {
        return Ok(errors.iter().map(|error| error.index).collect());
    }
    Err(StoreError::new(operation, err))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{auth::Role, events::Event, events::EventType};

    #[test]
    fn an_effect_survives_its_round_trip_through_an_outbox_record() {
        let mut user = UserDoc::new("ann", "$2b$04$hash", Role::User);
        user.id = Some(ObjectId::new());
        let event = Event::new(EventType::UserRegistered, "ann", "User ann registered");
        let record = OutboxRecord::new(&event).with_effect(Effect::InsertUser(user.clone()));
        let stored = bson::to_document(&record).unwrap();
        assert!(
            stored
                .get_document("effect")
                .unwrap()
                .contains_key("insert_user")
        );
        let back: OutboxRecord = bson::from_document(stored).unwrap();
        assert_eq!(back.effect, Some(Effect::InsertUser(user)));
    }

    #[test]
    fn fresh_ids_are_new_each_time_and_not_resumed() {
        let (a, b) = (WriteIds::fresh(), WriteIds::fresh());
        assert_ne!(a.event, b.event);
        assert_ne!(a.document, b.document);
        assert!(!a.resumed);
    }
}
