//! Logging: one JSON line per event on stdout, in both runtimes, carrying the
//! spans it was logged in (and so the request id). `RUST_LOG` filters with
//! `level` and `target=level` directives (e.g. `info,finapp_shared=debug`); the
//! default, and the fallback for a value it cannot read, is `info`.

use tracing::Level;
use tracing_subscriber::{filter::Targets, fmt, prelude::*};

/// Installs the global subscriber; a second call is a no-op.
pub fn init() {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let format = fmt::layer()
        .json()
        .flatten_event(true)
        // The whole span list, so a line logged inside a handler's own span
        // still carries the enclosing request span's `request_id`.
        .with_current_span(false)
        .with_span_list(true)
        .with_target(false)
        .with_writer(std::io::stdout);
    let _ = tracing_subscriber::registry()
        .with(format)
        .with(filter)
        .try_init();
}

/// The filter `RUST_LOG` asks for. `Targets` rather than `EnvFilter`: the same
/// level directives minus span and field filters, without a regex engine in
/// every binary.
fn filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .filter(|value| !value.trim().is_empty())
        .and_then(|value| value.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(Level::INFO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_directives_set_levels_per_target() {
        let filter = filter(Some("warn,finapp_shared=debug"));
        assert!(filter.would_enable("finapp_shared::events", &Level::DEBUG));
        assert!(!filter.would_enable("lapin", &Level::INFO));
        assert!(filter.would_enable("lapin", &Level::WARN));
    }

    #[test]
    fn no_empty_or_unreadable_rust_log_means_info() {
        for rust_log in [None, Some(""), Some("info,=nonsense=")] {
            let filter = filter(rust_log);
            assert!(filter.would_enable("signup", &Level::INFO), "{rust_log:?}");
            assert!(
                !filter.would_enable("signup", &Level::DEBUG),
                "{rust_log:?}"
            );
        }
    }
}
