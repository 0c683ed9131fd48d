//! `Idempotency-Key` on the writing routes (issue 16 item 3): a repeat gets the
//! first answer and writes nothing, whoever and however many send it at once.

use std::time::{Duration, Instant};

use finapp_shared::{
    events::{Event, EventType},
    finance::ApplicationRequest,
    idempotency::{IdempotencyKey, REPLAYED_HEADER},
    store::{
        ApplicationDoc, Claim, Effect, IdempotencyRecord, KeyClaim, OutboxRecord, StoredIds,
        StoredResponse, collections,
    },
};
use finapp_tests::{FunctionProcess, TestApp, TestEnv, all_functions, send};
use mongodb::bson::{DateTime, Document, doc, oid::ObjectId};
use reqwest::{Method, RequestBuilder};
use serde_json::{Value, json};

const KEY: &str = "3f0c2a9e-8d4b-4c1e-9f7a-5b6d2e1c0a98";

fn application(amount: f64) -> Value {
    json!({"loan_types": ["personal"], "amount": amount, "purpose": "Car purchase"})
}

/// What a client sees of an answer: status, body as sent, and whether it was marked replayed.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Answer {
    status: u16,
    body: String,
    replayed: bool,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

async fn answer(request: RequestBuilder) -> Answer {
    let response = request.send().await.expect("the function answers");
    let status = response.status().as_u16();
    let replayed = match response.headers().get(REPLAYED_HEADER) {
        None => false,
        Some(value) => {
            assert_eq!(value, "true");
            true
        }
    };
    Answer {
        status,
        body: response.text().await.unwrap(),
        replayed,
    }
}

fn keyed(app: &TestApp, path: &str, token: &str, key: &str, body: &Value) -> RequestBuilder {
    app.authed(Method::POST, path, token)
        .header("Idempotency-Key", key)
        .json(body)
}

/// The records of `user`'s `key` in the database.
async fn records(env: &TestEnv, user: &str, key: &str) -> Vec<IdempotencyRecord> {
    use futures_util::TryStreamExt as _;
    env.db()
        .await
        .collection::<IdempotencyRecord>(collections::IDEMPOTENCY_KEYS)
        .find(doc! { "user": user, "key": key })
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap()
}

async fn applications_of(env: &TestEnv, user: &str) -> u64 {
    env.db()
        .await
        .collection::<Document>("applications")
        .count_documents(doc! { "submitted_by": user })
        .await
        .unwrap()
}

/// The fingerprint `POST /apply` gives `body` for `user`.
fn apply_fingerprint(user: &str, body: &Value) -> String {
    let request: ApplicationRequest = serde_json::from_value(body.clone()).unwrap();
    IdempotencyKey(Some(KEY.into()))
        .scope(user, "apply", &request)
        .unwrap()
        .fingerprint
}

fn at(offset: Duration, later: bool) -> DateTime {
    let now = DateTime::now().timestamp_millis();
    let millis = i64::try_from(offset.as_millis()).unwrap();
    DateTime::from_millis(if later { now + millis } else { now - millis })
}

