//! `GET /dashboard-info`: the caller's applications counted by status, by the database.

use std::sync::Arc;

use axum::{extract::State, routing::get};
use finapp_shared::{
    Deps,
    http::{ApiError, AuthUser, ErrorBody, Routes},
    store::StatusCounts,
};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route("/dashboard-info", get(dashboard_info))
        .with_state(deps)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DashboardInfo {
    pub username: String,
    pub application_summary: StatusCounts,
}

/// The caller's applications counted by status.
#[utoipa::path(get, path = "/dashboard-info", tag = "finance", security(("bearer" = [])), responses(
        (status = 200, description = "Counts by status", body = DashboardInfo),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn dashboard_info(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
) -> Result<axum::Json<DashboardInfo>, ApiError> {
    let application_summary = deps.store.status_counts(&user.username).await?;
    Ok(axum::Json(DashboardInfo {
        username: user.username,
        application_summary,
    }))
}
