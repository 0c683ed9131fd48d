//! The queries at the database: each read is served by an index (MongoDB) or a
//! pushed-down, indexed filter (FerretDB on PostgreSQL), asserted with
//! `explain`; and the analytics counters stay exact through crashes and
//! redeliveries.

use std::{collections::BTreeMap, time::Duration};

use finapp_shared::{
    auth::Role,
    events::{Event, EventType},
    finance::PageRequest,
    store::{AnalyticsDoc, AnalyticsSummary},
};
use finapp_tests::{TestApp, TestEnv, all_functions, send};
use mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use notify_consumer::process::{Incoming, Outcome, process_batch};
use reqwest::Method;

/// Stores `count` applications spread over `users` users with one `insert_many`.
async fn seed_applications(env: &TestEnv, users: usize, count: usize) {
    let now = DateTime::now();
    let docs = (0..count).map(|i| {
        let status = ["pending", "approved", "denied"][i % 3];
        doc! {
            "loan_types": ["personal"], "amount": 1000.0 + i as f64, "purpose": "Car purchase",
            "status": status,
            "submitted_by": format!("user{:03}", i % users), "submitted_at": now,
            "status_history": [],
        }
    });
    env.db()
        .await
        .collection::<Document>("applications")
        .insert_many(docs)
        .await
        .unwrap();
}

/// How the server would run `command`: the explain output, flattened to text.
async fn explain(env: &TestEnv, command: Document) -> (Document, String) {
    let plan = env
        .db()
        .await
        .run_command(doc! { "explain": command, "verbosity": "queryPlanner" })
        .await
        .unwrap();
    let text = format!("{plan}");
    (plan, text)
}

/// Asserts that `command` reads through an index: on FerretDB its filter is
/// pushed down and PostgreSQL's plan scans an index; on MongoDB the winning
/// plan has an IXSCAN and no COLLSCAN.
async fn assert_indexed(env: &TestEnv, what: &str, command: Document) {
    let (plan, text) = explain(env, command).await;
    if plan.contains_key("filterPushdown") {
        assert_eq!(
            plan.get_bool("filterPushdown"),
            Ok(true),
            "{what}: filter not pushed down (is an old SQLite-backed FerretDB on this port? \
             scripts/services.sh starts the PostgreSQL backend): {text}"
        );
        assert!(
            text.contains("Index Scan") && !text.contains("Seq Scan"),
            "{what}: PostgreSQL does not use an index: {text}"
        );
    } else {
        assert!(
            text.contains("IXSCAN") && !text.contains("COLLSCAN"),
            "{what}: MongoDB does not use an index: {text}"
        );
    }
}

#[tokio::test]
async fn status_and_dashboard_read_one_users_applications_through_an_index() {
    let env = TestEnv::new();
    env.deps().await; // ensures the indexes, as every function's start-up does
    seed_applications(&env, 100, 3_000).await;

    assert_indexed(
        &env,
        "/status",
        doc! { "find": "applications", "filter": { "submitted_by": "user007" },
        "sort": { "submitted_at": -1, "_id": -1 } },
    )
    .await;
    assert_indexed(
        &env,
        "/dashboard-info",
        doc! { "aggregate": "applications", "cursor": {}, "pipeline": [
            { "$match": { "submitted_by": "user007" } },
            { "$group": { "_id": "$status", "count": { "$sum": 1 } } },
        ] },
    )
    .await;
}

#[tokio::test]
async fn a_redelivered_events_pending_lookup_and_an_application_by_id_use_an_index() {
    let env = TestEnv::new();
    env.deps().await;
    seed_applications(&env, 100, 3_000).await;
    let events = (0..3_000).map(|i| {
        doc! { "_id": format!("e{i}"), "username": format!("user{:03}", i % 100), "event": "x" }
    });
    env.db()
        .await
        .collection::<Document>("user_analytics")
        .insert_many(events)
        .await
        .unwrap();

    assert_indexed(
        &env,
        "the consumer's pending lookup",
        doc! { "find": "user_analytics", "filter": { "username": "user001", "pending": true } },
    )
    .await;
    assert_indexed(
        &env,
        "/admin/update_status by id",
        doc! { "find": "applications", "filter": { "_id": ObjectId::new() } },
    )
    .await;
}

