//! Events off the request path: a request only records its event in the
//! outbox, whatever the broker does; the relay alone publishes, each event
//! once, with an event token that no HTTP route accepts.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use finapp_shared::{
    Deps,
    auth::{EVENT_AUDIENCE, Role},
    events::{Event, EventType},
    finance::NewApplication,
    store::{ApplicationDoc, Effect, OutboxRecord, UserDoc, collections},
};
use finapp_tests::{
    Process, RABBITMQ_URI, RelayTask, Signal, SilentBroker, TestApp, TestEnv, all_functions,
    event_token, expose, function_binary, routes::Table, send, wait_for,
};
use mongodb::{
    IndexModel,
    bson::{Document, doc, oid::ObjectId},
    options::IndexOptions,
};
use notify_consumer::process::{Incoming, Outcome, Rejection, process};
use reqwest::Method;
use serde_json::{Value, json};
use tokio::process::Command;

/// Requests sent at once to each event-emitting route.
const CONCURRENCY: usize = 16;
const PASSWORD: &str = "secure_password";

/// Sends `CONCURRENCY` requests at once, built by `request(i)`; asserts that
/// each succeeded and returns the slowest one's latency.
async fn burst(what: &str, request: impl Fn(usize) -> reqwest::RequestBuilder) -> Duration {
    let sends = (0..CONCURRENCY).map(|i| {
        let request = request(i);
        async move {
            let started = Instant::now();
            let (status, body) = send(request).await;
            (status, body, started.elapsed())
        }
    });
    let results = futures_util::future::join_all(sends).await;
    for (status, body, _) in &results {
        assert!(*status == 200 || *status == 201, "{what}: {status} {body}");
    }
    results.iter().map(|(_, _, took)| *took).max().unwrap()
}

