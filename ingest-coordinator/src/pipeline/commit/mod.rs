//! Commit: when every chunk of a batch is loaded, the batch becomes visible at once. Each part
//! of its staging table (`schema::create_staging_sql`) gets the read index and both foreign keys,
//! validated, every part in its own session at the same time; then one transaction attaches the
//! staging table as a partition of `prices_by_batch` (PostgreSQL takes the parts' keys over
//! without a scan) and marks the batch committed. Rows are never copied a second time.
//!
//! One coordinator at a time, and safe to repeat after a kill or a freeze at any point:
//! 1. `loading → committing` in the ledger (a batch found `committing` is resumed);
//! 2. the batch's commit lease ([`lease::CommitLease`]), held until the end and renewed
//!    meanwhile. A live holder elsewhere means another coordinator commits the batch (tried
//!    later); a holder that stopped renewing — killed, frozen, cut off — is taken over, its
//!    sessions ended first;
//! 3. each part, in parallel, in a session of the lease: its read index if it does not exist yet
//!    (a killed build leaves nothing: it is one transaction); then each part its foreign keys
//!    added NOT VALID (no scan) if they do not exist yet and validated (one scan each; validating
//!    a valid key does nothing). A validation holds `SHARE UPDATE EXCLUSIVE` on its part and
//!    `ROW SHARE` on `ports`, so the parts do not wait for each other (adding a key, validated,
//!    would hold `SHARE ROW EXCLUSIVE` on `ports` and validate one table after the other:
//!    measured 2.2 s against 1.3 s for two parts of 8M rows on two cores);
//! 4. one transaction: the batch's row lock, ATTACH PARTITION, `committed` — only under the
//!    lease's fence, so a holder that lost the lease commits nothing. A batch submitted with
//!    `Replaces: <old>` retracts `old` in this same transaction (`ledger::replace`): readers
//!    see the old batch or the new one, never both, never neither; an `old` that was retracted
//!    or replaced by another batch meanwhile fails this one, naming why;
//! 5. the lease released and the chunks' copies dropped (copies a kill leaves are dropped by the
//!    redrive's sweep).
//!
//! Each step is recorded in the ledger as the holder reaches it (`commit_step`), for the status.
//!
//! With `INGEST_VISIBLE_BEFORE_INDEX`, the index of step 3 comes after step 4, still under the
//! lease, as CREATE INDEX CONCURRENTLY on every part at once: the batch is visible as soon as its
//! foreign keys are validated, and its readers scan its parts until their index is there. A
//! build that was cut off (a kill, an outage, a lease taken over) leaves the batch committed
//! without a valid index; [`index_missing`], run by the commit loop, finds such parts and builds
//! their index again.
//!
//! An outage at any step (a lost connection, `57P01`, a deadlock, a lock timeout, a full disk, a
//! catalog race) is returned: the commit loop (`loops::commit`) tries again with growing pauses
//! and notes it in the batch's status. Only PostgreSQL refusing the rows (SQLSTATE class 22 or 23
//! at the index, a validation or the attach) fails the batch.

pub mod lease;

use crate::state::AppState;
use ingest_core::batch::{BatchId, BatchState};
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Ending, ReplaceError};
use ingest_core::metrics as m;
use ingest_core::schema;
use ingest_wire::CommitStep;
use lease::{CommitLease, Taking};
use std::time::{Duration, Instant};
use tokio_postgres::Client;
use tracing::Instrument;

/// What became of one commit attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// The batch is visible.
    Visible,
    /// PostgreSQL refused the rows (e.g. a port deleted meanwhile): the batch failed.
    Refused,
    /// Someone else moved the batch on (another coordinator, a cancel).
    Skipped,
    /// Another coordinator holds the batch's commit lease: tried again later.
    Busy,
    /// This coordinator lost the commit lease on the way (it stalled for longer than its lease
    /// and a peer took the commit over): it stopped, and changed nothing.
    LostLease,
}

/// Commits one batch whose chunks are all loaded (or whose commit was interrupted). Err is an
/// outage: nothing is decided, the caller tries again later.
pub async fn commit_batch(app: &AppState, batch_id: BatchId) -> Result<Committed, Fault> {
    commit_in(app, batch_id)
        .instrument(tracing::info_span!("commit", %batch_id))
        .await
}

