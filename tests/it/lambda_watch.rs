//! The Lambda runtime path: the same binaries under `cargo lambda watch`, which
//! emulates the Lambda runtime API and API Gateway's HTTP events, routed with
//! `[workspace.metadata.lambda.watch.router]` as in production.

use std::{net::TcpListener, time::Duration};

use finapp_tests::{Process, TestEnv, send, wait_for, workspace_root};
use serde_json::json;
use tokio::process::Command;

/// A `cargo lambda watch` serving every function with this test's environment.
struct Watch {
    _process: Process,
    base_url: String,
}

impl Watch {
    async fn start(env: &TestEnv) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = Command::new("cargo");
        command
            .args([
                "lambda",
                "watch",
                "--ignore-changes",
                "--invoke-port",
                &port.to_string(),
            ])
            .current_dir(workspace_root())
            .envs(env.vars());
        let process = Process::spawn(command);
        let base_url = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_for(
            "cargo lambda watch to listen",
            Duration::from_secs(60),
            || async { client.get(&base_url).send().await.ok().map(|_| ()) },
        )
        .await;
        Self {
            _process: process,
            base_url,
        }
    }
}

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
