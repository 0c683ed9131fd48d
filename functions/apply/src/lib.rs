//! `POST /apply`: stores a finance application for the caller together with
//! its `application_submitted` event, unless the caller already has the most pending
//! applications allowed (`MAX_PENDING_APPLICATIONS`). `POST /apply-finance`, the path the original web
//! client's form posts to, is the same endpoint under its old name.

use std::sync::Arc;

use axum::{extract::State, http::StatusCode, response::Response, routing::post};
use finapp_shared::{
    Deps,
    events::{Event, EventType},
    finance::{ApplicationRequest, NewApplication},
    http::{ApiError, AuthUser, ErrorBody, Json, Routes},
    idempotency::{self, IdempotencyHeader, IdempotencyKey},
    store::{ApplicationDoc, Effect, OutboxRecord, WriteIds},
};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route("/apply", post(apply))
        .route("/apply-finance", post(apply_finance))
        .with_state(deps)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ApplyResponse {
    pub message: String,
    pub application_id: String,
    pub submitted_by: String,
}

/// Submits a finance application for the caller; records `application_submitted`.
#[utoipa::path(post, path = "/apply", tag = "finance", request_body = ApplicationRequest,
    security(("bearer" = [])), params(IdempotencyHeader), responses(
        (status = 201, description = "Submitted as pending (or, with an `Idempotency-Key` already used for this body, the first response again)", body = ApplyResponse),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 409, description = "The caller already has `MAX_PENDING_APPLICATIONS` (default 100) pending applications, or a request with the same `Idempotency-Key` is still in progress", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, or outside its rules; the `Idempotency-Key` is malformed or was used with a different body", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
        (status = 503, description = "The database is unavailable or the event could not be recorded; retry after `Retry-After` seconds", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn apply(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(body): Json<ApplicationRequest>,
) -> Result<Response, ApiError> {
    submit_once(&deps, user, key, body).await
}

/// The original web client's name for `POST /apply`: the same rules and response.
#[utoipa::path(post, path = "/apply-finance", tag = "finance", request_body = ApplicationRequest,
    security(("bearer" = [])), params(IdempotencyHeader), responses(
        (status = 201, description = "Submitted as pending (or, with an `Idempotency-Key` already used for this body, the first response again)", body = ApplyResponse),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 409, description = "The caller already has `MAX_PENDING_APPLICATIONS` (default 100) pending applications, or a request with the same `Idempotency-Key` is still in progress", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, or outside its rules; the `Idempotency-Key` is malformed or was used with a different body", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
        (status = 503, description = "The database is unavailable or the event could not be recorded; retry after `Retry-After` seconds", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn apply_finance(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(body): Json<ApplicationRequest>,
) -> Result<Response, ApiError> {
    submit_once(&deps, user, key, body).await
}

/// Both paths are one operation: a key used on one is honoured on the other.
async fn submit_once(
    deps: &Deps,
    user: AuthUser,
    key: IdempotencyKey,
    body: ApplicationRequest,
) -> Result<Response, ApiError> {
    let keyed = key.scope(&user.username, "apply", &body);
    idempotency::run(deps, keyed, |ids| submit(deps, user, body, ids)).await
}

/// One write: the outbox record of `application_submitted`, carrying the
/// application (see `store::effects`), then the application itself.
async fn submit(
    deps: &Deps,
    user: AuthUser,
    body: ApplicationRequest,
    ids: WriteIds,
) -> Result<(StatusCode, axum::Json<ApplyResponse>), ApiError> {
    let application = NewApplication::try_from(body).map_err(ApiError::Validation)?;
    // Checked before the write, so concurrent requests of one user can pass
    // the cap by at most their number; it bounds growth, not an exact count.
    // A retry of a key whose first attempt may have written is not checked
    // again: it must find the application it wrote, not be refused for it.
    let cap = deps.config.accounts.max_pending_applications;
    if !ids.resumed && deps.store.pending_count(&user.username, cap).await? >= cap {
        return Err(ApiError::Conflict(format!(
            "you already have {cap} pending applications, the most allowed; \
             wait for a decision on them before applying again"
        )));
    }
    let message = format!(
        "Application by {} for {}",
        user.username, application.amount
    );
    let event = Event::with_id(
        ids.event,
        EventType::ApplicationSubmitted,
        &user.username,
        message,
    );
    let record = OutboxRecord::new(&event).with_effect(Effect::InsertApplication {
        id: ids.document,
        application: ApplicationDoc::pending(&application, &user.username),
    });
    deps.store.commit(&record).await?;
    tracing::info!(application_id = %ids.document, "application submitted");

    Ok((
        StatusCode::CREATED,
        axum::Json(ApplyResponse {
            message: "Finance application submitted".into(),
            application_id: ids.document.to_hex(),
            submitted_by: user.username,
        }),
    ))
}
