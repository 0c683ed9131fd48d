//! `Idempotency-Key` for the writing routes (`POST /apply`, `/apply-finance`,
//! `/select-financing-option`), as Stripe's API and AWS Powertools have it.
//!
//! A request with a key claims it for its user (see `store::idempotency`). The
//! first performs the write and records its response; a repeat with the same
//! body within `IDEMPOTENCY_TTL_SECS` gets that response again, status and
//! body byte for byte, with `Idempotent-Replayed: true`, and writes nothing.
//! A repeat while the first is still running waits for it, up to
//! [`wait_limit`], then gets 409. The same key with another body is a 422.
//!
//! Only successes are recorded. A request refused with a 4xx gives its
//! claim up, as Powertools does: every such refusal (validation, the pending
//! cap, an unknown option) is decided before anything is written, so a retry
//! with the same key, perhaps with a corrected body, runs afresh. A request
//! that fails with a 5xx (the database went away, a timeout), or whose
//! process stopped, may have written: its claim is kept with the ids it
//! wrote with (`store::WriteIds`) and its lease ended (or left to run out),
//! and the next request with the key takes it over and finishes the write
//! under the same ids. So a key yields one write and one event whatever
//! happened to its first attempt, and the retry's answer is the answer the
//! first would have given.
//!
//! Without the header nothing here runs: no extra round trip.

use std::{future::Future, time::Duration};

use axum::{
    body::Body,
    extract::FromRequestParts,
    http::{HeaderName, HeaderValue, StatusCode, header, request::Parts},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest as _, Sha256};

use crate::{
    deps::Deps,
    http::ApiError,
    store::{Claim, ClaimToken, KeyClaim, StoredResponse, WriteIds},
};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header set on a replayed response.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 255;
/// How often a request waiting on another with the same key looks again.
pub const POLL_INTERVAL: Duration = Duration::from_millis(25);
/// The largest response body recorded (every one here is a small object).
const MAX_RECORDED_BODY: usize = 64 * 1024;

/// The request's `Idempotency-Key`, if it sent one: 1 to 255 visible ASCII
/// characters, else a 422.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdempotencyKey(pub Option<String>);

/// The header as documented in OpenAPI (`params(IdempotencyHeader)`).
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IdempotencyHeader {
    /// Makes the request safe to retry: a repeat with the same key and body
    /// within 24 h (`IDEMPOTENCY_TTL_SECS`) returns the first response and
    /// writes nothing (`Idempotent-Replayed: true` marks it). The same key with
    /// another body is a 422 `idempotency_key_reused`; while the first request
    /// runs, a repeat waits for it, else 409 `idempotency_key_in_progress`.
    /// Keys are per user. 1 to 255 visible ASCII characters, e.g. a UUID.
    #[param(
        rename = "Idempotency-Key",
        value_type = String,
        required = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[!-~]{1,255}$"
    )]
    pub idempotency_key: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let mut values = parts.headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(Self(None));
        };
        if values.next().is_some() {
            return Err(ApiError::Validation(
                "send at most one Idempotency-Key header".into(),
            ));
        }
        validate_key(value.as_bytes()).map(|key| Self(Some(key.to_owned())))
    }
}

/// `raw` as a key: 1 to [`MAX_KEY_LEN`] visible ASCII characters (`!` to `~`).
pub fn validate_key(raw: &[u8]) -> Result<&str, ApiError> {
    let valid = (1..=MAX_KEY_LEN).contains(&raw.len()) && raw.iter().all(u8::is_ascii_graphic);
    match std::str::from_utf8(raw) {
        Ok(key) if valid => Ok(key),
        _ => Err(ApiError::Validation(format!(
            "Idempotency-Key must be 1 to {MAX_KEY_LEN} visible ASCII characters \
             (no spaces), e.g. a UUID"
        ))),
    }
}

impl IdempotencyKey {
    /// What [`run`] needs to know about this request, when it has a key:
    /// the user, the key, and the fingerprint of `operation` on `body`.
    pub fn scope(self, user: &str, operation: &str, body: &impl Serialize) -> Option<KeyedRequest> {
        let key = self.0?;
        let body = serde_json::to_value(body).expect("request bodies serialize to JSON");
        Some(KeyedRequest {
            user: user.to_owned(),
            key,
            fingerprint: fingerprint(operation, &body),
        })
    }
}

/// A request that sent a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedRequest {
    pub user: String,
    pub key: String,
    pub fingerprint: String,
}

