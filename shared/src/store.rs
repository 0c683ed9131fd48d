//! MongoDB access: one client per process, one typed collection per collection,
//! indexes declared here and ensured at start-up.
//!
//! Documents written by the original Python services must always load, so every
//! field they might lack is optional and every field they wrote differently
//! (the password as BSON binary) is read in both forms.

use std::{collections::BTreeMap, time::Duration};

use futures_util::TryStreamExt as _;
use mongodb::{
    Client, Collection, Database, IndexModel,
    bson::{Binary, Bson, DateTime, Document, doc, oid::ObjectId, spec::BinarySubtype},
    error::{ErrorKind, WriteFailure},
    options::{ClientOptions, IndexOptions},
};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};

use crate::{
    auth::Role,
    config::Config,
    events::OutboxRecord,
    finance::{NewApplication, PageRequest, Status},
};

/// The database the original services wrote to (hard-coded there).
pub const ORIGINAL_DATABASE: &str = "root";

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// A database failure; always a 500 to the client, logged with its cause.
#[derive(Debug, thiserror::Error)]
#[error("database error: {0}")]
pub struct StoreError(#[from] mongodb::error::Error);

impl StoreError {
    /// Whether the database could not be reached (as opposed to refusing the
    /// operation): the request may succeed if tried again shortly.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            *self.0.kind,
            ErrorKind::ServerSelection { .. }
                | ErrorKind::Io(_)
                | ErrorKind::ConnectionPoolCleared { .. }
        )
    }
}

/// Why the indexes could not be ensured at start-up.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error(
        "duplicate {plural} in {collection}: {}; run finapp-admin doctor",
        list_counts(duplicates)
    )]
    Duplicates {
        collection: &'static str,
        plural: &'static str,
        duplicates: Vec<(String, u64)>,
    },
    #[error("create the indexes of {collection}: {source}")]
    Create {
        collection: &'static str,
        #[source]
        source: mongodb::error::Error,
    },
}

impl IndexError {
    /// Whether the database could not be reached at all.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, IndexError::Create { source, .. } if StoreError::from(source.clone()).is_unavailable())
    }
}

/// `alice (2), bob (3)`.
pub fn list_counts(items: &[(String, u64)]) -> String {
    items
        .iter()
        .map(|(value, count)| format!("{value} ({count})"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A document of `users`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct UserDoc {
    #[serde(rename = "_id", skip_serializing_if = "Option::is_none")]
    pub id: Option<ObjectId>,
    pub username: String,
    /// The bcrypt hash: BSON binary as the original wrote it (and as we write it,
    /// so the original services can still read our users), or a string.
    #[serde(default)]
    pub password: Option<Bson>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub role: Option<String>,
    #[serde(
        default,
        deserialize_with = "lenient_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub email: Option<String>,
}

impl UserDoc {
    /// A new user with a bcrypt hash stored as BSON binary, like the original.
    pub fn new(username: &str, password_hash: &str, role: Role) -> Self {
        Self {
            id: None,
            username: username.to_owned(),
            password: Some(Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: password_hash.as_bytes().to_vec(),
            })),
            role: (role == Role::Admin).then(|| Role::Admin.as_str().to_owned()),
            email: None,
        }
    }

    /// The stored bcrypt hash as text, whichever form it was stored in.
    pub fn password_hash(&self) -> Option<String> {
        match self.password.as_ref()? {
            Bson::String(text) => Some(text.clone()),
            Bson::Binary(binary) => String::from_utf8(binary.bytes.clone()).ok(),
            _ => None,
        }
    }

    pub fn role(&self) -> Role {
        Role::from_stored(self.role.as_deref())
    }
}

/// Reads an optional string field, treating any other stored type as absent, so
/// an odd legacy value degrades to the default instead of failing the request.
fn lenient_string<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Option<String>, D::Error> {
    Ok(match Option::<Bson>::deserialize(de)? {
        Some(Bson::String(text)) => Some(text),
        _ => None,
    })
}

/// The outcome of inserting a user whose name may be taken.
#[derive(Debug, thiserror::Error)]
pub enum InsertUserError {
    #[error("username is taken")]
    Taken,
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A document of `applications` as this bundle writes it. Reads go through
/// [`to_json`] instead, so applications the original wrote (no `submitted_at`,
/// an integer `amount`, no history) are shown as they are.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApplicationDoc {
    pub loan_types: Vec<String>,
    pub amount: f64,
    pub purpose: String,
    pub status: String,
    pub submitted_by: String,
    pub submitted_at: DateTime,
    /// The audit trail: one entry per status the application has had.
    pub status_history: Vec<StatusChange>,
}

/// One entry of an application's audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: String,
    pub by: String,
    pub at: DateTime,
}

