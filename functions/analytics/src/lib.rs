//! `GET /analytics` (admin): a summary of `user_analytics`, computed by the database.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    response::{IntoResponse as _, Response},
    routing::get,
};
use finapp_shared::{
    Deps,
    http::{AdminUser, ApiError, ErrorBody},
    store::AnalyticsSummary,
};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/analytics", get(analytics))
        .with_state(deps)
}

/// The original's fields plus counts per event type; zeros when there are no events.
///
/// At most `ANALYTICS_CACHE_MS` plus one read old.
#[utoipa::path(get, path = "/analytics", tag = "admin", security(("bearer" = [])), responses(
        (status = 200, description = "The summary", body = AnalyticsSummary),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(admin = %admin.username))]
pub async fn analytics(
    State(deps): State<Arc<Deps>>,
    AdminUser(admin): AdminUser,
) -> Result<Response, ApiError> {
    let summary = deps.store.analytics_summary_cached().await?;
    Ok(axum::Json(&*summary).into_response())
}