#[tokio::test]
async fn the_admin_listing_reads_a_page_as_an_id_range_not_a_skip_over_documents() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("chief").await;
    seed_applications(&env, 10, 95).await;
    let ids: Vec<ObjectId> = env
        .db()
        .await
        .collection::<Document>("applications")
        .find(doc! {})
        .sort(doc! { "_id": 1 })
        .await
        .unwrap()
        .into_iter_ids()
        .await;

    // Every page, including the last partial one and one past the end, holds
    // exactly the ids the old skip/limit would have returned.
    for page in 1..=11_usize {
        let (status, body) = send(app.authed(
            Method::GET,
            &format!("/admin/applications?page={page}&per_page=9"),
            &admin,
        ))
        .await;
        assert_eq!(status, 200, "{body}");
        let got: Vec<String> = body["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["_id"].as_str().unwrap().to_owned())
            .collect();
        let want: Vec<String> = ids
            .iter()
            .skip((page - 1) * 9)
            .take(9)
            .map(|id| id.to_hex())
            .collect();
        assert_eq!(got, want, "page {page}");
        assert_eq!(
            (
                body["total_items"].as_u64(),
                body["total_pages"].as_u64(),
                body["current_page"].as_u64()
            ),
            (Some(95), Some(11), Some(page as u64))
        );
    }

    // The page is a range on _id, and so is the walk to page N's first key:
    // an index range on MongoDB, and on FerretDB (tools/ferretdb/pushdown.patch)
    // a range PostgreSQL reads from the index of ObjectId _ids.
    assert_indexed(
        &env,
        "/admin/applications page",
        doc! { "find": "applications", "filter": { "_id": { "$gte": ids[18] } },
        "sort": { "_id": 1 }, "limit": 9 },
    )
    .await;
    assert_indexed(
        &env,
        "/admin/applications page start",
        doc! { "find": "applications", "filter": { "_id": { "$gte": ObjectId::from_bytes([0; 12]) } },
        "sort": { "_id": 1 }, "skip": 18_i64, "limit": 1_i64, "projection": { "_id": 1 } },
    )
    .await;
}

/// What the admin listing relies on, asked of the server directly: an ObjectId
/// range on `_id` with a sort, skip and limit, and a count, answer as MongoDB
/// does. On FerretDB, `tools/ferretdb/pushdown.patch` hands these to
/// PostgreSQL, which compares the ids as jsonb strings; this checks that
/// strings, numbers and documents as `_id`s are still left out, that the order
/// is the ObjectIds' order both ways, and that skip and limit apply once.
#[tokio::test]
async fn id_ranges_with_sort_skip_limit_and_count_answer_as_mongodb_does() {
    let env = TestEnv::new();
    let db = env.db().await;
    let items = db.collection::<Document>("id_ranges");
    // ObjectIds out of insertion order, so a backend that returned rows in
    // insertion order would be caught.
    let mut ids: Vec<ObjectId> = (0..40_u8)
        .map(|i| {
            let mut bytes = [0x65; 12];
            bytes[4] = i.wrapping_mul(37);
            bytes[11] = i;
            ObjectId::from_bytes(bytes)
        })
        .collect();
    let mut docs: Vec<Document> = ids
        .iter()
        .map(|id| doc! { "_id": id, "kind": "oid" })
        .collect();
    docs.extend([
        doc! { "_id": "6565656565656565656565ff", "kind": "hex string" },
        doc! { "_id": "zzz", "kind": "string" },
        doc! { "_id": 7, "kind": "number" },
        doc! { "_id": { "a": 1 }, "kind": "document" },
    ]);
    items.insert_many(docs).await.unwrap();
    ids.sort();

    let found = |filter: Document, sort: i32, skip: u64, limit: i64| {
        let items = items.clone();
        async move {
            items
                .find(filter)
                .sort(doc! { "_id": sort })
                .skip(skip)
                .limit(limit)
                .await
                .unwrap()
                .into_iter_ids()
                .await
        }
    };
    let from_start = doc! { "_id": { "$gte": ObjectId::from_bytes([0; 12]) } };
    assert_eq!(found(from_start.clone(), 1, 0, 0).await, ids);
    assert_eq!(found(from_start.clone(), 1, 18, 9).await, ids[18..27]);
    assert_eq!(
        found(doc! { "_id": { "$gt": ids[5], "$lte": ids[30] } }, -1, 2, 4).await,
        [ids[28], ids[27], ids[26], ids[25]]
    );
    assert_eq!(
        found(doc! { "_id": { "$lt": ids[3] } }, 1, 0, 10).await,
        ids[..3]
    );
    assert_eq!(found(from_start.clone(), 1, 50, 5).await, []);

    let count = |query: Document| {
        let db = db.clone();
        async move {
            db.run_command(doc! { "count": "id_ranges", "query": query })
                .await
                .unwrap()
                .get_i32("n")
                .unwrap()
        }
    };
    assert_eq!(count(doc! {}).await, 44);
    assert_eq!(count(from_start).await, 40);
    assert_eq!(
        count(doc! { "_id": { "$gte": ids[10], "$lt": ids[20] } }).await,
        10
    );
    assert_eq!(items.estimated_document_count().await.unwrap(), 44);
}