/// Every event-emitting route, `CONCURRENCY` requests at once each, by users
/// named after `tag`. Returns the slowest latency per route and how many
/// events of each kind the requests recorded.
async fn emit_everywhere(
    app: &TestApp,
    tag: &str,
) -> (Vec<(&'static str, Duration)>, HashMap<EventType, usize>) {
    finapp_admin::seed_financing_options(&app.deps.store)
        .await
        .unwrap();
    let warm_token = app.token_for(&format!("{tag}_warm")).await;
    // Not measured: opens the connection pool's connections, on both sides alike.
    burst("warm-up", |_| {
        app.authed(Method::GET, "/financing-options", &warm_token)
    })
    .await;
    let (_, options) = send(app.authed(Method::GET, "/financing-options", &warm_token)).await;
    let option_id = options[0]["_id"].as_str().unwrap().to_owned();
    let application = json!({"loan_types": ["personal"], "amount": 1500, "purpose": "Car"});

    let mut slowest = Vec::new();
    slowest.push((
        "POST /signup",
        burst("signup", |i| {
            app.client
                .post(app.url("/signup"))
                .json(&json!({"username": format!("{tag}_{i}"), "password": PASSWORD}))
        })
        .await,
    ));
    let user = format!("{tag}_0");
    let credentials = json!({"username": user, "password": PASSWORD});
    let (_, login) = app.post_json("/login", &credentials).await;
    let token = login["access_token"].as_str().unwrap().to_owned();
    slowest.push((
        "POST /login",
        burst("login", |_| {
            app.client.post(app.url("/login")).json(&credentials)
        })
        .await,
    ));
    for path in ["/apply", "/apply-finance"] {
        slowest.push((
            path,
            burst(path, |_| {
                app.authed(Method::POST, path, &token).json(&application)
            })
            .await,
        ));
    }
    slowest.push((
        "POST /log-financing-options-visit",
        burst("log-financing-options-visit", |_| {
            app.authed(Method::POST, "/log-financing-options-visit", &token)
        })
        .await,
    ));
    slowest.push((
        "POST /select-financing-option",
        burst("select-financing-option", |_| {
            app.authed(Method::POST, "/select-financing-option", &token)
                .json(&json!({"option_id": option_id}))
        })
        .await,
    ));
    // The one login outside the bursts is an event too.
    let recorded = HashMap::from([
        (EventType::UserRegistered, CONCURRENCY),
        (EventType::UserActivity, 2 * CONCURRENCY + 1),
        (EventType::ApplicationSubmitted, 2 * CONCURRENCY),
        (EventType::FinancingOptionSelected, CONCURRENCY),
    ]);
    (slowest, recorded)
}

async fn outbox_ids(env: &TestEnv) -> HashSet<String> {
    env.distinct_strings("outbox", "_id")
        .await
        .into_iter()
        .collect()
}

#[tokio::test]
async fn with_a_silent_broker_every_event_emitting_route_answers_as_fast_and_the_relay_later_delivers_each_event_once()
 {
    // The same functions against a working broker, and with RABBITMQ_URI
    // pointing at a listener that accepts and never answers.
    let working_env = TestEnv::new();
    let working = TestApp::spawn(&working_env, all_functions).await;
    let silent = SilentBroker::start().await;
    let env = TestEnv::new().with_broker(&silent.uri);
    let app = TestApp::spawn(&env, all_functions).await;

    // Both measured at once, so whatever else the machine runs (the rest of
    // the suite) weighs on both alike. A round in which some route is slower
    // by more than the slack is measured again, up to three rounds: a request
    // that waited on the broker would be seconds slower in every one.
    let mut recorded: HashMap<EventType, usize> = HashMap::new();
    let mut slower = Vec::new();
    for round in 0..3 {
        let (steady, partitioned) = (format!("steady{round}"), format!("partitioned{round}"));
        let ((baseline, _), (measured, events)) = tokio::join!(
            emit_everywhere(&working, &steady),
            emit_everywhere(&app, &partitioned),
        );
        for (kind, count) in events {
            *recorded.entry(kind).or_default() += count;
        }
        slower = baseline
            .iter()
            .zip(&measured)
            .filter(|((_, normal), (_, partitioned))| {
                *partitioned > *normal + Duration::from_millis(100)
            })
            .map(|((route, normal), (_, partitioned))| {
                format!("{route}: slowest {partitioned:?} with a silent broker, {normal:?} with a working one")
            })
            .collect::<Vec<_>>();
        if slower.is_empty() {
            break;
        }
    }
    assert!(slower.is_empty(), "{}", slower.join("; "));
    assert_eq!(
        silent.connections(),
        0,
        "an HTTP function connected to the broker"
    );
    let total: usize = recorded.values().sum();
    let ids = outbox_ids(&env).await;
    assert_eq!(ids.len(), total, "every request recorded its event");
    let raw = env.any_document("outbox").await.unwrap();
    assert!(!raw.contains_key("token"), "a token at rest: {raw}");

    // A relay against the silent broker delivers nothing and says how far behind it is.
    let mut command = Command::new(function_binary("notify-consumer"));
    command.env_clear().envs(env.vars());
    let mut stuck = Process::spawn(command);
    let line = stuck
        .wait_for_line("\"outbox backlog\"", Duration::from_secs(20))
        .await;
    let line: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(line["depth"], total, "{line}");
    assert!(line["oldest_age_ms"].as_u64().unwrap() >= 1000, "{line}");
    stuck.signal(Signal::SIGKILL);
    stuck.wait_exit(Duration::from_secs(10)).await;
    assert_eq!(outbox_ids(&env).await, ids, "the stuck relay lost a record");

    // With a real broker configured for the relay, each event arrives once.
    let relay_env = env.sharing_with_broker(RABBITMQ_URI);
    let relay_deps = relay_env.deps().await;
    let relay = RelayTask::spawn(relay_deps.clone());
    // The stuck relay's last claim may hold its records for one more lease.
    wait_for("the outbox emptied", Duration::from_secs(60), || async {
        (env.count("outbox").await == 0).then_some(())
    })
    .await;
    relay.stop().await;
    let mut delivered = HashSet::new();
    for (kind, count) in &recorded {
        for _ in 0..*count {
            let message = relay_env.next_message(*kind).await;
            let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
            event_token(&relay_deps, &message, &event.username);
            assert!(
                delivered.insert(event.id.to_string()),
                "{} delivered twice",
                event.id
            );
        }
    }
    assert_eq!(delivered, ids);
    for kind in EventType::ALL {
        assert_eq!(
            relay_env.queue_depth(&relay_env.queue(kind)).await,
            0,
            "{kind:?}: a copy more than once"
        );
    }
}

/// Records `events` in the outbox as requests would have, none published yet.
async fn record_in_outbox(deps: &Deps, events: &[Event]) {
    let records = deps
        .store
        .database()
        .collection::<OutboxRecord>(collections::OUTBOX);
    for chunk in events.chunks(500) {
        records
            .insert_many(chunk.iter().map(OutboxRecord::new))
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_relay_killed_mid_batch_and_restarted_delivers_every_event_exactly_once() {
    const EVENTS: usize = 3_000;
    let env = TestEnv::new();
    let deps = env.deps().await;
    // The outbox as requests leave it: every event recorded, none published.
    let users = ["relay_ann", "relay_bob", "relay_cy"];
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| {
            let user = users[i % users.len()];
            Event::new(
                EventType::UserActivity,
                user,
                format!("User {user} logged in ({i})"),
            )
        })
        .collect();
    record_in_outbox(&deps, &events).await;
    let recorded: HashSet<String> = events.iter().map(|event| event.id.to_string()).collect();
    let outbox = env.db().await.collection::<Document>(collections::OUTBOX);
    let lock = env
        .db()
        .await
        .collection::<Document>(collections::OUTBOX_LOCK);

    let relay = || {
        let mut command = Command::new(function_binary("notify-consumer"));
        command.env_clear().envs(env.vars());
        Process::spawn(command)
    };
    let mut first = relay();
    wait_for(
        "the relay part-way through, holding the relay lock",
        Duration::from_secs(60),
        || async {
            let left = outbox.count_documents(doc! {}).await.unwrap();
            let held = lock
                .count_documents(doc! { "until": { "$gt": mongodb::bson::DateTime::now() } })
                .await
                .unwrap();
            (left < EVENTS as u64 && held > 0).then_some(())
        },
    )
    .await;
    first.signal(Signal::SIGKILL);
    first.wait_exit(Duration::from_secs(10)).await;
    let left = env.count("outbox").await;
    assert!(left > 0, "the kill came after the whole outbox was relayed");

    let mut second = relay();
    wait_for(
        "every event recorded and the outbox empty",
        Duration::from_secs(120),
        || async {
            (env.count("user_analytics").await >= EVENTS as u64 && env.count("outbox").await == 0)
                .then_some(())
        },
    )
    .await;
    let queue = env.queue(EventType::UserActivity);
    wait_for("the queue drained", Duration::from_secs(30), || async {
        (env.queue_depth(&queue).await == 0).then_some(())
    })
    .await;
    second.signal(Signal::SIGTERM);
    second.wait_exit(Duration::from_secs(15)).await;

    let stored = env.distinct_strings("user_analytics", "event_id").await;
    assert_eq!(
        env.count("user_analytics").await,
        EVENTS as u64,
        "an event recorded twice"
    );
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), recorded);
    let counted = deps.store.analytics_summary().await.unwrap();
    assert_eq!(counted.total_events, EVENTS as u64);
    assert_eq!(counted.total_logins, EVENTS as u64);
}

