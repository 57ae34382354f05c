//! Redrive: no chunk is ever stranded, and no batch waits on a coordinator that is gone. Any
//! coordinator hands any chunk out again — its copy is in PostgreSQL — and each pass:
//! - publishes again a chunk whose attempt PostgreSQL refused (`failed`), until it has been
//!   refused `max_attempts` times — then it is buried (`dead`) and its batch fails, in one
//!   transaction, with a reason naming the chunk, its lines and the last error;
//! - publishes again a chunk whose copy was read damaged (`damaged`), until `max_attempts` reads
//!   were: then no good copy is left, and its batch fails saying so, its key released;
//! - frees a chunk whose lease expired (its worker vanished or froze): the worker's backend,
//!   recorded at the claim, is ended first — its open transaction holds the chunk's row lock —
//!   then the chunk is published again;
//! - publishes again a chunk recorded but never confirmed by RabbitMQ (`pending` for
//!   `redrive_after_seconds`), and a chunk `queued` that long with no claim whose message was
//!   lost: one published after it was claimed that long ago, or the queue holds nothing ready;
//! - takes back, from the dead-letter queue, every chunk message RabbitMQ dead-lettered (a worker
//!   kept dying on it), and publishes it again — a few rounds, then the batch fails (its key
//!   released: no worker could load it, which is not the data's fault);
//! - sweeps uploads: a batch `receiving` that no upload feeds any more is ended (failed, its key
//!   released) — this coordinator's own at once, a peer's only once that peer is gone (not seen
//!   for its lease) and this coordinator has itself been seen steadily for a lease;
//! - drops the tables that batches which ended left behind.
//!
//! A chunk handed out twice is loaded once (the ledger sees to it), so erring towards handing out
//! is safe. Nothing here waits on a chunk's row lock (`SKIP LOCKED`): one stuck chunk holds up no
//! other batch.

use crate::pipeline::publish::{confirmed, Publisher};
use crate::state::AppState;
use ingest_core::broker;
use ingest_core::chunk::{ChunkMessage, ChunkState};
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Ending, Redrive, RedriveReason};
use ingest_core::metrics as m;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How long ending a stale worker's backend waits for it to go.
const END_WAIT: Duration = Duration::from_secs(5);

/// Rounds through the dead-letter queue after which a chunk is given up.
pub const DEAD_LETTER_ROUNDS: u32 = 5;

/// How long the sweep waits for a lock when it drops what an ended batch left.
const SWEEP_LOCK_WAIT: Duration = Duration::from_millis(200);

/// Re-drives chunks and sweeps uploads and tables until `shutdown`, every `redrive_poll`.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.redrive_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(fault) = redrive(&app, app.config.redrive_after).await {
            tracing::warn!(%fault, "redrive pass failed; will try again");
        }
        if let Err(fault) = take_back_dead_letters(&app).await {
            tracing::warn!(%fault, "dead-letter pass failed; will try again");
        }
        if let Err(fault) = sweep_uploads(&app, app.config.redrive_after).await {
            tracing::warn!(%fault, "upload sweep failed; will try again");
        }
        if let Err(fault) = sweep_tables(&app).await {
            tracing::warn!(%fault, "table sweep failed; will try again");
        }
    }
}

