//! Redrive: the coordinator hands chunks out again from its spool. A chunk whose attempt failed,
//! whose lease expired (its worker vanished) or whose publish was never confirmed is published
//! again, until it has used `max_attempts`; then it is buried (`dead`) and its batch fails with a
//! reason naming the chunk, its lines and the last error.

use crate::app::AppState;
use crate::publish::{confirmed, Publisher};
use ingest_core::chunk::ChunkMessage;
use ingest_core::ledger::{self, Ending, Redrive};
use tokio_util::sync::CancellationToken;

/// Unconfirmed chunks older than this are published again (seconds).
const PENDING_GRACE_SECONDS: f64 = 30.0;

/// Re-drives chunks until `shutdown`, every `redrive_poll`.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.redrive_poll());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = redrive(&app, PENDING_GRACE_SECONDS).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "redrive pass failed; will try again"
            );
        }
    }
}

/// One pass: publishes again every chunk that needs it. `pending_seconds` is how old an
/// unconfirmed chunk must be (0 at start-up, when no upload of this coordinator is running).
pub async fn redrive(app: &AppState, pending_seconds: f64) -> anyhow::Result<usize> {
    let chunks = {
        let client = app.pool.get().await?;
        ledger::chunks_to_redrive(&client, pending_seconds).await?
    };
    if chunks.is_empty() {
        return Ok(0);
    }
    let publisher = Publisher::open(app).await?;
    let mut redriven = 0;
    for chunk in chunks {
        if chunk.attempts >= app.config.max_attempts {
            bury(app, &chunk).await?;
            continue;
        }
        let payload = match app.spool.read(chunk.batch_id, chunk.seq).await {
            Ok(payload) => payload,
            Err(error) => {
                let reason = format!(
                    "chunk {} cannot be handed out again: its spooled copy is unreadable ({error})",
                    chunk.seq
                );
                app.end_batch(chunk.batch_id, &Ending::failed(reason))
                    .await?;
                continue;
            }
        };
        let client = app.pool.get().await?;
        if !ledger::requeue_chunk(&client, chunk.batch_id, chunk.seq).await? {
            continue;
        }
        let message = ChunkMessage {
            batch_id: chunk.batch_id,
            seq: chunk.seq,
            rows: chunk.rows,
        };
        confirmed(publisher.send(message, &payload).await?).await?;
        ledger::mark_queued(&client, chunk.batch_id, chunk.seq).await?;
        tracing::info!(
            batch_id = chunk.batch_id,
            seq = chunk.seq,
            attempts = chunk.attempts,
            "chunk handed out again"
        );
        redriven += 1;
    }
    publisher.close().await;
    Ok(redriven)
}

/// Buries a chunk that spent its attempts and fails its batch.
async fn bury(app: &AppState, chunk: &Redrive) -> anyhow::Result<()> {
    {
        let client = app.pool.get().await?;
        ledger::bury_chunk(&client, chunk.batch_id, chunk.seq).await?;
    }
    let reason = format!(
        "chunk {} (lines {}–{}) failed {} times; last error: {}",
        chunk.seq,
        chunk.first_line,
        chunk.last_line,
        chunk.attempts,
        chunk.last_error.as_deref().unwrap_or("its worker vanished")
    );
    app.end_batch(chunk.batch_id, &Ending::failed(reason))
        .await?;
    Ok(())
}
