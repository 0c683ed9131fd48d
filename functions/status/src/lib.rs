//! `GET /status`: the caller's own applications, newest first.

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use finapp_shared::{
    Deps,
    http::{ApiError, AuthUser},
};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new().route("/status", get(status)).with_state(deps)
}

/// A JSON array (empty when there are none), each application with `_id` as a string.
#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn status(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
) -> Result<axum::Json<Vec<serde_json::Value>>, ApiError> {
    Ok(axum::Json(
        deps.store.applications_of(&user.username).await?,
    ))
}
