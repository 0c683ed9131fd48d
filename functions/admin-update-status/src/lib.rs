//! `PUT /admin/update_status/{application_id}/{status}` (admin): decides one application.

use std::sync::Arc;

use axum::{extract::State, routing::put};
use finapp_shared::{
    Deps,
    finance::{Decision, Status},
    http::{AdminUser, ApiError, ErrorBody, Path, Routes},
};
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route(
            "/admin/update_status/{application_id}/{status}",
            put(admin_update_status),
        )
        .with_state(deps)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AdminUpdateStatusResponse {
    pub message: String,
    pub application_id: String,
    pub status: String,
}

/// Decides one application (admin only).
#[utoipa::path(put, path = "/admin/update_status/{application_id}/{status}", tag = "admin",
    security(("bearer" = [])),
    params(
        ("application_id" = String, Path, pattern = "^[0-9a-fA-F]{24}$", description = "The application's `_id`: 24 hex characters"),
        ("status" = inline(Decision), Path, description = "`approved` or `denied`"),
    ),
    responses(
        (status = 200, description = "Updated", body = AdminUpdateStatusResponse),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 404, description = "No such resource", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, or outside its rules", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(admin = %admin.username, application_id = %application_id))]
pub async fn admin_update_status(
    State(deps): State<Arc<Deps>>,
    AdminUser(admin): AdminUser,
    Path((application_id, status)): Path<(String, String)>,
) -> Result<axum::Json<AdminUpdateStatusResponse>, ApiError> {
    let id = ObjectId::parse_str(&application_id)
        .map_err(|_| ApiError::Validation("application_id must be a 24-character hex id".into()))?;
    let status = Status::parse_decision(&status).map_err(ApiError::Validation)?;
    if !deps.store.decide(id, status, &admin.username).await? {
        return Err(ApiError::NotFound("no application has that id".into()));
    }
    tracing::info!(status = status.as_str(), "application status updated");
    Ok(axum::Json(AdminUpdateStatusResponse {
        message: format!("Application status updated to {}", status.as_str()),
        application_id: id.to_hex(),
        status: status.as_str().into(),
    }))
}
