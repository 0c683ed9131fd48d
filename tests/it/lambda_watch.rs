//! The Lambda runtime path: the same binaries under `cargo lambda watch`, which
//! emulates the Lambda runtime API and API Gateway's HTTP events, routed with
//! `[workspace.metadata.lambda.watch.router]` as in production.

use base64::Engine as _;
use finapp_shared::{
    auth::{Claims, Role},
    events::{Event, EventType},
};
use finapp_tests::{TestEnv, Watch, expose, send, workspace_root};
use serde_json::{Value, json};

#[tokio::test]
async fn signup_and_login_work_through_cargo_lambda_watch() {
    let env = TestEnv::new();
    let watch = Watch::start(&env).await;
    let client = reqwest::Client::new();
    let credentials = json!({"username": "lambda_user", "password": "secure_password"});

    let (status, body) = send(
        client
            .post(format!("{}/signup", watch.base_url))
            .json(&credentials),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = send(
        client
            .post(format!("{}/signup", watch.base_url))
            .json(&credentials),
    )
    .await;
    assert_eq!((status, body["error"].as_str()), (409, Some("conflict")));
    let (status, body) = send(
        client
            .post(format!("{}/login", watch.base_url))
            .json(&credentials),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["role"], "user");
    let (status, body) = send(
        client
            .post(format!("{}/signup", watch.base_url))
            .json(&json!({"username": "x", "password": "secure_password"})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (422, Some("validation_error"))
    );
    assert_eq!(env.count("users").await, 1);
}

#[tokio::test]
async fn finance_and_admin_routes_work_through_cargo_lambda_watch() {
    let env = TestEnv::new();
    let watch = Watch::start(&env).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{}{path}", watch.base_url);
    let credentials = json!({"username": "lambda_borrower", "password": "secure_password"});
    let (status, body) = send(client.post(url("/signup")).json(&credentials)).await;
    assert_eq!(status, 201, "{body}");
    let token = body["access_token"].as_str().unwrap().to_owned();

    // The original document's /apply and /status examples.
    let (status, applied) = send(
        client
            .post(url("/apply"))
            .header("Authorization", format!("Bearer {token}"))
            .header("Content-Type", "application/json")
            .body(
                r#"{
    "loan_types": ["personal"],
    "amount": 15000,
    "purpose": "Car purchase"
  }"#,
            ),
    )
    .await;
    assert_eq!(status, 201, "{applied}");
    let (status, list) = send(
        client
            .get(url("/status"))
            .header("Authorization", format!("Bearer {token}")),
    )
    .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list[0]["_id"], applied["application_id"]);

    let (status, body) = send(client.get(url("/status"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, body) = send(client.get(url("/admin/applications")).bearer_auth(&token)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("forbidden")));

    let deps = env.deps().await;
    let hash = deps
        .passwords
        .hash("admin_password".to_string().into())
        .await
        .unwrap();
    deps.store
        .upsert_admin("lambda_admin", &hash)
        .await
        .unwrap();
    let (status, login) = send(
        client
            .post(url("/login"))
            .json(&json!({"username": "lambda_admin", "password": "admin_password"})),
    )
    .await;
    assert_eq!((status, &login["role"]), (200, &json!("admin")), "{login}");
    let admin = login["access_token"].as_str().unwrap();
    let (status, page) = send(
        client
            .get(url("/admin/applications?page=1&per_page=10"))
            .bearer_auth(admin),
    )
    .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["total_items"], 1);
    let application_id = applied["application_id"].as_str().unwrap();
    let (status, decided) = send(
        client
            .put(url(&format!(
                "/admin/update_status/{application_id}/approved"
            )))
            .bearer_auth(admin),
    )
    .await;
    assert_eq!(
        (status, &decided["status"]),
        (200, &json!("approved")),
        "{decided}"
    );
}

/// Amazon MQ's form of a string header: its UTF-8 bytes.
fn mq_header(text: &str) -> Value {
    json!({ "bytes": text.as_bytes() })
}

#[tokio::test]
async fn notify_consumer_records_an_amazon_mq_batch_once_however_often_it_is_retried() {
    let env = TestEnv::new();
    let watch = Watch::start(&env).await;
    let deps = env.deps().await;
    let token = deps.tokens.issue("mq_user", Role::User);
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &Claims {
            sub: "mq_user".into(),
            role: Role::Admin,
            iat: 1,
            exp: u64::MAX / 2,
            aud: None,
        },
        &jsonwebtoken::EncodingKey::from_secret(b"forged-forged-forged-forged-forged!"),
    )
    .unwrap();

    // The committed fixture is a real-shaped event (with "priority": null);
    // its one message is the template for this test's batch: two queues, a
    // message delivered twice within the batch, the original's format, a
    // forged token, and one message whose priority is null while the others
    // carry a number.
    let fixture = workspace_root().join("functions/notify-consumer/fixtures/rmq-event.json");
    let mut event: Value =
        serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
    let template = event["rmqMessagesByQueue"]["user_activity::/"][0].clone();
    assert!(template["basicProperties"]["priority"].is_null());
    let message = |data: &[u8], authorization: Value, priority: Value| {
        let mut message = template.clone();
        message["data"] = json!(b64(data));
        message["basicProperties"]["headers"]["Authorization"] = authorization;
        message["basicProperties"]["priority"] = priority;
        message
    };
    let bearer = mq_header(&format!("Bearer {}", expose(&token)));
    let login = Event::new(EventType::UserActivity, "mq_user", "User mq_user logged in");
    let registered = Event::new(
        EventType::UserRegistered,
        "mq_user",
        "User mq_user registered",
    );
    event["rmqMessagesByQueue"] = json!({
        format!("{}::/", env.queue(EventType::UserActivity)): [
            message(&serde_json::to_vec(&login).unwrap(), bearer.clone(), Value::Null),
            message(&serde_json::to_vec(&login).unwrap(), bearer.clone(), json!(0)),
            // The original's format: plain text and a bare token as a plain string.
            message(b"User mq_user checked financing options", json!(expose(&token)), json!(0)),
            message(&serde_json::to_vec(&login).unwrap(), mq_header(&format!("Bearer {forged}")), json!(0)),
        ],
        format!("{}::/", env.queue(EventType::UserRegistered)): [
            message(&serde_json::to_vec(&registered).unwrap(), bearer, json!(0)),
        ]
    });
    let data_file = std::env::temp_dir().join(format!("{}-rmq-event.json", env.database));
    std::fs::write(&data_file, serde_json::to_vec(&event).unwrap()).unwrap();

    let invoke = || async {
        let output = tokio::process::Command::new("cargo")
            .args([
                "lambda",
                "invoke",
                "notify-consumer",
                "--output-format",
                "json",
            ])
            .arg("--data-file")
            .arg(&data_file)
            .args(["--invoke-port", &watch.port.to_string()])
            .current_dir(workspace_root())
            .output()
            .await
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str::<Value>(&stdout).unwrap_or_else(|_| panic!("not JSON: {stdout}"))
    };

    assert_eq!(
        invoke().await,
        json!({"recorded": 3, "duplicates": 1, "dead_lettered": 1})
    );
    // Amazon MQ retries a whole batch; nothing is counted twice.
    assert_eq!(
        invoke().await,
        json!({"recorded": 0, "duplicates": 4, "dead_lettered": 1})
    );
    assert_eq!(env.count("user_analytics").await, 3);
    let dead = env
        .next_message_on(&format!("{}finapp.dead_letter", env.queue_prefix))
        .await;
    assert_eq!(dead.delivery.data, serde_json::to_vec(&login).unwrap());
    let _ = std::fs::remove_file(data_file);
}
