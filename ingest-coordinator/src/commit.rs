//! Commit: when every chunk of a batch is loaded, the batch becomes visible at once. Its staging
//! table gets the read index, then one transaction attaches it as a partition of
//! `prices_by_batch` (PostgreSQL validates both foreign keys in bulk there) and marks the batch
//! committed. Rows are never copied a second time. A commit interrupted by a stop is resumed by
//! the next coordinator (`committing` batches are picked up again).

use crate::app::AppState;
use ingest_core::batch::BatchState;
use ingest_core::ledger::{self, Ending};
use ingest_core::schema;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Commits ready batches until `shutdown`, every `commit_poll` or when woken.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.commit_poll());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = app.commit_wakeup.notified() => {}
        }
        if let Err(error) = commit_ready(&app).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "commit pass failed; will try again"
            );
        }
    }
}

/// One pass: commits every batch that is ready.
pub async fn commit_ready(app: &AppState) -> anyhow::Result<()> {
    let ready = {
        let client = app.pool.get().await?;
        ledger::batches_to_commit(&client).await?
    };
    for batch_id in ready {
        commit_batch(app, batch_id).await?;
    }
    Ok(())
}

/// What became of one commit.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// The batch is visible.
    Visible,
    /// PostgreSQL refused the rows (e.g. a port deleted meanwhile): the batch failed.
    Refused,
    /// Someone else moved the batch on (another coordinator, a cancel).
    Skipped,
}

/// Commits one batch whose chunks are all loaded (or whose commit was interrupted).
pub async fn commit_batch(app: &AppState, batch_id: i64) -> anyhow::Result<Committed> {
    let started = Instant::now();
    let mut client = app.pool.get().await?;
    // A `loading` batch is claimed; a `committing` one (an interrupted commit) is resumed.
    if !ledger::start_commit(&client, batch_id).await?
        && ledger::batch_state(&client, batch_id).await? != Some(BatchState::Committing)
    {
        return Ok(Committed::Skipped);
    }
    if let Err(error) = client
        .batch_execute(&schema::index_staging_sql(batch_id))
        .await
    {
        return refuse(app, batch_id, "building the batch's index", error).await;
    }
    let tx = client.transaction().await?;
    let state = ledger::lock_batch(&tx, batch_id).await?;
    if state != Some(BatchState::Committing) {
        return Ok(Committed::Skipped);
    }
    if let Err(error) = tx.batch_execute(&schema::attach_sql(batch_id)).await {
        drop(tx);
        return refuse(app, batch_id, "attaching the batch to prices", error).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    if !ledger::finish_commit(&tx, batch_id, seconds).await? {
        return Ok(Committed::Skipped);
    }
    tx.commit().await?;
    app.spool.remove_batch(batch_id).await;
    tracing::info!(batch_id, seconds, "batch committed");
    Ok(Committed::Visible)
}

/// Fails a batch whose rows PostgreSQL refused, with PostgreSQL's reason.
async fn refuse(
    app: &AppState,
    batch_id: i64,
    step: &str,
    error: tokio_postgres::Error,
) -> anyhow::Result<Committed> {
    let Some(db_error) = error.as_db_error() else {
        // Not the data's fault (a lost connection): the next pass tries again.
        return Err(anyhow::Error::new(error).context(step.to_string()));
    };
    let reason = format!(
        "{step} failed: {} (SQLSTATE {}){}",
        db_error.message(),
        db_error.code().code(),
        db_error
            .detail()
            .map(|detail| format!(": {detail}"))
            .unwrap_or_default()
    );
    tracing::warn!(batch_id, %reason, "commit refused");
    app.end_batch(batch_id, &Ending::failed(reason)).await?;
    Ok(Committed::Refused)
}
