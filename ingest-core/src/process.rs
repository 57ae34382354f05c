//! What every long-running binary does the same way at start and at stop: logs go to stderr
//! (filtered by `RUST_LOG`, as text or as JSON), and SIGINT or SIGTERM asks for a graceful stop.
//! One definition, so the coordinator and the workers cannot drift apart.

use std::io::IsTerminal;
use tracing_subscriber::EnvFilter;

/// Sends logs to stderr; `RUST_LOG` filters them (default: `info`, lapin's chatter at `warn`).
/// `INGEST_LOG_FORMAT=json` writes one JSON object a line (a log pipeline's input), with the
/// fields of the spans a line is in — `batch_id` for the steps of a batch, `request_id` for an
/// HTTP request; anything else writes text, coloured only on a terminal.
pub fn init_logs() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,lapin=warn"));
    let json = std::env::var("INGEST_LOG_FORMAT").is_ok_and(|format| format == "json");
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        logs.json()
            .with_current_span(true)
            .with_span_list(true)
            .flatten_event(true)
            .init();
    } else {
        logs.with_ansi(std::io::stderr().is_terminal()).init();
    }
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
