//! What every long-running binary does the same way at start and at stop: logs go to stderr
//! (filtered by `RUST_LOG`), and SIGINT or SIGTERM asks for a graceful stop. One definition, so
//! the coordinator and the workers cannot drift apart.

use std::io::IsTerminal;

/// Sends logs to stderr (coloured only on a terminal); `RUST_LOG` filters them (default: `info`,
/// lapin's chatter at `warn`).
pub fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,lapin=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

/// Resolves on the first SIGINT or SIGTERM (a rolling deploy or Ctrl-C).
pub async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
