//! The framework floor: a bare axum server answering `GET /healthz` with the
//! same body as the functions, built with the same release profile, and no
//! shared middleware (no request span, no log line, no body limit).

use axum::{Router, routing::get};
use serde_json::json;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|port| port.parse().ok())
        .unwrap_or(8080);
    let app = Router::new().route(
        "/healthz",
        get(|| async { axum::Json(json!({ "status": "ok" })) }),
    );
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", port)).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            if let Ok(mut terminate) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            {
                terminate.recv().await;
            }
        })
        .await
}
