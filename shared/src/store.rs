//! MongoDB access: one client per process, one module per group of
//! collections, indexes declared here and ensured at start-up.
//!
//! The collections are private to this module and its children: code outside
//! reaches the data only through the methods each child adds to [`Store`].
//! Tools that must touch raw documents (the benchmarks' bulk seeding, tests'
//! assertions) open them by name through [`collections`] and
//! [`Store::database`].
//!
//! Documents written by the original Python services must always load, so every
//! field they might lack is optional and every field they wrote differently
//! (the password as BSON binary) is read in both forms.

mod analytics;
mod applications;
mod effects;
mod financing;
mod idempotency;
mod login_failures;
mod outbox;
mod users;

pub use analytics::{AnalyticsDoc, AnalyticsSummary, FINANCING_CHECK_MARKER, LOGIN_MARKER};
pub use applications::{
    ApplicationDoc, ApplicationsPage, StatusChange, StatusCounts, UpdateCounts,
};
pub use effects::{Applied, Effect, WriteIds};
pub use financing::FINANCING_OPTIONS_TTL;
pub use idempotency::{Claim, ClaimToken, IdempotencyRecord, KeyClaim, StoredIds, StoredResponse};
pub use login_failures::{FailureWindow, ThrottleKey};
pub use outbox::{OutboxBacklog, OutboxRecord};
pub use users::{InsertUserError, UserDoc};

use std::{sync::Arc, time::Duration};

use futures_util::TryStreamExt as _;
use mongodb::{
    Client, Collection, Database, IndexModel,
    bson::{Bson, Document, doc},
    error::{ErrorKind, WriteFailure},
    options::{ClientOptions, IndexOptions},
};
use secrecy::ExposeSecret;

use crate::config::Config;

/// The database the original services wrote to (hard-coded there).
pub const ORIGINAL_DATABASE: &str = "root";

/// The collection names, as the original services named theirs.
pub mod collections {
    pub const USERS: &str = "users";
    pub const APPLICATIONS: &str = "applications";
    pub const FINANCING_OPTIONS: &str = "financing_options";
    pub const SELECTIONS: &str = "user_financing_selections";
    pub const OUTBOX: &str = "outbox";
    pub const OUTBOX_LOCK: &str = "outbox_lock";
    pub const ANALYTICS: &str = "user_analytics";
    pub const ANALYTICS_COUNTERS: &str = "analytics_counters";
    pub const LOGIN_FAILURES: &str = "login_failures";
    pub const IDEMPOTENCY_KEYS: &str = "idempotency_keys";
}

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;
/// The server's answer to a read past its `maxTimeMS`.
const MAX_TIME_MS_EXPIRED: i32 = 50;
/// The read time limit of a store built without a configuration (the tools').
const DEFAULT_READ_LIMIT: Duration = Duration::from_secs(60);

/// A database failure, named by the operation that failed: it reads
/// "insert user: <the driver's error>" in a log line. Always a 5xx to the
/// client, whose message never includes it.
#[derive(Debug, thiserror::Error)]
#[error("{operation}: {error}")]
pub struct StoreError {
    operation: &'static str,
    error: mongodb::error::Error,
}

impl StoreError {
    pub fn new(operation: &'static str, error: mongodb::error::Error) -> Self {
        Self { operation, error }
    }

    /// What was being done: "insert user", "claim outbox records", ...
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// Whether the database could not be reached (as opposed to refusing the
    /// operation): the request may succeed if tried again shortly.
    pub fn is_unavailable(&self) -> bool {
        is_unavailable(&self.error)
    }

    /// Whether the server stopped the operation at its time limit
    /// (`MONGODB_MAX_TIME_MS`): the database is too busy to answer in time.
    pub fn is_time_limit(&self) -> bool {
        matches!(self.error.kind.as_ref(), ErrorKind::Command(command) if command.code == MAX_TIME_MS_EXPIRED)
    }
}

/// Server codes that mean the server, or its storage behind it, is going
/// away or changing hands: HostUnreachable, HostNotFound, NetworkTimeout,
/// ShutdownInProgress, PrimarySteppedDown, ExceededTimeLimit,
/// SocketException, NotWritablePrimary, InterruptedAtShutdown,
/// InterruptedDueToReplStateChange, NotPrimaryNoSecondaryOk,
/// NotPrimaryOrSecondary; and 1, InternalError, which is what FerretDB
/// answers when its PostgreSQL connection breaks.
const OUTAGE_CODES: [i32; 13] = [
    1, 6, 7, 89, 91, 189, 262, 9001, 10107, 11600, 11602, 13435, 13436,
];

fn is_unavailable(error: &mongodb::error::Error) -> bool {
    let code = match error.kind.as_ref() {
        ErrorKind::ServerSelection { .. }
        | ErrorKind::Io(_)
        | ErrorKind::ConnectionPoolCleared { .. } => return true,
        ErrorKind::Command(command) => Some(command.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(_)) => return true,
        ErrorKind::InsertMany(failure) if failure.write_concern_error.is_some() => return true,
        _ => None,
    };
    code.is_some_and(|code| OUTAGE_CODES.contains(&code))
        || error.contains_label("RetryableWriteError")
        || error.contains_label("TransientTransactionError")
}

