//! Load: one chunk into its batch's staging table, exactly once.
//!
//! 1. claim the chunk in the ledger (`loading`, with a lease) — or learn it needs nothing;
//! 2. in one transaction: mark it `loaded` (taking its row lock), COPY its rows, check the count,
//!    commit. A duplicate delivery waits on the row lock and then finds it loaded.
//!
//! The message body is already a binary COPY stream: it goes to PostgreSQL as it is. Only
//! PostgreSQL refusing the rows counts as a failed attempt (recorded in the ledger); any other
//! error is an outage, returned to the caller to try again with the delivery still in hand.

use bytes::Bytes;
use deadpool_postgres::Pool;
use futures_util::SinkExt;
use ingest_core::chunk::ChunkMessage;
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Claim};
use ingest_core::schema;
use std::time::Duration;

/// What became of one delivery; the consumer acknowledges every outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its rows are staged now.
    Loaded,
    /// Its rows were staged before (a duplicate delivery).
    AlreadyLoaded,
    /// Its batch is no longer open (failed, cancelled, committed) or the chunk is dead.
    Closed,
    /// PostgreSQL refused the rows; the failure is recorded and the coordinator decides what
    /// next (hand it out again, or bury it and fail the batch).
    Refused(String),
}

/// Loads one chunk. Err is an outage (PostgreSQL away, a deadlock, a full disk…): nothing was
/// recorded and the caller tries again.
pub async fn load(
    pool: &Pool,
    message: ChunkMessage,
    payload: Bytes,
    worker: &str,
    lease: Duration,
) -> Result<Outcome, Fault> {
    let mut client = pool.get().await?;
    let claim = ledger::claim_chunk(&client, message.batch_id, message.seq, worker, lease).await?;
    match claim {
        Claim::Load { .. } => {}
        Claim::AlreadyLoaded => return Ok(Outcome::AlreadyLoaded),
        Claim::Closed => return Ok(Outcome::Closed),
    }
    match copy(&mut client, message, payload).await {
        Err(Fault::Refused(reason)) => {
            ledger::fail_chunk(&client, message.batch_id, message.seq, &reason).await?;
            Ok(Outcome::Refused(reason))
        }
        other => other,
    }
}

/// The loading transaction.
async fn copy(
    client: &mut tokio_postgres::Client,
    message: ChunkMessage,
    payload: Bytes,
) -> Result<Outcome, Fault> {
    let tx = client.transaction().await?;
    if !ledger::finish_chunk(&tx, message.batch_id, message.seq).await? {
        drop(tx);
        // Loaded by a duplicate meanwhile, or the batch closed: the claim step tells which.
        return Ok(Outcome::AlreadyLoaded);
    }
    let sink = tx
        .copy_in::<_, Bytes>(&schema::copy_sql(message.batch_id, message.part))
        .await;
    let sink = match sink {
        Ok(sink) => sink,
        Err(error) if is_missing_table(&error) => return Ok(Outcome::Closed),
        Err(error) => return Err(Fault::of_rows(&error)),
    };
    futures_util::pin_mut!(sink);
    sink.send(payload)
        .await
        .map_err(|error| Fault::of_rows(&error))?;
    let rows = sink
        .finish()
        .await
        .map_err(|error| Fault::of_rows(&error))?;
    if rows != u64::from(message.rows) {
        return Err(Fault::Refused(format!(
            "COPY loaded {rows} rows but the chunk holds {}",
            message.rows
        )));
    }
    tx.commit().await.map_err(|error| Fault::of_rows(&error))?;
    Ok(Outcome::Loaded)
}

/// The staging table was dropped: the batch failed or was cancelled meanwhile.
fn is_missing_table(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
}
