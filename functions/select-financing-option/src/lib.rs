//! `POST /select-financing-option {"option_id"}`: records the caller's one
//! selected option and publishes `financing_option_selected`.

use std::sync::Arc;

use axum::{Router, extract::State, routing::post};
use finapp_shared::{
    Deps,
    events::{Event, EventType},
    http::{ApiError, AuthUser, Json},
    store::to_json,
};
use mongodb::bson::{Bson, oid::ObjectId};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/select-financing-option", post(select))
        .with_state(deps)
}

#[derive(Debug, Deserialize)]
pub struct SelectRequest {
    pub option_id: String,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SelectResponse {
    pub message: String,
    pub selected_option: serde_json::Value,
}

#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn select(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
    Json(body): Json<SelectRequest>,
) -> Result<axum::Json<SelectResponse>, ApiError> {
    let id = ObjectId::parse_str(body.option_id.trim())
        .map_err(|_| ApiError::Validation("option_id must be a 24-character hex id".into()))?;
    let option = deps
        .store
        .find_option(id)
        .await?
        .ok_or_else(|| ApiError::NotFound("no financing option has that id".into()))?;
    deps.store.select_option(&user.username, &option).await?;
    tracing::info!(option_id = %id, "financing option selected");

    let name = option.get_str("option_name").unwrap_or("an option");
    let message = format!("User {} selected {name}", user.username);
    let event = Event::new(EventType::FinancingOptionSelected, &user.username, message);
    deps.events.emit(&event, &user.token).await;

    Ok(axum::Json(SelectResponse {
        message: "Financing option selected successfully".into(),
        selected_option: to_json(Bson::Document(option)),
    }))
}
