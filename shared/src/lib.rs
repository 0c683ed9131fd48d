//! The library every FinApp function shares: configuration, auth, storage,
//! events and the HTTP edge. A function crate holds only its handlers and a
//! one-line `main` that calls [`run`].

pub mod auth;
pub mod config;
pub mod domain;
pub mod events;
pub mod finance;
pub mod http;
pub mod store;
pub mod telemetry;

use std::{process::ExitCode, sync::Arc};

use axum::Router;

use crate::{
    auth::{Passwords, TokenKeys},
    config::Config,
    events::Events,
    store::{Store, StoreError},
};

/// Everything a handler borrows: built once per process, shared by every request.
pub struct Deps {
    pub config: Config,
    pub store: Store,
    pub events: Events,
    pub tokens: TokenKeys,
    pub passwords: Passwords,
}

impl Deps {
    /// Builds the clients and ensures the database indexes.
    pub async fn connect(config: Config) -> Result<Arc<Self>, StoreError> {
        let store = Store::connect(&config).await?;
        store.ensure_indexes().await?;
        Ok(Arc::new(Self {
            events: Events::new(&config),
            tokens: TokenKeys::new(&config),
            passwords: Passwords::new(config.bcrypt_cost),
            store,
            config,
        }))
    }
}

/// A function's whole `main`: logging, configuration, clients, then serving the
/// routes `build` returns, in whichever runtime this process is in. Any start-up
/// failure is logged and exits non-zero.
pub async fn run(build: fn(Arc<Deps>) -> Router) -> ExitCode {
    telemetry::init();
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            tracing::error!(error = %err, "invalid configuration");
            return ExitCode::FAILURE;
        }
    };
    let port = config.port;
    let deps = match Deps::connect(config).await {
        Ok(deps) => deps,
        Err(err) => {
            tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "cannot reach MongoDB");
            return ExitCode::FAILURE;
        }
    };
    match http::serve(build(deps), port).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "stopped");
            ExitCode::FAILURE
        }
    }
}