impl StatusChange {
    pub fn now(status: Status, by: &str) -> Self {
        Self {
            status: status.as_str().to_owned(),
            by: by.to_owned(),
            at: DateTime::now(),
        }
    }
}

/// A user's applications counted by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StatusCounts {
    pub total_applications: u64,
    pub approved: u64,
    pub denied: u64,
    pub pending: u64,
}

/// A page of the admin listing.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplicationsPage {
    /// Applications as stored, `_id` as a hex string.
    #[schema(value_type = Vec<Object>)]
    pub data: Vec<serde_json::Value>,
    pub total_pages: u64,
    pub current_page: u64,
    pub total_items: u64,
}

/// The result of an update addressed to several documents.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateCounts {
    pub matched_count: u64,
    pub modified_count: u64,
}

/// A document of `user_analytics`: the original's `username`, `event` and
/// `timestamp`, plus the event's type and id. The id is also `_id`, so a
/// redelivered event cannot be stored twice.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AnalyticsDoc {
    #[serde(rename = "_id")]
    pub id: String,
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub username: String,
    pub event: String,
    pub timestamp: DateTime,
    pub received_at: DateTime,
}

/// What `GET /analytics` reports; every count is computed by the database.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AnalyticsSummary {
    pub total_events: u64,
    pub total_logins: u64,
    pub total_financing_option_checks: u64,
    pub logins_per_user: BTreeMap<String, u64>,
    pub financing_checks_per_user: BTreeMap<String, u64>,
    /// Keyed by event type; events the original wrote have none and count as `untyped`.
    pub events_per_type: BTreeMap<String, u64>,
}

/// The substrings by which the original counted logins and financing checks,
/// applied to every event's text so both generations of events count alike.
pub const LOGIN_MARKER: &str = "logged in";
pub const FINANCING_CHECK_MARKER: &str = "checked financing options";

/// The database and its typed collections.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    pub users: Collection<UserDoc>,
    pub applications: Collection<ApplicationDoc>,
    /// Options are only ever read and copied whole, so they stay documents.
    pub financing_options: Collection<Document>,
    pub selections: Collection<Document>,
    pub outbox: Collection<OutboxRecord>,
    pub analytics: Collection<AnalyticsDoc>,
}

