//! `POST /signup`: registers a user together with its `user_registered`
//! event, and returns an access token.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, routing::post};
use finapp_shared::{
    Deps,
    auth::Role,
    domain::{NewPassword, Username},
    events::{Event, EventType},
    http::{ApiError, ErrorBody, Json, Routes},
    store::{Applied, Effect, OutboxRecord, UserDoc, WriteIds},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route("/signup", post(signup))
        .with_state(deps)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(example = json!({"username": "john_doe", "password": "secure_password"}))]
pub struct SignupRequest {
    /// 3 to 64 characters from `[A-Za-z0-9_.-]`.
    #[schema(pattern = "^[A-Za-z0-9_.-]{3,64}$")]
    pub username: String,
    /// 8 to 72 bytes.
    #[schema(value_type = String, format = Password)]
    pub password: SecretString,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SignupResponse {
    pub message: String,
    pub access_token: String,
    pub token_type: String,
}

/// Registers a user and returns an access token; records `user_registered`.
#[utoipa::path(post, path = "/signup", tag = "auth", request_body = SignupRequest, responses(
        (status = 201, description = "Registered", body = SignupResponse),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 409, description = "The username is taken", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, or outside its rules", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
        (status = 503, description = "The database is unavailable or the event could not be recorded; retry after `Retry-After` seconds", body = ErrorBody),
))]
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
    // One write: the outbox record of `user_registered` carrying the user
    // (see `store::effects`), then the user. A name taken in between is the
    // other user's: this record goes (or the relay drops it) and nothing of
    // this sign-up stays.
    let ids = WriteIds::fresh();
    let mut user = UserDoc::new(username.as_str(), &hash, Role::User);
    user.id = Some(ids.document);
    let event = Event::with_id(
        ids.event,
        EventType::UserRegistered,
        username.as_str(),
        format!("User {} registered", username.as_str()),
    );
    let record = OutboxRecord::new(&event).with_effect(Effect::InsertUser(user));
    if deps.store.commit(&record).await? == Applied::Conflict {
        if let Err(err) = deps.store.forget_outbox(&[&record.id]).await {
            tracing::warn!(error = %err, "the refused sign-up's record stays for the relay to drop");
        }
        return Err(taken());
    }
    tracing::info!("user registered");
    let token = deps.tokens.issue(username.as_str(), Role::User);

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
    ApiError::Conflict("User already exists".into())
}
