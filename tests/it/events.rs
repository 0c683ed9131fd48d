//! The event pipeline end to end: the functions, the outbox and its relay,
//! RabbitMQ, notify-consumer, `user_analytics`, and `GET /analytics`, all real.

use std::time::Duration;

use base64::Engine as _;
use finapp_shared::{
    auth::{Claims, Role},
    config::QueueType,
    events::{DEAD_LETTER_QUEUE, Event, EventType, queue_names},
};
use finapp_tests::{ConsumerTask, PrivateBroker, TestApp, TestEnv, all_functions, send, wait_for};
use jsonwebtoken::{EncodingKey, Header};
use lapin::{
    BasicProperties, Connection, ConnectionProperties,
    options::BasicPublishOptions,
    types::{AMQPValue, FieldTable, LongString},
};
use mongodb::bson::{DateTime, Document, doc};
use notify_consumer::process::{Incoming, Outcome, Rejection, process, process_batch};
use reqwest::Method;
use serde_json::{Value, json};

/// Publishes a raw message onto `queue`, as any client of the broker could.
async fn publish_raw(env: &TestEnv, queue: &str, body: &[u8], authorization: Option<&str>) {
    let connection = Connection::connect(&env.rabbitmq_uri, ConnectionProperties::default())
        .await
        .unwrap();
    // As every publisher does: a message sent before its queue exists would be dropped.
    finapp_broker::topology::declare_queues(&connection, &env.queue_prefix, Default::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut headers = FieldTable::default();
    if let Some(value) = authorization {
        headers.insert(
            "Authorization".into(),
            AMQPValue::LongString(LongString::from(value)),
        );
    }
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_headers(headers)
                .with_delivery_mode(2),
        )
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn analytics(app: &TestApp, admin: &str) -> Value {
    let (status, summary) = send(app.authed(Method::GET, "/analytics", admin)).await;
    assert_eq!(status, 200, "{summary}");
    summary
}

fn token(env: &TestEnv, sub: &str, exp: u64, secret: Option<&str>) -> String {
    let claims = Claims {
        sub: sub.into(),
        role: Role::User,
        iat: 1,
        exp,
        aud: None,
    };
    let key = EncodingKey::from_secret(secret.unwrap_or(&env.jwt_secret).as_bytes());
    jsonwebtoken::encode(&Header::default(), &claims, &key).unwrap()
}

#[tokio::test]
async fn analytics_counts_exactly_the_logins_and_checks_a_user_made() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let consumer = ConsumerTask::spawn(env.deps().await);
    let admin = app.admin_token("analyst").await;
    let credentials = json!({"username": "busy_user", "password": "secure_password"});

    let (status, _) = app.post_json("/signup", &credentials).await;
    assert_eq!(status, 201);
    let mut token = String::new();
    for _ in 0..3 {
        let (status, login) = app.post_json("/login", &credentials).await;
        assert_eq!(status, 200);
        token = login["access_token"].as_str().unwrap().to_owned();
    }
    for _ in 0..2 {
        let (status, _) =
            send(app.authed(Method::POST, "/log-financing-options-visit", &token)).await;
        assert_eq!(status, 200);
    }
    app.apply(&token, 15000.0).await;

    // signup + 3 logins + 2 checks + 1 application = 7 events.
    let summary = wait_for(
        "all 7 events in user_analytics",
        Duration::from_secs(30),
        || async {
            let summary = analytics(&app, &admin).await;
            (summary["total_events"] == 7).then_some(summary)
        },
    )
    .await;
    assert_eq!(summary["logins_per_user"], json!({"busy_user": 3}));
    assert_eq!(
        summary["financing_checks_per_user"],
        json!({"busy_user": 2})
    );
    assert_eq!(
        (
            summary["total_logins"].as_u64(),
            summary["total_financing_option_checks"].as_u64()
        ),
        (Some(3), Some(2))
    );
    assert_eq!(
        summary["events_per_type"],
        json!({"user_registered": 1, "user_activity": 5, "application_submitted": 1})
    );
    // The relay deletes a record once the broker confirmed it, which may
    // come a moment after the consumer recorded the event.
    wait_for(
        "the published events gone from the outbox",
        Duration::from_secs(10),
        || async { (env.count("outbox").await == 0).then_some(()) },
    )
    .await;
    consumer.stop().await;
}

