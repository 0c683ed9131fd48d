//! Logging: one JSON line per event on stdout, in both runtimes, carrying the
//! spans it was logged in (and so the request id). `RUST_LOG` filters; the
//! default is `info`.

use tracing_subscriber::{EnvFilter, fmt};

/// Installs the global subscriber; a second call is a no-op.
pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let _ = fmt()
        .json()
        .flatten_event(true)
        // The whole span list, so a line logged inside a handler's own span
        // still carries the enclosing request span's `request_id`.
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
        .with_env_filter(filter)
        .with_writer(std::io::stdout)
        .try_init();
}
