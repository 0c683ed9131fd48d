//! Secrets from AWS Secrets Manager through aws-config, against moto's server
//! mode on localhost (the SDK's endpoint override, `AWS_ENDPOINT_URL`).

use std::time::Duration;

use finapp_shared::{auth::TokenKeys, config::Config};
use finapp_tests::{
    FunctionProcess, Process, TestEnv, free_port, function_binary, send, wait_for, workspace_root,
};
use serde_json::json;
use tokio::process::Command;

/// A moto server of this test's own.
struct Moto {
    _process: Process,
    endpoint: String,
}

impl Moto {
    async fn start() -> Self {
        let port = free_port();
        let binary = workspace_root().join(".dev/venv-moto/bin/moto_server");
        assert!(binary.exists(), "moto is missing: run scripts/services.sh");
        let mut command = Command::new(binary);
        command.args(["-H", "127.0.0.1", "-p", &port.to_string()]);
        let process = Process::spawn(command);
        let endpoint = format!("http://127.0.0.1:{port}");
        let client = reqwest::Client::new();
        wait_for("moto to listen", Duration::from_secs(30), || async {
            client.get(&endpoint).send().await.ok().map(|_| ())
        })
        .await;
        Self {
            _process: process,
            endpoint,
        }
    }

    /// Creates a secret through the Secrets Manager JSON API.
    async fn create_secret(&self, name: &str, value: &str) {
        let (status, body) = send(
            reqwest::Client::new()
                .post(&self.endpoint)
                .header("X-Amz-Target", "secretsmanager.CreateSecret")
                .header("Content-Type", "application/x-amz-json-1.1")
                .header("Authorization", "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/secretsmanager/aws4_request, SignedHeaders=host, Signature=0")
                .body(json!({"Name": name, "SecretString": value}).to_string()),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    /// The environment a function gets on Lambda: the secret's id and AWS settings,
    /// and (to prove the override) a JWT key too short to be accepted on its own.
    fn function_env(&self, env: &TestEnv, secret_id: &str) -> Vec<(String, String)> {
        let mut vars: Vec<(String, String)> = vec![
            ("FINAPP_SECRET_ID".into(), secret_id.into()),
            ("AWS_ENDPOINT_URL".into(), self.endpoint.clone()),
            ("AWS_REGION".into(), "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID".into(), "testing".into()),
            ("AWS_SECRET_ACCESS_KEY".into(), "testing".into()),
        ];
        vars.extend(env.vars().into_iter().map(|(k, v)| (k.to_owned(), v)));
        vars.retain(|(k, _)| k != "JWT_SECRET_KEY" && k != "MONGODB_URI");
        vars.push(("JWT_SECRET_KEY".into(), "too-short".into()));
        vars
    }
}

#[tokio::test]
async fn values_from_the_secret_replace_the_environment_at_cold_start() {
    let env = TestEnv::new();
    let moto = Moto::start().await;
    let secret_key = format!("secret-from-secrets-manager-{}", env.database);
    let secret_id = format!("finapp/{}", env.database);
    let value = json!({
        "JWT_SECRET_KEY": secret_key,
        "MONGODB_URI": finapp_tests::MONGODB_URI,
        "RABBITMQ_URI": env.rabbitmq_uri,
    });
    moto.create_secret(&secret_id, &value.to_string()).await;

    let signup = FunctionProcess::start_with("signup", moto.function_env(&env, &secret_id)).await;
    let (status, body) = send(
        reqwest::Client::new()
            .post(format!("{}/signup", signup.base_url))
            .json(&json!({"username": "from_secret", "password": "secure_password"})),
    )
    .await;

    assert_eq!(status, 201, "{body}");
    let config =
        Config::from_lookup(|name| (name == "JWT_SECRET_KEY").then(|| secret_key.clone())).unwrap();
    let claims = TokenKeys::new(&config)
        .verify(body["access_token"].as_str().unwrap())
        .unwrap();
    assert_eq!(claims.sub, "from_secret");
    let logs = signup.process.output().join("\n");
    assert!(!logs.contains(&secret_key), "the secret reached the logs");
}

async fn start_expecting_failure(vars: Vec<(String, String)>) -> String {
    let mut command = Command::new(function_binary("login"));
    command.env_clear().env("PORT", "0").envs(vars);
    let mut process = Process::spawn(command);
    let status = process.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    process.output().join("\n")
}

#[tokio::test]
async fn a_missing_or_malformed_secret_is_a_clear_start_up_error() {
    let env = TestEnv::new();
    let moto = Moto::start().await;
    let malformed = format!("finapp/malformed-{}", env.database);
    moto.create_secret(&malformed, "JWT_SECRET_KEY=not-json")
        .await;
    let not_strings = format!("finapp/numbers-{}", env.database);
    moto.create_secret(
        &not_strings,
        r#"{"JWT_SECRET_KEY": 12345678901234567890123456789012345}"#,
    )
    .await;

    let output = start_expecting_failure(moto.function_env(&env, "finapp/does-not-exist")).await;
    assert!(
        output.contains("FINAPP_SECRET_ID=finapp/does-not-exist") && output.contains("cannot read"),
        "{output}"
    );
    let output = start_expecting_failure(moto.function_env(&env, &malformed)).await;
    assert!(
        output.contains("not a JSON object") && !output.contains("not-json"),
        "{output}"
    );
    let output = start_expecting_failure(moto.function_env(&env, &not_strings)).await;
    assert!(
        output.contains("JWT_SECRET_KEY is not a string") && !output.contains("1234567890"),
        "{output}"
    );
}

/// template.yaml's layout: the JWT keys in one secret, the connection URIs in
/// another, both named by FINAPP_SECRET_ID; mid-rotation, so a token of the
/// previous key (from the JWT secret) is accepted. A name given by both
/// secrets stops start-up, naming it and not its values.
#[tokio::test]
async fn the_jwt_keys_and_the_connection_uris_come_from_two_secrets() {
    let env = TestEnv::new();
    let moto = Moto::start().await;
    let current = format!("current-key-from-secrets-manager-{}", env.database);
    let previous = format!("previous-key-from-secrets-manager-{}", env.database);
    let jwt_id = format!("finapp/jwt-{}", env.database);
    let connection_id = format!("finapp/connection-{}", env.database);
    moto.create_secret(
        &jwt_id,
        &json!({"JWT_SECRET_KEY": current, "JWT_PREVIOUS_SECRET_KEY": previous}).to_string(),
    )
    .await;
    moto.create_secret(
        &connection_id,
        &json!({"MONGODB_URI": finapp_tests::MONGODB_URI, "RABBITMQ_URI": env.rabbitmq_uri})
            .to_string(),
    )
    .await;
    let old_keys = TokenKeys::new(
        &Config::from_lookup(|name| (name == "JWT_SECRET_KEY").then(|| previous.clone())).unwrap(),
    );
    let deps = env.deps().await;
    // The user exists; the token is the previous key's.
    finapp_tests::user_token(&deps, "two_secrets").await;
    let token = old_keys.issue("two_secrets", finapp_shared::auth::Role::User);

    let both = format!("{jwt_id}, {connection_id}");
    let status = FunctionProcess::start_with("status", moto.function_env(&env, &both)).await;
    let (code, body) = send(
        reqwest::Client::new()
            .get(format!("{}/status", status.base_url))
            .bearer_auth(finapp_tests::expose(&token)),
    )
    .await;
    assert_eq!(code, 200, "{body}");

    let again = format!("finapp/jwt-again-{}", env.database);
    moto.create_secret(&again, &json!({"JWT_SECRET_KEY": current}).to_string())
        .await;
    let output = start_expecting_failure(moto.function_env(&env, &format!("{both},{again}"))).await;
    assert!(
        output.contains("JWT_SECRET_KEY is in more than one") && !output.contains(&current),
        "{output}"
    );
}
