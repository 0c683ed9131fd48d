//! Secrets from AWS Secrets Manager, loaded once at cold start.
//!
//! When `FINAPP_SECRET_ID` is set, the JSON secret it names is fetched through
//! `aws-config` (region, credentials and `AWS_ENDPOINT_URL` from the usual
//! places) and its string values take the place of the environment variables
//! of the same names. Without it, nothing here runs and no AWS call is made.

use std::{collections::HashMap, time::Duration};

use aws_config::{BehaviorVersion, timeout::TimeoutConfig};
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

/// The environment variable naming the secret (a name or an ARN).
pub const SECRET_ID_VAR: &str = "FINAPP_SECRET_ID";

/// Why the secret could not be used; never includes the secret's value.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("{SECRET_ID_VAR}={id}: cannot read the secret: {reason}")]
    Fetch { id: String, reason: String },
    #[error("{SECRET_ID_VAR}={id}: the secret has no string value")]
    NotAString { id: String },
    #[error("{SECRET_ID_VAR}={id}: the secret is not a JSON object of strings ({reason})")]
    Malformed { id: String, reason: String },
}

/// The values to use instead of environment variables; empty when
/// `FINAPP_SECRET_ID` is not set.
pub async fn load_overrides() -> Result<HashMap<String, String>, SecretsError> {
    match std::env::var(SECRET_ID_VAR) {
        Ok(id) if !id.trim().is_empty() => fetch(id.trim()).await,
        _ => Ok(HashMap::new()),
    }
}

async fn fetch(id: &str) -> Result<HashMap<String, String>, SecretsError> {
    // rustls with ring, which the rest of the bundle already uses, instead of
    // the SDK's default aws-lc build.
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https();
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .timeout_config(
            TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await;
    let output = aws_sdk_secretsmanager::Client::new(&sdk)
        .get_secret_value()
        .secret_id(id)
        .send()
        .await
        .map_err(|err| SecretsError::Fetch {
            id: id.to_owned(),
            reason: DisplayErrorContext(&err).to_string(),
        })?;
    let text = output
        .secret_string()
        .ok_or_else(|| SecretsError::NotAString { id: id.to_owned() })?;
    parse(text).map_err(|reason| SecretsError::Malformed {
        id: id.to_owned(),
        reason,
    })
}

/// Reads a secret's JSON: an object whose values are all strings.
fn parse(text: &str) -> Result<HashMap<String, String>, String> {
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(text).map_err(|_| "not a JSON object".to_owned())?;
    object
        .into_iter()
        .map(|(key, value)| match value {
            serde_json::Value::String(text) => Ok((key, text)),
            _ => Err(format!("{key} is not a string")),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_object_of_strings_is_read() {
        let values = parse(r#"{"JWT_SECRET_KEY": "k", "MONGODB_URI": "mongodb://x"}"#).unwrap();
        assert_eq!(values["JWT_SECRET_KEY"], "k");
        assert_eq!(values.len(), 2);
    }

    #[test]
    fn anything_else_is_refused_without_echoing_values() {
        for text in [
            "",
            "not json",
            "[1]",
            r#"{"JWT_SECRET_KEY": 42}"#,
            "\"just a string\"",
        ] {
            let err = parse(text).unwrap_err();
            assert!(!err.contains("42"), "{err}");
        }
    }
}