impl Store {
    /// Builds the client (no I/O happens until the first operation).
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        Self::connect_uri(
            config.mongodb_uri.expose_secret(),
            &config.mongodb_database,
            config.mongodb_max_pool_size,
            config.mongodb_timeout,
        )
        .await
    }

    /// Builds the client from its parts (for tools that need no other
    /// configuration). `timeout` bounds finding a server and connecting to it,
    /// so an outage is an answer within about that long, not a hang.
    pub async fn connect_uri(
        uri: &str,
        database: &str,
        max_pool_size: Option<u32>,
        timeout: Duration,
    ) -> Result<Self, StoreError> {
        let mut options = ClientOptions::parse(uri).await?;
        options.app_name.get_or_insert_with(|| "finapp".into());
        options.server_selection_timeout.get_or_insert(timeout);
        options.connect_timeout.get_or_insert(timeout);
        if max_pool_size.is_some() {
            options.max_pool_size = max_pool_size;
        }
        let client = Client::with_options(options)?;
        Ok(Self::new(client.database(database)))
    }

    pub fn new(db: Database) -> Self {
        Self {
            users: db.collection("users"),
            applications: db.collection("applications"),
            financing_options: db.collection("financing_options"),
            selections: db.collection("user_financing_selections"),
            outbox: db.collection("outbox"),
            analytics: db.collection("user_analytics"),
            db,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Pings the server: `Ok` when it answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db.run_command(doc! { "ping": 1 }).await?;
        Ok(())
    }

    /// Creates the indexes the code relies on; a no-op when they exist.
    ///
    /// Uniqueness of `users.username` and `user_financing_selections.user` is
    /// what makes concurrent sign-ups and selections safe. The original had no
    /// such index, so its data may hold duplicates; then the error lists them
    /// (`finapp-admin doctor` shows the rest).
    pub async fn ensure_indexes(&self) -> Result<(), IndexError> {
        let index = |keys: Document| IndexModel::builder().keys(keys);
        self.ensure_unique(&self.users, "users", "username", "usernames")
            .await?;
        self.ensure_unique(
            &self.selections,
            "user_financing_selections",
            "user",
            "users",
        )
        .await?;
        self.applications
            .create_index(index(doc! { "submitted_by": 1, "submitted_at": -1 }).build())
            .await
            .map_err(|source| IndexError::Create {
                collection: "applications",
                source,
            })?;
        self.outbox
            .create_index(index(doc! { "relay_after": 1 }).build())
            .await
            .map_err(|source| IndexError::Create {
                collection: "outbox",
                source,
            })?;
        Ok(())
    }

    /// Creates a unique index on `field`; when that fails on a reachable
    /// server, the values held more than once are the likely cause and are named.
    async fn ensure_unique<T: Send + Sync>(
        &self,
        collection: &Collection<T>,
        name: &'static str,
        field: &'static str,
        plural: &'static str,
    ) -> Result<(), IndexError> {
        let model = IndexModel::builder()
            .keys(doc! { field: 1 })
            .options(IndexOptions::builder().unique(true).build())
            .build();
        let Err(source) = collection.create_index(model).await else {
            return Ok(());
        };
        if !matches!(*source.kind, ErrorKind::ServerSelection { .. })
            && let Ok(duplicates) = self.duplicates(name, field).await
            && !duplicates.is_empty()
        {
            return Err(IndexError::Duplicates {
                collection: name,
                plural,
                duplicates,
            });
        }
        Err(IndexError::Create {
            collection: name,
            source,
        })
    }

    /// The values of `field` that more than one document of `collection` holds,
    /// with their counts, in order.
    pub async fn duplicates(
        &self,
        collection: &str,
        field: &str,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let pipeline = [
            doc! { "$group": { "_id": format!("${field}"), "count": { "$sum": 1 } } },
            doc! { "$match": { "count": { "$gt": 1 } } },
            doc! { "$sort": { "_id": 1 } },
        ];
        let groups: Vec<Document> = self
            .db
            .collection::<Document>(collection)
            .aggregate(pipeline)
            .await?
            .try_collect()
            .await?;
        Ok(groups
            .iter()
            .map(|group| {
                let value = match group.get("_id") {
                    Some(Bson::String(text)) => text.clone(),
                    Some(other) => other.to_string(),
                    None => String::new(),
                };
                let count = match group.get("count") {
                    Some(Bson::Int32(n)) => u64::try_from(*n).unwrap_or(0),
                    Some(Bson::Int64(n)) => u64::try_from(*n).unwrap_or(0),
                    Some(Bson::Double(n)) => *n as u64,
                    _ => 0,
                };
                (value, count)
            })
            .collect())
    }

    /// Warns when this database has no users while the original services'
    /// database does: a deployment pointed at a running FinApp without
    /// `MONGODB_DATABASE` would otherwise start, silently, on empty data.
    pub async fn warn_if_data_is_elsewhere(&self) {
        let Some((database, users)) = self.data_elsewhere().await else {
            return;
        };
        tracing::warn!(
            configured = self.db.name(),
            database,
            users,
            "no users in the configured database, but the original services' database \
             has some: set MONGODB_DATABASE={database} to serve them"
        );
    }

    /// The original services' database and its user count, when this database
    /// has no users and that one has some.
    pub async fn data_elsewhere(&self) -> Option<(&'static str, u64)> {
        if self.db.name() == ORIGINAL_DATABASE {
            return None;
        }
        let ours = self.users.estimated_document_count().await.ok()?;
        if ours > 0 {
            return None;
        }
        let theirs = self
            .db
            .client()
            .database(ORIGINAL_DATABASE)
            .collection::<Document>("users")
            .estimated_document_count()
            .await
            .ok()?;
        (theirs > 0).then_some((ORIGINAL_DATABASE, theirs))
    }

    pub async fn find_user(&self, username: &str) -> Result<Option<UserDoc>, StoreError> {
        Ok(self.users.find_one(doc! { "username": username }).await?)
    }

    /// The password hash of the most recently created user, if any: the cost
    /// the stored hashes have.
    pub async fn newest_password_hash(&self) -> Result<Option<String>, StoreError> {
        let newest = self
            .users
            .find_one(doc! { "password": { "$exists": true } })
            .sort(doc! { "_id": -1 })
            .await?;
        Ok(newest.and_then(|user| user.password_hash()))
    }

    /// Replaces `username`'s password hash, only if it is still `old_hash`
    /// (a concurrent change of password wins).
    pub async fn replace_password_hash(
        &self,
        username: &str,
        old_hash: &str,
        new_hash: &str,
    ) -> Result<(), StoreError> {
        let old = UserDoc::new(username, old_hash, Role::User).password;
        let new = UserDoc::new(username, new_hash, Role::User).password;
        let stored_as_text = Bson::String(old_hash.to_owned());
        self.users
            .update_one(
                doc! { "username": username, "password": { "$in": [old, stored_as_text] } },
                doc! { "$set": { "password": new } },
            )
            .await?;
        Ok(())
    }

    /// Inserts a user; the unique index on `username` decides races.
    pub async fn insert_user(&self, user: &UserDoc) -> Result<(), InsertUserError> {
        match self.users.insert_one(user).await {
            Ok(_) => Ok(()),
            Err(err) if is_duplicate_key(&err) => Err(InsertUserError::Taken),
            Err(err) => Err(StoreError(err).into()),
        }
    }
}