#[tokio::test]
async fn two_relays_at_once_publish_each_event_once() {
    const EVENTS: usize = 1_000;
    let env = TestEnv::new();
    let deps = env.deps().await;
    let events: Vec<Event> = (0..EVENTS)
        .map(|i| Event::new(EventType::UserActivity, "pair_ann", format!("visit {i}")))
        .collect();
    record_in_outbox(&deps, &events).await;
    // Two relays, each with a store of its own, as two replicas would have.
    let relays = [
        RelayTask::spawn(env.deps().await),
        RelayTask::spawn(env.deps().await),
    ];
    wait_for("the outbox emptied", Duration::from_secs(90), || async {
        (env.count("outbox").await == 0).then_some(())
    })
    .await;
    for relay in relays {
        relay.stop().await;
    }
    let queue = env.queue(EventType::UserActivity);
    assert_eq!(env.queue_depth(&queue).await, EVENTS as u32);
    let mut delivered = HashSet::new();
    for message in env.take_messages(EventType::UserActivity, EVENTS).await {
        let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
        assert!(delivered.insert(event.id), "{} published twice", event.id);
    }
    assert_eq!(
        delivered,
        events.iter().map(|event| event.id).collect::<HashSet<_>>()
    );
    assert_eq!(
        env.count(collections::OUTBOX_LOCK).await,
        0,
        "a relay stopped without giving the lock up"
    );
}