#[tokio::test]
async fn ten_concurrent_requests_with_one_key_make_one_application_and_ten_identical_answers() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    // A second instance of the function, a process of its own: the key is
    // shared through the database, not through anything in one process.
    let other = FunctionProcess::start("apply", &env).await;
    let token = app.token_for("racer").await;
    let body = application(15000.0);

    let requests = (0..10).map(|i| {
        let request = if i % 2 == 0 {
            app.authed(Method::POST, "/apply", &token)
        } else {
            app.client
                .post(format!("{}/apply", other.base_url))
                .bearer_auth(&token)
        };
        answer(request.header("Idempotency-Key", KEY).json(&body))
    });
    let answers = futures_util::future::join_all(requests).await;

    let first = &answers[0];
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.json()["submitted_by"], "racer");
    for other in &answers {
        assert_eq!(
            (other.status, &other.body),
            (first.status, &first.body),
            "{answers:#?}"
        );
    }
    let performed = answers.iter().filter(|a| !a.replayed).count();
    assert_eq!(
        performed, 1,
        "exactly one request did the write: {answers:#?}"
    );
    assert_eq!(applications_of(&env, "racer").await, 1);
    assert_eq!(env.count("outbox").await, 1);
    let stored = records(&env, "racer", KEY).await;
    assert_eq!(stored.len(), 1);
    let response = stored[0]
        .response
        .as_ref()
        .expect("the response is recorded");
    assert_eq!(
        (response.status, response.body.as_str()),
        (201, first.body.as_str())
    );

    // A later retry, on the old path the web client uses: the same answer again.
    let retry = answer(keyed(&app, "/apply-finance", &token, KEY, &body)).await;
    assert_eq!((retry.status, &retry.body), (201, &first.body));
    assert!(retry.replayed);
    assert_eq!(applications_of(&env, "racer").await, 1);
    assert_eq!(env.count("outbox").await, 1);
}

#[tokio::test]
async fn the_same_key_with_another_body_is_422_and_writes_nothing() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("changer").await;
    let first = answer(keyed(&app, "/apply", &token, KEY, &application(100.0))).await;
    assert_eq!(first.status, 201, "{first:?}");

    // Same meaning, other spelling (a numeric string, keys reordered): the same request.
    let respelled = json!({"purpose": "Car purchase", "amount": "100", "loan_types": ["personal"]});
    let again = answer(keyed(&app, "/apply", &token, KEY, &respelled)).await;
    assert_eq!(
        (again.status, &again.body, again.replayed),
        (201, &first.body, true)
    );

    let option_id = ObjectId::new().to_hex();
    for (path, body) in [
        ("/apply", application(101.0)),
        ("/apply-finance", application(101.0)),
        (
            "/select-financing-option",
            json!({ "option_id": option_id }),
        ),
    ] {
        let refused = answer(keyed(&app, path, &token, KEY, &body)).await;
        assert_eq!(refused.status, 422, "{path}: {refused:?}");
        let error = refused.json();
        assert_eq!(error["error"], "idempotency_key_reused", "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains("Idempotency-Key"), "{message}");
        assert_eq!(error["detail"], error["message"]);
    }
    assert_eq!(applications_of(&env, "changer").await, 1);
    assert_eq!(env.count("outbox").await, 1);
    assert_eq!(env.count("user_financing_selections").await, 0);
    // The record still holds the first request and its answer.
    let stored = records(&env, "changer", KEY).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(
        stored[0].fingerprint,
        apply_fingerprint("changer", &application(100.0))
    );
}

#[tokio::test]
async fn keys_are_per_user() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let alice = app.token_for("alice").await;
    let bob = app.token_for("bob").await;
    let body = application(2500.0);

    let by_alice = answer(keyed(&app, "/apply", &alice, KEY, &body)).await;
    let by_bob = answer(keyed(&app, "/apply", &bob, KEY, &body)).await;
    // Another body under the same key is fine too: it is bob's key, not alice's.
    let bob_other = answer(keyed(&app, "/apply", &bob, "bobs-own", &application(1.0))).await;

    for (answer, user) in [(&by_alice, "alice"), (&by_bob, "bob"), (&bob_other, "bob")] {
        assert_eq!(answer.status, 201, "{answer:?}");
        assert!(!answer.replayed);
        assert_eq!(answer.json()["submitted_by"], user);
    }
    assert_ne!(
        by_alice.json()["application_id"],
        by_bob.json()["application_id"]
    );
    assert_eq!(applications_of(&env, "alice").await, 1);
    assert_eq!(applications_of(&env, "bob").await, 2);
    assert_eq!(env.count("outbox").await, 3);
    assert_eq!(records(&env, "alice", KEY).await.len(), 1);
    assert_eq!(records(&env, "bob", KEY).await.len(), 1);
}

