//! `GET /financing-options`: every financing option. It records no event: the
//! original web client loads the catalogue on several pages, and only an
//! explicit `POST /log-financing-options-visit` counts as a financing check.

use std::sync::Arc;

use axum::{extract::State, routing::get};
use finapp_shared::{
    Deps,
    http::{ApiError, AuthUser, ErrorBody, Routes},
};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route("/financing-options", get(financing_options))
        .with_state(deps)
}

/// Every financing option, `_id` as a string.
///
/// Served from this process's memory for a few seconds after each read.
#[utoipa::path(get, path = "/financing-options", tag = "finance", security(("bearer" = [])), responses(
        (status = 200, description = "The options", body = Vec<Object>),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn financing_options(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
) -> Result<axum::Json<Vec<serde_json::Value>>, ApiError> {
    Ok(axum::Json(deps.store.financing_options_cached().await?))
}
