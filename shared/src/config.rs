//! Process configuration, read once from the environment at start-up.
//!
//! Variable names are the original services' (`MONGODB_URI`, `RABBITMQ_URI`,
//! `JWT_SECRET_KEY`, `ACCESS_TOKEN_EXPIRE_MINUTES`) plus a few of our own. A
//! missing or weak secret is a start-up error naming the variable, never a
//! silent default, and no value read here is ever logged.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

/// Shortest accepted `JWT_SECRET_KEY`: HS256 wants a key at least as long as its 32-byte output.
pub const MIN_JWT_SECRET_BYTES: usize = 32;

/// The Prometheus endpoint's port unless `METRICS_PORT` says otherwise: the
/// default of the Prometheus exporters for OpenTelemetry, clear of `PORT`.
pub const DEFAULT_METRICS_PORT: u16 = 9464;

/// bcrypt's accepted cost range.
const BCRYPT_COST_RANGE: std::ops::RangeInclusive<u32> = 4..=31;

/// Everything a function needs to know about its surroundings.
#[derive(Clone, Debug)]
pub struct Config {
    /// `MONGODB_URI`; a secret because it usually embeds credentials.
    pub mongodb_uri: SecretString,
    /// `MONGODB_DATABASE`, default `finapp`.
    pub mongodb_database: String,
    /// `MONGODB_MAX_POOL_SIZE`, default the driver's (10): connections per process.
    pub mongodb_max_pool_size: Option<u32>,
    /// `MONGODB_TIMEOUT_MS`, default 1000: how long finding and connecting to
    /// a server may take before a request is answered 503.
    pub mongodb_timeout: Duration,
    /// `MONGODB_MAX_TIME_MS`, default `HTTP_REQUEST_TIMEOUT_MS`: the server-side
    /// time limit (`maxTimeMS`) of every read, so a query whose request has
    /// already been answered 503 stops, rather than running on and slowing
    /// the requests after it.
    pub mongodb_max_time: Duration,
    /// `RABBITMQ_URI`; a secret for the same reason as `mongodb_uri`. One
    /// AMQP URI, or a cluster's nodes as several separated by commas
    /// ([`broker_uris`]), tried in order on every (re)connect.
    pub rabbitmq_uri: SecretString,
    /// `RABBITMQ_QUEUE_PREFIX`, default empty: prepended to every queue name so
    /// that several deployments (or parallel tests) can share one broker.
    pub queue_prefix: String,
    /// `RABBITMQ_QUEUE_TYPE`, default `quorum`: replicated quorum queues,
    /// which also run on a single node; `classic` declares them as the
    /// bundle did before (no arguments). Existing queues are adopted as they are.
    pub queue_type: QueueType,
    /// `JWT_SECRET_KEY`, at least [`MIN_JWT_SECRET_BYTES`] bytes: signs every
    /// token and verifies them.
    pub jwt_secret: SecretString,
    /// `JWT_PREVIOUS_SECRET_KEY`, optional, the same length rule: set during a
    /// key rotation, tokens it signed are accepted too; nothing is signed with
    /// it (docs/deploy.md has the runbook).
    pub jwt_previous_secret: Option<SecretString>,
    /// `ACCESS_TOKEN_EXPIRE_MINUTES`, default 30.
    pub token_ttl: Duration,
    /// `BCRYPT_COST`, default 12.
    pub bcrypt_cost: u32,
    /// `PORT` for the plain HTTP mode, default 8080.
    pub port: u16,
    /// `METRICS_PORT`, default [`DEFAULT_METRICS_PORT`]: where plain HTTP
    /// mode serves `GET /metrics`, apart from `port`; `off` serves none (the
    /// metrics are still recorded), `0` a free port. Unused under Lambda.
    pub metrics_port: Option<u16>,
    /// How much one client, or all of them, may ask of a process.
    pub limits: HttpLimits,
    /// How much one account may hold, and how long a token's user is trusted to exist.
    pub accounts: AccountLimits,
    /// When failed logins make `/login` answer 429.
    pub login_throttle: LoginThrottle,
    /// `IDEMPOTENCY_TTL_SECS`, default 86400 (24 h): how long an
    /// `Idempotency-Key` and the response it recorded are kept.
    pub idempotency_ttl: Duration,
    /// `ANALYTICS_CACHE_MS`, default 1000 (0 = off): how long a process
    /// answers `GET /analytics` from the summary it read last. The summary
    /// names every user, so each read costs a read of every user's counters.
    pub analytics_cache: Duration,
}