trait IntoIds {
    async fn into_iter_ids(self) -> Vec<ObjectId>;
}

impl IntoIds for mongodb::Cursor<Document> {
    async fn into_iter_ids(self) -> Vec<ObjectId> {
        use futures_util::TryStreamExt as _;
        self.map_ok(|doc| doc.get_object_id("_id").unwrap())
            .try_collect()
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn financing_options_are_served_from_memory_for_a_few_seconds() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    finapp_admin::seed_financing_options(&deps.store)
        .await
        .unwrap();
    let first = deps.store.financing_options_cached().await.unwrap();
    assert_eq!(first.len(), 5);

    env.db()
        .await
        .collection::<Document>("financing_options")
        .insert_one(doc! { "option_name": "Added later" })
        .await
        .unwrap();

    assert_eq!(deps.store.financing_options_cached().await.unwrap(), first);
    assert_eq!(deps.store.financing_options().await.unwrap().len(), 6);
}

/// A message on `user_activity` as the functions publish it, and its user.
fn activity(username: &str, message: &str) -> (Vec<u8>, String) {
    let event = Event::new(EventType::UserActivity, username, message.to_owned());
    (serde_json::to_vec(&event).unwrap(), username.to_owned())
}

/// The messages of a small stream: 30 logins and checks by three users.
fn stream() -> Vec<(Vec<u8>, String)> {
    (0..30)
        .map(|i| {
            let user = ["ann", "bob", "cy"][i % 3];
            let text = if i % 2 == 0 {
                format!("User {user} logged in")
            } else {
                format!("User {user} checked financing options")
            };
            activity(user, &text)
        })
        .collect()
}

async fn process_all(
    deps: &finapp_shared::Deps,
    messages: &[(Vec<u8>, String)],
    tokens: &BTreeMap<String, String>,
) -> Vec<Outcome> {
    let incoming: Vec<Incoming<'_>> = messages
        .iter()
        .map(|(body, user)| Incoming {
            queue: "user_activity",
            body,
            authorization: Some(tokens[user].as_str()),
            message_id: None,
            traceparent: None,
        })
        .collect();
    process_batch(deps, &incoming).await.unwrap()
}

/// A token for each user of [`stream`], by name.
fn stream_tokens(deps: &finapp_shared::Deps) -> BTreeMap<String, String> {
    ["ann", "bob", "cy"]
        .iter()
        .map(|u| {
            (
                u.to_string(),
                finapp_tests::expose(&deps.tokens.issue(u, Role::User)).to_owned(),
            )
        })
        .collect()
}

/// The counters, and a full count of the stored events, both equal [`stream`]'s.
async fn assert_counters_match_the_stream(deps: &finapp_shared::Deps) {
    assert_eq!(
        deps.store.analytics_summary().await.unwrap(),
        expected_summary()
    );
    assert_eq!(
        deps.store.analytics_summary_from_events().await.unwrap(),
        expected_summary()
    );
}

fn expected_summary() -> AnalyticsSummary {
    let per_user: BTreeMap<String, u64> = ["ann", "bob", "cy"]
        .iter()
        .map(|u| (u.to_string(), 5))
        .collect();
    AnalyticsSummary {
        total_events: 30,
        total_logins: 15,
        total_financing_option_checks: 15,
        logins_per_user: per_user.clone(),
        financing_checks_per_user: per_user,
        events_per_type: [("user_activity".to_string(), 30)].into_iter().collect(),
    }
}

#[tokio::test]
async fn counters_count_a_batch_once_however_often_it_is_redelivered() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let tokens = stream_tokens(&deps);
    let messages = stream();

