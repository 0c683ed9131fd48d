//! Secrets from AWS Secrets Manager, loaded once at cold start.
//!
//! When `FINAPP_SECRET_ID` is set, the JSON secrets it names (one, or several
//! separated by commas: template.yaml keeps the JWT keys and the connection
//! URIs apart, so each is rotated alone) are fetched through `aws-config`
//! (region, credentials and `AWS_ENDPOINT_URL` from the usual places) and
//! their string values take the place of the environment variables of the
//! same names; a name in two secrets is refused. Without it, nothing here runs
//! and no AWS call is made.

use std::{collections::HashMap, time::Duration};

use aws_config::{BehaviorVersion, timeout::TimeoutConfig};
use aws_sdk_secretsmanager::error::DisplayErrorContext;
use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};

/// The environment variable naming the secrets (names or ARNs, comma-separated).
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
    #[error("{SECRET_ID_VAR}: {name} is in more than one of its secrets")]
    Duplicate { name: String },
}

/// The values to use instead of environment variables; empty when
/// `FINAPP_SECRET_ID` is not set.
pub async fn load_overrides() -> Result<HashMap<String, String>, SecretsError> {
    let ids = std::env::var(SECRET_ID_VAR).unwrap_or_default();
    let mut values = HashMap::new();
    for id in secret_ids(&ids) {
        merge(&mut values, fetch(id).await?)?;
    }
    Ok(values)
}

/// The secret ids a `FINAPP_SECRET_ID` value names, blanks skipped.
fn secret_ids(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|id| !id.is_empty())
}

/// Adds one secret's values; a name already given by another is an error,
/// not a silent choice between two values.
fn merge(
    values: &mut HashMap<String, String>,
    more: HashMap<String, String>,
) -> Result<(), SecretsError> {
    for (name, value) in more {
        if values.contains_key(&name) {
            return Err(SecretsError::Duplicate { name });
        }
        values.insert(name, value);
    }
    Ok(())
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
    fn several_secret_ids_are_read_apart_and_blanks_are_skipped() {
        let ids: Vec<&str> = secret_ids(" arn:a , ,arn:b,").collect();
        assert_eq!(ids, ["arn:a", "arn:b"]);
        assert_eq!(secret_ids("  ").count(), 0);
    }

    #[test]
    fn a_name_in_two_secrets_is_refused_without_its_value() {
        let mut values = parse(r#"{"JWT_SECRET_KEY": "k1"}"#).unwrap();
        merge(&mut values, parse(r#"{"MONGODB_URI": "m"}"#).unwrap()).unwrap();
        let err = merge(&mut values, parse(r#"{"JWT_SECRET_KEY": "k2"}"#).unwrap()).unwrap_err();
        let text = err.to_string();
        assert!(text.contains("JWT_SECRET_KEY"), "{text}");
        assert!(!text.contains("k1") && !text.contains("k2"), "{text}");
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
