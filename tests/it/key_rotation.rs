//! A JWT key rotation as an operator runs it (docs/deploy.md): the real
//! function processes restarted with `JWT_SECRET_KEY` = the new key and
//! `JWT_PREVIOUS_SECRET_KEY` = the old one accept the tokens the old key
//! signed and sign new ones with the new key only; restarted once more
//! without `JWT_PREVIOUS_SECRET_KEY`, they refuse the old tokens.

use finapp_tests::{FunctionProcess, TestEnv, send, sign_up, user_token};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Value, json};

/// This test's environment with the JWT settings replaced by `current` and,
/// if any, `previous`.
fn rotated(env: &TestEnv, current: &str, previous: Option<&str>) -> Vec<(&'static str, String)> {
    let mut vars: Vec<_> = env
        .vars()
        .into_iter()
        .filter(|(name, _)| *name != "JWT_SECRET_KEY")
        .collect();
    vars.push(("JWT_SECRET_KEY", current.to_owned()));
    if let Some(previous) = previous {
        vars.push(("JWT_PREVIOUS_SECRET_KEY", previous.to_owned()));
    }
    vars
}

async fn status_with(function: &FunctionProcess, token: &str) -> (u16, Value) {
    send(
        reqwest::Client::new()
            .get(format!("{}/status", function.base_url))
            .bearer_auth(token),
    )
    .await
}

fn signed_with(token: &str, key: &str) -> bool {
    let mut validation = Validation::new(Algorithm::HS256);
    validation.set_required_spec_claims(&["exp", "sub"]);
    jsonwebtoken::decode::<Value>(
        token,
        &DecodingKey::from_secret(key.as_bytes()),
        &validation,
    )
    .is_ok()
}

#[tokio::test]
async fn a_token_of_the_previous_key_works_while_it_is_set_and_is_refused_once_it_is_removed() {
    // Arrange: a user and a token signed with the key in service until now.
    let env = TestEnv::new();
    let old_key = env.jwt_secret.clone();
    let new_key = format!("rotated-secret-{}", uuid::Uuid::new_v4().simple());
    let deps = env.deps().await;
    let old_token = user_token(&deps, "rotating_user").await;
    sign_up(&env, "rotating_login", "rotation-password").await;

    // Act 1: the rotation window, both keys set.
    let status =
        FunctionProcess::start_with("status", rotated(&env, &new_key, Some(&old_key))).await;
    let login = FunctionProcess::start_with("login", rotated(&env, &new_key, Some(&old_key))).await;
    let (code, body) = send(
        reqwest::Client::new()
            .post(format!("{}/login", login.base_url))
            .json(&json!({"username": "rotating_login", "password": "rotation-password"})),
    )
    .await;
    assert_eq!(code, 200, "{body}");
    let new_token = body["access_token"].as_str().unwrap().to_owned();

    // Assert 1: the old token still works; new tokens carry the new key only.
    assert_eq!(status_with(&status, &old_token).await.0, 200);
    assert!(
        signed_with(&new_token, &new_key),
        "not signed with the new key"
    );
    assert!(
        !signed_with(&new_token, &old_key),
        "signed with the previous key"
    );
    assert_eq!(status_with(&status, &new_token).await.0, 200);
    drop(status);

    // Act 2: the window closed, the previous key removed.
    let status = FunctionProcess::start_with("status", rotated(&env, &new_key, None)).await;

    // Assert 2: the old token is refused as any forged one is; the new one works.
    let (code, body) = status_with(&status, &old_token).await;
    assert_eq!(code, 401, "{body}");
    assert_eq!(body["error"], json!("unauthorized"), "{body}");
    assert_eq!(status_with(&status, &new_token).await.0, 200);
}
