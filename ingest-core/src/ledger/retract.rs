//! A committed batch taken back: its rows out of `prices` and its state `committed →
//! retracted`, in one transaction — so a reader sees the batch whole or not at all, and a
//! coordinator killed half-way leaves the retract done once or not at all.
//!
//! How the rows go depends on where they are:
//! - the batch is still its own partition: DETACH and DROP of its staging table (catalog work
//!   only; readers wait for the DETACH's `ACCESS EXCLUSIVE` on `prices_by_batch`, not for rows);
//! - it was merged into a shared partition: one `DELETE … WHERE batch_id = $1` (readers go on,
//!   seeing the rows until the transaction commits).
//!
//! Under the batch's row lock (commit and cancel serialise on it too) the retract takes the
//! merge's advisory lock ([`schema::MERGE_LOCK`]), waiting for it, so a merge and a retract never
//! act on the same partition: the merge in progress finishes first, and a merge that comes later
//! finds the lock taken and merges nothing that pass. Every wait is bounded by the transaction's
//! `lock_timeout`: a lock that does not come is [`RetractError::LockTimeout`], nothing changed.
//!
//! [`retract_in`] works on the caller's transaction, so a replacement's commit can retract the
//! batch it replaces in the same transaction as its own attach.

use super::{from_i64, lock_batch};
use crate::batch::{BatchId, BatchState};
use crate::fault::{self, Fault};
use crate::schema;
use std::time::Duration;
use tokio_postgres::{Client, Transaction};

/// How a retracted batch's rows left `prices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// Its own partition was detached and dropped (catalog work only).
    Detached,
    /// It had been merged into a shared partition: its rows were deleted.
    Deleted,
}

impl Removal {
    /// How it is named in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Removal::Detached => "detached",
            Removal::Deleted => "deleted",
        }
    }
}

/// What a retract did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retracted {
    /// The rows taken out of `prices`.
    pub rows: u64,
    /// How.
    pub removal: Removal,
}

/// Why a retract changed nothing, by kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetractError {
    /// The ledger knows no such batch.
    #[error("no batch {0}")]
    Unknown(BatchId),
    /// Only a committed batch can be retracted (an open one is cancelled instead); a batch
    /// already retracted stays as it is.
    #[error("batch {batch_id} is {state}, not committed: nothing to retract")]
    NotCommitted {
        /// The batch.
        batch_id: BatchId,
        /// Its state.
        state: BatchState,
    },
    /// A lock did not come within the transaction's `lock_timeout` (a merge, a commit's attach
    /// or a long reader held it): try again.
    #[error("a lock did not come in time: {0}")]
    LockTimeout(String),
    /// PostgreSQL is away, or another outage: try again.
    #[error(transparent)]
    Outage(Fault),
}

impl From<tokio_postgres::Error> for RetractError {
    fn from(error: tokio_postgres::Error) -> RetractError {
        let lock_not_available = error
            .as_db_error()
            .is_some_and(|db| db.code() == &tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE);
        if lock_not_available {
            RetractError::LockTimeout(fault::describe(&error))
        } else {
            RetractError::Outage(Fault::from(error))
        }
    }
}

/// Retracts a committed batch in a transaction of its own, each lock waited for at most
/// `lock_wait` (see [`retract_in`]).
pub async fn retract(
    client: &mut Client,
    batch_id: BatchId,
    lock_wait: Duration,
) -> Result<Retracted, RetractError> {
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_wait.as_millis().max(1)
    ))
    .await?;
    let retracted = retract_in(&tx, batch_id).await?;
    tx.commit().await?;
    Ok(retracted)
}

/// Takes the merge's advisory lock ([`schema::MERGE_LOCK`]) for the rest of the transaction,
/// waiting for a merge in progress (within the transaction's `lock_timeout`). [`retract_in`]
/// takes it; a caller that will lock `prices_by_batch` before it (a replacement's commit, whose
/// ATTACH comes first) takes it before that lock, or a merge waiting on the ATTACH while holding
/// this lock deadlocks with it (PostgreSQL then ends one of them, `40P01`: an outage).
pub async fn lock_partitions(tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&schema::MERGE_LOCK])
        .await?;
    Ok(())
}

/// `committed → retracted` inside the caller's transaction, with the batch's rows taken out of
/// `prices` in the same transaction (see the module's doc): visible once the caller commits,
/// undone with it. Locks are waited for as long as the transaction's `lock_timeout` allows. On
/// an error the caller must roll the transaction back (some statements may have run).
pub async fn retract_in(
    tx: &Transaction<'_>,
    batch_id: BatchId,
) -> Result<Retracted, RetractError> {
    match lock_batch(tx, batch_id).await? {
        None => return Err(RetractError::Unknown(batch_id)),
        Some(BatchState::Committed) => {}
        Some(state) => return Err(RetractError::NotCommitted { batch_id, state }),
    }
    // Taken again by a caller that holds it already: advisory locks stack in a transaction.
    lock_partitions(tx).await?;
    // Under the merge's lock, where the rows are no longer changes.
    let own: bool = tx
        .query_one(
            schema::OWN_PARTITION_SQL,
            &[&schema::staging_table(batch_id)],
        )
        .await?
        .get(0);
    let (deleted, removal) = if own {
        tx.batch_execute(&schema::detach_and_drop_sql(batch_id))
            .await?;
        (None, Removal::Detached)
    } else {
        let deleted = tx
            .execute(
                "DELETE FROM prices_by_batch WHERE batch_id = $1",
                &[&batch_id.get()],
            )
            .await?;
        (Some(deleted), Removal::Deleted)
    };
    let row = tx
        .query_one(
            "UPDATE batches SET state = $2, retracted_at = now()
             WHERE id = $1 AND state = $3
             RETURNING coalesce(rows_total, 0)",
            &[
                &batch_id.get(),
                &BatchState::Retracted.as_str(),
                &BatchState::Committed.as_str(),
            ],
        )
        .await?;
    let rows = deleted.unwrap_or_else(|| from_i64(row.get(0)));
    Ok(Retracted { rows, removal })
}