impl Store {
    /// Creates or promotes `username` to an admin with the given bcrypt hash.
    pub async fn upsert_admin(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<(), StoreError> {
        let stored = UserDoc::new(username, password_hash, Role::Admin);
        self.users
            .update_one(
                doc! { "username": username },
                doc! { "$set": { "password": stored.password, "role": Role::Admin.as_str() } },
            )
            .upsert(true)
            .await?;
        Ok(())
    }

    /// Stores a new pending application by `username`; returns its id.
    pub async fn insert_application(
        &self,
        application: &NewApplication,
        username: &str,
    ) -> Result<ObjectId, StoreError> {
        let created = StatusChange::now(Status::Pending, username);
        let doc = ApplicationDoc {
            loan_types: application.loan_types.clone(),
            amount: application.amount,
            purpose: application.purpose.clone(),
            status: Status::Pending.as_str().to_owned(),
            submitted_by: username.to_owned(),
            submitted_at: created.at,
            status_history: vec![created],
        };
        let inserted = self.applications.insert_one(&doc).await?;
        Ok(inserted.inserted_id.as_object_id().unwrap_or_default())
    }

    /// `username`'s applications, newest first, as JSON.
    pub async fn applications_of(
        &self,
        username: &str,
    ) -> Result<Vec<serde_json::Value>, StoreError> {
        let cursor = self
            .applications
            .clone_with_type::<Document>()
            .find(doc! { "submitted_by": username })
            .sort(doc! { "submitted_at": -1, "_id": -1 })
            .await?;
        Ok(cursor
            .map_ok(|doc| to_json(Bson::Document(doc)))
            .try_collect()
            .await?)
    }

    /// Counts `username`'s applications by status in the database.
    pub async fn status_counts(&self, username: &str) -> Result<StatusCounts, StoreError> {
        let pipeline = [
            doc! { "$match": { "submitted_by": username } },
            doc! { "$group": { "_id": "$status", "count": { "$sum": 1 } } },
        ];
        let mut groups = self.applications.aggregate(pipeline).await?;
        let mut counts = StatusCounts::default();
        while let Some(group) = groups.try_next().await? {
            let count = group.get("count").and_then(as_u64).unwrap_or(0);
            counts.total_applications += count;
            match group.get_str("_id") {
                Ok("approved") => counts.approved += count,
                Ok("denied") => counts.denied += count,
                Ok("pending") => counts.pending += count,
                _ => {}
            }
        }
        Ok(counts)
    }

    /// Every financing option, in insertion order, as JSON.
    pub async fn financing_options(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        let cursor = self
            .financing_options
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .await?;
        Ok(cursor
            .map_ok(|doc| to_json(Bson::Document(doc)))
            .try_collect()
            .await?)
    }

    pub async fn find_option(&self, id: ObjectId) -> Result<Option<Document>, StoreError> {
        Ok(self.financing_options.find_one(doc! { "_id": id }).await?)
    }

    /// Inserts each option whose `option_name` is not stored yet; returns how many were new.
    pub async fn seed_financing_options(&self, options: Vec<Document>) -> Result<u64, StoreError> {
        let mut inserted = 0;
        for option in options {
            let name = option.get_str("option_name").unwrap_or_default().to_owned();
            let result = self
                .financing_options
                .update_one(
                    doc! { "option_name": name },
                    doc! { "$setOnInsert": option },
                )
                .upsert(true)
                .await?;
            inserted += u64::from(result.upserted_id.is_some());
        }
        Ok(inserted)
    }

    /// Records `option` as `username`'s one selection, replacing any earlier one.
    ///
    /// The upsert keyed on the unique `user` index keeps one document per user:
    /// when two first selections race, the loser's insert hits the index and
    /// its retry becomes an update.
    pub async fn select_option(&self, username: &str, option: &Document) -> Result<(), StoreError> {
        let now = DateTime::now();
        let update = doc! {
            "$set": { "selected_option": option.clone(), "updated_at": now },
            "$setOnInsert": { "selected_at": now },
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self
                .selections
                .update_one(doc! { "user": username }, update.clone())
                .upsert(true)
                .await
            {
                Err(err) if is_duplicate_key(&err) && attempt < 3 => continue,
                result => return result.map(|_| ()).map_err(StoreError),
            }
        }
    }

    /// Sets the status of every application of `username`, recording `by` in each audit trail.
    pub async fn decide_for_user(
        &self,
        username: &str,
        status: Status,
        by: &str,
    ) -> Result<UpdateCounts, StoreError> {
        let result = self
            .applications
            .update_many(doc! { "submitted_by": username }, status_update(status, by))
            .await?;
        Ok(UpdateCounts {
            matched_count: result.matched_count,
            modified_count: result.modified_count,
        })
    }

    /// Sets one application's status; `false` when no application has that id.
    pub async fn decide(&self, id: ObjectId, status: Status, by: &str) -> Result<bool, StoreError> {
        let result = self
            .applications
            .update_one(doc! { "_id": id }, status_update(status, by))
            .await?;
        Ok(result.matched_count == 1)
    }

    /// One page of every application, ordered by `_id` so pages never overlap.
    pub async fn page_applications(
        &self,
        page: PageRequest,
    ) -> Result<ApplicationsPage, StoreError> {
        let total_items = self.applications.count_documents(doc! {}).await?;
        let data = self
            .applications
            .clone_with_type::<Document>()
            .find(doc! {})
            .sort(doc! { "_id": 1 })
            .skip(page.skip())
            .limit(i64::try_from(page.per_page).unwrap_or(i64::MAX))
            .await?
            .map_ok(|doc| to_json(Bson::Document(doc)))
            .try_collect()
            .await?;
        Ok(ApplicationsPage {
            data,
            total_pages: page.total_pages(total_items),
            current_page: page.page,
            total_items,
        })
    }
}

impl Store {
    /// Stores analytics events with one unordered `insert_many`; for each
    /// document, `false` when its id was already stored (before this call or
    /// earlier in `events`). Any other failure fails the call: the caller
    /// retries the whole batch, and the ids make the retry store each event once.
    pub async fn insert_analytics(
        &self,
        events: &[&AnalyticsDoc],
    ) -> Result<Vec<bool>, StoreError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let err = match self
            .analytics
            .insert_many(events.iter().copied())
            .ordered(false)
            .await
        {
            Ok(_) => return Ok(vec![true; events.len()]),
            Err(err) => err,
        };
        let ErrorKind::InsertMany(failure) = err.kind.as_ref() else {
            return Err(StoreError(err));
        };
        if failure.write_concern_error.is_some() {
            return Err(StoreError(err));
        }
        let mut inserted = vec![true; events.len()];
        for write in failure.write_errors.iter().flatten() {
            match inserted.get_mut(write.index) {
                Some(slot) if write.code == DUPLICATE_KEY => *slot = false,
                _ => return Err(StoreError(err)),
            }
        }
        Ok(inserted)
    }

