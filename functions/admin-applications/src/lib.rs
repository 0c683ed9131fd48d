//! `GET /admin/applications?page=&per_page=` (admin): every application, paged
//! in a stable order.

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use finapp_shared::{
    Deps,
    finance::{PageQuery, PageRequest},
    http::{AdminUser, ApiError, Query},
    store::ApplicationsPage,
};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/admin/applications", get(admin_applications))
        .with_state(deps)
}

#[tracing::instrument(skip_all, fields(admin = %admin.username))]
pub async fn admin_applications(
    State(deps): State<Arc<Deps>>,
    AdminUser(admin): AdminUser,
    Query(query): Query<PageQuery>,
) -> Result<axum::Json<ApplicationsPage>, ApiError> {
    let page = PageRequest::try_from(query).map_err(ApiError::Validation)?;
    Ok(axum::Json(deps.store.page_applications(page).await?))
}