/// [`commit_batch`], inside the commit's span.
async fn commit_in(app: &AppState, batch_id: BatchId) -> Result<Committed, Fault> {
    let started = Instant::now();
    {
        let client = app.pool.get().await?;
        // A `loading` batch is claimed; a `committing` one (an interrupted commit) is resumed.
        if !ledger::start_commit(&client, batch_id).await?
            && ledger::batch_state(&client, batch_id).await? != Some(BatchState::Committing)
        {
            return Ok(Committed::Skipped);
        }
    }
    let mut lease = match CommitLease::take(app, batch_id).await? {
        Taking::Taken(lease) => lease,
        Taking::Busy => {
            tracing::info!(%batch_id, "another coordinator holds the commit lease; later");
            return Ok(Committed::Busy);
        }
        Taking::NotCommitting => return Ok(Committed::Skipped),
    };
    let index_first = !app.config.visible_before_index;
    let lock_wait = app.config.merge_lock;
    let mut result = commit_locked(&mut lease, batch_id, started, index_first, lock_wait).await;
    if lease.is_lost() && !matches!(result, Ok(Visible(_))) {
        tracing::warn!(%batch_id, "lost the commit lease to another coordinator; stopped");
        result = Ok(Other(Committed::LostLease));
    }
    if let Ok(Visible(rows)) = result {
        // Counted as soon as readers see it: a scrape after the status says `committed` shows
        // the commit (with visible first, the index build comes after).
        let took = started.elapsed();
        metrics::counter!(m::COMMITS, "outcome" => "committed").increment(1);
        metrics::counter!(m::ROWS_COMMITTED).increment(rows);
        metrics::histogram!(m::COMMIT_SECONDS).record(took.as_secs_f64());
        tracing::info!(%batch_id, rows, seconds = took.as_secs_f64(), "batch committed");
        if !index_first {
            build_index(&lease, batch_id).await;
        }
    }
    lease.release().await;
    match result {
        Ok(Visible(_)) => {
            app.drop_tables(batch_id, true).await;
            Ok(Committed::Visible)
        }
        Ok(Other(committed)) => Ok(committed),
        Err(Fault::Refused(reason)) => {
            tracing::warn!(%batch_id, %reason, "commit refused");
            metrics::counter!(m::COMMITS, "outcome" => "refused").increment(1);
            app.end_batch(batch_id, &Ending::failed(reason)).await?;
            Ok(Committed::Refused)
        }
        Err(outage) => {
            metrics::counter!(m::COMMITS, "outcome" => "outage").increment(1);
            Err(outage)
        }
    }
}

/// What steps 3 and 4 did.
enum Locked {
    /// The batch is visible, with this many rows.
    Visible(u64),
    /// Nothing to do (someone else moved the batch on).
    Other(Committed),
}
use Locked::{Other, Visible};

/// Steps 3 and 4, under the commit lease. A replacement's locks (the old batch's DETACH queues
/// readers behind it while it waits) are waited for at most `lock_wait`, like a retract's.
async fn commit_locked(
    lease: &mut CommitLease,
    batch_id: BatchId,
    started: Instant,
    index_first: bool,
    lock_wait: Duration,
) -> Result<Locked, Fault> {
    // Under the lease, look again: another coordinator may have finished it meanwhile.
    if ledger::batch_state(lease.client(), batch_id).await? != Some(BatchState::Committing) {
        return Ok(Other(Committed::Skipped));
    }
    let parts = leaves(lease.client(), batch_id).await?;
    let keys = schema::foreign_keys(lease.client()).await?;
    on_every_part(lease, &parts, |part| {
        let index = index_first.then(|| {
            (
                CommitStep::Index,
                "building the batch's index",
                schema::index_part_sql(part, false),
            )
        });
        index
            .into_iter()
            .chain([
                (
                    CommitStep::ForeignKeys,
                    "adding the foreign keys",
                    schema::foreign_keys_part_sql(part, &keys),
                ),
                (
                    CommitStep::ForeignKeys,
                    "validating the foreign keys",
                    schema::validate_part_sql(part, keys.len()),
                ),
            ])
            .collect()
    })
    .await?;
    lease.step(CommitStep::Attach).await?;
    attach(lease, batch_id, started, lock_wait).await
}