/// Names the operation a driver result belongs to, as `anyhow`'s
/// `.context()` does: `collection.insert_one(user).await.context("insert user")?`.
pub trait Context<T> {
    fn context(self, operation: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for Result<T, mongodb::error::Error> {
    fn context(self, operation: &'static str) -> Result<T, StoreError> {
        self.map_err(|error| StoreError::new(operation, error))
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
        matches!(self, IndexError::Create { source, .. } if is_unavailable(source))
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

/// The database and its typed collections.
#[derive(Clone, Debug)]
pub struct Store {
    db: Database,
    users: Collection<UserDoc>,
    applications: Collection<ApplicationDoc>,
    /// Options are only ever read and copied whole, so they stay documents.
    financing_options: Collection<Document>,
    selections: Collection<Document>,
    outbox: Collection<OutboxRecord>,
    /// The relay lock (see [`Store::hold_relay_lock`]).
    outbox_lock: Collection<Document>,
    analytics: Collection<AnalyticsDoc>,
    /// One document per user: `_id` the username, `events`, `logins`,
    /// `financing_checks`, `types` {type: count}, and `recent`, the ids of
    /// events being counted (empty between batches).
    analytics_counters: Collection<Document>,
    /// Failed-login windows (see [`Store::record_login_failure`]).
    login_failures: Collection<FailureWindow>,
    /// Idempotency keys and the responses they replay (see [`Store::claim_idempotency_key`]).
    idempotency_keys: Collection<IdempotencyRecord>,
    options_cache: financing::OptionsCache,
    summary_cache: Arc<analytics::SummaryCache>,
    /// Every read's `maxTimeMS`.
    read_limit: Duration,
    counter_locks: Arc<analytics::CounterLocks>,
}

impl Store {
    /// Builds the client (no I/O happens until the first operation).
    pub async fn connect(config: &Config) -> Result<Self, StoreError> {
        let store = Self::connect_uri(
            config.mongodb_uri.expose_secret(),
            &config.mongodb_database,
            config.mongodb_max_pool_size,
            config.mongodb_timeout,
        )
        .await?;
        Ok(store
            .with_read_limit(config.mongodb_max_time)
            .with_summary_cache(config.analytics_cache))
    }

    /// Answers [`Store::analytics_summary_cached`] from memory for `ttl` after
    /// each read (`ANALYTICS_CACHE_MS`); zero, the default, reads every time.
    pub fn with_summary_cache(mut self, ttl: Duration) -> Self {
        self.summary_cache = Arc::new(analytics::SummaryCache::new(ttl));
        self
    }

    /// Sets the server-side time limit of every read (`maxTimeMS`; see
    /// `MONGODB_MAX_TIME_MS`). A read past it fails as [`StoreError::is_time_limit`].
    pub fn with_read_limit(mut self, limit: Duration) -> Self {
        self.read_limit = limit;
        self
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
        let mut options = ClientOptions::parse(uri)
            .await
            .context("parse MONGODB_URI")?;
        options.app_name.get_or_insert_with(|| "finapp".into());
        options.server_selection_timeout.get_or_insert(timeout);
        options.connect_timeout.get_or_insert(timeout);
        if max_pool_size.is_some() {
            options.max_pool_size = max_pool_size;
        }
        let client = Client::with_options(options).context("build the MongoDB client")?;
        Ok(Self::new(client.database(database)))
    }

    pub fn new(db: Database) -> Self {
        Self {
            users: db.collection(collections::USERS),
            applications: db.collection(collections::APPLICATIONS),
            financing_options: db.collection(collections::FINANCING_OPTIONS),
            selections: db.collection(collections::SELECTIONS),
            outbox: db.collection(collections::OUTBOX),
            outbox_lock: db.collection(collections::OUTBOX_LOCK),
            analytics: db.collection(collections::ANALYTICS),
            analytics_counters: db.collection(collections::ANALYTICS_COUNTERS),
            login_failures: db.collection(collections::LOGIN_FAILURES),
            idempotency_keys: db.collection(collections::IDEMPOTENCY_KEYS),
            options_cache: financing::OptionsCache::default(),
            summary_cache: Arc::new(analytics::SummaryCache::new(Duration::ZERO)),
            read_limit: DEFAULT_READ_LIMIT,
            counter_locks: Arc::new(analytics::CounterLocks::new()),
            db,
        }
    }

    pub fn database(&self) -> &Database {
        &self.db
    }

    /// Pings the server: `Ok` when it answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.db
            .run_command(doc! { "ping": 1 })
            .await
            .context("ping")?;
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
            .await
            .context("find duplicates")?
            .try_collect()
            .await
            .context("find duplicates")?;
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
    operation: &'static str,
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
            result => return result.map(|_| ()).context(operation),
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
    use mongodb::bson::{Binary, DateTime, oid::ObjectId, spec::BinarySubtype};

    use super::*;

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
    fn a_store_error_names_its_operation_first() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset by peer");
        let err = Err::<(), _>(mongodb::error::Error::from(io))
            .context("insert user")
            .unwrap_err();
        assert_eq!(err.operation(), "insert user");
        let text = err.to_string();
        assert!(text.starts_with("insert user: "), "{text}");
        assert!(text.contains("reset by peer"), "{text}");
        assert!(err.is_unavailable());
    }
}
