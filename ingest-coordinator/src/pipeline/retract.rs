//! Retract: a committed batch taken back out of `prices` on request (`POST
//! /batches/{id}/retract`).
//!
//! This step exists because validation cannot catch every bad delivery: a well-formed file with
//! prices in the wrong currency, a shifted day or a doubled lane is found only after its commit.
//! Without it the way back is a hand-written `DELETE` on a partitioned table, which readers see
//! half done while it runs. Every batch is a partition of its own until it is merged, so taking
//! it back is one transaction ([`ledger::retract`]: DETACH and DROP, or a DELETE once merged,
//! with the state change); this module is the coordinator's side of it — the lock bound (the
//! merge's, `INGEST_MERGE_LOCK_MS`: a DETACH queues readers behind it while it waits, so it must
//! not wait long), the transaction run to its end whatever happens to the request, the outcome
//! counted and logged.

use crate::state::AppState;
use ingest_core::batch::BatchId;
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, RetractError, Retracted};
use ingest_core::metrics as m;
use std::time::Instant;
use tracing::Instrument;

/// Retracts a committed batch. The transaction runs on a task of its own, so a client that
/// goes away does not cut it short (it ends committed or rolled back either way: done once or
/// not at all).
pub async fn retract(app: &AppState, batch_id: BatchId) -> Result<Retracted, RetractError> {
    let started = Instant::now();
    let pool = app.pool.clone();
    let lock_wait = app.config.merge_lock;
    let task = tokio::spawn(
        async move {
            let mut client = pool
                .get()
                .await
                .map_err(|error| RetractError::Outage(Fault::from(error)))?;
            ledger::retract(&mut client, batch_id, lock_wait).await
        }
        .instrument(tracing::info_span!("retract", %batch_id)),
    );
    let result = task.await.unwrap_or_else(|error| {
        Err(RetractError::Outage(Fault::outage(format!(
            "the retract's task ended: {error}"
        ))))
    });
    metrics::counter!(m::RETRACTS, "outcome" => outcome(&result)).increment(1);
    match &result {
        Ok(retracted) => tracing::info!(
            %batch_id,
            rows = retracted.rows,
            removal = retracted.removal.as_str(),
            seconds = started.elapsed().as_secs_f64(),
            "batch retracted"
        ),
        Err(error @ (RetractError::LockTimeout(_) | RetractError::Outage(_))) => {
            tracing::info!(%batch_id, %error, "batch not retracted; the client may try again")
        }
        Err(_) => {}
    }
    result
}

/// The `outcome` label of [`m::RETRACTS`].
fn outcome(result: &Result<Retracted, RetractError>) -> &'static str {
    match result {
        Ok(_) => "retracted",
        Err(RetractError::Unknown(_)) => "unknown",
        Err(RetractError::NotCommitted { .. }) => "not_committed",
        Err(RetractError::LockTimeout(_)) => "lock_timeout",
        Err(RetractError::Outage(_)) => "outage",
    }
}
