//! `POST /login` in plain HTTP mode against the real services.

use std::time::{Duration, Instant};

use finapp_shared::{
    auth::{Passwords, Role},
    events::{Event, EventType},
};
use finapp_tests::{RelayTask, TestApp, TestEnv, event_token};
use mongodb::bson::{Binary, Bson, Document, doc, spec::BinarySubtype};
use serde_json::json;

async fn signed_up(env: &TestEnv, username: &str, password: &str) -> TestApp {
    finapp_tests::sign_up(env, username, password).await;
    TestApp::spawn(env, login::router).await
}

#[tokio::test]
async fn the_right_password_gets_a_token_with_the_users_role() {
    let env = TestEnv::new();
    let app = signed_up(&env, "john_doe", "secure_password").await;

    let (status, body) = app
        .post_json(
            "/login",
            &json!({"username": "john_doe", "password": "secure_password"}),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "bearer");
    assert_eq!(body["role"], "user");
    let claims = app
        .deps
        .tokens
        .verify(body["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!((claims.sub.as_str(), claims.role), ("john_doe", Role::User));
}

#[tokio::test]
async fn login_publishes_a_user_activity_logged_in_event() {
    let env = TestEnv::new();
    let app = signed_up(&env, "active", "secure_password").await;
    let _relay = RelayTask::spawn(app.deps.clone());

    let (_, body) = app
        .post_json(
            "/login",
            &json!({"username": "active", "password": "secure_password"}),
        )
        .await;

    let message = env.next_message(EventType::UserActivity).await;
    let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(
        (event.kind, event.username.as_str()),
        (EventType::UserActivity, "active")
    );
    assert!(event.message.contains("logged in"), "{}", event.message);
    // The relay's event token, never the access token the login returned.
    let token = body["access_token"].as_str().unwrap();
    assert_ne!(event_token(&app.deps, &message, "active"), token);
}

#[tokio::test]
async fn an_unknown_user_and_a_wrong_password_get_the_same_401() {
    let env = TestEnv::new();
    let app = signed_up(&env, "known", "secure_password").await;

    let wrong = app
        .post_json(
            "/login",
            &json!({"username": "known", "password": "not_the_password"}),
        )
        .await;
    let unknown = app
        .post_json(
            "/login",
            &json!({"username": "nobody", "password": "secure_password"}),
        )
        .await;
    let too_long = app
        .post_json(
            "/login",
            &json!({"username": "known", "password": format!("secure_password{}", "x".repeat(80))}),
        )
        .await;

    assert_eq!(wrong.0, 401);
    assert_eq!(wrong, unknown);
    assert_eq!(wrong, too_long);
}

#[tokio::test]
async fn an_unknown_user_costs_a_full_bcrypt_verification_like_a_wrong_password() {
    // Cost 10 makes one verification tens of milliseconds, far above the
    // network and database noise; an unknown user that skipped bcrypt would
    // answer in a small fraction of that.
    let env = TestEnv::with_bcrypt_cost(10);
    let app = signed_up(&env, "timed", "secure_password").await;
    let _ = app
        .post_json(
            "/login",
            &json!({"username": "nobody", "password": "warm_up_pw"}),
        )
        .await;

    let mut wrong = Vec::new();
    let mut unknown = Vec::new();
    for _ in 0..5 {
        for (username, times) in [("timed", &mut wrong), ("nobody", &mut unknown)] {
            let started = Instant::now();
            let (status, _) = app
                .post_json(
                    "/login",
                    &json!({"username": username, "password": "bad_password"}),
                )
                .await;
            assert_eq!(status, 401);
            times.push(started.elapsed());
        }
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (wrong, unknown) = (median(&mut wrong), median(&mut unknown));
    assert!(
        unknown * 2 >= wrong,
        "unknown user {unknown:?} vs wrong password {wrong:?}"
    );
}

#[tokio::test]
async fn a_user_written_by_the_original_service_can_log_in() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, login::router).await;
    // The original stored bcrypt's bytes as BSON binary and wrote no role.
    let hash = Passwords::new(4)
        .hash("legacy_password".to_string().into())
        .await
        .unwrap();
    env.db()
        .await
        .collection("users")
        .insert_one(doc! {
            "username": "legacy_user",
            "password": Binary { subtype: BinarySubtype::Generic, bytes: hash.into_bytes() },
        })
        .await
        .unwrap();

    let (status, body) = app
        .post_json(
            "/login",
            &json!({"username": "legacy_user", "password": "legacy_password"}),
        )
        .await;

    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "user");
}

#[tokio::test]
async fn bad_login_input_is_a_4xx_json_error() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, login::router).await;

    for body in [
        json!({}),
        json!({"username": "abc"}),
        json!({"username": 1, "password": "x"}),
        json!([1, 2]),
    ] {
        let (status, reply) = app.post_json("/login", &body).await;
        assert_eq!(status, 422, "{body} -> {reply}");
        assert_eq!(reply["error"], "validation_error");
    }
}

#[tokio::test]
async fn a_hash_of_another_cost_is_rehashed_at_login_and_unknown_users_take_as_long() {
    // The original wrote cost 12; this deployment chose 10.
    let env = TestEnv::with_bcrypt_cost(10);
    let old_hash = bcrypt::hash("veteran_password", 12).unwrap();
    env.db()
        .await
        .collection::<Document>("users")
        .insert_one(
            doc! {"username": "veteran", "password": Bson::Binary(Binary {
                subtype: BinarySubtype::Generic,
                bytes: old_hash.into_bytes(),
            })},
        )
        .await
        .unwrap();
    let app = TestApp::spawn(&env, login::router).await;
    let attempt = |username: &'static str, password: &'static str| {
        let app = &app;
        async move {
            let started = Instant::now();
            let (status, _) = app
                .post_json(
                    "/login",
                    &json!({"username": username, "password": password}),
                )
                .await;
            (status, started.elapsed())
        }
    };

    // Wrong passwords: an existing user and an unknown name, interleaved.
    let (mut existing, mut unknown) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        let (status, took) = attempt("veteran", "wrong_password").await;
        assert_eq!(status, 401);
        existing.push(took);
        let (status, took) = attempt("nobody_at_all", "wrong_password").await;
        assert_eq!(status, 401);
        unknown.push(took);
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2].as_secs_f64()
    };
    let (existing, unknown) = (median(&mut existing), median(&mut unknown));
    assert!(
        (unknown / existing - 1.0).abs() <= 0.2,
        "existing user {existing:.3}s, unknown {unknown:.3}s: more than 20% apart"
    );

    // The right password works, and the hash is rewritten at cost 10.
    let (status, _) = attempt("veteran", "veteran_password").await;
    assert_eq!(status, 200);
    let stored = app.deps.store.find_user("veteran").await.unwrap().unwrap();
    let hash = stored.password_hash().unwrap();
    assert!(hash.starts_with("$2b$10$"), "still {}", &hash[..7]);
    assert_eq!(attempt("veteran", "veteran_password").await.0, 200);
}
