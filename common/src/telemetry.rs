//! Logging for the daemons: human-readable lines on stderr (journald picks them up
//! under systemd), `info` and above unless `RUST_LOG` says otherwise.

/// Installs the process's tracing subscriber. Call once, first thing in `main`.
pub fn init() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
}
