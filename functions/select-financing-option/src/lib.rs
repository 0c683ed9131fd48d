//! `POST /select-financing-option {"option_id"}`: records the caller's one
//! selected option and records `financing_option_selected` in the outbox.

use std::sync::Arc;

use axum::{extract::State, response::Response, routing::post};
use finapp_shared::{
    Deps,
    events::{Event, EventType},
    http::{ApiError, AuthUser, ErrorBody, Json, Routes},
    idempotency::{self, IdempotencyHeader, IdempotencyKey},
    store::{Effect, OutboxRecord, WriteIds, to_json},
};
use mongodb::bson::{Bson, DateTime, oid::ObjectId};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route("/select-financing-option", post(select))
        .with_state(deps)
}

#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct SelectRequest {
    /// A financing option's `_id`: 24 hex characters.
    #[schema(pattern = "^[0-9a-fA-F]{24}$")]
    pub option_id: String,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SelectResponse {
    pub message: String,
    #[schema(value_type = Object)]
    pub selected_option: serde_json::Value,
}

/// Records the caller's one selected option (replacing any earlier one);
/// records `financing_option_selected`.
#[utoipa::path(post, path = "/select-financing-option", tag = "finance", request_body = SelectRequest,
    security(("bearer" = [])), params(IdempotencyHeader), responses(
        (status = 200, description = "Selected (or, with an `Idempotency-Key` already used for this body, the first response again)", body = SelectResponse),
        (status = 400, description = "The body is not valid JSON", body = ErrorBody),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 404, description = "No such resource", body = ErrorBody),
        (status = 409, description = "A request with the same `Idempotency-Key` is still in progress", body = ErrorBody),
        (status = 413, description = "The body is larger than 64 KiB", body = ErrorBody),
        (status = 415, description = "The body is not declared as JSON", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, or outside its rules; the `Idempotency-Key` is malformed or was used with a different body", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
        (status = 503, description = "The database is unavailable or the event could not be recorded; retry after `Retry-After` seconds", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn select(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
    key: IdempotencyKey,
    Json(body): Json<SelectRequest>,
) -> Result<Response, ApiError> {
    let keyed = key.scope(&user.username, "select-financing-option", &body);
    idempotency::run(&deps, keyed, |ids| select_option(&deps, user, body, ids)).await
}

/// One write: the outbox record of `financing_option_selected`, carrying the
/// selection (see `store::effects`), then the selection itself.
async fn select_option(
    deps: &Deps,
    user: AuthUser,
    body: SelectRequest,
    ids: WriteIds,
) -> Result<axum::Json<SelectResponse>, ApiError> {
    let id = ObjectId::parse_str(&body.option_id)
        .map_err(|_| ApiError::Validation("option_id must be a 24-character hex id".into()))?;
    let option = deps
        .store
        .find_option(id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no financing option has that id".into()))?;
    let name = option.get_str("option_name").unwrap_or("an option");
    let message = format!("User {} selected {name}", user.username);
    let event = Event::with_id(
        ids.event,
        EventType::FinancingOptionSelected,
        &user.username,
        message,
    );
    let record = OutboxRecord::new(&event).with_effect(Effect::Select {
        user: user.username.clone(),
        option: option.clone(),
        at: DateTime::now(),
    });
    deps.store.commit(&record).await?;
    tracing::info!(option_id = %id, "financing option selected");

    Ok(axum::Json(SelectResponse {
        message: "Financing option selected successfully".into(),
        selected_option: to_json(Bson::Document(option)),
    }))
}
