//! notify-consumer: records every event from the four event queues in
//! `user_analytics`, exactly once per event id.
//!
//! One binary, two runtimes, one handler ([`process::process_batch`]):
//! - long-running (Kubernetes): [`amqp::run`] consumes with lapin, acks after
//!   the write, reconnects with backoff, and relays the outbox;
//! - Lambda: [`lambda::handle_batch`] takes Amazon MQ for RabbitMQ event batches.

pub mod amqp;
pub mod lambda;
pub mod process;

use std::process::ExitCode;

/// The binary's `main`: bootstrap, then whichever runtime this process is in.
pub async fn main() -> ExitCode {
    let deps = match finapp_shared::bootstrap().await {
        Ok(deps) => deps,
        Err(code) => return code,
    };
    let result = if std::env::var_os("AWS_LAMBDA_RUNTIME_API").is_some() {
        lambda::run(deps).await
    } else {
        amqp::run(deps, finapp_shared::http::shutdown_signal()).await;
        Ok(())
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %err, "Lambda runtime failed");
            ExitCode::FAILURE
        }
    }
}
