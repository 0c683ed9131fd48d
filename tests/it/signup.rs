//! `POST /signup` in plain HTTP mode against the real services.

use finapp_shared::events::{Event, EventType};
use finapp_tests::{RelayTask, TestApp, TestEnv, event_token, send};
use serde_json::{Value, json};

#[tokio::test]
async fn signup_stores_a_bcrypt_hash_and_returns_a_token_for_that_user() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, signup::router).await;

    let (status, body) = app
        .post_json(
            "/signup",
            &json!({"username": "john_doe", "password": "secure_password"}),
        )
        .await;

    assert_eq!(status, 201, "{body}");
    assert_eq!(body["token_type"], "bearer");
    let claims = app
        .deps
        .tokens
        .verify(body["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.sub, "john_doe");
    let user = app.deps.store.find_user("john_doe").await.unwrap().unwrap();
    let hash = user.password_hash().unwrap();
    assert!(
        hash.starts_with("$2"),
        "stored password is not a bcrypt hash"
    );
    assert!(bcrypt::verify("secure_password", &hash).unwrap());
}

#[tokio::test]
async fn signup_publishes_user_registered_with_an_event_token_in_the_authorization_header() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, signup::router).await;
    let _relay = RelayTask::spawn(app.deps.clone());

    let (status, body) = app
        .post_json(
            "/signup",
            &json!({"username": "eve_r", "password": "secure_password"}),
        )
        .await;
    assert_eq!(status, 201);

    let message = env.next_message(EventType::UserRegistered).await;
    let token = body["access_token"].as_str().unwrap();
    assert_ne!(event_token(&app.deps, &message, "eve_r"), token);
    let event: Event = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(event.kind, EventType::UserRegistered);
    assert_eq!(event.username, "eve_r");
    assert!(event.timestamp_ms > 0);
    assert_eq!(
        message
            .delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string()),
        Some(event.id.to_string())
    );
    assert_eq!(
        *message.delivery.properties.delivery_mode(),
        Some(2),
        "message is not persistent"
    );
}

#[tokio::test]
async fn every_kind_of_bad_input_gets_a_4xx_json_error_and_writes_nothing() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, signup::router).await;
    let url = app.url("/signup");
    let json_post = |body: Vec<u8>| {
        app.client
            .post(&url)
            .header("content-type", "application/json")
            .body(body)
    };
    let cases: Vec<(&str, reqwest::RequestBuilder)> = vec![
        ("empty body", json_post(Vec::new())),
        (
            "invalid JSON",
            json_post(b"{\"username\": \"abc\", ".to_vec()),
        ),
        (
            "missing field",
            json_post(br#"{"username": "abcdef"}"#.to_vec()),
        ),
        (
            "wrong type",
            json_post(br#"{"username": 42, "password": "secure_password"}"#.to_vec()),
        ),
        (
            "a 1 MB body",
            json_post(
                serde_json::to_vec(&json!({"username": "abcdef", "password": "x".repeat(1 << 20)}))
                    .unwrap(),
            ),
        ),
        (
            "2-character username",
            json_post(br#"{"username": "ab", "password": "secure_password"}"#.to_vec()),
        ),
        (
            "username with spaces",
            json_post(br#"{"username": "john doe", "password": "secure_password"}"#.to_vec()),
        ),
        (
            "username with emoji",
            json_post(
                r#"{"username": "john😀", "password": "secure_password"}"#
                    .as_bytes()
                    .to_vec(),
            ),
        ),
        (
            "73-byte password",
            json_post(
                serde_json::to_vec(&json!({"username": "abcdef", "password": "p".repeat(73)}))
                    .unwrap(),
            ),
        ),
        (
            "not JSON at all",
            app.client.post(&url).body("username=abc&password=def"),
        ),
    ];

    for (case, request) in cases {
        let (status, body) = send(request).await;
        assert!((400..500).contains(&status), "{case}: status {status}");
        assert!(
            body["error"].is_string()
                && body["message"].is_string()
                && body["detail"] == body["message"],
            "{case}: body {body}"
        );
    }
    assert_eq!(
        env.count("users").await,
        0,
        "a refused sign-up wrote a user"
    );
}

#[tokio::test]
async fn twenty_parallel_signups_of_one_name_give_one_201_and_nineteen_409s() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, signup::router).await;

    let credentials = json!({"username": "racer", "password": "secure_password"});
    let attempts = (0..20).map(|_| app.post_json("/signup", &credentials));
    let statuses: Vec<u16> = futures_util::future::join_all(attempts)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect();

    assert_eq!(
        statuses.iter().filter(|&&s| s == 201).count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 409).count(),
        19,
        "{statuses:?}"
    );
    assert_eq!(env.count("users").await, 1);
}

#[tokio::test]
async fn an_unknown_route_or_method_is_a_json_error() {
    let env = TestEnv::new();
    let app = TestApp::spawn(&env, signup::router).await;

    let (status, body) = send(app.client.get(app.url("/signup"))).await;
    assert_eq!(
        (status, &body["error"]),
        (405, &Value::from("method_not_allowed"))
    );
    let (status, body) = send(app.client.get(app.url("/nowhere"))).await;
    assert_eq!((status, &body["error"]), (404, &Value::from("not_found")));
}

#[tokio::test]
async fn a_body_over_64_kib_is_refused_with_413_whether_sized_or_streamed_and_writes_nothing() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let env = TestEnv::new();
    let app = TestApp::spawn(&env, signup::router).await;
    // Valid JSON, a signup but for its padding, just past the limit.
    let padding = "x".repeat(finapp_shared::http::MAX_BODY_BYTES);
    let body = json!({"username": "big_body", "password": "secure_password", "padding": padding})
        .to_string();

    // With its Content-Length.
    let (status, answer) = send(
        app.client
            .post(app.url("/signup"))
            .header("content-type", "application/json")
            .body(body.clone()),
    )
    .await;
    assert_eq!(status, 413, "{answer}");
    assert_eq!(answer["error"], "payload_too_large", "{answer}");

    // Streamed in chunks, with no length to refuse it by up front.
    let mut stream = tokio::net::TcpStream::connect(app.address).await.unwrap();
    let head = format!(
        "POST /signup HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
         transfer-encoding: chunked\r\nconnection: close\r\n\r\n",
        app.address
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in body.as_bytes().chunks(8 * 1024) {
        let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
        // The server may answer and close before the last chunk is sent.
        if stream.write_all(&framed).await.is_err() {
            break;
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        stream.read_to_end(&mut response),
    )
    .await
    .expect("the server answers and closes");
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("\"payload_too_large\""), "{response}");

    // Neither created the user.
    assert!(
        app.deps
            .store
            .find_user("big_body")
            .await
            .unwrap()
            .is_none(),
        "an oversized signup was stored"
    );
}
