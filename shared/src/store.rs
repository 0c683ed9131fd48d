//! MongoDB access: one client per process, one typed collection per collection,
//! indexes declared here and ensured at start-up.
//!
//! Documents written by the original Python services must always load, so every
//! field they might lack is optional and every field they wrote differently
//! (the password as BSON binary) is read in both forms.

mod idempotency;
mod login_failures;
mod outbox;

pub use idempotency::{
    Claim, ClaimToken, IDEMPOTENCY_COLLECTION, IdempotencyRecord, KeyClaim, StoredResponse,
};
pub use login_failures::{FailureWindow, ThrottleKey};
pub use outbox::{OutboxBacklog, OutboxClaim, OutboxRecord};

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

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
    /// Set while the event is stored but not yet counted in `analytics_counters`;
    /// a redelivered copy of a pending event is counted (once), of a counted one never.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pending: bool,
}

/// What `GET /analytics` reports.
///
/// Summed from `analytics_counters` (one small document per user), never from
/// the events themselves.
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

/// How long a process serves the financing options from memory: they change
/// only when an operator seeds them.
pub const FINANCING_OPTIONS_TTL: Duration = Duration::from_secs(5);

type Cached<T> = Arc<Mutex<Option<(Instant, T)>>>;

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
    /// One document per user: `_id` the username, `events`, `logins`,
    /// `financing_checks`, `types` {type: count}, and `recent`, the ids of
    /// events being counted (empty between batches).
    pub analytics_counters: Collection<Document>,
    /// Failed-login windows (see [`Store::record_login_failure`]).
    login_failures: Collection<FailureWindow>,
    options_cache: Cached<Vec<serde_json::Value>>,
    counter_locks: Arc<[tokio::sync::Mutex<()>; COUNTER_LOCKS]>,
}

