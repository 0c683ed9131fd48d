//! `POST /signup`: registers a user, returns an access token, and publishes
//! `user_registered`.

use std::sync::Arc;

use axum::{Router, extract::State, http::StatusCode, routing::post};
use finapp_shared::{
    Deps,
    auth::Role,
    domain::{NewPassword, Username},
    events::{Event, EventType},
    http::{ApiError, Json},
    store::{InsertUserError, UserDoc},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/signup", post(signup))
        .with_state(deps)
}

#[derive(Deserialize)]
pub struct SignupRequest {
    pub username: String,
    pub password: SecretString,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SignupResponse {
    pub message: String,
    pub access_token: String,
    pub token_type: String,
}

#[tracing::instrument(skip_all, fields(username = %body.username))]
pub async fn signup(
    State(deps): State<Arc<Deps>>,
    Json(body): Json<SignupRequest>,
) -> Result<(StatusCode, axum::Json<SignupResponse>), ApiError> {
    let username = Username::parse(&body.username).map_err(ApiError::Validation)?;
    let password = NewPassword::parse(body.password).map_err(ApiError::Validation)?;

    // A cheap early answer for the common case; the unique index settles races.
    if deps.store.find_user(username.as_str()).await?.is_some() {
        return Err(taken());
    }
    let hash = deps.passwords.hash(password.into_secret()).await?;
    deps.store
        .insert_user(&UserDoc::new(username.as_str(), &hash, Role::User))
        .await
        .map_err(|err| match err {
            InsertUserError::Taken => taken(),
            InsertUserError::Store(err) => err.into(),
        })?;
    tracing::info!("user registered");

    let token = deps.tokens.issue(username.as_str(), Role::User);
    let event = Event::new(
        EventType::UserRegistered,
        username.as_str(),
        format!("User {} registered", username.as_str()),
    );
    deps.events.emit(&event, &token).await;

    Ok((
        StatusCode::CREATED,
        axum::Json(SignupResponse {
            message: "User registered successfully".into(),
            access_token: token.expose_secret().to_owned(),
            token_type: "bearer".into(),
        }),
    ))
}

fn taken() -> ApiError {
    ApiError::Conflict("username is already registered".into())
}
