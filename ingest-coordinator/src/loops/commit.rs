//! The commit loop: commits every batch whose chunks are all loaded (or whose commit was
//! interrupted), every `commit_poll` or when an upload completes. A commit that meets an outage is
//! tried again with growing pauses (per batch), and the outage goes into the batch's status —
//! once PostgreSQL takes it, if PostgreSQL was the outage. It also builds the read index of
//! visible batches whose index build was cut off (`INGEST_VISIBLE_BEFORE_INDEX`).

use crate::pipeline::commit::{commit_batch, index_missing};
use crate::state::AppState;
use ingest_core::batch::BatchId;
use ingest_core::fault::Fault;
use ingest_core::ledger;
use ingest_core::outage::Retries;
use std::collections::HashMap;
use tokio_util::sync::CancellationToken;

/// Commits ready batches until `shutdown`, every `commit_poll` or when woken.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.commit_poll());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retries = Retries::new(app.config.max_pause());
    // Outages not yet in their batch's status (PostgreSQL was the outage): noted once it is back.
    let mut unnoted: HashMap<BatchId, (u32, Fault)> = HashMap::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = app.commit_wakeup.notified() => {}
        }
        match index_missing(&app).await {
            Ok(0) => {}
            Ok(built) => tracing::info!(built, "built the missing indexes of visible batches"),
            Err(fault) => {
                tracing::warn!(%fault, "cannot look for visible batches without an index")
            }
        }
        let ready = match ready_batches(&app).await {
            Ok(ready) => ready,
            Err(fault) => {
                tracing::warn!(%fault, "cannot look for batches to commit; will try again");
                continue;
            }
        };
        retries.retain(|batch_id| ready.contains(&batch_id));
        unnoted.retain(|batch_id, _| ready.contains(batch_id));
        for batch_id in ready {
            if shutdown.is_cancelled() {
                return;
            }
            if !retries.is_due(batch_id) {
                continue;
            }
            if let Some((attempt, fault)) = unnoted.remove(&batch_id) {
                if !ledger::note_outage(&app.pool, batch_id, "commit", attempt, &fault).await {
                    unnoted.insert(batch_id, (attempt, fault));
                }
            }
            match commit_batch(&app, batch_id).await {
                Ok(_) => retries.forget(batch_id),
                Err(fault) => {
                    let attempt = retries.failed(batch_id);
                    tracing::warn!(%batch_id, attempt, %fault, "commit hit an outage; will try again");
                    if !ledger::note_outage(&app.pool, batch_id, "commit", attempt, &fault).await {
                        unnoted.insert(batch_id, (attempt, fault));
                    }
                }
            }
        }
    }
}

/// Batches ready to commit, or whose commit was interrupted.
async fn ready_batches(app: &AppState) -> Result<Vec<BatchId>, Fault> {
    let client = app.pool.get().await?;
    Ok(ledger::batches_to_commit(&client).await?)
}
