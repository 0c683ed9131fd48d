//! `POST /log-financing-options-visit`: the original web client's options page
//! calls it once per visit; it records the `user_activity` "checked financing
//! options" event, the only event that analytics counts as a financing check.

use std::sync::Arc;

use axum::{extract::State, routing::post};
use finapp_shared::{
    Deps,
    events::{Event, EventType},
    http::{ApiError, AuthUser, ErrorBody, Routes},
};
use serde::{Deserialize, Serialize};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route("/log-financing-options-visit", post(log_visit))
        .with_state(deps)
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VisitLogged {
    #[schema(example = "Visit logged successfully")]
    pub message: String,
}

/// Records that the caller looked at the financing options; takes no body.
#[utoipa::path(post, path = "/log-financing-options-visit", tag = "finance",
    security(("bearer" = [])), responses(
        (status = 200, description = "Logged", body = VisitLogged),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
        (status = 503, description = "The database is unavailable or the event could not be recorded; retry after `Retry-After` seconds", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn log_visit(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
) -> Result<axum::Json<VisitLogged>, ApiError> {
    let message = format!("User {} checked financing options", user.username);
    let event = Event::new(EventType::UserActivity, &user.username, message);
    deps.store.record_event(&event).await?;
    Ok(axum::Json(VisitLogged {
        message: "Visit logged successfully".into(),
    }))
}
