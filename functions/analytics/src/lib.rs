//! `GET /analytics` (admin): a summary of `user_analytics`, computed by the database.

use std::sync::{Arc, Mutex, PoisonError};

use axum::{
    Extension,
    body::Bytes,
    extract::State,
    http::header,
    response::{IntoResponse as _, Response},
    routing::get,
};
use finapp_shared::{
    Deps,
    http::{AdminUser, ApiError, ErrorBody, Routes},
    store::AnalyticsSummary,
};

pub fn router(deps: Arc<Deps>) -> Routes {
    Routes::new()
        .route(
            "/analytics",
            get(analytics).layer(Extension(Arc::new(LastBody::default()))),
        )
        .with_state(deps)
}

/// The original's fields plus counts per event type; zeros when there are no events.
///
/// At most `ANALYTICS_CACHE_MS` plus one read old.
#[utoipa::path(get, path = "/analytics", tag = "admin", security(("bearer" = [])), responses(
        (status = 200, description = "The summary", body = AnalyticsSummary),
        (status = 401, description = "Missing, malformed, forged or expired token, or its user no longer exists", body = ErrorBody),
        (status = 403, description = "The caller is not an admin", body = ErrorBody),
        (status = 500, description = "Internal error (logged, never detailed)", body = ErrorBody),
))]
#[tracing::instrument(skip_all, fields(admin = %admin.username))]
pub async fn analytics(
    State(deps): State<Arc<Deps>>,
    AdminUser(admin): AdminUser,
    Extension(last): Extension<Arc<LastBody>>,
) -> Result<Response, ApiError> {
    let summary = deps.store.analytics_summary_cached().await?;
    let body = last.of(summary);
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The JSON of the summary answered last. While the store answers from its
/// cache, every request gets the same `Arc`, so the summary is serialised once
/// per read rather than once per request (it names every user: about 40 KB
/// for 1,000 users, the largest part of such a request's own work).
#[derive(Default)]
pub struct LastBody(Mutex<Option<(Arc<AnalyticsSummary>, Bytes)>>);

impl LastBody {
    fn of(&self, summary: Arc<AnalyticsSummary>) -> Bytes {
        let mut last = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((held, body)) = &*last
            && Arc::ptr_eq(held, &summary)
        {
            return body.clone();
        }
        // Counts and string-keyed maps: serde_json cannot fail on them.
        let body = Bytes::from(serde_json::to_vec(&*summary).expect("the summary serialises"));
        *last = Some((summary, body.clone()));
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(total_events: u64) -> Arc<AnalyticsSummary> {
        Arc::new(AnalyticsSummary {
            total_events,
            logins_per_user: [("alice".to_owned(), total_events)].into(),
            ..Default::default()
        })
    }

    #[test]
    fn a_summary_is_serialised_once_and_the_next_one_anew() {
        let last = LastBody::default();
        let first = summary(1);
        let body = last.of(Arc::clone(&first));
        let again = last.of(Arc::clone(&first));
        assert_eq!(body.as_ptr(), again.as_ptr(), "serialised a second time");
        assert_eq!(
            serde_json::from_slice::<AnalyticsSummary>(&body).unwrap(),
            *first
        );

        let next = summary(2);
        let body = last.of(Arc::clone(&next));
        assert_eq!(
            serde_json::from_slice::<AnalyticsSummary>(&body).unwrap(),
            *next
        );
    }
}
