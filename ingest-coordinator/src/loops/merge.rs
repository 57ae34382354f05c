//! The merge loop: every `merge_poll`, counts the partitions of `prices_by_batch` and merges the
//! smallest, merge after merge, while there are more than `partitions_max` (see
//! [`crate::pipeline::merge`]). A merge that meets an outage or a lock it could not get in time
//! changed nothing and is tried again at the next pass; a coordinator killed mid-merge leaves
//! nothing behind either.

use crate::pipeline::merge;
use crate::state::AppState;
use ingest_core::fault::Fault;
use ingest_core::metrics as m;
use tokio_util::sync::CancellationToken;

/// Merges partitions until `shutdown`, every `merge_poll`.
pub async fn run(app: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(app.config.merge_poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Merge again at once while still over the bound (each merge is one transaction).
        loop {
            match pass(&app).await {
                Ok(true) if !shutdown.is_cancelled() => continue,
                Ok(_) => break,
                Err(fault) => {
                    metrics::counter!(m::MERGES, "outcome" => "outage").increment(1);
                    tracing::info!(%fault, "partition merge not done; will try again");
                    break;
                }
            }
        }
    }
}

/// One merge, if the partitions are over the bound; true when it merged.
async fn pass(app: &AppState) -> Result<bool, Fault> {
    let mut client = app.pool.get().await?;
    let (count, merged) = merge::pass(
        &mut client,
        app.config.partitions_max,
        app.config.merge_max_bytes,
        app.config.merge_lock,
    )
    .await?;
    metrics::gauge!(m::PARTITIONS).set(count as f64);
    if let merge::Pass::Merged(merged) = merged {
        metrics::counter!(m::MERGES, "outcome" => "merged").increment(1);
        metrics::gauge!(m::PARTITIONS).set((count + 1 - merged.partitions) as f64);
        tracing::info!(
            table = %merged.table,
            partitions = merged.partitions,
            batches = merged.batches,
            rows = merged.rows,
            "partitions merged"
        );
        return Ok(true);
    }
    Ok(false)
}