#[tokio::test]
async fn the_token_a_relayed_event_carries_is_refused_with_401_by_every_http_route() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    // An admin's event, so an admin route cannot be passed on the role either.
    let admin = app.admin_token("event_admin").await;
    let (status, _) = app
        .post_json(
            "/login",
            &json!({"username": "event_admin", "password": "admin_password"}),
        )
        .await;
    assert_eq!(status, 200);
    let record = env
        .any_document("outbox")
        .await
        .expect("the login recorded its event");
    let at_rest = record.to_string();
    assert!(
        !record.contains_key("token") && !at_rest.contains("eyJ"),
        "a token at rest in the outbox: {at_rest}"
    );
    let relay = RelayTask::spawn(app.deps.clone());
    let message = env.next_message(EventType::UserActivity).await;
    relay.stop().await;
    let token = event_token(&app.deps, &message, "event_admin");

    let table = Table::load();
    let mut checked = 0;
    for route in &table.routes {
        let who = &table
            .functions
            .iter()
            .find(|f| f.name == route.function)
            .unwrap()
            .who;
        if who == "anyone" {
            continue; // signup and login read no token
        }
        let method = Method::from_bytes(route.method.as_bytes()).unwrap();
        let mut request = app.authed(method.clone(), &route.sample, &token);
        if method != Method::GET {
            request = request.json(&json!({}));
        }
        let (status, body) = send(request).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (401, Some("unauthorized")),
            "{} {} with an event token: {body}",
            route.method,
            route.sample
        );
        // The same caller's own access token gets past authentication.
        let (status, body) = send(app.authed(method, &route.sample, &admin)).await;
        assert_ne!(status, 401, "{} {}: {body}", route.method, route.sample);
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} routes checked");
}

#[tokio::test]
async fn the_consumer_accepts_event_tokens_and_the_originals_plain_tokens_and_no_other_audience() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let sign = |claims: &Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(env.jwt_secret.as_bytes()),
        )
        .unwrap()
    };
    let exp = jsonwebtoken::get_current_timestamp() + 600;
    let cases = [
        (
            "an event token",
            expose(&deps.tokens.issue_event("mixed")).to_owned(),
            true,
        ),
        (
            "the original's {sub, exp}",
            sign(&json!({"sub": "mixed", "exp": exp})),
            true,
        ),
        (
            "an access token",
            expose(&deps.tokens.issue("mixed", Role::User)).to_owned(),
            true,
        ),
        (
            "another audience",
            sign(&json!({"sub": "mixed", "exp": exp, "aud": "somebody-else"})),
            false,
        ),
        (
            "the events' audience among others",
            sign(&json!({"sub": "mixed", "exp": exp, "aud": [EVENT_AUDIENCE, "api"]})),
            false,
        ),
    ];
    for (case, token, accepted) in cases {
        let event = Event::new(EventType::UserActivity, "mixed", "User mixed logged in");
        let body = serde_json::to_vec(&event).unwrap();
        let authorization = format!("Bearer {token}");
        let outcome = process(
            &deps,
            Incoming {
                queue: "user_activity",
                body: &body,
                authorization: Some(&authorization),
                message_id: None,
                traceparent: None,
            },
        )
        .await
        .unwrap();
        let expected = if accepted {
            Outcome::Recorded
        } else {
            Outcome::Rejected(Rejection::InvalidToken)
        };
        assert_eq!(outcome, expected, "{case}");
    }
}