    /// Summarises `user_analytics` with aggregations whose results grow with the
    /// number of users and types, never with the number of events.
    pub async fn analytics_summary(&self) -> Result<AnalyticsSummary, StoreError> {
        let logins_per_user = self
            .count_by("$username", Some(LOGIN_MARKER), "unknown")
            .await?;
        let financing_checks_per_user = self
            .count_by("$username", Some(FINANCING_CHECK_MARKER), "unknown")
            .await?;
        Ok(AnalyticsSummary {
            total_events: self.analytics.count_documents(doc! {}).await?,
            total_logins: logins_per_user.values().sum(),
            total_financing_option_checks: financing_checks_per_user.values().sum(),
            events_per_type: self.count_by("$type", None, "untyped").await?,
            logins_per_user,
            financing_checks_per_user,
        })
    }

    /// Counts events grouped by `field`, only those whose text contains `marker`
    /// when one is given; a missing or non-string key counts under `fallback`.
    async fn count_by(
        &self,
        field: &str,
        marker: Option<&str>,
        fallback: &str,
    ) -> Result<BTreeMap<String, u64>, StoreError> {
        let mut pipeline = Vec::new();
        if let Some(marker) = marker {
            pipeline.push(doc! { "$match": { "event": { "$regex": regex_escape(marker) } } });
        }
        pipeline.push(doc! { "$group": { "_id": field, "count": { "$sum": 1 } } });
        let mut groups = self.analytics.aggregate(pipeline).await?;
        let mut counts = BTreeMap::new();
        while let Some(group) = groups.try_next().await? {
            let key = group.get_str("_id").unwrap_or(fallback).to_owned();
            *counts.entry(key).or_default() += group.get("count").and_then(as_u64).unwrap_or(0);
        }
        Ok(counts)
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let escape = "\\.^$|?*+()[]{}".contains(c);
            escape.then_some('\\').into_iter().chain([c])
        })
        .collect()
}

