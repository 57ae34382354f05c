//! Load: one chunk into its batch's staging table, exactly once.
//!
//! 1. claim the chunk in the ledger (`loading`, with a lease) — or learn it needs nothing;
//! 2. in one transaction: mark it `loaded` (taking its row lock), COPY its rows, check the count,
//!    commit. A duplicate delivery waits on the row lock and then finds it loaded.
//!
//! The message body is already a binary COPY stream: it goes to PostgreSQL as it is.

use bytes::Bytes;
use deadpool_postgres::Pool;
use futures_util::SinkExt;
use ingest_core::chunk::ChunkMessage;
use ingest_core::ledger::{self, Claim};
use ingest_core::schema;

/// What became of one delivery; the consumer acknowledges all but `Retry`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its rows are staged now.
    Loaded,
    /// Its rows were staged before (a duplicate delivery).
    AlreadyLoaded,
    /// Its batch is no longer open (failed, cancelled, committed) or the chunk is dead.
    Closed,
    /// The attempt failed and the failure is recorded; the coordinator decides what next.
    Failed(String),
    /// The attempt failed and could not even be recorded (PostgreSQL unreachable): requeue.
    Retry(String),
}

/// Loads one chunk.
pub async fn load(
    pool: &Pool,
    message: ChunkMessage,
    payload: Bytes,
    worker: &str,
    lease_seconds: f64,
) -> Outcome {
    let mut client = match pool.get().await {
        Ok(client) => client,
        Err(error) => return Outcome::Retry(format!("no PostgreSQL connection: {error}")),
    };
    let claim = ledger::claim_chunk(
        &client,
        message.batch_id,
        message.seq,
        worker,
        lease_seconds,
    )
    .await;
    match claim {
        Ok(Claim::Load { .. }) => {}
        Ok(Claim::AlreadyLoaded) => return Outcome::AlreadyLoaded,
        Ok(Claim::Closed) => return Outcome::Closed,
        Err(error) => return Outcome::Retry(describe(&error)),
    }
    match copy(&mut client, message, payload).await {
        Ok(outcome) => outcome,
        Err(reason) => {
            match ledger::fail_chunk(&client, message.batch_id, message.seq, &reason).await {
                Ok(()) => Outcome::Failed(reason),
                Err(error) => Outcome::Retry(format!("{reason}; and then {}", describe(&error))),
            }
        }
    }
}

/// The loading transaction. Err is the reason the attempt failed.
async fn copy(
    client: &mut tokio_postgres::Client,
    message: ChunkMessage,
    payload: Bytes,
) -> Result<Outcome, String> {
    let tx = client.transaction().await.map_err(|e| describe(&e))?;
    let open = ledger::finish_chunk(&tx, message.batch_id, message.seq)
        .await
        .map_err(|e| describe(&e))?;
    if !open {
        drop(tx);
        // Loaded by a duplicate meanwhile, or the batch closed: the claim step tells which.
        return Ok(Outcome::AlreadyLoaded);
    }
    let sink = tx
        .copy_in::<_, Bytes>(&schema::copy_sql(message.batch_id))
        .await;
    let sink = match sink {
        Ok(sink) => sink,
        Err(error) if is_missing_table(&error) => return Ok(Outcome::Closed),
        Err(error) => return Err(describe(&error)),
    };
    futures_util::pin_mut!(sink);
    sink.send(payload).await.map_err(|e| describe(&e))?;
    let rows = sink.finish().await.map_err(|e| describe(&e))?;
    if rows != message.rows as u64 {
        return Err(format!(
            "COPY loaded {rows} rows but the chunk holds {}",
            message.rows
        ));
    }
    tx.commit().await.map_err(|e| describe(&e))?;
    Ok(Outcome::Loaded)
}

/// The staging table was dropped: the batch failed or was cancelled meanwhile.
fn is_missing_table(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
}

/// PostgreSQL's message and SQLSTATE, or the connection error.
fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} (SQLSTATE {})", db.message(), db.code().code()),
        None => error.to_string(),
    }
}