/// One pass: publishes again every chunk that needs it. `after` is how long a chunk must have
/// been pending or queued.
pub async fn redrive(app: &AppState, after: Duration) -> Result<usize, Fault> {
    let queue_idle = queue_holds_nothing_ready(app).await?;
    let chunks = {
        let client = app.pool.get().await?;
        ledger::chunks_to_redrive(&client, after, queue_idle).await?
    };
    if chunks.is_empty() {
        return Ok(0);
    }
    let publisher = Publisher::new(app);
    let mut redriven = 0;
    for redrive in chunks {
        let chunk = redrive.chunk;
        match redrive.reason {
            RedriveReason::Refused if redrive.failures >= app.config.max_attempts => {
                bury(app, &redrive, refused_ending(&redrive)).await?;
                continue;
            }
            RedriveReason::Damaged if redrive.damaged >= app.config.max_attempts => {
                bury(app, &redrive, no_good_copy(&redrive)).await?;
                continue;
            }
            RedriveReason::LeaseExpired => {
                let client = app.pool.get().await?;
                if ledger::end_stale_claim(&client, &redrive.holder, END_WAIT).await? {
                    tracing::warn!(
                        batch_id = %chunk.batch_id,
                        seq = %chunk.seq,
                        worker = redrive.holder.worker.as_deref().unwrap_or("?"),
                        "ended the backend of a worker whose lease expired"
                    );
                }
            }
            _ => {}
        }
        let client = app.pool.get().await?;
        if !ledger::requeue_chunk(&client, chunk.batch_id, chunk.seq, redrive.reason).await? {
            continue;
        }
        // An outage here leaves the chunk `pending`: the next passes publish it again.
        confirmed(publisher.send(chunk.message()).await?).await?;
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

/// Why a chunk PostgreSQL refused `max_attempts` times fails its batch.
fn refused_ending(redrive: &Redrive) -> Ending {
    let chunk = &redrive.chunk;
    Ending::failed(format!(
        "chunk {} (lines {}–{}) was refused {} times; last error: {}",
        chunk.seq,
        chunk.first_line,
        chunk.last_line,
        redrive.failures,
        redrive.last_error.as_deref().unwrap_or("none recorded")
    ))
}

/// Why a chunk whose copy was read damaged `max_attempts` times fails its batch.
fn no_good_copy(redrive: &Redrive) -> Ending {
    let chunk = &redrive.chunk;
    Ending::no_good_copy(format!(
        "no good copy of chunk {} (lines {}–{}) is left: its stored copy was read damaged {} \
         times (last: {}); this is not the file's fault — submit it again",
        chunk.seq,
        chunk.first_line,
        chunk.last_line,
        redrive.damaged,
        redrive.last_error.as_deref().unwrap_or("none recorded")
    ))
}

/// Buries a chunk that will not load, and fails its batch as `ending` says.
async fn bury(app: &AppState, redrive: &Redrive, ending: Ending) -> Result<(), Fault> {
    let chunk = &redrive.chunk;
    let buried = {
        let mut client = app.pool.get().await?;
        ledger::bury_chunk(&mut client, chunk.batch_id, chunk.seq, &ending).await?
    };
    if buried {
        let reason = match redrive.reason {
            RedriveReason::Damaged => "no_good_copy",
            _ => "refused",
        };
        metrics::counter!(m::CHUNKS_DEAD, "reason" => reason).increment(1);
        tracing::warn!(batch_id = %chunk.batch_id, error = %ending.error, "chunk will not load; batch failed");
    }
    Ok(())
}

/// Takes every message out of the dead-letter queue: a chunk message of an open batch is
/// published again (counting the round in its `dead_letters`), or — after
/// [`DEAD_LETTER_ROUNDS`] rounds — its batch fails; any other message is dropped, logged.
/// Each dead letter is acknowledged only once what it asks for is done.
pub async fn take_back_dead_letters(app: &AppState) -> Result<usize, Fault> {
    let dead = broker::dead_letter_queue(&app.config.queue);
    let channel = app.amqp.channel().await?;
    let publisher = Publisher::new(app);
    let mut taken = 0;
    let result = loop {
        let got = channel
            .basic_get(dead.as_str().into(), BasicGetOptions::default())
            .await;
        let message = match got {
            Ok(Some(message)) => message,
            Ok(None) => break Ok(taken),
            Err(error) => break Err(Fault::from(error)),
        };
        let headers = message
            .delivery
            .properties
            .headers()
            .clone()
            .unwrap_or_default();
        if let Some(chunk) = ChunkMessage::from_headers(&headers) {
            if let Err(fault) = take_back(app, &publisher, chunk).await {
                // Left unacknowledged: back in the dead-letter queue when this channel closes.
                break Err(fault);
            }
        } else {
            tracing::warn!(queue = %dead, properties = ?message.delivery.properties, "dropped a dead letter that is not a chunk message");
        }
        if let Err(error) = message.delivery.acker.ack(BasicAckOptions::default()).await {
            break Err(Fault::from(error));
        }
        taken += 1;
    };
    publisher.close().await;
    let _ = channel.close(200, "taken back".into()).await;
    result
}

/// One dead-lettered chunk message: published again, or its batch failed after too many rounds,
/// or nothing (its batch is over, or the chunk is loaded).
async fn take_back(
    app: &AppState,
    publisher: &Publisher,
    message: ChunkMessage,
) -> Result<(), Fault> {
    let (batch_id, seq) = (message.batch_id, message.seq);
    let found = {
        let client = app.pool.get().await?;
        ledger::chunk_and_batch(&client, batch_id, seq).await?
    };
    let Some((record, state, batch_state)) = found else {
        return Ok(());
    };
    if !batch_state.accepts_chunks() || !ChunkState::UNLOADED.contains(&state) {
        return Ok(());
    }
    let rounds = message.dead_letters + 1;
    if rounds > DEAD_LETTER_ROUNDS {
        let ending = Ending::no_good_copy(format!(
            "chunk {} (lines {}–{}) was handed out {} times by RabbitMQ's dead-letter queue and \
             no worker finished loading it (each time a worker died or was cut off holding it); \
             this is not the file's fault — submit it again",
            seq,
            record.first_line,
            record.last_line,
            rounds - 1
        ));
        let mut client = app.pool.get().await?;
        if ledger::bury_chunk(&mut client, batch_id, seq, &ending).await? {
            metrics::counter!(m::CHUNKS_DEAD, "reason" => "undeliverable").increment(1);
            tracing::warn!(%batch_id, %seq, "a chunk no worker could load; batch failed");
        }
        return Ok(());
    }
    confirmed(
        publisher
            .send(ChunkMessage {
                dead_letters: rounds,
                ..record.message()
            })
            .await?,
    )
    .await?;
    {
        let client = app.pool.get().await?;
        ledger::republished(&client, batch_id, seq).await?;
    }
    metrics::counter!(m::CHUNK_RETRIES, "reason" => RedriveReason::DeadLettered.as_str())
        .increment(1);
    tracing::info!(%batch_id, %seq, rounds, "dead-lettered chunk handed out again");
    Ok(())
}

/// Ends every batch left `receiving` that no upload feeds: this coordinator's own uploads that
/// ended without saying so (after `after`), and — once this coordinator's presence is steady —
/// uploads whose coordinator is gone. Returns how many it ended.
pub async fn sweep_uploads(app: &AppState, after: Duration) -> Result<usize, Fault> {
    let (own, orphaned) = {
        let client = app.pool.get().await?;
        let own = ledger::own_receiving_batches(&client, app.presence.id(), after).await?;
        let orphaned = if app.presence.is_steady() {
            ledger::orphaned_uploads(&client, app.presence.id(), app.presence.lease()).await?
        } else {
            Vec::new()
        };
        (own, orphaned)
    };
    let mut ended = 0;
    for batch_id in own {
        if app.receiving.is_fed(batch_id) {
            continue;
        }
        let reason = "the upload stopped before the whole file was in (the connection broke); \
                      submit the file again";
        if app
            .end_batch(batch_id, &Ending::upload_lost(reason))
            .await?
        {
            tracing::warn!(%batch_id, "ended a batch whose upload no longer feeds it");
            ended += 1;
        }
    }
    for batch_id in orphaned {
        let reason = "the upload stopped before the whole file was in: the coordinator receiving \
                      it was not seen for its lease (it stopped, froze or was cut off); submit the \
                      file again";
        if app
            .end_batch(batch_id, &Ending::upload_lost(reason))
            .await?
        {
            tracing::warn!(%batch_id, "ended a batch whose coordinator is gone");
            ended += 1;
        }
    }
    Ok(ended)
}

/// Drops the tables that batches which ended left behind (a drop that timed out behind a
/// worker, a coordinator killed between the end and the drop).
pub async fn sweep_tables(app: &AppState) -> Result<usize, Fault> {
    let mut client = app.pool.get().await?;
    let leftovers = ledger::leftover_tables(&client).await?;
    let mut dropped = 0;
    for (batch_id, committed) in leftovers {
        match ledger::drop_batch_tables(&mut client, batch_id, committed, SWEEP_LOCK_WAIT).await {
            Ok(()) => dropped += 1,
            Err(error) => {
                tracing::debug!(%batch_id, %error, "a leftover table is still in use; later")
            }
        }
    }
    Ok(dropped)
}
