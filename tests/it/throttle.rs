//! Login throttling against real login processes sharing one database: per
//! username (existing or not) and per client address, reset by a success,
//! never longer than its window.

use std::time::Duration;

use finapp_tests::{FunctionProcess, TestEnv, sign_up, wait_for};
use mongodb::bson::Document;
use serde_json::{Value, json};

/// A login attempt through `base_url`, from `forwarded_for` if given; the
/// status, the `Retry-After` header and the body.
async fn attempt(
    base_url: &str,
    username: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> (u16, Option<u64>, Value) {
    let mut request = reqwest::Client::new()
        .post(format!("{base_url}/login"))
        .json(&json!({"username": username, "password": password}));
    if let Some(chain) = forwarded_for {
        request = request.header("x-forwarded-for", chain);
    }
    let response = request.send().await.expect("login answers");
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok()?.parse().ok());
    (
        status,
        retry_after,
        response.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn failures_past_the_limit_get_429_for_real_and_unknown_names_across_two_processes() {
    let env = TestEnv::new()
        .with_var("LOGIN_MAX_FAILURES", 5)
        .with_var("LOGIN_FAILURE_WINDOW_SECS", 600);
    sign_up(&env, "victim", "right_password").await;
    let first = FunctionProcess::start("login", &env).await;
    let second = FunctionProcess::start("login", &env).await;
    let processes = [&first.base_url, &second.base_url];

    for name in ["victim", "ghost_user"] {
        for i in 0..20 {
            let (status, retry_after, body) =
                attempt(processes[i % 2], name, "wrong_password", None).await;
            if i < 5 {
                assert_eq!(status, 401, "{name} attempt {}: {body}", i + 1);
            } else {
                assert_eq!(status, 429, "{name} attempt {}: {body}", i + 1);
                assert_eq!(body["error"], "too_many_requests");
                let retry_after = retry_after.expect("a 429 says when to retry");
                assert!(
                    (1..=600).contains(&retry_after),
                    "Retry-After {retry_after}"
                );
            }
        }
    }
    // While locked, even the right password waits: guessing stays capped.
    let (status, _, _) = attempt(&first.base_url, "victim", "right_password", None).await;
    assert_eq!(status, 429);
    // Refused attempts were not counted.
    let windows = env.db().await.collection::<Document>("login_failures");
    let victim = windows
        .find_one(mongodb::bson::doc! { "_id": "user:victim" })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(victim.get_i64("failures").unwrap(), 5);
}

#[tokio::test]
async fn a_success_resets_the_names_count_and_a_window_ends_on_its_own() {
    let env = TestEnv::new()
        .with_var("LOGIN_MAX_FAILURES", 3)
        .with_var("LOGIN_FAILURE_WINDOW_SECS", 2);
    sign_up(&env, "forgetful", "right_password").await;
    let login = FunctionProcess::start("login", &env).await;
    let url = &login.base_url;

    for _ in 0..2 {
        assert_eq!(attempt(url, "forgetful", "wrong", None).await.0, 401);
    }
    assert_eq!(
        attempt(url, "forgetful", "right_password", None).await.0,
        200
    );
    // Counting starts again: three more failures before the 429.
    for _ in 0..3 {
        assert_eq!(attempt(url, "forgetful", "wrong", None).await.0, 401);
    }
    assert_eq!(
        attempt(url, "forgetful", "right_password", None).await.0,
        429
    );

    // FerretDB 1.x never expires the TTL index: the window ends by its
    // `expires_at` alone, and the next failure purges it.
    wait_for("the window to end", Duration::from_secs(10), || async {
        (attempt(url, "forgetful", "right_password", None).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(attempt(url, "someone_else", "wrong", None).await.0, 401);
    let windows = env.db().await.collection::<Document>("login_failures");
    assert!(
        windows
            .find_one(mongodb::bson::doc! { "_id": "user:forgetful" })
            .await
            .unwrap()
            .is_none(),
        "an ended window was not purged"
    );
}

#[tokio::test]
async fn an_address_past_its_limit_gets_429_whatever_the_name_and_only_the_trusted_hop_counts() {
    let env = TestEnv::new()
        .with_var("LOGIN_MAX_FAILURES_PER_ADDRESS", 4)
        .with_var("TRUSTED_PROXY_HOPS", 1);
    let login = FunctionProcess::start("login", &env).await;
    let url = &login.base_url;

    // The ingress appends the address it saw; the entry before it is the
    // client's own claim, different every time here, and must not matter.
    for i in 0..4 {
        let chain = format!("198.51.100.{i}, 203.0.113.9");
        let (status, _, body) = attempt(url, &format!("name_{i}"), "wrong", Some(&chain)).await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, retry_after, _) =
        attempt(url, "fresh_name", "wrong", Some("192.0.2.1, 203.0.113.9")).await;
    assert_eq!(status, 429);
    assert!(retry_after.is_some());
    // Another client is not affected.
    let (status, _, _) = attempt(url, "fresh_name", "wrong", Some("203.0.113.10")).await;
    assert_eq!(status, 401);
}

#[tokio::test]
async fn with_no_trusted_proxy_the_tcp_peer_is_the_address_counted() {
    let env = TestEnv::new().with_var("LOGIN_MAX_FAILURES_PER_ADDRESS", 4);
    let login = FunctionProcess::start("login", &env).await;
    let url = &login.base_url;

    // Every attempt claims another address; with no proxy trusted, the
    // claim is ignored and all of them come from this test's loopback peer.
    for i in 0..4 {
        let claim = format!("198.51.100.{i}");
        let (status, _, body) = attempt(url, &format!("peer_{i}"), "wrong", Some(&claim)).await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, retry_after, body) = attempt(url, "peer_fresh", "wrong", Some("192.0.2.1")).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some());
}