#[tokio::test]
async fn analytics_with_no_events_has_the_same_shape_with_zeros() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("analyst").await;

    assert_eq!(
        analytics(&app, &admin).await,
        json!({
            "total_events": 0, "total_logins": 0, "total_financing_option_checks": 0,
            "logins_per_user": {}, "financing_checks_per_user": {}, "events_per_type": {}
        })
    );
    let (status, _) = send(app.authed(
        Method::GET,
        "/analytics",
        finapp_tests::expose(&app.deps.tokens.issue("nobody_special", Role::User)),
    ))
    .await;
    assert_eq!(status, 401, "a token whose user does not exist");
}

#[tokio::test]
async fn events_the_original_wrote_count_by_the_originals_substring_rules() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, all_functions).await;
    let admin = app.admin_token("analyst").await;
    env.db()
        .await
        .collection::<Document>("user_analytics")
        .insert_many([
            doc! {"username": "old_timer", "event": "Notification processed for User old_timer logged in at 2024-10-01 10:00", "timestamp": DateTime::now()},
            doc! {"username": "old_timer", "event": "Notification processed for User old_timer checked financing options", "timestamp": DateTime::now()},
            doc! {"username": "old_timer", "event": "Application by old_timer for 1000.0", "timestamp": "2024-10-01"},
            doc! {"event": 42},
        ])
        .await
        .unwrap();
    // What `finapp-admin rebuild-analytics` does once when the bundle takes
    // over the original's database: seed the counters from its events.
    app.deps.store.rebuild_analytics_counters().await.unwrap();

    let summary = analytics(&app, &admin).await;

    assert_eq!(summary["total_events"], 4);
    assert_eq!(summary["logins_per_user"], json!({"old_timer": 1}));
    assert_eq!(
        summary["financing_checks_per_user"],
        json!({"old_timer": 1})
    );
    assert_eq!(summary["events_per_type"], json!({"untyped": 4}));
}

#[tokio::test]
async fn a_redelivered_event_is_recorded_once() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let token = deps.tokens.issue("repeat_user", Role::User);
    let event = Event::new(
        EventType::UserActivity,
        "repeat_user",
        "User repeat_user logged in",
    );
    let body = serde_json::to_vec(&event).unwrap();
    let authorization = format!("Bearer {}", finapp_tests::expose(&token));
    let message = Incoming {
        queue: "user_activity",
        body: &body,
        authorization: Some(&authorization),
        message_id: None,
        traceparent: None,
    };

    assert_eq!(process(&deps, message).await.unwrap(), Outcome::Recorded);
    assert_eq!(process(&deps, message).await.unwrap(), Outcome::Duplicate);
    assert_eq!(env.count("user_analytics").await, 1);

    // The original's plain-text format has no id; its redelivery is recognised too.
    let legacy = Incoming {
        body: b"User repeat_user logged in at 10:00",
        ..message
    };
    assert_eq!(process(&deps, legacy).await.unwrap(), Outcome::Recorded);
    assert_eq!(process(&deps, legacy).await.unwrap(), Outcome::Duplicate);
    assert_eq!(env.count("user_analytics").await, 2);
}

