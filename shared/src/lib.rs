//! The library every FinApp function shares: configuration, auth, storage,
//! the event contract and the HTTP edge. A function crate holds only its
//! handlers and a one-line `main` that calls [`run`]. The broker (publishing,
//! the outbox relay) is the `finapp-broker` crate's, so no HTTP function
//! links it.

pub mod auth;
pub mod config;
pub mod deps;
pub mod domain;
pub mod events;
pub mod finance;
pub mod hs256;
pub mod http;
pub mod idempotency;
pub mod metrics;
pub mod secrets;
pub mod server;
pub mod store;
pub mod telemetry;
pub mod trace_context;

use std::{process::ExitCode, sync::Arc};

pub use crate::deps::{Deps, StartError, bootstrap, load_config, load_config_with};

/// A function's whole `main`: [`bootstrap`] and [`metrics::start`] under the
/// name `function`, then serving the routes `build` returns in whichever
/// runtime this process is in, then exporting the last spans.
pub async fn run(function: &'static str, build: fn(Arc<Deps>) -> http::Routes) -> ExitCode {
    let deps = match bootstrap(function).await {
        Ok(deps) => deps,
        Err(code) => return code,
    };
    start_metrics(function, &deps).await;
    let (port, limits) = (deps.config.port, deps.config.limits);
    let readiness = Arc::new(http::Readiness::new(deps.store.clone()));
    let served = http::serve(build(deps), port, &limits, readiness).await;
    telemetry::shutdown().await;
    match served {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "stopped");
            ExitCode::FAILURE
        }
    }
}

/// [`metrics::start`] with the configured port. A metrics port that cannot be
/// bound is logged and the function serves on: its traffic matters more.
pub async fn start_metrics(function: &'static str, deps: &Deps) {
    if let Err(err) = metrics::start(function, deps.config.metrics_port).await {
        tracing::error!(error = %err, cause = ?std::error::Error::source(&err), "metrics not served");
    }
}
