//! A committed batch replaced by a corrected file, in one step for readers.
//!
//! A batch submitted with `Replaces: <old>` loads as any other; its commit retracts `old`
//! ([`retract_in`]) in the transaction of its own attach and records `old.replaced_by`, so a
//! reader sees the old batch or the new one, never both and never neither. If the new batch
//! fails or is cancelled, nothing touched the old one.
//!
//! `old` must be committed and not replaced yet: checked at submit ([`replaceable`], inside
//! [`create_batch`](super::create_batch)) and again at the commit under the old batch's row
//! lock ([`lock_replaced`]), where two replacements of one batch meet: the first to commit wins,
//! the second finds `old` replaced and fails, naming the winner.
//!
//! Lock order, the same in every transaction that takes these locks, so that none waits for
//! another in a circle: the batch's own row, the old batch's row, the merge's advisory lock
//! ([`lock_partitions`]), then `prices_by_batch` (the attach, the old batch's DETACH or DELETE).
//! A retract of `old` alone takes its row, then the advisory lock; a merge takes the advisory
//! lock and no batch row.

use super::retract::{lock_partitions, retract_in, RetractError, Retracted};
use super::{lock_batch, Stored};
use crate::batch::{BatchId, BatchState};
use crate::fault::Fault;
use tokio_postgres::{GenericClient, Transaction};

/// Why a batch cannot be replaced, by kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotReplaceable {
    /// The ledger knows no such batch.
    #[error("there is no batch {0} to replace")]
    Unknown(BatchId),
    /// Only a committed batch can be replaced (an open one is cancelled instead).
    #[error("batch {batch_id} is {state}, not committed: only a committed batch can be replaced")]
    NotCommitted {
        /// The batch.
        batch_id: BatchId,
        /// Its state.
        state: BatchState,
    },
    /// Another batch replaced it already.
    #[error("batch {batch_id} was replaced by batch {by} already")]
    Replaced {
        /// The batch.
        batch_id: BatchId,
        /// The batch that replaced it.
        by: BatchId,
    },
}

/// Why a replacement's commit could not retract the batch it replaces.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplaceError {
    /// The old batch cannot be replaced (any more): the new batch must not be committed.
    #[error(transparent)]
    NotReplaceable(NotReplaceable),
    /// A lock did not come within the transaction's `lock_timeout`: try again.
    #[error("a lock did not come in time: {0}")]
    LockTimeout(String),
    /// PostgreSQL is away, or another outage: try again.
    #[error(transparent)]
    Outage(Fault),
}

impl From<RetractError> for ReplaceError {
    fn from(error: RetractError) -> ReplaceError {
        match error {
            RetractError::Unknown(batch_id) => {
                ReplaceError::NotReplaceable(NotReplaceable::Unknown(batch_id))
            }
            RetractError::NotCommitted { batch_id, state } => {
                ReplaceError::NotReplaceable(NotReplaceable::NotCommitted { batch_id, state })
            }
            RetractError::LockTimeout(reason) => ReplaceError::LockTimeout(reason),
            RetractError::Outage(fault) => ReplaceError::Outage(fault),
        }
    }
}

impl From<tokio_postgres::Error> for ReplaceError {
    fn from(error: tokio_postgres::Error) -> ReplaceError {
        RetractError::from(error).into()
    }
}

/// Whether `old` can be replaced, as the ledger has it now (the commit checks again, under the
/// old batch's row lock). `Err` is PostgreSQL's.
pub async fn replaceable(
    client: &impl GenericClient,
    old: BatchId,
) -> Result<Result<(), NotReplaceable>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT state, replaced_by FROM batches WHERE id = $1",
            &[&old.get()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(Err(NotReplaceable::Unknown(old)));
    };
    let state = row.try_get::<_, Stored<BatchState>>(0)?.0;
    let replaced_by: Option<i64> = row.get(1);
    Ok(match (state, replaced_by) {
        (_, Some(by)) => Err(NotReplaceable::Replaced {
            batch_id: old,
            by: BatchId(by),
        }),
        (BatchState::Committed, None) => Ok(()),
        (state, None) => Err(NotReplaceable::NotCommitted {
            batch_id: old,
            state,
        }),
    })
}

/// The batch that `batch_id` was submitted to replace, if any.
pub async fn replaces(
    client: &impl GenericClient,
    batch_id: BatchId,
) -> Result<Option<BatchId>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT replaces FROM batches WHERE id = $1",
            &[&batch_id.get()],
        )
        .await?;
    Ok(row
        .and_then(|row| row.get::<_, Option<i64>>(0))
        .map(BatchId))
}

/// What a replacement's commit takes before its attach (see the module's lock order): the old
/// batch's row lock, checked to be still replaceable under it, then the merge's advisory lock.
/// Each wait is bounded by the transaction's `lock_timeout`.
pub async fn lock_replaced(tx: &Transaction<'_>, old: BatchId) -> Result<(), ReplaceError> {
    lock_batch(tx, old).await?;
    replaceable(tx, old)
        .await?
        .map_err(ReplaceError::NotReplaceable)?;
    lock_partitions(tx).await?;
    Ok(())
}

/// Inside the commit transaction of `new`, after [`lock_replaced`] and the attach: `old`
/// retracted ([`retract_in`]) and `old.replaced_by = new`. Visible with the caller's commit,
/// undone with its rollback (the caller rolls back on an error).
pub async fn replace_in(
    tx: &Transaction<'_>,
    old: BatchId,
    new: BatchId,
) -> Result<Retracted, ReplaceError> {
    let retracted = retract_in(tx, old).await?;
    tx.execute(
        "UPDATE batches SET replaced_by = $2 WHERE id = $1",
        &[&old.get(), &new.get()],
    )
    .await?;
    Ok(retracted)
}