/// Bounds per account, so that no one user can grow a response or the data
/// without limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AccountLimits {
    /// `MAX_PENDING_APPLICATIONS`, default 100: pending applications one user
    /// may have; one more is refused with 409 until an admin decides some.
    pub max_pending_applications: u64,
    /// `USER_CHECK_CACHE_MS`, default 2000 (0 = every request asks the
    /// database): how long a process, having seen that a token's user exists,
    /// trusts that without asking again. A deleted user's token stops working
    /// within this long.
    pub user_check_cache: Duration,
}

impl Default for AccountLimits {
    fn default() -> Self {
        Self {
            max_pending_applications: 100,
            user_check_cache: Duration::from_secs(2),
        }
    }
}

/// Login throttling (OWASP ASVS 2.2.1): failures are counted per username and
/// per client address in fixed windows that start at the first failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoginThrottle {
    /// `LOGIN_MAX_FAILURES`, default 10: failed logins for one username in a
    /// window before that name gets 429.
    pub max_failures_per_user: u32,
    /// `LOGIN_MAX_FAILURES_PER_ADDRESS`, default 100: failed logins from one
    /// client address in a window before that address gets 429.
    pub max_failures_per_address: u32,
    /// `LOGIN_FAILURE_WINDOW_SECS`, default 900: how long a window lasts,
    /// and so the longest a 429 can last.
    pub window: Duration,
    /// `TRUSTED_PROXY_HOPS`, default 0: how many proxies in front of the
    /// plain HTTP server append to `X-Forwarded-For` (1 behind the ingress).
    /// The client is the address that many entries from the right; with 0 the
    /// header is ignored and the TCP peer is the client. Lambda always uses
    /// API Gateway's source address.
    pub trusted_proxy_hops: usize,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self {
            max_failures_per_user: 10,
            max_failures_per_address: 100,
            window: Duration::from_secs(900),
            trusted_proxy_hops: 0,
        }
    }
}

/// The HTTP edge's bounds. Past them a request gets a fast 503 with
/// `Retry-After`, and a connection is closed, rather than waiting in a queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// `HTTP_HEADER_READ_TIMEOUT_MS`, default 5000: how long a connection may
    /// take to send a request's headers, and stay idle between requests
    /// (plain HTTP mode).
    pub header_read_timeout: Duration,
    /// `HTTP_REQUEST_TIMEOUT_MS`, default 5000: the most a request may take.
    pub request_timeout: Duration,
    /// `HTTP_MAX_IN_FLIGHT`, default 256: requests handled at once; more are
    /// refused at once with 503.
    pub max_in_flight: usize,
    /// `HTTP_MAX_CONNECTIONS`, default 4096: open connections (plain HTTP
    /// mode), never more than the open-file limit allows.
    pub max_connections: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(5),
            max_in_flight: 256,
            max_connections: 4096,
        }
    }
}

/// The kind of RabbitMQ queue the event queues are declared as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// A single-node queue, declared with no arguments, as the bundle's
    /// queues were before quorum queues became the default.
    Classic,
    /// A Raft-replicated queue that survives losing a minority of a cluster's
    /// nodes; on one node it works as a durable queue. The default.
    #[default]
    Quorum,
}