#[tokio::test]
async fn a_request_whose_event_cannot_be_recorded_fails_with_503_and_changes_nothing() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    finapp_admin::seed_financing_options(&app.deps.store)
        .await
        .unwrap();
    let token = app.token_for("unrecorded").await;
    let (_, options) = send(app.authed(Method::GET, "/financing-options", &token)).await;
    let option_id = options[0]["_id"].as_str().unwrap().to_owned();
    let (status, _) = app
        .post_json(
            "/signup",
            &json!({"username": "late_user", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201);
    // One outbox record per user at most, from now on: with one recorded for
    // each user below, the requests' own events cannot be inserted.
    app.deps
        .store
        .database()
        .collection::<Document>(collections::OUTBOX)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "event.username": 1 })
                .options(IndexOptions::builder().unique(true).build())
                .build(),
        )
        .await
        .unwrap();
    for user in ["unrecorded", "signup_blocked"] {
        app.deps
            .store
            .record_event(&Event::new(EventType::UserActivity, user, "first"))
            .await
            .unwrap();
    }
    let depth = env.count("outbox").await;

    let application = json!({"loan_types": ["personal"], "amount": 1500, "purpose": "Car"});
    let requests = [
        (
            "POST /signup",
            app.client
                .post(app.url("/signup"))
                .json(&json!({"username": "signup_blocked", "password": PASSWORD})),
        ),
        (
            "POST /login",
            app.client
                .post(app.url("/login"))
                .json(&json!({"username": "late_user", "password": PASSWORD})),
        ),
        (
            "POST /apply",
            app.authed(Method::POST, "/apply", &token)
                .json(&application),
        ),
        (
            "POST /apply-finance",
            app.authed(Method::POST, "/apply-finance", &token)
                .json(&application),
        ),
        (
            "POST /log-financing-options-visit",
            app.authed(Method::POST, "/log-financing-options-visit", &token),
        ),
        (
            "POST /select-financing-option",
            app.authed(Method::POST, "/select-financing-option", &token)
                .json(&json!({"option_id": option_id})),
        ),
    ];
    for (what, request) in requests {
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().contains_key("retry-after");
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, body["error"].as_str(), retry_after),
            (503, Some("unavailable"), true),
            "{what}: {body}"
        );
    }
    assert_eq!(
        env.count("outbox").await,
        depth,
        "an event was recorded after all"
    );
    // A request's change is one write with its event: none of them happened.
    let db = env.db().await;
    let count = |collection: &'static str, filter: Document| {
        let db = db.clone();
        async move {
            db.collection::<Document>(collection)
                .count_documents(filter)
                .await
                .unwrap()
        }
    };
    assert_eq!(
        count("users", doc! { "username": "signup_blocked" }).await,
        0
    );
    assert_eq!(count("applications", doc! {}).await, 0);
    assert_eq!(count("user_financing_selections", doc! {}).await, 0);
}

