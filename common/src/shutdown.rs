//! The first phase of a daemon's shutdown: a future that completes on SIGTERM (what
//! systemd sends) or SIGINT (Ctrl-C). What to drain, and for how long, is the daemon's.

use tokio::signal::unix::{self, SignalKind};

/// Completes when the process receives SIGTERM or SIGINT.
///
/// # Panics
/// If the SIGTERM handler cannot be installed (only when the runtime has no signal
/// driver, a programming error).
pub async fn signal() {
    let mut term = unix::signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