/// Step 4: one transaction that attaches the batch, retracts the batch it replaces (if any) and
/// marks it committed, under the lease's fence.
async fn attach(
    lease: &mut CommitLease,
    batch_id: BatchId,
    started: Instant,
    lock_wait: Duration,
) -> Result<Locked, Fault> {
    let fence = lease.fence();
    let tx = lease.client_mut().transaction().await?;
    if ledger::lock_batch(&tx, batch_id).await? != Some(BatchState::Committing) {
        return Ok(Other(Committed::Skipped));
    }
    let replaces = ledger::replaces(&tx, batch_id).await?;
    if let Some(old) = replaces {
        tx.batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'",
            lock_wait.as_millis().max(1)
        ))
        .await?;
        replacing(batch_id, old, ledger::lock_replaced(&tx, old).await)?;
    }
    tx.batch_execute(&schema::attach_sql(batch_id))
        .await
        .map_err(|error| step_fault("attaching the batch to prices", &error))?;
    let replaced = match replaces {
        Some(old) => Some((
            old,
            replacing(batch_id, old, ledger::replace_in(&tx, old, batch_id).await)?,
        )),
        None => None,
    };
    let Some(rows) = ledger::finish_commit(&tx, batch_id, fence, started.elapsed()).await? else {
        return Ok(Other(Committed::Skipped));
    };
    tx.commit()
        .await
        .map_err(|error| step_fault("committing the attach", &error))?;
    if let Some((old, retracted)) = replaced {
        metrics::counter!(m::RETRACTS, "outcome" => "replaced").increment(1);
        tracing::info!(
            %batch_id,
            replaced = %old,
            rows = retracted.rows,
            removal = retracted.removal.as_str(),
            "the batch it replaces was retracted in the same transaction"
        );
    }
    Ok(Visible(rows))
}

/// A step of a replacement's commit, as a commit outcome: the batch it replaces no longer
/// replaceable (retracted or replaced by another batch meanwhile) fails this one, naming why; a
/// lock that did not come in time (a merge, a long reader) is an outage, tried again.
fn replacing<T>(
    batch_id: BatchId,
    old: BatchId,
    step: Result<T, ReplaceError>,
) -> Result<T, Fault> {
    step.map_err(|error| match error {
        ReplaceError::NotReplaceable(reason) => Fault::Refused(format!(
            "batch {batch_id} was to replace batch {old}, which cannot be replaced any more: \
             {reason}; nothing of batch {batch_id} was committed"
        )),
        ReplaceError::LockTimeout(reason) => Fault::Outage(format!(
            "retracting batch {old}, which this one replaces: {reason}"
        )),
        ReplaceError::Outage(fault) => fault,
    })
}

/// Runs each part's statements in a session of the lease of its own, all parts at once, each
/// part on to its next step as soon as it is through the one before (the first part to reach a
/// step records it). Every session runs to its end (none is dropped mid-statement, which would
/// leave its statement running on a pooled connection); the first failure is returned.
async fn on_every_part(
    lease: &CommitLease,
    parts: &[String],
    statements: impl Fn(&str) -> Vec<(CommitStep, &'static str, String)>,
) -> Result<(), Fault> {
    let statements = &statements;
    futures_util::future::join_all(parts.iter().map(|part| async move {
        let session = lease.session().await?;
        for (commit_step, step, sql) in statements(part) {
            lease.reach(commit_step).await?;
            session
                .client()
                .batch_execute(&sql)
                .await
                .map_err(|error| step_fault(step, &error))?;
        }
        session.finish().await;
        Ok::<(), Fault>(())
    }))
    .await
    .into_iter()
    .collect::<Result<Vec<()>, Fault>>()?;
    Ok(())
}

/// A failed commit step, by kind, with the step named.
fn step_fault(step: &str, error: &tokio_postgres::Error) -> Fault {
    match Fault::of_rows(error) {
        Fault::Refused(reason) => Fault::Refused(format!("{step} failed: {reason}")),
        Fault::Outage(reason) => Fault::Outage(format!("{step}: {reason}")),
    }
}

/// The tables that hold a batch's staged rows (see [`schema::holds_rows_of`]).
async fn leaves(client: &Client, batch_id: BatchId) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(&schema::leaves_sql(), &[&schema::staging_table(batch_id)])
        .await?
        .iter()
        .map(|row| row.get("name"))
        .collect())
}

