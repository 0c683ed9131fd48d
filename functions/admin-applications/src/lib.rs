//! `GET /admin/applications?page=&per_page=` (admin): every application, paged
//! in a stable order.

use std::sync::Arc;

use axum::{extract::State, routing::get};
use finapp_shared::{
    Deps,
    finance::{PageQuery, PageRequest},
    http::{AdminUser, ApiError, ErrorBody, Query, Routes},
    store::ApplicationsPage,
};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route("/admin/applications", get(admin_applications))
        .with_state(deps)
}

/// Every application, a page at a time, ordered by `_id` (admin only).
#[utoipa::path(get, path = "/admin/applications", tag = "admin", params(PageQuery),
    security(("bearer" = [])), responses(
        (status = 200, description = "One page", body = ApplicationsPage),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 422, description = "A field is missing, of the wrong type, or outside its rules", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(admin = %admin.username))]
pub async fn admin_applications(
    State(deps): State<Arc<Deps>>,
    AdminUser(admin): AdminUser,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<ApplicationsPage>, ApiError> {
    let page = PageRequest::try_from(query).map_err(ApiError::Validation)?;
    Ok(axum::Json(deps.store.page_applications(page).await?))
}
