//! What a process builds once at start-up and every request borrows: the
//! configuration, the database, the keys and the password hasher.

use std::{process::ExitCode, sync::Arc};

use crate::{
    auth::{KnownUsers, Passwords, TokenKeys},
    config::{Config, ConfigError, under_lambda},
    secrets,
    store::{IndexError, Store, StoreError},
    telemetry,
};

/// Why a process could not get ready to serve.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("MONGODB_URI: {0}")]
    Client(#[source] StoreError),
    #[error(transparent)]
    Indexes(#[from] IndexError),
}

/// Everything a handler borrows: built once per process, shared by every request.
pub struct Deps {
    pub config: Config,
    pub store: Store,
    pub tokens: TokenKeys,
    pub passwords: Passwords,
    /// Token users found in the database lately (see [`KnownUsers`]).
    pub known_users: KnownUsers,
}

impl Deps {
    /// Builds the clients and ensures the database indexes.
    ///
    /// Outside Lambda, a database that is down at start-up does not stop the
    /// process: it starts not ready (`/readyz` says so, requests get 503) and
    /// ensures the indexes once the database answers. Under Lambda, whose
    /// instances are cheap to replace, start-up fails at once instead.
    pub async fn connect(config: Config) -> Result<Arc<Self>, StartError> {
        let store = Store::connect(&config).await.map_err(StartError::Client)?;
        match store.ensure_indexes().await {
            Ok(()) => store.warn_if_data_is_elsewhere().await,
            Err(err) if err.is_unavailable() && !under_lambda() => {
                tracing::warn!(error = %err, "MongoDB is unavailable: starting not ready");
                tokio::spawn(ensure_indexes_when_back(store.clone()));
            }
            Err(err) => return Err(err.into()),
        }
        Ok(Arc::new(Self {
            tokens: TokenKeys::new(&config),
            passwords: Passwords::new(config.bcrypt_cost),
            known_users: KnownUsers::new(config.accounts.user_check_cache),
            store,
            config,
        }))
    }
}

/// Retries the indexes until the database answers; a failure other than
/// unavailability (duplicates, say) is logged and ends the process.
async fn ensure_indexes_when_back(store: Store) {
    let mut delay = std::time::Duration::from_millis(500);
    loop {
        tokio::time::sleep(delay).await;
        match store.ensure_indexes().await {
            Ok(()) => {
                tracing::info!("MongoDB is back: indexes ensured");
                return;
            }
            Err(err) if err.is_unavailable() => {
                delay = (delay * 2).min(std::time::Duration::from_secs(5));
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot start");
                std::process::exit(1);
            }
        }
    }
}

/// Start-up shared by every binary: logging and tracing (as `service`),
/// configuration, clients. A failure is logged and becomes the exit code to
/// return.
pub async fn bootstrap(service: &str) -> Result<Arc<Deps>, ExitCode> {
    telemetry::init(service);
    let config = load_config().await.map_err(|err| {
        tracing::error!(error = %err, "cannot start");
        ExitCode::FAILURE
    })?;
    Deps::connect(config).await.map_err(|err| {
        tracing::error!(error = %err, "cannot start");
        ExitCode::FAILURE
    })
}

/// The configuration every binary starts from: a `.env` file in the working
/// directory, if there is one, under the process environment (a variable set
/// in both keeps the environment's value), under the values of the Secrets
/// Manager secret named by `FINAPP_SECRET_ID`, if set.
pub async fn load_config() -> Result<Config, String> {
    load_config_with(|lookup| Config::from_lookup(lookup)).await
}

/// [`load_config`] with the variables read by `read`, e.g.
/// [`Config::from_lookup_without_tokens`].
pub async fn load_config_with(
    read: impl FnOnce(&dyn Fn(&str) -> Option<String>) -> Result<Config, ConfigError>,
) -> Result<Config, String> {
    match dotenvy::from_path(".env") {
        Ok(()) => tracing::debug!(".env read"),
        Err(err) if err.not_found() => {}
        Err(err) => return Err(format!(".env: {err}")),
    }
    let overrides = secrets::load_overrides()
        .await
        .map_err(|err| format!("cannot load secrets: {err}"))?;
    read(&|name| {
        overrides
            .get(name)
            .cloned()
            .or_else(|| std::env::var(name).ok())
    })
    .map_err(|err| format!("invalid configuration: {err}"))
}