/// Stripes of the per-user lock around counter updates (see [`Store::record_analytics`]).
const COUNTER_LOCKS: usize = 64;

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
            analytics_counters: db.collection("analytics_counters"),
            login_failures: db.collection("login_failures"),
            options_cache: Arc::default(),
            counter_locks: Arc::new(std::array::from_fn(|_| tokio::sync::Mutex::new(()))),
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
        // The consumer looks up a user's pending events when a copy is redelivered.
        self.analytics
            .create_index(index(doc! { "username": 1 }).build())
            .await
            .map_err(|source| IndexError::Create {
                collection: "user_analytics",
                source,
            })?;
        self.ensure_expiry(&self.login_failures, "login_failures")
            .await?;
        self.ensure_idempotency_indexes().await?;
        Ok(())
    }

    /// Indexes `expires_at` of `collection` as a TTL index (expiring each
    /// document at that time) where the server has TTL indexes, else as a
    /// plain one. FerretDB 1.x has none, so every reader of such a collection
    /// also filters on `expires_at`, and its writers purge what has ended.
    async fn ensure_expiry<T: Send + Sync>(
        &self,
        collection: &Collection<T>,
        name: &'static str,
    ) -> Result<(), IndexError> {
        let ttl = IndexModel::builder()
            .keys(doc! { "expires_at": 1 })
            .options(IndexOptions::builder().expire_after(Duration::ZERO).build())
            .build();
        let created = match collection.create_index(ttl).await {
            Err(err) if is_not_implemented(&err) => {
                tracing::debug!(
                    collection = name,
                    "no TTL indexes here: expiry is checked on read"
                );
                let plain = IndexModel::builder().keys(doc! { "expires_at": 1 }).build();
                collection.create_index(plain).await
            }
            other => other,
        };
        created.map(|_| ()).map_err(|source| IndexError::Create {
            collection: name,
            source,
        })
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

    /// Whether a user named `username` exists: one lookup on the unique
    /// `username` index that reads no password.
    pub async fn user_exists(&self, username: &str) -> Result<bool, StoreError> {
        let found = self
            .users
            .clone_with_type::<Document>()
            .find_one(doc! { "username": username })
            .projection(doc! { "_id": 1 })
            .await?;
        Ok(found.is_some())
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

    /// One page of `username`'s applications, newest first, as JSON, and
    /// whether older ones remain. The page is read from the
    /// (`submitted_by`, `submitted_at`) index; one document more than the
    /// page is asked for, to tell whether there is a next page.
    pub async fn applications_of(
        &self,
        username: &str,
        page: PageRequest,
    ) -> Result<(Vec<serde_json::Value>, bool), StoreError> {
        let mut applications: Vec<serde_json::Value> = self
            .applications
            .clone_with_type::<Document>()
            .find(doc! { "submitted_by": username })
            .sort(doc! { "submitted_at": -1, "_id": -1 })
            .skip(page.skip())
            .limit(i64::try_from(page.per_page + 1).unwrap_or(i64::MAX))
            .await?
            .map_ok(|doc| to_json(Bson::Document(doc)))
            .try_collect()
            .await?;
        let more = applications.len() as u64 > page.per_page;
        applications.truncate(usize::try_from(page.per_page).unwrap_or(usize::MAX));
        Ok((applications, more))
    }

    /// How many of `username`'s applications are pending.
    pub async fn pending_count(&self, username: &str) -> Result<u64, StoreError> {
        Ok(self
            .applications
            .count_documents(doc! { "submitted_by": username, "status": Status::Pending.as_str() })
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

    /// Every financing option as [`Store::financing_options`] reads them, served
    /// from this process's memory for [`FINANCING_OPTIONS_TTL`] after each read.
    pub async fn financing_options_cached(&self) -> Result<Vec<serde_json::Value>, StoreError> {
        if let Some((at, options)) = self.options_cache.lock().unwrap().as_ref()
            && at.elapsed() < FINANCING_OPTIONS_TTL
        {
            return Ok(options.clone());
        }
        let options = self.financing_options().await?;
        *self.options_cache.lock().unwrap() = Some((Instant::now(), options.clone()));
        Ok(options)
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
        upsert(&self.selections, doc! { "user": username }, update).await
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
    ///
    /// Keyset paging: the page is an `_id` range read from the `_id` index
    /// (`_id >= first`, `limit per_page`), never a skip over documents. Page N's
    /// first key is found by skipping N-1 pages of `_id` index keys in a covered
    /// query (no document is read); page 1 needs no key. `total_items` is the
    /// collection's count from its metadata (`estimatedDocumentCount`), since
    /// counting every document would cost what the skip saves.
    pub async fn page_applications(
        &self,
        page: PageRequest,
    ) -> Result<ApplicationsPage, StoreError> {
        let total_items = self.applications.estimated_document_count().await?;
        let documents = self.applications.clone_with_type::<Document>();
        let mut filter = doc! {};
        if page.skip() > 0 {
            let first = documents
                .find_one(doc! {})
                .sort(doc! { "_id": 1 })
                .skip(page.skip())
                .projection(doc! { "_id": 1 })
                .await?;
            match first.and_then(|first| first.get("_id").cloned()) {
                Some(first) => filter = doc! { "_id": { "$gte": first } },
                None => {
                    return Ok(ApplicationsPage {
                        data: Vec::new(),
                        total_pages: page.total_pages(total_items),
                        current_page: page.page,
                        total_items,
                    });
                }
            }
        }
        let data = documents
            .find(filter)
            .sort(doc! { "_id": 1 })
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

    /// Stores events (see [`Store::insert_analytics`]) and counts each one
    /// exactly once in `analytics_counters`; `true` for each event that was new.
    ///
    /// Three writes per user, each safe to repeat: the events go in marked
    /// `pending`; the user's counters are incremented together with pushing the
    /// events' ids onto the counter document's `recent`, in one update that
    /// matches only while none of those ids is there (so a repeat is a no-op);
    /// then the events lose their mark and the ids leave `recent`. A crash
    /// anywhere leaves the message unacknowledged; its redelivery finds the
    /// event stored and still pending, and counts it unless `recent` shows it
    /// counted. A redelivery of a counted event is counted never.
    ///
    /// A user's counter updates are serialised within the process: FerretDB
    /// 1.24 applies an update by reading the document and writing it back whole,
    /// so two concurrent `$inc`s on one document can lose one (MongoDB applies
    /// each atomically). Several consumer processes on FerretDB could still
    /// race; on MongoDB they cannot.
    pub async fn record_analytics(
        &self,
        events: &[&AnalyticsDoc],
    ) -> Result<Vec<bool>, StoreError> {
        let inserted = self.insert_analytics(events).await?;
        let mut by_user: BTreeMap<&str, (Vec<&AnalyticsDoc>, Vec<&AnalyticsDoc>)> = BTreeMap::new();
        for (event, new) in events.iter().zip(&inserted) {
            let (fresh, seen) = by_user.entry(event.username.as_str()).or_default();
            if *new {
                fresh.push(event)
            } else {
                seen.push(event)
            }
        }
        for (user, (mut to_count, seen)) in by_user {
            let stripe = {
                use std::hash::Hasher as _;
                let mut hasher = std::hash::DefaultHasher::new();
                hasher.write(user.as_bytes());
                hasher.finish() as usize % COUNTER_LOCKS
            };
            let _serialised = self.counter_locks[stripe].lock().await;
            if !seen.is_empty() {
                let pending: HashSet<String> = self
                    .analytics
                    .clone_with_type::<Document>()
                    .find(doc! { "username": user, "pending": true })
                    .projection(doc! { "_id": 1 })
                    .await?
                    .try_filter_map(
                        |doc| async move { Ok(doc.get_str("_id").ok().map(str::to_owned)) },
                    )
                    .try_collect()
                    .await?;
                // A copy of an event new in this same batch is pending too: count it once.
                let fresh: HashSet<&str> = to_count.iter().map(|event| event.id.as_str()).collect();
                let mut again: Vec<&AnalyticsDoc> = seen
                    .iter()
                    .copied()
                    .filter(|event| {
                        pending.contains(&event.id) && !fresh.contains(event.id.as_str())
                    })
                    .collect();
                again.sort_by(|a, b| a.id.cmp(&b.id));
                again.dedup_by(|a, b| a.id == b.id);
                to_count.extend(again);
            }
            self.count_events(user, &to_count).await?;
            if !to_count.is_empty() {
                let counted: Vec<&str> = to_count.iter().map(|event| event.id.as_str()).collect();
                self.analytics
                    .update_many(
                        doc! { "username": user, "pending": true, "_id": { "$in": &counted } },
                        doc! { "$unset": { "pending": "" } },
                    )
                    .await?;
            }
            let ids: Vec<&str> = to_count
                .iter()
                .chain(&seen)
                .map(|event| event.id.as_str())
                .collect();
            // $pullAll: FerretDB 1.24 ignores $pull with an {$in: ...} condition.
            self.analytics_counters
                .update_one(
                    doc! { "_id": user, "recent": { "$in": &ids } },
                    doc! { "$pullAll": { "recent": &ids } },
                )
                .await?;
        }
        Ok(inserted)
    }

    /// Adds `events` (all of `user`) to the user's counters, skipping any whose
    /// id is in `recent`, i.e. already added by an earlier attempt.
    async fn count_events(&self, user: &str, events: &[&AnalyticsDoc]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        if self.add_to_counters(user, events).await? {
            return Ok(());
        }
        // Some were counted already: one at a time, each skipped if it was.
        for event in events {
            self.add_to_counters(user, &[event]).await?;
        }
        Ok(())
    }

    /// One conditional update; `false` when some id of `events` is in `recent`.
    async fn add_to_counters(
        &self,
        user: &str,
        events: &[&AnalyticsDoc],
    ) -> Result<bool, StoreError> {
        let ids: Vec<&str> = events.iter().map(|event| event.id.as_str()).collect();
        let mut increments = Document::new();
        let mut add = |key: String, n: i64| {
            let total = increments.get_i64(&key).unwrap_or(0) + n;
            increments.insert(key, total);
        };
        for event in events {
            add("events".into(), 1);
            add(format!("types.{}", event.kind), 1);
            add(
                "logins".into(),
                i64::from(event.event.contains(LOGIN_MARKER)),
            );
            add(
                "financing_checks".into(),
                i64::from(event.event.contains(FINANCING_CHECK_MARKER)),
            );
        }
        // The upsert creates a missing document; on an existing one whose
        // `recent` holds an id the filter fails, the upsert's insert hits the
        // `_id`, and that duplicate key means "already counted".
        match self
            .analytics_counters
            .update_one(
                doc! { "_id": user, "recent": { "$nin": &ids } },
                doc! { "$inc": increments, "$push": { "recent": { "$each": &ids } } },
            )
            .upsert(true)
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if is_duplicate_key(&err) => Ok(false),
            Err(err) => Err(StoreError(err)),
        }
    }

    /// The summary from `analytics_counters`: one read of a document per user.
    pub async fn analytics_summary(&self) -> Result<AnalyticsSummary, StoreError> {
        let mut summary = AnalyticsSummary::default();
        let mut counters = self
            .analytics_counters
            .find(doc! {})
            .projection(doc! { "recent": 0 })
            .await?;
        while let Some(counter) = counters.try_next().await? {
            let user = counter.get_str("_id").unwrap_or("unknown").to_owned();
            let count = |key: &str| counter.get(key).and_then(as_u64).unwrap_or(0);
            summary.total_events += count("events");
            for (key, n) in [
                ("logins", &mut summary.logins_per_user),
                ("financing_checks", &mut summary.financing_checks_per_user),
            ] {
                let value = count(key);
                if value > 0 {
                    *n.entry(user.clone()).or_default() += value;
                }
            }
            if let Ok(types) = counter.get_document("types") {
                for (kind, n) in types {
                    *summary.events_per_type.entry(kind.clone()).or_default() +=
                        as_u64(n).unwrap_or(0);
                }
            }
        }
        summary.total_logins = summary.logins_per_user.values().sum();
        summary.total_financing_option_checks = summary.financing_checks_per_user.values().sum();
        Ok(summary)
    }

    /// Replaces `analytics_counters` with counts taken from every stored event,
    /// by the original's substring rules: the one-time seed for events the
    /// original wrote, and the repair if counters are ever in doubt. Run it
    /// while no consumer is recording. Returns the summary it stored.
    pub async fn rebuild_analytics_counters(&self) -> Result<AnalyticsSummary, StoreError> {
        let mut users: BTreeMap<String, Document> = BTreeMap::new();
        let mut per_user_type = self
            .analytics
            .aggregate([doc! { "$group": {
                "_id": { "user": "$username", "type": "$type" },
                "count": { "$sum": 1 },
            } }])
            .await?;
        while let Some(group) = per_user_type.try_next().await? {
            let key = group.get_document("_id").ok();
            let user = key
                .and_then(|key| key.get_str("user").ok())
                .unwrap_or("unknown");
            let kind = key
                .and_then(|key| key.get_str("type").ok())
                .unwrap_or("untyped");
            let n = group.get("count").and_then(as_u64).unwrap_or(0) as i64;
            let counter = users.entry(user.to_owned()).or_insert_with(|| {
                doc! { "_id": user, "events": 0_i64, "logins": 0_i64, "financing_checks": 0_i64, "types": {}, "recent": [] }
            });
            let events = counter.get_i64("events").unwrap_or(0) + n;
            counter.insert("events", events);
            let types = counter.get_document_mut("types").expect("inserted above");
            let previous = types.get_i64(kind).unwrap_or(0);
            types.insert(kind, previous + n);
        }
        for (key, marker) in [
            ("logins", LOGIN_MARKER),
            ("financing_checks", FINANCING_CHECK_MARKER),
        ] {
            for (user, n) in self.count_by("$username", Some(marker), "unknown").await? {
                if let Some(counter) = users.get_mut(&user) {
                    counter.insert(key, n as i64);
                }
            }
        }
        self.analytics_counters.delete_many(doc! {}).await?;
        if !users.is_empty() {
            self.analytics_counters
                .insert_many(users.into_values())
                .await?;
        }
        self.analytics
            .update_many(
                doc! { "pending": true },
                doc! { "$unset": { "pending": "" } },
            )
            .await?;
        self.analytics_summary().await
    }

    /// The summary computed from every stored event (four scans): what the
    /// counters must always equal, and what `GET /analytics` computed before them.
    pub async fn analytics_summary_from_events(&self) -> Result<AnalyticsSummary, StoreError> {
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

/// Applies `update` to the document `filter` matches, inserting it when there
/// is none. Two first writes racing on a unique key: the loser's insert hits
/// the index, and its retry becomes an update of the winner's document.
async fn upsert<T: Send + Sync>(
    collection: &Collection<T>,
    filter: Document,
    update: Document,
) -> Result<(), StoreError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        match collection
            .update_one(filter.clone(), update.clone())
            .upsert(true)
            .await
        {
            Err(err) if is_duplicate_key(&err) && attempt < 3 => continue,
            result => return result.map(|_| ()).map_err(StoreError),
        }
    }
}

/// Whether the server refused `err`'s command as not implemented (FerretDB's
/// answer to what it lacks, such as TTL indexes).
fn is_not_implemented(err: &mongodb::error::Error) -> bool {
    const NOT_IMPLEMENTED: i32 = 238;
    matches!(err.kind.as_ref(), ErrorKind::Command(command) if command.code == NOT_IMPLEMENTED)
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