#[tokio::test]
async fn a_batch_records_new_events_once_and_reports_each_message_in_order() {
    let env = TestEnv::new();
    let deps = env.deps().await;
    let token = deps.tokens.issue("batch_user", Role::User);
    let authorization = format!("Bearer {}", finapp_tests::expose(&token));
    let bodies: Vec<Vec<u8>> = (0..3)
        .map(|n| {
            let event = Event::new(EventType::UserActivity, "batch_user", format!("event {n}"));
            serde_json::to_vec(&event).unwrap()
        })
        .collect();
    let message = |n: usize| Incoming {
        queue: "user_activity",
        body: &bodies[n],
        authorization: Some(&authorization),
        message_id: None,
        traceparent: None,
    };
    // Already stored before the batch arrives.
    assert_eq!(process(&deps, message(0)).await.unwrap(), Outcome::Recorded);

    let batch = [
        message(0),
        message(1),
        Incoming {
            authorization: None,
            ..message(2)
        },
        message(1),
        message(2),
    ];
    let outcomes = process_batch(&deps, &batch).await.unwrap();
    assert_eq!(
        outcomes,
        [
            Outcome::Duplicate,
            Outcome::Recorded,
            Outcome::Rejected(Rejection::MissingToken),
            Outcome::Duplicate,
            Outcome::Recorded,
        ]
    );
    assert_eq!(env.count("user_analytics").await, 3);
    // The whole batch again, as after a requeue: nothing new is written.
    let again = process_batch(&deps, &batch).await.unwrap();
    assert_eq!(again.iter().filter(|o| **o == Outcome::Recorded).count(), 0);
    assert_eq!(env.count("user_analytics").await, 3);
}