#[tokio::test]
async fn an_expired_record_is_treated_as_absent_and_replaced() {
    // A TTL of an hour, to see that IDEMPOTENCY_TTL_SECS sets the expiry.
    let env = TestEnv::new().with_var("IDEMPOTENCY_TTL_SECS", 3600);
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("late").await;
    // What a day-old request left: its answer, and (FerretDB has no TTL
    // indexes) still in the collection. Another body, so a live record would be a 422.
    let old_answer =
        r#"{"message":"old","application_id":"000000000000000000000000","submitted_by":"late"}"#;
    env.db()
        .await
        .collection::<IdempotencyRecord>(collections::IDEMPOTENCY_KEYS)
        .insert_one(IdempotencyRecord {
            id: ObjectId::new(),
            user: "late".into(),
            key: KEY.into(),
            fingerprint: apply_fingerprint("late", &application(1.0)),
            lease_until: at(Duration::from_secs(25 * 3600), false),
            expires_at: at(Duration::from_secs(3600), false),
            response: Some(StoredResponse {
                status: 201,
                body: old_answer.into(),
            }),
            writes: None,
        })
        .await
        .unwrap();

    let body = application(4200.0);
    let fresh = answer(keyed(&app, "/apply", &token, KEY, &body)).await;

    assert_eq!(fresh.status, 201, "{fresh:?}");
    assert!(!fresh.replayed);
    assert_ne!(fresh.body, old_answer);
    assert_eq!(fresh.json()["message"], "Finance application submitted");
    assert_eq!(applications_of(&env, "late").await, 1);
    let stored = records(&env, "late", KEY).await;
    assert_eq!(
        stored.len(),
        1,
        "the expired record is replaced: {stored:?}"
    );
    assert_eq!(stored[0].fingerprint, apply_fingerprint("late", &body));
    assert_eq!(stored[0].response.as_ref().unwrap().body, fresh.body);
    let left = stored[0].expires_at.timestamp_millis() - DateTime::now().timestamp_millis();
    assert!(
        (3_500_000..=3_600_000).contains(&left),
        "expires in {left} ms, not about an hour"
    );
}

#[tokio::test]
async fn without_the_header_every_request_writes_as_before() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("plain").await;
    let body = application(15000.0);

    let first = answer(app.authed(Method::POST, "/apply", &token).json(&body)).await;
    let second = answer(app.authed(Method::POST, "/apply", &token).json(&body)).await;

    for answer in [&first, &second] {
        assert_eq!(answer.status, 201, "{answer:?}");
        assert!(!answer.replayed);
    }
    assert_ne!(
        first.json()["application_id"],
        second.json()["application_id"]
    );
    assert_eq!(applications_of(&env, "plain").await, 2);
    assert_eq!(env.count("outbox").await, 2);
    assert_eq!(env.count(collections::IDEMPOTENCY_KEYS).await, 0);
}

#[tokio::test]
async fn an_invalid_key_is_422_and_writes_nothing() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("sloppy").await;
    let long = "k".repeat(256);
    let invalid: [&[u8]; 5] = [b"", b"two words", b"tab\tkey", b"caf\xe9", long.as_bytes()];

    for key in invalid {
        for path in ["/apply", "/select-financing-option"] {
            let value = reqwest::header::HeaderValue::from_bytes(key).unwrap();
            let refused = answer(
                app.authed(Method::POST, path, &token)
                    .header("Idempotency-Key", value)
                    .json(&application(10.0)),
            )
            .await;
            assert_eq!(refused.status, 422, "{path} {key:?}: {refused:?}");
            assert_eq!(refused.json()["error"], "validation_error");
            assert!(
                refused.json()["message"]
                    .as_str()
                    .unwrap()
                    .contains("Idempotency-Key"),
                "{refused:?}"
            );
        }
    }
    // Two keys on one request are as ambiguous as a malformed one.
    let (status, _) = send(
        app.authed(Method::POST, "/apply", &token)
            .header("Idempotency-Key", "one")
            .header("Idempotency-Key", "two")
            .json(&application(10.0)),
    )
    .await;
    assert_eq!(status, 422);
    // The longest valid key works.
    let longest = "k".repeat(255);
    let accepted = answer(keyed(&app, "/apply", &token, &longest, &application(10.0))).await;
    assert_eq!(accepted.status, 201, "{accepted:?}");
    assert_eq!(applications_of(&env, "sloppy").await, 1);
    assert_eq!(env.count(collections::IDEMPOTENCY_KEYS).await, 1);
}

