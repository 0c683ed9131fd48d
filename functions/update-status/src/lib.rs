//! `PUT /update_status/{user}/{status}` (admin): decides every application of a user.
//! The original had no admin check here; this one does.

use std::sync::Arc;

use axum::{extract::State, routing::put};
use finapp_shared::{
    Deps,
    finance::{Decision, Status},
    http::{AdminUser, ApiError, ErrorBody, Path, Routes},
    store::UpdateCounts,
};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route("/update_status/{user}/{status}", put(update_status))
        .with_state(deps)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct UpdateStatusResponse {
    pub message: String,
    #[serde(flatten)]
    pub counts: UpdateCounts,
}

/// Decides every application of `user` (admin only).
#[utoipa::path(put, path = "/update_status/{user}/{status}", tag = "admin", security(("bearer" = [])),
    params(
        ("user" = String, Path, description = "The applicant's username"),
        ("status" = inline(Decision), Path, description = "`approved` or `denied`"),
    ),
    responses(
        (status = 200, description = "Updated", body = UpdateStatusResponse),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, or outside its rules", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(admin = %admin.username, user = %user))]
pub async fn update_status(
    State(deps): State<Arc<Deps>>,
    AdminUser(admin): AdminUser,
    Path((user, status)): Path<(String, String)>,
) -> Result<axum::Json<UpdateStatusResponse>, ApiError> {
    let status = Status::parse_decision(&status).map_err(ApiError::Validation)?;
    finapp_shared::domain::no_nul("user", &user).map_err(ApiError::Validation)?;
    let counts = deps
        .store
        .decide_for_user(&user, status, &admin.username)
        .await?;
    tracing::info!(
        status = status.as_str(),
        matched = counts.matched_count,
        "status updated"
    );
    Ok(axum::Json(UpdateStatusResponse {
        message: format!("Status updated to {}", status.as_str()),
        counts,
    }))
}