    let first = process_all(&deps, &messages, &tokens).await;
    let again = process_all(&deps, &messages, &tokens).await;
    let third = process_all(&deps, &messages[5..20], &tokens).await;

    assert!(first.iter().all(|outcome| *outcome == Outcome::Recorded));
    assert!(
        again
            .iter()
            .chain(&third)
            .all(|outcome| *outcome == Outcome::Duplicate)
    );
    assert_counters_match_the_stream(&deps).await;
    assert_eq!(
        env.db()
            .await
            .collection::<Document>("user_analytics")
            .count_documents(doc! { "pending": true })
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn events_stored_by_a_consumer_that_crashed_before_counting_are_counted_on_redelivery() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let tokens = stream_tokens(&deps);
    let messages = stream();
    // The crash: the first 20 events were stored (pending), none counted.
    let docs: Vec<AnalyticsDoc> = messages[..20]
        .iter()
        .map(|(body, user)| {
            notify_consumer::process::analytics_doc(
                &deps,
                Incoming {
                    queue: "user_activity",
                    body,
                    authorization: Some(tokens[user].as_str()),
                    message_id: None,
                    traceparent: None,
                },
            )
            .unwrap()
        })
        .collect();
    deps.store
        .insert_analytics(&docs.iter().collect::<Vec<_>>())
        .await
        .unwrap();
    // A second crash, between counting and unmarking, for 10 of them: counted,
    // their ids still in their counters' `recent`, the events still pending.
    let counted_early: Vec<&AnalyticsDoc> = docs[..10].iter().collect();
    deps.store.record_analytics(&counted_early).await.unwrap();
    let db = env.db().await;
    for event in &counted_early {
        db.collection::<Document>("user_analytics")
            .update_one(
                doc! { "_id": &event.id },
                doc! { "$set": { "pending": true } },
            )
            .await
            .unwrap();
        db.collection::<Document>("analytics_counters")
            .update_one(
                doc! { "_id": &event.username },
                doc! { "$push": { "recent": &event.id } },
            )
            .await
            .unwrap();
    }
    // The broker redelivers everything unacknowledged: all 30 messages.
    let outcomes = process_all(&deps, &messages, &tokens).await;

    assert_eq!(
        outcomes.iter().filter(|o| **o == Outcome::Recorded).count(),
        10
    );
    assert_counters_match_the_stream(&deps).await;
}

/// With `ANALYTICS_CACHE_MS` set, `/analytics` answers from the summary it
/// read last until that is due, then reads the counters again.
#[tokio::test]
async fn analytics_answers_from_its_cache_until_it_is_due() {
    let cache = Duration::from_secs(10);
    let env = TestEnv::new().with_var("ANALYTICS_CACHE_MS", cache.as_millis());
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("chief").await;
    let read = || async {
        let (status, body) = send(app.authed(Method::GET, "/analytics", &admin)).await;
        assert_eq!(status, 200, "{body}");
        body
    };
    // The cache's time starts when the first read ends, so no earlier than this.
    let asked = std::time::Instant::now();
    let first = read().await;
    assert_eq!(first["total_logins"], 0, "{first}");
    env.db()
        .await
        .collection::<Document>("user_analytics")
        .insert_one(doc! { "username": "ann", "event": "User ann logged in" })
        .await
        .unwrap();
    app.deps.store.rebuild_analytics_counters().await.unwrap();

    let cached = read().await;
    assert!(
        asked.elapsed() < cache,
        "the test itself took the cache's time"
    );
    assert_eq!(cached, first, "answered from the cache");
    finapp_tests::wait_for(
        "the new login in /analytics once the cache is due",
        cache * 2,
        || async {
            let summary = read().await;
            (summary["total_logins"] == 1).then_some(())
        },
    )
    .await;
    assert!(
        asked.elapsed() >= cache,
        "read again before the cache was due"
    );
}

#[tokio::test]
async fn a_rebuild_seeds_the_counters_from_events_the_original_wrote() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("chief").await;
    // The original's documents: username, event, timestamp, and nothing else.
    let legacy = ["ann", "ann", "bob"].iter().enumerate().map(|(i, user)| {
        let text = if i == 2 {
            "User bob checked financing options"
        } else {
            "User ann logged in"
        };
        doc! { "username": *user, "event": text, "timestamp": DateTime::now() }
    });
    let db = env.db().await;
    db.collection::<Document>("user_analytics")
        .insert_many(legacy)
        .await
        .unwrap();
    db.collection::<Document>("user_analytics")
        .insert_one(doc! { "event": "User ghost logged in" })
        .await
        .unwrap();

