//! `GET /status`: the caller's own applications, newest first, at most a page
//! at a time.

use std::sync::Arc;

use axum::{
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use finapp_shared::{
    Deps,
    finance::{PageQuery, PageRequest},
    http::{ApiError, AuthUser, ErrorBody, Query, Routes},
};
use serde::Deserialize;

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new().route("/status", get(status)).with_state(deps)
}

/// Applications per page when the caller does not ask: as many as any page holds.
pub const DEFAULT_PER_PAGE: u64 = PageRequest::MAX_PER_PAGE;

/// Which of the caller's applications to return.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StatusQuery {
    /// 1 or more; default 1 (the newest).
    #[param(minimum = 1, maximum = 1_000_000)]
    pub page: Option<u64>,
    /// 1 to 100; default 100.
    #[param(minimum = 1, maximum = 100)]
    pub per_page: Option<u64>,
}

/// The caller's applications, newest first: a JSON array (empty when there are
/// none), each application as stored with `_id` as a string.
///
/// The array holds one page: the newest 100 unless `page` and `per_page` say
/// otherwise. When older applications remain, the `Link` header names the
/// next page (`rel="next"`, RFC 8288); without it, this page is the last.
#[utoipa::path(get, path = "/status", tag = "finance", params(StatusQuery), security(("bearer" = [])), responses(
        (status = 200, description = "One page of the caller's applications", body = Vec<Object>,
            headers(("Link" = String, description = "`</status?page=N&per_page=M>; rel=\"next\"` when more remain"))),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 422, description = "`page` or `per_page` out of range", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
        (status = 503, description = "The database is unavailable; retry after `Retry-After` seconds", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn status(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
    Query(query): Query<StatusQuery>,
) -> Result<Response, ApiError> {
    let page = PageRequest::try_from(PageQuery {
        page: query.page,
        per_page: Some(query.per_page.unwrap_or(DEFAULT_PER_PAGE)),
    })
    .map_err(ApiError::Validation)?;
    let (applications, more) = deps.store.applications_of(&user.username, page).await?;
    let mut response = axum::Json(applications).into_response();
    if more {
        let next = format!(
            "</status?page={}&per_page={}>; rel=\"next\"",
            page.page + 1,
            page.per_page
        );
        if let Ok(value) = HeaderValue::from_str(&next) {
            response.headers_mut().insert(header::LINK, value);
        }
    }
    Ok(response)
}
