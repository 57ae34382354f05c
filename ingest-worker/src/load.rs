//! Load: one chunk into its batch's staging table, exactly once.
//!
//! 1. claim the chunk in the ledger (`loading`, with a lease and this session's backend) — or
//!    learn it needs nothing;
//! 2. read its copy from PostgreSQL and open it: decompress it and check its checksum. A copy
//!    that does not match is the infrastructure's fault, never the data's: the read is recorded
//!    as damaged and a coordinator hands the chunk out again, to be read again;
//! 3. in one transaction: mark it `loaded` (taking its row lock), COPY its rows, check the count,
//!    commit. A duplicate delivery waits on the row lock (at most the session's lock timeout)
//!    and then finds it loaded.
//!
//! The copy is a binary COPY stream: it goes to PostgreSQL as it is. Only PostgreSQL refusing
//! the rows counts as a failed attempt (recorded in the ledger); any other error is an outage,
//! returned to the caller to try again with the delivery still in hand.

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
    /// The copy read did not match its checksum (or there is none); recorded, and a coordinator
    /// hands the chunk out again (or fails the batch when no good copy is left).
    Damaged(String),
}

/// Loads one chunk. `body` is the message's body: empty (the chunk's copy is in PostgreSQL), or
/// the COPY stream itself from a coordinator before copies lived there. Err is an outage
/// (PostgreSQL away, a deadlock, a lock timeout, a full disk…): nothing was recorded and the
/// caller tries again.
pub async fn load(
    pool: &Pool,
    message: ChunkMessage,
    body: &[u8],
    worker: &str,
    lease: Duration,
) -> Result<Outcome, Fault> {
    let mut client = pool.get().await?;
    let (batch_id, seq) = (message.batch_id, message.seq);
    let claim = ledger::claim_chunk(&client, batch_id, seq, worker, lease).await?;
    match claim {
        Claim::Load { .. } => {}
        Claim::AlreadyLoaded => return Ok(Outcome::AlreadyLoaded),
        Claim::Closed => return Ok(Outcome::Closed),
    }
    let stream = if body.is_empty() {
        let opened = match ledger::read_copy(&client, batch_id, seq).await {
            Ok(Some(copy)) => copy.open().map_err(|damaged| damaged.to_string()),
            Ok(None) => Err("it has no stored copy".to_string()),
            // No table of copies: the batch ended meanwhile (its copies dropped) — or it was
            // staged before copies lived in PostgreSQL, and this message carries no stream.
            Err(error) if is_missing_table(&error) => {
                let state = ledger::batch_state(&client, batch_id).await?;
                if !state.is_some_and(|state| state.accepts_chunks()) {
                    return Ok(Outcome::Closed);
                }
                Err("it has no stored copy (its batch was staged before copies were kept)".into())
            }
            Err(error) => return Err(error.into()),
        };
        match opened {
            Ok(stream) => Bytes::from(stream),
            Err(damage) => {
                let reason = format!("chunk {seq}: {damage}");
                ledger::damage_chunk(&client, batch_id, seq, &reason).await?;
                return Ok(Outcome::Damaged(reason));
            }
        }
    } else {
        Bytes::copy_from_slice(body)
    };
    match copy(&mut client, message, stream).await {
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

/// The staging table (or the copies' table) was dropped: the batch ended meanwhile.
fn is_missing_table(error: &tokio_postgres::Error) -> bool {
    error.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE)
}
