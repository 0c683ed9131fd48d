//! `GET /status`: the caller's own applications, newest first.

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use finapp_shared::{
    Deps,
    http::{ApiError, AuthUser, ErrorBody},
};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new().route("/status", get(status)).with_state(deps)
}

/// The caller's applications, newest first: a JSON array (empty when there are
/// none), each application as stored with `_id` as a string.
#[utoipa::path(get, path = "/status", tag = "finance", security(("bearer" = [])), responses(
        (status = 200, description = "The caller's applications", body = Vec<Object>),
        (status = 401, description = "Missing, malformed, forged or expired token", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn status(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
) -> Result<axum::Json<Vec<serde_json::Value>>, ApiError> {
    Ok(axum::Json(
        deps.store.applications_of(&user.username).await?,
    ))
}