    let rebuilt = app.deps.store.rebuild_analytics_counters().await.unwrap();
    let (status, body) = send(app.authed(Method::GET, "/analytics", &admin)).await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(
        rebuilt,
        app.deps
            .store
            .analytics_summary_from_events()
            .await
            .unwrap()
    );
    assert_eq!(
        body,
        serde_json::json!({
            "total_events": 4,
            "total_logins": 3,
            "total_financing_option_checks": 1,
            "logins_per_user": { "ann": 2, "unknown": 1 },
            "financing_checks_per_user": { "bob": 1 },
            "events_per_type": { "untyped": 4 },
        })
    );
}

/// Every read carries `maxTimeMS` (`MONGODB_MAX_TIME_MS`): the server stops
/// a read past it and the request is answered 503, rather than the query
/// running on after its request gave up and slowing the ones after it (what
/// the scale run saw). The slow read is a deep `/status` page of a user with
/// 20,000 applications, which FerretDB 1.24 sorts in its own memory (about
/// 4 s unbounded on this machine). FerretDB enforces the limit coarsely, so
/// the test asks for the stopped read to take under half the time of the
/// whole one.
#[tokio::test]
async fn a_read_past_its_time_limit_is_stopped_by_the_server_and_answered_503() {
    let env = TestEnv::new().with_var("MONGODB_MAX_TIME_MS", 1);
    let base = DateTime::now().timestamp_millis();
    let documents: Vec<Document> = (0..20_000_i64)
        .map(|i| {
            let at = DateTime::from_millis(base - i * 1000);
            doc! {
                "loan_types": ["personal"], "amount": 1000.0, "purpose": "x",
                "status": "approved", "submitted_by": "heavy", "submitted_at": at,
            }
        })
        .collect();
    let applications = env.db().await.collection::<Document>("applications");
    for chunk in documents.chunks(1000) {
        applications.insert_many(chunk).await.unwrap();
    }
    let app = TestApp::spawn(&env, all_functions).await;
    let heavy = app.token_for("heavy").await;
    let deep = PageRequest {
        page: 150,
        per_page: 100,
    };

    let generous = app
        .deps
        .store
        .clone()
        .with_read_limit(Duration::from_secs(60));
    let started = std::time::Instant::now();
    let (page, more) = generous.applications_of("heavy", deep).await.unwrap();
    let whole = started.elapsed();
    assert_eq!((page.len(), more), (100, true));

    let started = std::time::Instant::now();
    let response = app
        .authed(Method::GET, "/status?page=150&per_page=100", &heavy)
        .send()
        .await
        .unwrap();
    let stopped = started.elapsed();
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    let body: serde_json::Value = response.json().await.unwrap();
    assert!(
        body["message"].as_str().unwrap_or("").contains("too busy"),
        "{body}"
    );
    assert!(
        stopped < whole / 2,
        "the limited read took {stopped:?}, the whole read {whole:?}"
    );
    let err = app
        .deps
        .store
        .applications_of("heavy", deep)
        .await
        .unwrap_err();
    assert!(err.is_time_limit(), "{err}");
}
