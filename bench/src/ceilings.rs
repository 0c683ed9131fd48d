//! The ceilings the scenarios are measured against, each measured by the bench
//! process itself, on the spot: the raw MongoDB driver issuing a handler's
//! queries and writes with no HTTP in between, and one bcrypt verification.

use std::{
    future::Future,
    sync::Arc,
    time::{Duration, Instant},
};

use finapp_broker::Publisher;
use finapp_shared::{
    auth::KnownUsers,
    events::{Event, EventType},
    finance::{NewApplication, PageRequest, Status},
    store::{
        AnalyticsDoc, ApplicationDoc, OutboxRecord, StatusChange, Store, StoreError, collections,
    },
};
use futures_util::TryStreamExt as _;
use mongodb::{
    Collection,
    bson::{DateTime, Document, doc},
};
use secrecy::SecretString;

use crate::stats::{Figure, median_duration};

/// Runs `op` in `concurrency` tokio tasks, each calling it back to back until
/// `duration` has passed, and times every call. `op(task, iteration)` answers
/// whether the call succeeded.
pub async fn closed_loop<F, Fut>(concurrency: usize, duration: Duration, op: F) -> Figure
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = bool> + Send,
{
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..concurrency)
        .map(|task| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut iteration = 0;
                while Instant::now() < deadline {
                    let call = Instant::now();
                    if op(task, iteration).await {
                        latencies.push(call.elapsed());
                    } else {
                        errors += 1;
                    }
                    iteration += 1;
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut errors = 0;
    for task in tasks {
        match task.await {
            Ok((task_latencies, task_errors)) => {
                latencies.extend(task_latencies);
                errors += task_errors;
            }
            Err(_) => errors += 1,
        }
    }
    Figure::from_latencies(latencies, started.elapsed(), errors)
}

/// The users' applications as `GET /status` reads its first page: the same
/// filter, sort and limit (a page and one more), the cursor drained into
/// documents (no JSON rendering, no HTTP).
pub async fn status_queries(
    store: &Store,
    users: &[String],
    concurrency: usize,
    duration: Duration,
) -> Figure {
    let applications = store
        .database()
        .collection::<Document>(collections::APPLICATIONS);
    let users = Arc::new(users.to_vec());
    let first_page = i64::try_from(PageRequest::MAX_PER_PAGE + 1).unwrap_or(i64::MAX);
    closed_loop(concurrency, duration, move |task, iteration| {
        let applications = applications.clone();
        let user = users[(task + iteration) % users.len()].clone();
        async move {
            let cursor = applications
                .find(doc! { "submitted_by": user })
                .sort(doc! { "submitted_at": -1, "_id": -1 })
                .limit(first_page)
                .await;
            match cursor {
                Ok(cursor) => cursor.try_collect::<Vec<Document>>().await.is_ok(),
                Err(_) => false,
            }
        }
    })
    .await
}

/// The number of applications `GET /status` returns for `user`, to check the fixture.
pub async fn applications_of(store: &Store, user: &str) -> mongodb::error::Result<u64> {
    store
        .database()
        .collection::<ApplicationDoc>(collections::APPLICATIONS)
        .count_documents(doc! { "submitted_by": user })
        .await
}

/// Which of `POST /apply`'s database operations a ceiling iteration makes.
#[derive(Clone, Copy, Debug)]
pub enum ApplyOps {
    /// The three writes: the application, its outbox record, the record's deletion.
    Writes,
    /// The handler's own calls, through the same `Store` methods: the caller
    /// exists (unless found less than `user_check_cache` ago, as the
    /// function remembers); their pending applications, counted up to
    /// `pending_cap`; the application; its outbox record. The record's
    /// deletion is the relay's, off the request path, batched and in the
    /// background, so it is left out.
    Handler {
        pending_cap: u64,
        user_check_cache: Duration,
    },
}

/// `POST /apply`'s database operations, as `ops` says: the three writes with
/// the raw driver, the application and its outbox record (the handler's) and
/// the record's deletion (the relay's); or the handler's own `Store` calls.
/// When `events` is given (with `Writes`), the event is also published with a
/// confirm between the last two writes, as the relay does (a diagnostic, not
/// the DB-bound ceiling).
pub async fn apply_writes(
    store: &Store,
    users: &[String],
    tokens: &[String],
    events: Option<Arc<Publisher>>,
    ops: ApplyOps,
    concurrency: usize,
    duration: Duration,
) -> Figure {
    let store = store.clone();
    let accounts: Arc<Vec<(String, String)>> =
        Arc::new(users.iter().cloned().zip(tokens.iter().cloned()).collect());
    let known = Arc::new(KnownUsers::new(match ops {
        ApplyOps::Handler {
            user_check_cache, ..
        } => user_check_cache,
        ApplyOps::Writes => Duration::ZERO,
    }));
    closed_loop(concurrency, duration, move |task, iteration| {
        let store = store.clone();
        let events = events.clone();
        let known = Arc::clone(&known);
        let (user, token) = accounts[(task + iteration) % accounts.len()].clone();
        async move {
            match ops {
                ApplyOps::Writes => apply_once(&store, events.as_deref(), &user, token)
                    .await
                    .is_ok(),
                ApplyOps::Handler { pending_cap, .. } => {
                    handler_once(&store, &known, pending_cap, &user)
                        .await
                        .is_ok()
                }
            }
        }
    })
    .await
}

/// Why one ceiling iteration of `apply_writes` failed.
#[derive(Debug)]
enum ApplyFailure {
    Store,
    Publish,
}

async fn apply_once(
    store: &Store,
    events: Option<&Publisher>,
    user: &str,
    token: String,
) -> Result<(), ApplyFailure> {
    let created = StatusChange::now(Status::Pending, user);
    let application = ApplicationDoc {
        loan_types: vec!["personal".into()],
        amount: 15_000.0,
        purpose: "Car purchase".into(),
        status: Status::Pending.as_str().to_owned(),
        submitted_by: user.to_owned(),
        submitted_at: created.at,
        status_history: vec![created],
    };
    store
        .database()
        .collection::<ApplicationDoc>(collections::APPLICATIONS)
        .insert_one(&application)
        .await
        .map_err(|_| ApplyFailure::Store)?;

    let event = Event::new(
        EventType::ApplicationSubmitted,
        user,
        format!("Application by {user} for 15000"),
    );
    let record = OutboxRecord::new(&event);
    store
        .database()
        .collection::<OutboxRecord>(collections::OUTBOX)
        .insert_one(&record)
        .await
        .map_err(|_| ApplyFailure::Store)?;
    if let Some(events) = events {
        let token = SecretString::from(token);
        events
            .publish(&record.event, &token)
            .await
            .map_err(|_| ApplyFailure::Publish)?;
    }
    store
        .database()
        .collection::<OutboxRecord>(collections::OUTBOX)
        .delete_one(doc! { "_id": &record.id })
        .await
        .map_err(|_| ApplyFailure::Store)?;
    Ok(())
}

/// One `ApplyOps::Handler` iteration: the handler's `Store` calls in its order.
async fn handler_once(
    store: &Store,
    known: &KnownUsers,
    pending_cap: u64,
    user: &str,
) -> Result<(), StoreError> {
    if !known.is_fresh(user) {
        store.user_exists(user).await?;
        known.remember(user);
    }
    store.pending_count(user, pending_cap).await?;
    let application = NewApplication {
        loan_types: vec!["personal".into()],
        amount: 15_000.0,
        purpose: "Car purchase".into(),
    };
    store.insert_application(&application, user).await?;
    store
        .record_event(&Event::new(
            EventType::ApplicationSubmitted,
            user,
            format!("Application by {user} for 15000"),
        ))
        .await
}

/// notify-consumer's write with the raw driver: analytics documents shaped
/// as the consumer shapes them, `batch` per call (`insert_one` for 1,
/// `insert_many` otherwise). The figure's throughput is in documents/s.
pub async fn analytics_inserts(
    collection: Collection<AnalyticsDoc>,
    batch: usize,
    concurrency: usize,
    duration: Duration,
) -> Figure {
    let mut figure = closed_loop(concurrency, duration, move |_, _| {
        let collection = collection.clone();
        async move {
            let docs = (0..batch).map(|_| analytics_doc());
            if batch == 1 {
                collection.insert_one(analytics_doc()).await.is_ok()
            } else {
                collection.insert_many(docs).await.is_ok()
            }
        }
    })
    .await;
    figure.rps *= batch as f64;
    figure
}

/// The consumer's whole write alone: `Store::record_analytics` (the events
/// with their pending mark, each user's counters, the unmarking) on batches of
/// `batch` events spread over `users`, from `concurrency` tasks, as the
/// consumer's writers call it, with no broker involved. Events per second.
pub async fn recorded_analytics(
    store: Store,
    users: Arc<Vec<String>>,
    batch: usize,
    concurrency: usize,
    duration: Duration,
) -> Figure {
    let mut figure = closed_loop(concurrency, duration, move |task, i| {
        let (store, users) = (store.clone(), users.clone());
        async move {
            let docs: Vec<AnalyticsDoc> = (0..batch)
                .map(|n| user_analytics_doc(&users[(task + i * batch + n) % users.len()]))
                .collect();
            let refs: Vec<&AnalyticsDoc> = docs.iter().collect();
            store.record_analytics(&refs).await.is_ok()
        }
    })
    .await;
    figure.rps *= batch as f64;
    figure
}

fn analytics_doc() -> AnalyticsDoc {
    user_analytics_doc("bench_user_00")
}

fn user_analytics_doc(user: &str) -> AnalyticsDoc {
    let event = Event::new(
        EventType::UserActivity,
        user,
        format!("User {user} logged in"),
    );
    let id = event.id.to_string();
    let now = DateTime::now();
    AnalyticsDoc {
        id: id.clone(),
        event_id: id,
        kind: event.kind.queue().to_owned(),
        username: event.username,
        event: event.message,
        timestamp: DateTime::from_millis(event.timestamp_ms),
        received_at: now,
        pending: false,
    }
}

/// The median time of one `bcrypt::verify` at `cost` over `samples` calls, on
/// this thread, as `/login` runs it on the blocking pool.
pub fn bcrypt_verify_time(hash: &str, password: &str, samples: usize) -> Duration {
    median_duration((0..samples.max(1)).map(|_| {
        let started = Instant::now();
        let matches = bcrypt::verify(password, hash).unwrap_or(false);
        assert!(matches, "the reference hash verifies");
        started.elapsed()
    }))
}