#[tokio::test]
async fn selecting_twice_with_one_key_makes_one_selection_and_one_event() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    finapp_admin::seed_financing_options(&app.deps.store)
        .await
        .unwrap();
    let token = app.token_for("chooser").await;
    let (_, options) = send(app.authed(Method::GET, "/financing-options", &token)).await;
    let ids: Vec<&str> = options
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["_id"].as_str().unwrap())
        .collect();
    let chosen = json!({ "option_id": ids[0] });

    let select = |body| answer(keyed(&app, "/select-financing-option", &token, KEY, body));
    let first = select(&chosen).await;
    let second = select(&chosen).await;
    let other = json!({ "option_id": ids[1] });
    let changed = select(&other).await;

    assert_eq!(first.status, 200, "{first:?}");
    assert!(!first.replayed);
    assert_eq!(first.json()["selected_option"]["_id"], ids[0]);
    assert_eq!(
        (second.status, &second.body, second.replayed),
        (200, &first.body, true)
    );
    assert_eq!(changed.status, 422, "{changed:?}");
    assert_eq!(env.count("outbox").await, 1);
    let selections = env
        .db()
        .await
        .collection::<Document>("user_financing_selections");
    let selected: Vec<Document> = {
        use futures_util::TryStreamExt as _;
        selections
            .find(doc! { "user": "chooser" })
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    };
    assert_eq!(selected.len(), 1);
    let option = selected[0].get_document("selected_option").unwrap();
    assert_eq!(option.get_object_id("_id").unwrap().to_hex(), ids[0]);
}

#[tokio::test]
async fn a_refusal_gives_its_key_up_so_a_retry_runs_afresh() {
    let env = TestEnv::new().with_var("MAX_PENDING_APPLICATIONS", 1);
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("capped").await;
    let blocking = app.apply(&token, 1.0).await;

    let refused = answer(keyed(&app, "/apply", &token, KEY, &application(9.0))).await;
    assert_eq!(refused.status, 409, "{refused:?}");
    assert_eq!(refused.json()["error"], "conflict");
    assert!(
        records(&env, "capped", KEY).await.is_empty(),
        "a refusal is not recorded"
    );

    // Once the cap no longer applies, the same key does the write.
    env.db()
        .await
        .collection::<Document>("applications")
        .delete_one(doc! { "_id": ObjectId::parse_str(&blocking).unwrap() })
        .await
        .unwrap();
    let retried = answer(keyed(&app, "/apply", &token, KEY, &application(9.0))).await;
    assert_eq!(retried.status, 201, "{retried:?}");
    assert!(!retried.replayed);
    assert_eq!(applications_of(&env, "capped").await, 1);
    assert_eq!(records(&env, "capped", KEY).await.len(), 1);
}

