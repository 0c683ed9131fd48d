//! `GET /analytics` (admin): a summary of `user_analytics`, computed by the database.

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use finapp_shared::{
    Deps,
    http::{AdminUser, ApiError},
    store::AnalyticsSummary,
};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/analytics", get(analytics))
        .with_state(deps)
}

/// The original's fields plus counts per event type; zeros when there are no events.
#[tracing::instrument(skip_all, fields(admin = %admin.username))]
pub async fn analytics(
    State(deps): State<Arc<Deps>>,
    AdminUser(admin): AdminUser,
) -> Result<axum::Json<AnalyticsSummary>, ApiError> {
    Ok(axum::Json(deps.store.analytics_summary().await?))
}