/// SHA-256 (hex) of `operation` and the canonical form of `body`, so that one
/// key cannot be reused across routes. `body` is the request as the handler
/// parsed it, so bodies differing only in key order, white space, the
/// spelling of a number or fields the route ignores are the same request.
pub fn fingerprint(operation: &str, body: &Value) -> String {
    let mut text = String::with_capacity(operation.len() + 64);
    text.push_str(operation);
    text.push('\n');
    canonical(body, &mut text);
    Sha256::digest(text.as_bytes())
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Compact JSON with every object's keys sorted.
pub fn canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_unstable_by_key(|(key, _)| *key);
            out.push('{');
            for (i, (key, value)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical(value, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// How long a request waits for another with the same key before its 409:
/// three quarters of the request timeout, so the 409 comes before the 503
/// the timeout would give.
pub fn wait_limit(request_timeout: Duration) -> Duration {
    request_timeout * 3 / 4
}

/// Runs `write` once per key: without a key, simply runs it with fresh ids;
/// with one, runs it only if this request wins the key, with the key's write
/// ids, and otherwise answers what the winner answered (see the module's
/// documentation).
pub async fn run<R, W, F>(
    deps: &Deps,
    request: Option<KeyedRequest>,
    write: W,
) -> Result<Response, ApiError>
where
    R: IntoResponse,
    W: FnOnce(WriteIds) -> F,
    F: Future<Output = Result<R, ApiError>>,
{
    let Some(request) = request else {
        return write(WriteIds::fresh())
            .await
            .map(IntoResponse::into_response);
    };
    let claim = KeyClaim {
        user: &request.user,
        key: &request.key,
        fingerprint: &request.fingerprint,
        lease: deps.config.limits.request_timeout,
        ttl: deps.config.idempotency_ttl,
    };
    let deadline = tokio::time::Instant::now() + wait_limit(deps.config.limits.request_timeout);
    deps.store
        .purge_expired_idempotency_keys(&request.user)
        .await?;
    loop {
        match deps.store.claim_idempotency_key(&claim).await? {
            Claim::Won(token) => return perform(deps, token, write(token.writes)).await,
            Claim::Completed(stored) => return Ok(replay(&stored, true)),
            Claim::Mismatch => return Err(ApiError::IdempotencyKeyReused),
            Claim::InProgress => {
                if tokio::time::Instant::now() + POLL_INTERVAL > deadline {
                    return Err(ApiError::IdempotencyKeyInProgress);
                }
                tokio::time::sleep(POLL_INTERVAL).await;
            }
        }
    }
}

/// The winner's part: the write, then its response recorded (a success) or
/// the claim given up (a refusal) or left for a retry (a failure).
async fn perform<R: IntoResponse>(
    deps: &Deps,
    token: ClaimToken,
    write: impl Future<Output = Result<R, ApiError>>,
) -> Result<Response, ApiError> {
    let response = match write.await {
        Ok(answer) => answer.into_response(),
        Err(err) => {
            give_up(deps, token, err.status()).await;
            return Err(err);
        }
    };
    if !response.status().is_success() {
        give_up(deps, token, response.status()).await;
        return Ok(response);
    }
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), MAX_RECORDED_BODY).await;
    let Some(body) = body
        .ok()
        .and_then(|bytes| String::from_utf8(bytes.to_vec()).ok())
    else {
        // Never happens with our JSON bodies; the write is done, so say so.
        tracing::error!("a response could not be recorded for its Idempotency-Key");
        give_up(deps, token, StatusCode::INTERNAL_SERVER_ERROR).await;
        return Ok(status.into_response());
    };
    let stored = StoredResponse {
        status: i32::from(status.as_u16()),
        body,
    };
    match deps.store.complete_idempotency_key(token, &stored).await {
        Ok(true) => {}
        Ok(false) => tracing::warn!("the Idempotency-Key claim was taken over before completion"),
        // The write is done: answer it. A retry after the lease redoes it
        // under the same ids, which changes nothing.
        Err(err) => tracing::error!(error = %err, "record the response of an Idempotency-Key"),
    }
    Ok(replay(&stored, false))
}

/// Ends a claim whose request did not succeed: released after a refusal
/// (4xx, nothing written), abandoned with its write ids after a failure.
async fn give_up(deps: &Deps, token: ClaimToken, status: StatusCode) {
    let result = if status.is_client_error() {
        deps.store.release_idempotency_key(token).await
    } else {
        deps.store.abandon_idempotency_key(token).await
    };
    if let Err(err) = result {
        // The claim then lapses with its lease.
        tracing::warn!(error = %err, "end an Idempotency-Key claim");
    }
}

/// `stored` as a response; `replayed` adds `Idempotent-Replayed: true`.
fn replay(stored: &StoredResponse, replayed: bool) -> Response {
    let status = u16::try_from(stored.status)
        .ok()
        .and_then(|status| StatusCode::from_u16(status).ok())
        .unwrap_or(StatusCode::OK);
    let mut response = (status, Body::from(stored.body.clone())).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if replayed {
        headers.insert(
            HeaderName::from_static(REPLAYED_HEADER),
            HeaderValue::from_static("true"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_and_white_space_do_not_change_the_fingerprint() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "é"}], "a": "q\"uote"}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":"q\"uote","b":[1,{"x":"é","y":2}]}"#).unwrap();
        let mut text = String::new();
        canonical(&a, &mut text);
        assert_eq!(text, r#"{"a":"q\"uote","b":[1,{"x":"é","y":2}]}"#);
        assert_eq!(fingerprint("apply", &a), fingerprint("apply", &b));
        assert_eq!(fingerprint("apply", &a).len(), 64);
    }

    #[test]
    fn any_difference_in_values_order_of_items_or_operation_changes_it() {
        let base = json!({"loan_types": ["a", "b"], "amount": 100.0, "purpose": "car"});
        let print = |operation: &str, body: Value| fingerprint(operation, &body);
        let first = print("apply", base.clone());
        for other in [
            json!({"loan_types": ["b", "a"], "amount": 100.0, "purpose": "car"}),
            json!({"loan_types": ["a", "b"], "amount": 100.5, "purpose": "car"}),
            json!({"loan_types": ["a", "b"], "amount": 100.0, "purpose": "Car"}),
            json!({"loan_types": ["a", "b"], "amount": 100.0}),
            json!({"loan_types": ["a", "b"], "amount": "100", "purpose": "car"}),
        ] {
            assert_ne!(print("apply", other.clone()), first, "{other}");
        }
        assert_ne!(print("select-financing-option", base), first);
        // Keys that would collide if the separator were missing.
        assert_ne!(print("ab", json!("c")), print("a", json!("bc")));
    }

    #[test]
    fn a_key_is_1_to_255_visible_ascii_characters() {
        for good in [
            "a",
            "550e8400-e29b-41d4-a716-446655440000",
            "!~{}:/",
            &"k".repeat(255),
        ] {
            assert_eq!(validate_key(good.as_bytes()).ok(), Some(good), "{good:?}");
        }
        for bad in [
            &b""[..],
            b"has space",
            b"tab\there",
            b"caf\xc3\xa9",
            b"nul\0",
            b"\x7f",
            "k".repeat(256).as_bytes(),
        ] {
            let err = validate_key(bad).unwrap_err();
            assert_eq!(err.status(), StatusCode::UNPROCESSABLE_ENTITY, "{bad:?}");
            assert!(err.to_string().contains("Idempotency-Key"), "{err}");
        }
    }

    #[tokio::test]
    async fn the_header_is_optional_single_and_validated() {
        let extract = |values: &[&str]| {
            let mut request = axum::http::Request::builder();
            for value in values {
                request = request.header(HEADER, *value);
            }
            let (mut parts, ()) = request.body(()).unwrap().into_parts();
            async move { IdempotencyKey::from_request_parts(&mut parts, &()).await }
        };
        assert_eq!(extract(&[]).await.unwrap(), IdempotencyKey(None));
        assert_eq!(
            extract(&["k-1"]).await.unwrap(),
            IdempotencyKey(Some("k-1".into()))
        );
        assert!(extract(&["a", "b"]).await.is_err());
        assert!(extract(&[""]).await.is_err());
    }

    #[tokio::test]
    async fn a_replay_is_the_stored_status_and_body_marked_as_replayed() {
        let stored = StoredResponse {
            status: 201,
            body: r#"{"id":"x"}"#.into(),
        };
        for replayed in [false, true] {
            let response = replay(&stored, replayed);
            assert_eq!(response.status(), StatusCode::CREATED);
            assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
            assert_eq!(response.headers().contains_key(REPLAYED_HEADER), replayed);
            let bytes = axum::body::to_bytes(response.into_body(), 1024)
                .await
                .unwrap();
            assert_eq!(&bytes[..], br#"{"id":"x"}"#);
        }
    }

    #[test]
    fn a_waiting_request_gives_up_before_the_request_timeout() {
        let limit = wait_limit(Duration::from_secs(5));
        assert!(limit < Duration::from_secs(5) && limit >= Duration::from_secs(3));
    }
}