#[tokio::test]
async fn forged_and_poison_messages_go_to_the_dead_letter_queue_and_the_consumer_keeps_going() {
    let env = TestEnv::new();
    let consumer = ConsumerTask::spawn(env.deps().await);
    let queue = env.queue(EventType::UserActivity);
    let now = jsonwebtoken::get_current_timestamp();
    let genuine = token(&env, "victim", now + 600, None);
    let forged = token(
        &env,
        "victim",
        now + 600,
        Some("not-the-secret-not-the-secret-not-it"),
    );
    let none_alg = {
        let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
        format!(
            "{}.{}.",
            b64(br#"{"alg":"none"}"#),
            b64(format!(r#"{{"sub":"victim","exp":{}}}"#, now + 600).as_bytes())
        )
    };
    let event = |username: &str, kind: &str| {
        json!({"id": uuid::Uuid::new_v4(), "type": kind, "username": username, "timestamp_ms": 1, "message": "User victim logged in"}).to_string()
    };
    let poison: Vec<(&str, Vec<u8>, Option<String>)> = vec![
        (
            "no token",
            event("victim", "user_activity").into_bytes(),
            None,
        ),
        (
            "forged",
            event("victim", "user_activity").into_bytes(),
            Some(format!("Bearer {forged}")),
        ),
        (
            "alg none",
            event("victim", "user_activity").into_bytes(),
            Some(format!("Bearer {none_alg}")),
        ),
        (
            "malformed JSON",
            b"{\"id\": ".to_vec(),
            Some(format!("Bearer {genuine}")),
        ),
        (
            "unknown type",
            event("victim", "password_reset").into_bytes(),
            Some(format!("Bearer {genuine}")),
        ),
        (
            "someone else's name",
            event("mallory", "user_activity").into_bytes(),
            Some(format!("Bearer {genuine}")),
        ),
        (
            "too large",
            vec![b'x'; 70 * 1024],
            Some(format!("Bearer {genuine}")),
        ),
    ];
    for (_, body, authorization) in &poison {
        publish_raw(&env, &queue, body, authorization.as_deref()).await;
    }
    // Then genuine messages: one new-format (with a token expired long ago, as
    // after a long outage) and one in the original's plain-text format.
    let expired = token(&env, "victim", now - 86_400, None);
    publish_raw(
        &env,
        &queue,
        event("victim", "user_activity").as_bytes(),
        Some(&format!("Bearer {expired}")),
    )
    .await;
    publish_raw(
        &env,
        &queue,
        b"User victim logged in at 09:00",
        Some(&genuine),
    )
    .await;

    wait_for(
        "both genuine messages recorded",
        Duration::from_secs(20),
        || async { (env.count("user_analytics").await == 2).then_some(()) },
    )
    .await;
    let mut reasons = Vec::new();
    for _ in &poison {
        let message = env
            .next_message_on(&format!("{}{DEAD_LETTER_QUEUE}", env.queue_prefix))
            .await;
        let headers = message.delivery.properties.headers().clone().unwrap();
        let reason = match headers.inner().get("x-finapp-reason") {
            Some(AMQPValue::LongString(reason)) => {
                String::from_utf8_lossy(reason.as_bytes()).into_owned()
            }
            other => panic!("no reason header: {other:?}"),
        };
        reasons.push(reason);
    }
    reasons.sort();
    assert_eq!(
        reasons,
        [
            "body is malformed JSON or lacks event fields",
            "event username does not match its token",
            "message larger than 64 KiB",
            "no Authorization header",
            "token is forged or malformed",
            "token is forged or malformed",
            "unknown event type",
        ]
    );
    let users = env.distinct_strings("user_analytics", "username").await;
    assert_eq!(users, ["victim"]);
    consumer.stop().await;
}

#[tokio::test]
async fn no_event_is_lost_while_the_broker_is_down() {
    let mut broker = PrivateBroker::start().await;
    let env = TestEnv::new().with_broker(&broker.uri);
    let app = TestApp::spawn(&env, all_functions).await;
    let consumer = ConsumerTask::spawn(env.deps().await);
    let credentials = json!({"username": "outage_user", "password": "secure_password"});
    let (status, signed_up) = app.post_json("/signup", &credentials).await;
    assert_eq!(status, 201);
    let token = signed_up["access_token"].as_str().unwrap().to_owned();
    wait_for(
        "the sign-up event before the outage",
        Duration::from_secs(20),
        || async { (env.count("user_analytics").await == 1).then_some(()) },
    )
    .await;

    // 1. stop RabbitMQ
    broker.stop().await;
    // 2. requests that emit events all succeed, each recording its event
    for _ in 0..3 {
        let (status, _) = app.post_json("/login", &credentials).await;
        assert_eq!(status, 200);
    }
    for _ in 0..2 {
        let (status, _) =
            send(app.authed(Method::POST, "/log-financing-options-visit", &token)).await;
        assert_eq!(status, 200);
    }
    app.apply(&token, 500.0).await;
    assert_eq!(
        env.count("outbox").await,
        6,
        "events emitted during the outage are not in the outbox"
    );
    // 3. start RabbitMQ
    broker.resume().await;
    // 4. every event lands exactly once
    wait_for(
        "all 7 events recorded after the outage",
        Duration::from_secs(60),
        || async {
            (env.count("user_analytics").await >= 7 && env.count("outbox").await == 0).then_some(())
        },
    )
    .await;
    consumer.stop().await;
    let analytics = env.db().await.collection::<Document>("user_analytics");
    assert_eq!(analytics.count_documents(doc! {}).await.unwrap(), 7);
    assert_eq!(
        analytics
            .count_documents(doc! {"event": {"$regex": "logged in"}})
            .await
            .unwrap(),
        3
    );
    assert_eq!(
        analytics
            .count_documents(doc! {"event": {"$regex": "checked financing options"}})
            .await
            .unwrap(),
        2
    );
    broker.stop().await;
}

#[tokio::test]
async fn events_flow_through_quorum_queues_by_default_on_a_single_node() {
    // The shared broker is one node: quorum queues need no cluster.
    let env = TestEnv::new();
    assert_eq!(env.config().queue_type, QueueType::Quorum);
    let app = TestApp::spawn(&env, all_functions).await;
    let consumer = ConsumerTask::spawn(env.deps().await);
    let credentials = json!({"username": "quorum_user", "password": "secure_password"});
    assert_eq!(app.post_json("/signup", &credentials).await.0, 201);
    assert_eq!(app.post_json("/login", &credentials).await.0, 200);

    wait_for(
        "both events in user_analytics",
        Duration::from_secs(30),
        || async { (env.count("user_analytics").await == 2).then_some(()) },
    )
    .await;
    consumer.stop().await;

    // The broker refuses to redeclare a queue as another type: proof that the
    // relay and the consumer declared quorum queues, not classic ones.
    let connection = Connection::connect(&env.rabbitmq_uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    let mut classic = FieldTable::default();
    classic.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("classic")),
    );
    let redeclared = channel
        .queue_declare(
            env.queue(EventType::UserRegistered).as_str().into(),
            lapin::options::QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            classic,
        )
        .await;
    let err = redeclared.expect_err("a quorum queue redeclared as classic must be refused");
    assert!(err.to_string().contains("x-queue-type"), "{err}");
}

/// Declares every queue of `env` as versions of the bundle before quorum
/// queues were the default did: durable, no arguments (a classic queue).
async fn declare_as_earlier_versions(env: &TestEnv) {
    let connection = Connection::connect(&env.rabbitmq_uri, ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for name in queue_names(&env.queue_prefix) {
        declare_classic(&channel, &name).await.unwrap();
    }
    let _ = connection.close(200, "declared".into()).await;
}

/// Declares `name` durable with no arguments: a classic queue.
async fn declare_classic(channel: &lapin::Channel, name: &str) -> Result<(), lapin::Error> {
    let options = lapin::options::QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    channel
        .queue_declare(name.into(), options, FieldTable::default())
        .await
        .map(|_| ())
}

/// Whether every queue of `env` is still classic: a declaration with no
/// arguments, which the broker refuses for a quorum queue (`received none
/// but current is the value 'quorum'`), is accepted.
async fn all_classic(env: &TestEnv) -> bool {
    let connection = Connection::connect(&env.rabbitmq_uri, ConnectionProperties::default())
        .await
        .unwrap();
    let mut classic = true;
    for name in queue_names(&env.queue_prefix) {
        let channel = connection.create_channel().await.unwrap();
        classic &= declare_classic(&channel, &name).await.is_ok();
    }
    let _ = connection.close(200, "probed".into()).await;
    classic
}

#[tokio::test]
async fn classic_queues_of_an_earlier_version_are_adopted_as_they_are() {
    // A deployment upgraded in place: its queues exist, classic, and the
    // new default (quorum) must neither break on them nor replace them.
    let env = TestEnv::new();
    assert_eq!(env.config().queue_type, QueueType::Quorum);
    declare_as_earlier_versions(&env).await;
    let app = TestApp::spawn(&env, all_functions).await;
    let consumer = ConsumerTask::spawn(env.deps().await);
    let credentials = json!({"username": "upgraded_user", "password": "secure_password"});
    assert_eq!(app.post_json("/signup", &credentials).await.0, 201);
    assert_eq!(app.post_json("/login", &credentials).await.0, 200);
    wait_for(
        "both events in user_analytics",
        Duration::from_secs(30),
        || async { (env.count("user_analytics").await == 2).then_some(()) },
    )
    .await;
    consumer.stop().await;
    assert!(all_classic(&env).await, "a classic queue was replaced");
    // Adopted because the broker refuses the quorum declaration (406), not
    // because it ignores the type.
    let connection = Connection::connect(&env.rabbitmq_uri, ConnectionProperties::default())
        .await
        .unwrap();
    let queue = env.queue(EventType::UserActivity);
    let refused = finapp_broker::topology::probe_queue(&connection, &queue, QueueType::Quorum)
        .await
        .unwrap();
    let difference = refused.expect("a quorum declaration of a classic queue is refused");
    assert!(
        difference.to_string().contains("x-queue-type"),
        "{difference}"
    );
}

#[tokio::test]
async fn rabbitmq_queue_type_classic_declares_classic_queues() {
    let env = TestEnv::new().with_classic_queues();
    let app = TestApp::spawn(&env, all_functions).await;
    let consumer = ConsumerTask::spawn(env.deps().await);
    let credentials = json!({"username": "classic_user", "password": "secure_password"});
    assert_eq!(app.post_json("/signup", &credentials).await.0, 201);
    wait_for(
        "the sign-up event in user_analytics",
        Duration::from_secs(30),
        || async { (env.count("user_analytics").await == 1).then_some(()) },
    )
    .await;
    consumer.stop().await;
    assert!(all_classic(&env).await, "a queue is not classic");
}