#[tokio::test]
async fn an_event_reaches_its_queue_within_a_second_of_its_request() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let relay = RelayTask::spawn(app.deps.clone());
    let token = app.token_for("prompt_user").await;
    let visit = || app.authed(Method::POST, "/log-financing-options-visit", &token);
    // Not timed: the relay's first publish opens its broker connection.
    assert_eq!(send(visit()).await.0, 200);
    env.next_message(EventType::UserActivity).await;

    for _ in 0..5 {
        let started = Instant::now();
        assert_eq!(send(visit()).await.0, 200);
        let message = env.next_message(EventType::UserActivity).await;
        let took = started.elapsed();
        let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
        assert_eq!(event.username, "prompt_user");
        assert!(
            took < Duration::from_secs(1),
            "request to queue took {took:?}"
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn the_relay_finishes_requests_that_stopped_between_their_event_and_their_change() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let store = &deps.store;
    finapp_admin::seed_financing_options(store).await.unwrap();
    let options = store.financing_options().await.unwrap();
    let option = |n: usize| {
        let id = ObjectId::parse_str(options[n]["_id"].as_str().unwrap()).unwrap();
        async move { store.find_option(id).await.unwrap().unwrap() }
    };
    let record = |kind, user: &str, effect| {
        OutboxRecord::new(&Event::new(kind, user, "stopped")).with_effect(effect)
    };
    let new_user = |name: &str| {
        let mut user = UserDoc::new(name, "$2b$04$hash", Role::User);
        user.id = Some(ObjectId::new());
        user
    };
    // Outbox records whose requests died before their change: a sign-up,
    // an application, and two selections of one user, the later of which
    // did reach the database.
    let signup = record(
        EventType::UserRegistered,
        "stopped_ann",
        Effect::InsertUser(new_user("stopped_ann")),
    );
    let application_id = ObjectId::new();
    let request: finapp_shared::finance::ApplicationRequest =
        serde_json::from_value(json!({"loan_types": ["car"], "amount": 9.0, "purpose": "p"}))
            .unwrap();
    let application = record(
        EventType::ApplicationSubmitted,
        "stopped_ann",
        Effect::InsertApplication {
            id: application_id,
            application: ApplicationDoc::pending(
                &NewApplication::try_from(request).unwrap(),
                "stopped_ann",
            ),
        },
    );
    let select = |n| {
        let option = option(n);
        async move {
            record(
                EventType::FinancingOptionSelected,
                "stopped_bob",
                Effect::Select {
                    user: "stopped_bob".into(),
                    option: option.await,
                    at: mongodb::bson::DateTime::now(),
                },
            )
        }
    };
    let (earlier, later) = (select(0).await, select(1).await);
    // A sign-up refused because another user took the name meanwhile.
    store.insert_user(&new_user("taken_cy")).await.unwrap();
    let refused = record(
        EventType::UserRegistered,
        "taken_cy",
        Effect::InsertUser(new_user("taken_cy")),
    );
    let outbox = env
        .db()
        .await
        .collection::<OutboxRecord>(collections::OUTBOX);
    store.commit(&later).await.unwrap();
    for record in [&signup, &application, &earlier, &refused] {
        outbox.insert_one(record).await.unwrap();
    }

    let relay = RelayTask::spawn(deps.clone());
    wait_for("the outbox emptied", Duration::from_secs(60), || async {
        (env.count(collections::OUTBOX).await == 0).then_some(())
    })
    .await;
    relay.stop().await;

    let user = store.find_user("stopped_ann").await.unwrap().unwrap();
    assert_eq!(user.id, signup_user_id(&signup));
    let applications = env.db().await.collection::<Document>("applications");
    let stored = applications
        .find_one(doc! { "_id": application_id })
        .await
        .unwrap()
        .expect("the application was made");
    assert_eq!(stored.get_str("submitted_by").unwrap(), "stopped_ann");
    let selection = env
        .db()
        .await
        .collection::<Document>("user_financing_selections")
        .find_one(doc! { "user": "stopped_bob" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        selection
            .get_document("selected_option")
            .unwrap()
            .get_object_id("_id")
            .unwrap()
            .to_hex(),
        options[1]["_id"].as_str().unwrap(),
        "the earlier selection, relayed last, did not replace the later one"
    );
    assert_eq!(selection.get_str("event_id").unwrap(), later.id);
    let mut delivered = HashSet::new();
    for kind in [
        EventType::UserRegistered,
        EventType::ApplicationSubmitted,
        EventType::FinancingOptionSelected,
    ] {
        let queue = env.queue(kind);
        let depth = env.queue_depth(&queue).await as usize;
        for message in env.take_messages(kind, depth).await {
            let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
            delivered.insert(event.id.to_string());
        }
    }
    let expected: HashSet<String> = [&signup, &application, &earlier, &later]
        .iter()
        .map(|record| record.id.clone())
        .collect();
    assert_eq!(delivered, expected, "the refused sign-up is not published");
    assert_eq!(
        env.db()
            .await
            .collection::<Document>("users")
            .count_documents(doc! { "username": "taken_cy" })
            .await
            .unwrap(),
        1
    );
}

fn signup_user_id(record: &OutboxRecord) -> Option<ObjectId> {
    match &record.effect {
        Some(Effect::InsertUser(user)) => user.id,
        _ => None,
    }
}