#[tokio::test]
async fn a_key_in_progress_makes_a_repeat_wait_for_its_answer_or_409_and_an_abandoned_one_is_taken_over()
 {
    let env = TestEnv::new().with_var("HTTP_REQUEST_TIMEOUT_MS", 1000);
    let app = TestApp::spawn(&env, all_functions).await;
    let token = app.token_for("patient").await;
    let body = application(77.0);
    let claim = |lease_until| IdempotencyRecord {
        id: ObjectId::new(),
        user: "patient".into(),
        key: KEY.into(),
        fingerprint: apply_fingerprint("patient", &body),
        lease_until,
        expires_at: at(Duration::from_secs(3600), true),
        response: None,
        writes: None,
    };
    let keys = env
        .db()
        .await
        .collection::<IdempotencyRecord>(collections::IDEMPOTENCY_KEYS);

    // Another instance is working on it (its lease runs for minutes).
    keys.insert_one(claim(at(Duration::from_secs(600), true)))
        .await
        .unwrap();
    let started = Instant::now();
    let response = keyed(&app, "/apply", &token, KEY, &body)
        .send()
        .await
        .unwrap();
    let waited = started.elapsed();
    assert_eq!(response.status(), 409);
    assert_eq!(response.headers()["retry-after"], "1");
    let error: Value = response.json().await.unwrap();
    assert_eq!(error["error"], "idempotency_key_in_progress", "{error}");
    assert_eq!(
        error["message"],
        "a request with this Idempotency-Key is still in progress; retry shortly"
    );
    // It waited for the other (3/4 of the 1 s timeout), rather than refusing at once.
    assert!(waited >= Duration::from_millis(700), "waited {waited:?}");
    assert_eq!(applications_of(&env, "patient").await, 0);

    // That instance finishes while a repeat waits: the repeat answers what it answered.
    let recorded = r#"{"message":"Finance application submitted","application_id":"0123456789abcdef01234567","submitted_by":"patient"}"#;
    let finish = async {
        // Whether this lands before or after the repeat arrives, the repeat
        // must answer the recorded response; usually it is waiting by then.
        tokio::time::sleep(Duration::from_millis(200)).await;
        let response = doc! { "status": 201, "body": recorded };
        keys.update_one(
            doc! { "user": "patient", "key": KEY },
            doc! { "$set": { "response": response } },
        )
        .await
        .unwrap();
    };
    let (waiter, ()) = tokio::join!(answer(keyed(&app, "/apply", &token, KEY, &body)), finish);
    assert_eq!(
        (waiter.status, waiter.body.as_str(), waiter.replayed),
        (201, recorded, true)
    );
    assert_eq!(applications_of(&env, "patient").await, 0);

    // That instance died mid-request: once its lease has run out, a retry does the write.
    keys.delete_many(doc! {}).await.unwrap();
    keys.insert_one(claim(at(Duration::from_secs(1), false)))
        .await
        .unwrap();
    let taken = answer(keyed(&app, "/apply", &token, KEY, &body)).await;
    assert_eq!(taken.status, 201, "{taken:?}");
    assert!(!taken.replayed);
    assert_eq!(applications_of(&env, "patient").await, 1);
    let stored = records(&env, "patient", KEY).await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].response.as_ref().unwrap().body, taken.body);
}

/// How far a first attempt under a key got before its process died.
#[derive(Clone, Copy, Debug)]
enum Stopped {
    /// It held the claim and had written nothing.
    BeforeTheWrite,
    /// It had recorded its event (carrying the application), not the application.
    BetweenTheWrites,
    /// It had written both and not yet recorded or sent its answer.
    BeforeTheAnswer,
}