impl QueueType {
    /// The value of the queue's `x-queue-type` argument.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

/// Why the configuration was refused; every variant names the variable.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("{0} is required but not set")]
    Missing(&'static str),
    #[error("{name} is invalid: {reason}")]
    Invalid { name: &'static str, reason: String },
}

impl Config {
    /// Reads configuration through `lookup`, so tests need not touch the real environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).filter(|value| !value.trim().is_empty());

        let jwt_secret = get("JWT_SECRET_KEY").ok_or(ConfigError::Missing("JWT_SECRET_KEY"))?;
        long_enough("JWT_SECRET_KEY", &jwt_secret)?;
        let jwt_previous_secret = get("JWT_PREVIOUS_SECRET_KEY");
        if let Some(previous) = &jwt_previous_secret {
            long_enough("JWT_PREVIOUS_SECRET_KEY", previous)?;
        }

        let token_minutes: u64 = parse_number(&get, "ACCESS_TOKEN_EXPIRE_MINUTES", 30)?;
        if token_minutes == 0 || token_minutes > 24 * 60 {
            return Err(invalid(
                "ACCESS_TOKEN_EXPIRE_MINUTES",
                "must be 1 to 1440 minutes",
            ));
        }
        let bcrypt_cost: u32 = parse_number(&get, "BCRYPT_COST", 12)?;
        if !BCRYPT_COST_RANGE.contains(&bcrypt_cost) {
            return Err(invalid("BCRYPT_COST", "must be 4 to 31"));
        }

        let queue_type = match get("RABBITMQ_QUEUE_TYPE").as_deref().map(str::trim) {
            Some("classic") => QueueType::Classic,
            None | Some("quorum") => QueueType::Quorum,
            Some(_) => {
                return Err(invalid("RABBITMQ_QUEUE_TYPE", "must be classic or quorum"));
            }
        };

        let rabbitmq_uri =
            get("RABBITMQ_URI").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
        if !broker_uris(&rabbitmq_uri)
            .iter()
            .all(|uri| is_amqp_uri(uri))
        {
            return Err(invalid(
                "RABBITMQ_URI",
                "must be an amqp:// or amqps:// URI, or several separated by commas",
            ));
        }

        let request_timeout_ms = positive(&get, "HTTP_REQUEST_TIMEOUT_MS", 5000)?;
        Ok(Self {
            mongodb_uri: get("MONGODB_URI")
                .unwrap_or_else(|| "mongodb://127.0.0.1:27017".into())
                .into(),
            mongodb_database: get("MONGODB_DATABASE").unwrap_or_else(|| "finapp".into()),
            mongodb_max_pool_size: get("MONGODB_MAX_POOL_SIZE")
                .map(|_| parse_number(&get, "MONGODB_MAX_POOL_SIZE", 0))
                .transpose()?,
            mongodb_timeout: positive_millis(&get, "MONGODB_TIMEOUT_MS", 1000)?,
            mongodb_max_time: positive_millis(&get, "MONGODB_MAX_TIME_MS", request_timeout_ms)?,
            rabbitmq_uri: rabbitmq_uri.into(),
            queue_prefix: get("RABBITMQ_QUEUE_PREFIX").unwrap_or_default(),
            queue_type,
            jwt_secret: jwt_secret.into(),
            jwt_previous_secret: jwt_previous_secret.map(SecretString::from),
            token_ttl: Duration::from_secs(token_minutes * 60),
            bcrypt_cost,
            port: parse_number(&get, "PORT", 8080)?,
            metrics_port: match get("METRICS_PORT").as_deref().map(str::trim) {
                Some("off") => None,
                _ => Some(parse_number(&get, "METRICS_PORT", DEFAULT_METRICS_PORT)?),
            },
            limits: HttpLimits {
                header_read_timeout: positive_millis(&get, "HTTP_HEADER_READ_TIMEOUT_MS", 5000)?,
                request_timeout: Duration::from_millis(request_timeout_ms),
                max_in_flight: positive(&get, "HTTP_MAX_IN_FLIGHT", 256)?,
                max_connections: positive(&get, "HTTP_MAX_CONNECTIONS", 4096)?,
            },
            accounts: AccountLimits {
                max_pending_applications: positive(&get, "MAX_PENDING_APPLICATIONS", 100)?,
                user_check_cache: Duration::from_millis(parse_number(
                    &get,
                    "USER_CHECK_CACHE_MS",
                    2000,
                )?),
            },
            login_throttle: LoginThrottle {
                max_failures_per_user: positive(&get, "LOGIN_MAX_FAILURES", 10)?,
                max_failures_per_address: positive(&get, "LOGIN_MAX_FAILURES_PER_ADDRESS", 100)?,
                window: Duration::from_secs(positive(&get, "LOGIN_FAILURE_WINDOW_SECS", 900)?),
                trusted_proxy_hops: parse_number(&get, "TRUSTED_PROXY_HOPS", 0)?,
            },
            idempotency_ttl: Duration::from_secs(positive(&get, "IDEMPOTENCY_TTL_SECS", 86_400)?),
            analytics_cache: Duration::from_millis(parse_number(&get, "ANALYTICS_CACHE_MS", 1000)?),
        })
    }

    /// The JWT secret's bytes, for building signing keys.
    pub(crate) fn jwt_secret_bytes(&self) -> &[u8] {
        self.jwt_secret.expose_secret().as_bytes()
    }

    /// The previous JWT secret's bytes, when a rotation is under way.
    pub(crate) fn jwt_previous_secret_bytes(&self) -> Option<&[u8]> {
        self.jwt_previous_secret
            .as_ref()
            .map(|secret| secret.expose_secret().as_bytes())
    }
}

/// An HS256 key shorter than its 32-byte output is refused by name.
fn long_enough(name: &'static str, secret: &str) -> Result<(), ConfigError> {
    if secret.len() < MIN_JWT_SECRET_BYTES {
        return Err(ConfigError::Invalid {
            name,
            reason: format!(
                "must be at least {MIN_JWT_SECRET_BYTES} bytes (got {})",
                secret.len()
            ),
        });
    }
    Ok(())
}

/// The broker addresses of a `RABBITMQ_URI`, in order: one AMQP URI, or
/// several separated by commas (a cluster's nodes). A comma splits the list
/// only where an `amqp://` or `amqps://` URI follows it, so a comma inside a
/// URI (a password may hold one) stays part of it.
pub fn broker_uris(list: &str) -> Vec<&str> {
    let mut uris = Vec::new();
    let mut start = 0;
    for (comma, _) in list.match_indices(',') {
        if is_amqp_uri(list[comma + 1..].trim_start()) {
            uris.push(list[start..comma].trim());
            start = comma + 1;
        }
    }
    uris.push(list[start..].trim());
    uris
}

/// Whether `uri` starts with an AMQP scheme (any case, as URI schemes are).
fn is_amqp_uri(uri: &str) -> bool {
    ["amqp://", "amqps://"].iter().any(|scheme| {
        uri.get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
    })
}

impl Config {
    /// [`Config::from_lookup`] for a process that signs and checks no token
    /// (finapp-admin): the token variables (`JWT_*`,
    /// `ACCESS_TOKEN_EXPIRE_MINUTES`) are not read, so they need not be set,
    /// and `jwt_secret` is a random key of this process's own, which no other
    /// process would accept a token signed with.
    pub fn from_lookup_without_tokens(
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let own_key = format!(
            "{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        );
        Self::from_lookup(|name| match name {
            "JWT_SECRET_KEY" => Some(own_key.clone()),
            "ACCESS_TOKEN_EXPIRE_MINUTES" => None,
            name if name.starts_with("JWT_") => None,
            name => lookup(name),
        })
    }
}

fn invalid(name: &'static str, reason: &str) -> ConfigError {
    ConfigError::Invalid {
        name,
        reason: reason.into(),
    }
}

/// A whole number of at least 1 (`T::default()` is zero for every integer).
fn positive<T: std::str::FromStr + Default + PartialEq>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match parse_number(get, name, default)? {
        value if value == T::default() => Err(invalid(name, "must be at least 1")),
        value => Ok(value),
    }
}

fn positive_millis(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: u64,
) -> Result<Duration, ConfigError> {
    Ok(Duration::from_millis(positive(get, name, default)?))
}

fn parse_number<T: std::str::FromStr>(
    get: &impl Fn(&str) -> Option<String>,
    name: &'static str,
    default: T,
) -> Result<T, ConfigError> {
    match get(name) {
        None => Ok(default),
        Some(raw) => raw
            .trim()
            .parse()
            .map_err(|_| invalid(name, "must be a whole number")),
    }
}

/// Whether this process runs under the Lambda runtime (or `cargo lambda watch`).
/// Read once: the runtime sets the variable before the process starts, and
/// the metrics middleware asks on every request.
pub fn under_lambda() -> bool {
    static UNDER_LAMBDA: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *UNDER_LAMBDA.get_or_init(|| std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const GOOD_SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config_from(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let vars: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|name| vars.get(name).cloned())
    }

    #[test]
    fn a_missing_jwt_secret_is_refused_by_name() {
        let err = config_from(&[]).unwrap_err();
        assert_eq!(err, ConfigError::Missing("JWT_SECRET_KEY"));
        assert!(err.to_string().contains("JWT_SECRET_KEY"));
    }

    #[test]
    fn a_jwt_secret_shorter_than_32_bytes_is_refused_by_name() {
        let err = config_from(&[("JWT_SECRET_KEY", &GOOD_SECRET[..31])]).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET_KEY"), "{err}");
    }

    #[test]
    fn a_previous_jwt_secret_is_optional_and_held_to_the_same_length() {
        let config = config_from(&[("JWT_SECRET_KEY", GOOD_SECRET)]).unwrap();
        assert!(config.jwt_previous_secret.is_none());
        let err = config_from(&[
            ("JWT_SECRET_KEY", GOOD_SECRET),
            ("JWT_PREVIOUS_SECRET_KEY", &GOOD_SECRET[..31]),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("JWT_PREVIOUS_SECRET_KEY"), "{err}");
        let config = config_from(&[
            ("JWT_SECRET_KEY", GOOD_SECRET),
            ("JWT_PREVIOUS_SECRET_KEY", GOOD_SECRET),
        ])
        .unwrap();
        assert_eq!(
            config.jwt_previous_secret_bytes(),
            Some(GOOD_SECRET.as_bytes())
        );
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let config = config_from(&[("JWT_SECRET_KEY", GOOD_SECRET)]).unwrap();
        assert_eq!(config.token_ttl, Duration::from_secs(30 * 60));
        assert_eq!(config.bcrypt_cost, 12);
        assert_eq!(config.mongodb_database, "finapp");
        assert_eq!(config.port, 8080);
        assert_eq!(config.metrics_port, Some(DEFAULT_METRICS_PORT));
        assert_eq!(config.queue_prefix, "");
        assert_eq!(config.queue_type, QueueType::Quorum);
        assert_eq!(config.limits, HttpLimits::default());
        assert_eq!(config.accounts, AccountLimits::default());
        assert_eq!(config.login_throttle, LoginThrottle::default());
        assert_eq!(config.idempotency_ttl, Duration::from_secs(24 * 60 * 60));
        assert_eq!(config.analytics_cache, Duration::from_secs(1));
    }

    #[test]
    fn the_queue_type_is_classic_or_quorum() {
        let quorum = config_from(&[
            ("JWT_SECRET_KEY", GOOD_SECRET),
            ("RABBITMQ_QUEUE_TYPE", "quorum"),
        ])
        .unwrap();
        assert_eq!(quorum.queue_type, QueueType::Quorum);
        let classic = config_from(&[
            ("JWT_SECRET_KEY", GOOD_SECRET),
            ("RABBITMQ_QUEUE_TYPE", "classic"),
        ])
        .unwrap();
        assert_eq!(classic.queue_type, QueueType::Classic);
        let err = config_from(&[
            ("JWT_SECRET_KEY", GOOD_SECRET),
            ("RABBITMQ_QUEUE_TYPE", "stream"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("RABBITMQ_QUEUE_TYPE"), "{err}");
    }

    #[test]
    fn rabbitmq_uri_lists_a_cluster_s_nodes_in_order() {
        assert_eq!(
            broker_uris("amqp://guest:guest@127.0.0.1:5672/%2f"),
            ["amqp://guest:guest@127.0.0.1:5672/%2f"]
        );
        assert_eq!(
            broker_uris("amqp://a:1/%2f, AMQPS://b:2/%2f,amqp://c:3"),
            ["amqp://a:1/%2f", "AMQPS://b:2/%2f", "amqp://c:3"]
        );
        // A comma in a password is part of its URI.
        assert_eq!(
            broker_uris("amqp://u:p,q@a:1/%2f,amqp://u:p,,@b:2/%2f"),
            ["amqp://u:p,q@a:1/%2f", "amqp://u:p,,@b:2/%2f"]
        );
        let cluster = config_from(&[
            ("JWT_SECRET_KEY", GOOD_SECRET),
            (
                "RABBITMQ_URI",
                "amqp://u:secret@a:1/%2f,amqp://u:secret@b:2/%2f",
            ),
        ])
        .unwrap();
        assert_eq!(broker_uris(cluster.rabbitmq_uri.expose_secret()).len(), 2);
        for list in ["http://u:secret@a", "u:secret@a:1,amqp://b"] {
            let err = config_from(&[("JWT_SECRET_KEY", GOOD_SECRET), ("RABBITMQ_URI", list)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("RABBITMQ_URI"), "{err}");
            assert!(!err.contains("secret"), "the value leaked: {err}");
        }
    }

    #[test]
    fn numbers_out_of_range_are_refused_by_name() {
        for (name, value) in [
            ("BCRYPT_COST", "3"),
            ("BCRYPT_COST", "twelve"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
            ("PORT", "70000"),
            ("METRICS_PORT", "none"),
            ("HTTP_MAX_IN_FLIGHT", "0"),
            ("HTTP_REQUEST_TIMEOUT_MS", "soon"),
            ("MAX_PENDING_APPLICATIONS", "0"),
            ("LOGIN_MAX_FAILURES", "0"),
            ("LOGIN_FAILURE_WINDOW_SECS", "-1"),
            ("TRUSTED_PROXY_HOPS", "one"),
            ("IDEMPOTENCY_TTL_SECS", "0"),
        ] {
            let err = config_from(&[("JWT_SECRET_KEY", GOOD_SECRET), (name, value)]).unwrap_err();
            assert!(err.to_string().contains(name), "{name}={value}: {err}");
        }
    }

    #[test]
    fn the_metrics_port_is_a_port_or_off() {
        let port = |value: &str| {
            config_from(&[("JWT_SECRET_KEY", GOOD_SECRET), ("METRICS_PORT", value)])
                .unwrap()
                .metrics_port
        };
        assert_eq!(port("9100"), Some(9100));
        assert_eq!(port("0"), Some(0));
        assert_eq!(port("off"), None);
    }

    #[test]
    fn without_tokens_no_token_variable_is_needed_or_read() {
        let vars: HashMap<&str, &str> = [
            ("JWT_SECRET_KEY", "short"),
            ("ACCESS_TOKEN_EXPIRE_MINUTES", "0"),
            ("MONGODB_DATABASE", "operator"),
        ]
        .into();
        let config =
            Config::from_lookup_without_tokens(|name| vars.get(name).map(|v| v.to_string()))
                .unwrap();
        assert_eq!(config.mongodb_database, "operator");
        assert!(config.jwt_secret.expose_secret().len() >= MIN_JWT_SECRET_BYTES);
        assert_ne!(config.jwt_secret.expose_secret(), "short");
        let none = Config::from_lookup_without_tokens(|_| None).unwrap();
        assert_ne!(
            none.jwt_secret.expose_secret(),
            config.jwt_secret.expose_secret()
        );
        let err = Config::from_lookup_without_tokens(|name| {
            (name == "BCRYPT_COST").then(|| "3".to_owned())
        })
        .unwrap_err();
        assert!(err.to_string().contains("BCRYPT_COST"), "{err}");
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let config = config_from(&[("JWT_SECRET_KEY", GOOD_SECRET)]).unwrap();
        assert!(!format!("{config:?}").contains(GOOD_SECRET));
    }
}
