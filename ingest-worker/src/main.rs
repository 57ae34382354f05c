//! `ingest-worker`: loads chunks until SIGTERM or SIGINT, then drains and exits 0.

use ingest_worker::Config;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> ExitCode {
    ingest_core::process::init_logs();
    let config = Config::from_args();
    let shutdown = CancellationToken::new();
    let signal = shutdown.clone();
    tokio::spawn(async move {
        ingest_core::process::shutdown_signal().await;
        signal.cancel();
    });
    match ingest_worker::run(config, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("ingest-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}
