//! `POST /login`: checks a username and password, returns an access token, and
//! records a `user_activity` "logged in" event in the outbox.
//!
//! An unknown user and a wrong password get the same answer in the same time:
//! both run one bcrypt verification at the cost of the stored hashes. A stored
//! hash of another cost than `BCRYPT_COST` is replaced at the next successful
//! login.
//!
//! Failed logins are throttled per username and per client address (see
//! [`LoginThrottle`]): at the limit, `/login` answers 429 with `Retry-After`
//! until the window that the first failure opened closes. Refused attempts
//! are not counted and never extend a window, so no lock outlasts
//! `LOGIN_FAILURE_WINDOW_SECS`; a successful login resets the name's count.

use std::sync::Arc;

use axum::{extract::State, routing::post};
use finapp_shared::{
    Deps,
    auth::Role,
    config::LoginThrottle,
    domain::NewPassword,
    events::{Event, EventType},
    http::{ApiError, ClientAddress, ErrorBody, Json, Routes},
    store::ThrottleKey,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Routes {
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
    Routes::new()
        .route("/login", post(login))
        .with_peer_address()
        .with_state(deps)
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

/// Checks a username and password and returns an access token; records a
/// `user_activity` "logged in" event.
#[utoipa::path(post, path = "/login", tag = "auth", request_body = LoginRequest, responses(
        (status = 200, description = "Logged in", body = LoginResponse),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "Wrong username or password (the same answer for both, in the same time)", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, or outside its rules", body = ErrorBody),
        (status = 429, description = "Too many failed logins for this name or from this address; wait `Retry-After` seconds", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
        (status = 503, description = "The database is unavailable or the event could not be recorded; retry after `Retry-After` seconds", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %body.username))]
pub async fn login(
    State(deps): State<Arc<Deps>>,
    ClientAddress(address): ClientAddress,
    Json(body): Json<LoginRequest>,
) -> Result<axum::Json<LoginResponse>, ApiError> {
    // Refused before any lookup; it says nothing about who exists.
    finapp_shared::domain::no_nul("username", &body.username).map_err(ApiError::Validation)?;
    let throttle = deps.config.login_throttle;
    let keys = throttle_keys(&throttle, &body.username, address);
    let (blocked, user) = tokio::join!(
        deps.store.login_blocked_for(&keys),
        deps.store.find_user(&body.username),
    );
    if let Some(wait) = blocked? {
        let retry_after = wait.as_millis().div_ceil(1000).max(1);
        tracing::info!(retry_after, "login throttled");
        return Err(ApiError::TooManyRequests {
            message: format!("too many failed logins; try again in {retry_after} s"),
            retry_after: u64::try_from(retry_after).unwrap_or(u64::MAX),
        });
    }
    let user = user?;
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
            let counted: Vec<ThrottleKey> = keys.iter().map(|(key, _)| *key).collect();
            deps.store
                .record_login_failure(&counted, throttle.window)
                .await?;
            return Err(ApiError::Unauthorized(
                "invalid username or password".into(),
            ));
        }
    };
    if let Err(err) = deps
        .store
        .clear_login_failures(ThrottleKey::User(&user.username))
        .await
    {
        tracing::warn!(error = %err, "failed-login count not reset");
    }
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
    deps.store.record_event(&event).await?;
    tracing::info!("user logged in");

    Ok(axum::Json(LoginResponse {
        access_token: token.expose_secret().to_owned(),
        token_type: "bearer".into(),
        role,
    }))
}

/// Longest username that gets a count of its own: far beyond any sign-up
/// (64 characters); a longer one is throttled by its address only.
const MAX_COUNTED_USERNAME_BYTES: usize = 256;

/// The keys a login attempt is counted against, each with its limit.
fn throttle_keys<'a>(
    throttle: &LoginThrottle,
    username: &'a str,
    address: Option<std::net::IpAddr>,
) -> Vec<(ThrottleKey<'a>, u32)> {
    let name = (username.len() <= MAX_COUNTED_USERNAME_BYTES)
        .then_some((ThrottleKey::User(username), throttle.max_failures_per_user));
    let address = address.map(|ip| (ThrottleKey::Address(ip), throttle.max_failures_per_address));
    name.into_iter().chain(address).collect()
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