/// Builds the read index of each part of a committed batch with CREATE INDEX CONCURRENTLY, under
/// the batch's commit lease (held by the caller), after dropping what a cut-off build left. The
/// batch stays committed whatever happens here: a failure is logged, and [`index_missing`] tries
/// again later. Nothing to do when the partition was merged away meanwhile. True when it built.
async fn build_index(lease: &CommitLease, batch_id: BatchId) -> bool {
    let started = Instant::now();
    let built = match lease.step(CommitStep::Index).await {
        Ok(()) => build_index_parts(lease, batch_id).await,
        Err(fault) => Err(fault),
    };
    match built {
        Ok(built) => {
            if built {
                tracing::info!(
                    %batch_id,
                    seconds = started.elapsed().as_secs_f64(),
                    "batch indexed"
                );
            }
            built
        }
        Err(fault) => {
            tracing::warn!(
                %batch_id,
                %fault,
                "building a visible batch's index failed; will try again"
            );
            false
        }
    }
}

/// [`build_index`] for every part at the same time, each in a session of its own: the builds do
/// not wait for each other (PostgreSQL 14 and later let a CREATE INDEX CONCURRENTLY of a plain
/// column index ignore the others' snapshots). Every session runs to its end; the first failure
/// is returned. False when there was nothing to build.
async fn build_index_parts(lease: &CommitLease, batch_id: BatchId) -> Result<bool, Fault> {
    let parts = leaves(lease.client(), batch_id).await?;
    let built =
        futures_util::future::join_all(parts.iter().map(|part| build_part_index(lease, part)))
            .await
            .into_iter()
            .collect::<Result<Vec<bool>, Fault>>()?;
    Ok(built.contains(&true))
}

/// The read index of one part, concurrently, in a session of the lease; false when it had a
/// valid one. The session waits for locks as long as it takes (a concurrent build waits for
/// every older transaction, readers' included) and is closed afterwards rather than pooled.
async fn build_part_index(lease: &CommitLease, part: &str) -> Result<bool, Fault> {
    let session = lease.session().await?;
    let client = session.client();
    let index = schema::staged(&schema::index_name(part));
    let valid: Option<bool> = client
        .query_one(
            "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1))",
            &[&index],
        )
        .await?
        .get(0);
    if valid == Some(true) {
        session.finish().await;
        return Ok(false);
    }
    client.batch_execute("SET lock_timeout = 0").await?;
    if valid == Some(false) {
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .await?;
    }
    client
        .batch_execute(&schema::index_part_sql(part, true))
        .await?;
    drop(session);
    Ok(true)
}

/// Builds the read index of every committed batch with a part that has none that is valid (a
/// build that was cut off after the batch became visible). Skips a batch whose commit lease a
/// live coordinator holds: that coordinator is building it.
pub async fn index_missing(app: &AppState) -> Result<usize, Fault> {
    let unindexed: Vec<String> = {
        let client = app.pool.get().await?;
        client
            .query(
                "SELECT c.relname AS name FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
                 WHERE c.relkind = 'r' \
                   AND (i.inhparent = 'prices_by_batch'::regclass \
                        OR i.inhparent IN (SELECT inhrelid FROM pg_inherits \
                                           WHERE inhparent = 'prices_by_batch'::regclass)) \
                   AND NOT EXISTS (SELECT 1 FROM pg_index x \
                                   WHERE x.indrelid = c.oid AND x.indisvalid)",
                &[],
            )
            .await?
            .iter()
            .map(|row| row.get("name"))
            .collect()
    };
    let mut batches: Vec<BatchId> = unindexed
        .iter()
        .filter_map(|name| schema::staging_batch(name))
        .collect();
    batches.sort();
    batches.dedup();
    let mut built = 0;
    for batch_id in batches {
        let Taking::Taken(lease) = CommitLease::take(app, batch_id).await? else {
            continue;
        };
        if build_index(&lease, batch_id).await {
            built += 1;
        }
        lease.release().await;
    }
    Ok(built)
}
