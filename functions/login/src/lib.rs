//! `POST /login`: checks a username and password, returns an access token, and
//! publishes a `user_activity` "logged in" event.
//!
//! An unknown user and a wrong password get the same answer in the same time:
//! both run one bcrypt verification at the cost of the stored hashes. A stored
//! hash of another cost than `BCRYPT_COST` is replaced at the next successful
//! login.

use std::sync::Arc;

use axum::{Router, extract::State, routing::post};
use finapp_shared::{
    Deps,
    auth::Role,
    domain::NewPassword,
    events::{Event, EventType},
    http::{ApiError, ErrorBody, Json},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Router {
    let warm = deps.clone();
    tokio::spawn(async move {
        // Unknown users are timed against the cost the stored hashes have.
        if let Ok(Some(hash)) = warm.store.newest_password_hash().await {
            warm.passwords.observe_stored(&hash);
        }
        if let Err(err) = warm.passwords.warm_up().await {
            tracing::warn!(error = %err, "dummy hash not precomputed");
        }
    });
    Router::new().route("/login", post(login)).with_state(deps)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"username": "john_doe", "password": "secure_password"}))]
pub struct LoginRequest {
    pub username: String,
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoginResponse {
    pub access_token: String,
    pub token_type: String,
    pub role: Role,
}

/// Checks a username and password and returns an access token; publishes a
/// `user_activity` "logged in" event.
#[utoipa::path(post, path = "/login", tag = "auth", request_body = LoginRequest, responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "Wrong username or password (the same answer for both, in the same time)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, or outside its rules", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %body.username))]
pub async fn login(
    State(deps): State<Arc<Deps>>,
    Json(body): Json<LoginRequest>,
) -> Result<axum::Json<LoginResponse>, ApiError> {
    let user = deps.store.find_user(&body.username).await?;
    // Longer passwords were never accepted at sign-up; bcrypt would only see
    // their first 72 bytes, so refuse them rather than match on a prefix.
    let acceptable = body.password.expose_secret().len() <= NewPassword::MAX_BYTES;
    let stored_hash = user.as_ref().and_then(|user| user.password_hash());
    let password = body.password.clone();
    let verified = deps
        .passwords
        .verify(body.password, stored_hash.clone())
        .await?;
    let (user, stored_hash) = match (user, stored_hash) {
        (Some(user), Some(hash)) if verified && acceptable => (user, hash),
        _ => {
            tracing::info!("login refused");
            return Err(ApiError::Unauthorized(
                "invalid username or password".into(),
            ));
        }
    };
    if deps.passwords.needs_rehash(&stored_hash) {
        rehash(&deps, &user.username, &stored_hash, password).await;
    }

    let role = user.role();
    let token = deps.tokens.issue(&user.username, role);
    let event = Event::new(
        EventType::UserActivity,
        &user.username,
        format!("User {} logged in", user.username),
    );
    deps.events.emit(&event, &token).await;
    tracing::info!("user logged in");

    Ok(axum::Json(LoginResponse {
        access_token: token.expose_secret().to_owned(),
        token_type: "bearer".into(),
        role,
    }))
}

/// Stores the password again at the configured cost. A failure only costs the
/// next login another try, so it is logged and the login goes on.
async fn rehash(deps: &Deps, username: &str, old_hash: &str, password: SecretString) {
    let result = async {
        let hash = deps.passwords.hash(password).await?;
        deps.store
            .replace_password_hash(username, old_hash, &hash)
            .await?;
        Ok::<_, ApiError>(())
    }
    .await;
    match result {
        Ok(()) => tracing::info!("password rehashed at the configured cost"),
        Err(err) => tracing::warn!(error = %err, "password not rehashed"),
    }
}
