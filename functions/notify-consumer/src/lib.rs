//! notify-consumer: records every event from the four event queues in
//! `user_analytics`, exactly once per event id, and relays the outbox (the
//! events the HTTP functions recorded) to those queues.
//!
//! One binary, two runtimes, one handler ([`process::process_batch`]) and one
//! relay ([`finapp_broker::Relay`]):
//! - long-running (Kubernetes): [`amqp::run`] consumes with lapin, acks after
//!   the write, reconnects with backoff, and runs the relay beside it;
//! - Lambda: [`lambda::handle`] takes Amazon MQ for RabbitMQ event batches,
//!   and drains the outbox when an EventBridge schedule invokes it.

pub mod amqp;
pub mod lambda;
pub mod process;

use std::{process::ExitCode, sync::Arc};

use finapp_broker::{Publisher, Relay};
use finapp_shared::Deps;

/// What both runtimes work with: the process's shared dependencies and the
/// broker publisher that the relay and the dead-lettering use.
pub struct Worker {
    pub deps: Arc<Deps>,
    pub publisher: Publisher,
}

impl Worker {
    pub fn new(deps: Arc<Deps>) -> Self {
        Self {
            publisher: Publisher::new(&deps.config),
            deps,
        }
    }

    /// The outbox relay over this process's store, keys and publisher.
    pub fn relay(&self) -> Relay<'_> {
        Relay::new(&self.deps, &self.publisher)
    }
}

/// The binary's `main`: bootstrap, then whichever runtime this process is in.
pub async fn main() -> ExitCode {
    let deps = match finapp_shared::bootstrap("notify-consumer").await {
        Ok(deps) => deps,
        Err(code) => return code,
    };
    finapp_shared::start_metrics("notify-consumer", &deps).await;
    let result = if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        lambda::run(deps).await
    } else {
        amqp::run(deps, finapp_shared::http::shutdown_signal()).await;
        Ok(())
    };
    finapp_shared::telemetry::shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "Lambda runtime failed");
            ExitCode::FAILURE
        }
    }
}
