//! `GET /financing-options`: every financing option; publishes a `user_activity`
//! "checked financing options" event, which analytics counts.

use std::sync::Arc;

use axum::{Router, extract::State, routing::get};
use finapp_shared::{
    Deps,
    events::{Event, EventType},
    http::{ApiError, AuthUser},
};

pub fn router(deps: Arc<Deps>) -> Router {
    Router::new()
        .route("/financing-options", get(financing_options))
        .with_state(deps)
}

#[tracing::instrument(skip_all, fields(username = %user.username))]
pub async fn financing_options(
    State(deps): State<Arc<Deps>>,
    user: AuthUser,
) -> Result<axum::Json<Vec<serde_json::Value>>, ApiError> {
    let options = deps.store.financing_options().await?;
    let message = format!("User {} checked financing options", user.username);
    let event = Event::new(EventType::UserActivity, &user.username, message);
    deps.events.emit(&event, &user.token).await;
    Ok(axum::Json(options))
}