fn status_update(status: Status, by: &str) -> Document {
    let change = StatusChange::now(status, by);
    doc! {
        "$set": { "status": status.as_str() },
        "$push": { "status_history": { "status": change.status, "by": change.by, "at": change.at } },
    }
}

fn as_u64(value: &Bson) -> Option<u64> {
    match value {
        Bson::Int32(n) => u64::try_from(*n).ok(),
        Bson::Int64(n) => u64::try_from(*n).ok(),
        Bson::Double(n) if *n >= 0.0 => Some(*n as u64),
        _ => None,
    }
}

/// Renders a stored value as plain JSON: ids as hex strings, dates as RFC 3339,
/// binaries left out, everything else as relaxed extended JSON. Total over all
/// BSON, so no stored document can make a read fail.
pub fn to_json(value: Bson) -> serde_json::Value {
    use serde_json::Value;
    match value {
        Bson::ObjectId(id) => Value::String(id.to_hex()),
        Bson::DateTime(at) => at
            .try_to_rfc3339_string()
            .map_or_else(|_| Value::from(at.timestamp_millis()), Value::String),
        Bson::Document(doc) => Value::Object(
            doc.into_iter()
                .filter(|(_, value)| !matches!(value, Bson::Binary(_)))
                .map(|(key, value)| (key, to_json(value)))
                .collect(),
        ),
        Bson::Array(items) => Value::Array(items.into_iter().map(to_json).collect()),
        Bson::Binary(_) => Value::Null,
        other => other.into_relaxed_extjson(),
    }
}

