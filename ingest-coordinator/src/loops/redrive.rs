//! Redrive: no chunk is ever stranded. The coordinator hands chunks out again from its spool:
//! - a chunk whose attempt PostgreSQL refused (`failed`), until it has been refused
//!   `max_attempts` times — then it is buried (`dead`) and its batch fails, in one transaction,
//!   with a reason naming the chunk, its lines and the last error;
//! - a chunk whose lease expired (its worker vanished);
//! - a chunk recorded but never confirmed by RabbitMQ (`pending` for `redrive_after_seconds`);
//! - a chunk `queued` that long with no claim while the chunk queue holds nothing ready: its
//!   message was dead-lettered (the delivery limit) or lost.
//!
//! A chunk handed out twice is loaded once (the ledger sees to it), so erring towards handing out
//! is safe. The same loop sweeps uploads: a batch `receiving` that no upload of this coordinator
//! feeds is ended (failed, its key released) — see [`crate::pipeline::receiving`].

use crate::pipeline::publish::{confirmed, Publisher};
use crate::state::AppState;
use ingest_core::broker;
use ingest_core::chunk::ChunkMessage;
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Ending, Redrive};
use ingest_core::metrics as m;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Re-drives chunks and sweeps uploads until `shutdown`, every `redrive_poll`.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.redrive_poll());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(fault) = redrive(&app, app.config.redrive_after()).await {
            tracing::warn!(%fault, "redrive pass failed; will try again");
        }
        if let Err(fault) = sweep_uploads(&app, app.config.redrive_after()).await {
            tracing::warn!(%fault, "upload sweep failed; will try again");
        }
    }
}

/// One pass: publishes again every chunk that needs it. `after` is how long a chunk must have
/// been pending or queued (none at start-up, when no upload of this coordinator is running).
pub async fn redrive(app: &AppState, after: Duration) -> Result<usize, Fault> {
    let stranded_too = queue_holds_nothing_ready(app).await?;
    let chunks = {
        let client = app.pool.get().await?;
        ledger::chunks_to_redrive(&client, after, stranded_too).await?
    };
    if chunks.is_empty() {
        return Ok(0);
    }
    let publisher = Publisher::new(app);
    let mut redriven = 0;
    for redrive in chunks {
        let chunk = redrive.chunk;
        if redrive.failures >= app.config.max_attempts {
            bury(app, &redrive).await?;
            continue;
        }
        let payload = match app.spool.read(chunk.batch_id, chunk.seq).await {
            Ok(payload) => payload,
            Err(error) => {
                let reason = format!(
                    "chunk {} (lines {}–{}) cannot be handed out again: its spooled copy is \
                     unreadable ({error}); submit the file again",
                    chunk.seq, chunk.first_line, chunk.last_line
                );
                metrics::counter!(m::CHUNKS_DEAD, "reason" => "spool_lost").increment(1);
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
            part: chunk.part,
        };
        // An outage here leaves the chunk `pending`: the next passes publish it again.
        confirmed(publisher.send(message, &payload).await?).await?;
        ledger::mark_queued(&client, chunk.batch_id, chunk.seq).await?;
        metrics::counter!(m::CHUNK_RETRIES, "reason" => redrive.reason.as_str()).increment(1);
        tracing::info!(
            batch_id = %chunk.batch_id,
            seq = %chunk.seq,
            attempts = redrive.attempts,
            reason = redrive.reason.as_str(),
            "chunk handed out again"
        );
        redriven += 1;
    }
    publisher.close().await;
    Ok(redriven)
}

/// True when the chunk queue holds no message ready for a worker: a chunk still `queued` then has
/// no message on its way.
async fn queue_holds_nothing_ready(app: &AppState) -> Result<bool, Fault> {
    let channel = app.amqp.channel().await?;
    let depth = broker::depth(&channel, &app.config.queue).await;
    let _ = channel.close(200, "looked".into()).await;
    Ok(depth?.0 == 0)
}

/// Buries a chunk that PostgreSQL refused `max_attempts` times, and fails its batch.
async fn bury(app: &AppState, redrive: &Redrive) -> Result<(), Fault> {
    let chunk = &redrive.chunk;
    let reason = format!(
        "chunk {} (lines {}–{}) was refused {} times; last error: {}",
        chunk.seq,
        chunk.first_line,
        chunk.last_line,
        redrive.failures,
        redrive.last_error.as_deref().unwrap_or("none recorded")
    );
    let buried = {
        let mut client = app.pool.get().await?;
        ledger::bury_chunk(&mut client, chunk.batch_id, chunk.seq, &reason).await?
    };
    if buried {
        metrics::counter!(m::CHUNKS_DEAD, "reason" => "refused").increment(1);
        app.batch_is_final(chunk.batch_id).await;
        tracing::warn!(batch_id = %chunk.batch_id, %reason, "poison chunk; batch failed");
    }
    Ok(())
}

/// Ends every batch left `receiving` for more than `after` that no upload of this coordinator
/// feeds. Returns how many it ended.
pub async fn sweep_uploads(app: &AppState, after: Duration) -> Result<usize, Fault> {
    let receiving = {
        let client = app.pool.get().await?;
        ledger::receiving_batches(&client, after).await?
    };
    let mut ended = 0;
    for batch_id in receiving {
        if app.receiving.is_fed(batch_id) {
            continue;
        }
        let reason = "the upload stopped before the whole file was in (the connection broke or \
                      the coordinator restarted); submit the file again";
        if app
            .end_batch(batch_id, &Ending::upload_lost(reason))
            .await?
        {
            tracing::warn!(%batch_id, "ended a batch whose upload no longer feeds it");
            ended += 1;
        }
    }
    Ok(ended)
}
