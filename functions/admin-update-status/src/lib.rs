//! `PUT /admin/update_status/{application_id}/{status}` (admin): decides one application.

use std::sync::Arc;

use axum::{Router, extract::State, routing::put};
use finapp_shared::{
    Deps,
    finance::Status,
    http::{AdminUser, ApiError, Path},
};
use mongodb::bson::oid::ObjectId;
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route(
            "/admin/update_status/{application_id}/{status}",
            put(admin_update_status),
        )
        .with_state(deps)
}

#[derive(Debug, Serialize, Deserialize)]
pub struct AdminUpdateStatusResponse {
    pub message: String,
    pub application_id: String,
    pub status: String,
}

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