/// Whether `err` is a unique-index violation.
pub fn is_duplicate_key(err: &mongodb::error::Error) -> bool {
    match err.kind.as_ref() {
        ErrorKind::Write(WriteFailure::WriteError(write)) => write.code == DUPLICATE_KEY,
        ErrorKind::Command(command) => command.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(failure) => failure
            .write_errors
            .iter()
            .flatten()
            .any(|write| write.code == DUPLICATE_KEY),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mongodb::bson;

    #[test]
    fn a_user_written_by_the_original_loads_with_its_binary_hash_and_no_role() {
        let original = doc! {
            "_id": ObjectId::new(),
            "username": "legacy",
            "password": Binary { subtype: BinarySubtype::Generic, bytes: b"$2b$12$abc".to_vec() },
        };
        let user: UserDoc = bson::from_document(original).unwrap();
        assert_eq!(user.password_hash().as_deref(), Some("$2b$12$abc"));
        assert_eq!(user.role(), Role::User);
    }

    #[test]
    fn a_password_stored_as_a_string_loads_too() {
        let user: UserDoc =
            bson::from_document(doc! { "username": "u", "password": "$2b$04$x", "role": "admin" })
                .unwrap();
        assert_eq!(user.password_hash().as_deref(), Some("$2b$04$x"));
        assert_eq!(user.role(), Role::Admin);
    }

    #[test]
    fn a_role_of_an_unexpected_type_means_a_plain_user() {
        let user: UserDoc =
            bson::from_document(doc! { "username": "u", "role": true, "email": 5 }).unwrap();
        assert_eq!(user.role(), Role::User);
        assert_eq!(user.email, None);
        assert_eq!(user.password_hash(), None);
    }

    #[test]
    fn stored_values_render_as_plain_json() {
        let id = ObjectId::new();
        let at = DateTime::from_millis(0);
        let json = to_json(Bson::Document(doc! {
            "_id": id,
            "amount": 15000_i32,
            "ratio": 2.5,
            "submitted_at": at,
            "nested": { "tags": ["a", 1_i64] },
            "secret": Binary { subtype: BinarySubtype::Generic, bytes: vec![1, 2] },
        }));
        assert_eq!(
            json,
            serde_json::json!({
                "_id": id.to_hex(),
                "amount": 15000,
                "ratio": 2.5,
                "submitted_at": "1970-01-01T00:00:00Z",
                "nested": { "tags": ["a", 1] },
            })
        );
    }

    #[test]
    fn markers_are_matched_literally() {
        assert_eq!(regex_escape("logged in"), "logged in");
        assert_eq!(regex_escape("a.b*(c)"), "a\\.b\\*\\(c\\)");
    }

    #[test]
    fn a_new_user_is_stored_as_the_original_stored_it() {
        let stored = bson::to_document(&UserDoc::new("neo", "$2b$04$hash", Role::User)).unwrap();
        assert!(matches!(stored.get("password"), Some(Bson::Binary(_))));
        assert!(!stored.contains_key("role"));
        assert!(!stored.contains_key("_id"));
    }
}