#[tokio::test]
async fn a_key_whose_first_attempt_died_at_any_point_yields_one_application_and_its_answer() {
    let env = TestEnv::new().with_var("HTTP_REQUEST_TIMEOUT_MS", 1000);
    let app = TestApp::spawn(&env, all_functions).await;
    for (n, stopped) in [
        Stopped::BeforeTheWrite,
        Stopped::BetweenTheWrites,
        Stopped::BeforeTheAnswer,
    ]
    .into_iter()
    .enumerate()
    {
        let user = format!("stopped{n}");
        let token = app.token_for(&user).await;
        let body = application(500.0 + n as f64);
        let (event, document) = (uuid::Uuid::now_v7(), ObjectId::new());
        // The claim the first attempt held, its lease run out.
        env.db()
            .await
            .collection::<IdempotencyRecord>(collections::IDEMPOTENCY_KEYS)
            .insert_one(IdempotencyRecord {
                id: ObjectId::new(),
                user: user.clone(),
                key: KEY.into(),
                fingerprint: apply_fingerprint(&user, &body),
                lease_until: at(Duration::from_millis(1), false),
                expires_at: at(Duration::from_secs(3600), true),
                response: None,
                writes: Some(StoredIds { event, document }),
            })
            .await
            .unwrap();
        let request: ApplicationRequest = serde_json::from_value(body.clone()).unwrap();
        let submitted = finapp_shared::finance::NewApplication::try_from(request).unwrap();
        let record = OutboxRecord::new(&Event::with_id(
            event,
            EventType::ApplicationSubmitted,
            &user,
            "first attempt",
        ))
        .with_effect(Effect::InsertApplication {
            id: document,
            application: ApplicationDoc::pending(&submitted, &user),
        });
        match stopped {
            Stopped::BeforeTheWrite => {}
            Stopped::BetweenTheWrites => {
                env.db()
                    .await
                    .collection::<OutboxRecord>(collections::OUTBOX)
                    .insert_one(&record)
                    .await
                    .unwrap();
            }
            Stopped::BeforeTheAnswer => {
                app.deps.store.commit(&record).await.unwrap();
            }
        }

        let retried = answer(keyed(&app, "/apply", &token, KEY, &body)).await;
        let again = answer(keyed(&app, "/apply", &token, KEY, &body)).await;

        assert_eq!(retried.status, 201, "{stopped:?}: {retried:?}");
        assert_eq!(
            retried.json()["application_id"],
            document.to_hex(),
            "{stopped:?}: the retry answers the first attempt's application"
        );
        assert_eq!(
            (again.status, again.body.as_str(), again.replayed),
            (201, retried.body.as_str(), true),
            "{stopped:?}"
        );
        assert_eq!(applications_of(&env, &user).await, 1, "{stopped:?}");
        let events = env
            .db()
            .await
            .collection::<Document>(collections::OUTBOX)
            .count_documents(doc! { "event.username": &user })
            .await
            .unwrap();
        assert_eq!(
            events, 1,
            "{stopped:?}: one event, under the first attempt's id"
        );
        let stored = env
            .db()
            .await
            .collection::<OutboxRecord>(collections::OUTBOX)
            .find_one(doc! { "event.username": &user })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.id, event.to_string(), "{stopped:?}");
    }
}

#[tokio::test]
async fn a_claim_abandoned_after_a_failure_is_taken_over_at_once_with_its_write_ids() {
    let env = TestEnv::new();
    let store = &env.deps().await.store;
    let claim = KeyClaim {
        user: "failing",
        key: KEY,
        fingerprint: "f",
        lease: Duration::from_secs(600),
        ttl: Duration::from_secs(3600),
    };
    let Claim::Won(first) = store.claim_idempotency_key(&claim).await.unwrap() else {
        panic!("the first claim wins");
    };
    assert!(!first.writes.resumed);
    assert_eq!(
        store.claim_idempotency_key(&claim).await.unwrap(),
        Claim::InProgress,
        "a live claim is respected"
    );

    // A 5xx: the write may have happened.
    store.abandon_idempotency_key(first).await.unwrap();
    let Claim::Won(second) = store.claim_idempotency_key(&claim).await.unwrap() else {
        panic!("an abandoned claim is taken over at once");
    };

    assert_eq!(second.writes.event, first.writes.event);
    assert_eq!(second.writes.document, first.writes.document);
    assert!(second.writes.resumed);
    assert_eq!(records(&env, "failing", KEY).await.len(), 1);

    // A 4xx: nothing was written, so the next claim starts afresh.
    store.release_idempotency_key(second).await.unwrap();
    let Claim::Won(third) = store.claim_idempotency_key(&claim).await.unwrap() else {
        panic!("a released key is free");
    };
    assert_ne!(third.writes.event, first.writes.event);
    assert!(!third.writes.resumed);
}
