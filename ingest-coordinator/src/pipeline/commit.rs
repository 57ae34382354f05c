//! Commit: when every chunk of a batch is loaded, the batch becomes visible at once. Each part
//! of its staging table (`schema::create_staging_sql`) gets the read index and both foreign keys,
//! validated, every part in its own session at the same time; then one transaction attaches the
//! staging table as a partition of `prices_by_batch` (PostgreSQL takes the parts' keys over
//! without a scan) and marks the batch committed. Rows are never copied a second time.
//!
//! One coordinator at a time, and safe to repeat after a kill at any point:
//! 1. `loading → committing` in the ledger (a batch found `committing` is resumed);
//! 2. the batch's commit lock, a session advisory lock taken without waiting and held until
//!    after the attach. Another holder is another coordinator committing the batch, or the
//!    backend of a killed one still building the index (PostgreSQL ends such a backend once it
//!    notices its client is gone: `client_connection_check_interval`); the batch is tried later;
//! 3. each part, in parallel: its read index if it does not exist yet (a killed build leaves
//!    nothing: it is one transaction), then its foreign keys added NOT VALID (no scan) if they do
//!    not exist yet and validated (one scan each; validating a valid key does nothing). A
//!    validation holds `SHARE UPDATE EXCLUSIVE` on its part and `ROW SHARE` on `ports`, so the
//!    parts do not wait for each other (adding a key, validated, would hold `SHARE ROW
//!    EXCLUSIVE` on `ports` and validate one table after the other: measured 2.2 s against 1.3 s
//!    for two parts of 8M rows on two cores);
//! 4. one transaction: the batch's row lock, ATTACH PARTITION, `committed`;
//! 5. the lock released and the spool dropped (spool files a kill leaves here are removed at the
//!    next start).
//!
//! With `INGEST_VISIBLE_BEFORE_INDEX`, the index of step 3 comes after step 4, still under the
//! commit lock, as CREATE INDEX CONCURRENTLY on every part at once: the batch is visible as soon
//! as its foreign keys are validated, and its readers scan its parts until their index is there.
//! A build that was cut off (a kill, an outage) leaves the batch committed without a valid index;
//! [`index_missing`], run by the commit loop, finds such parts and builds their index again.
//!
//! An outage at any step (a lost connection, `57P01`, a deadlock, a full disk, a catalog race)
//! is returned: the commit loop (`loops::commit`) tries again with growing pauses and notes it in
//! the batch's status. Only PostgreSQL refusing the rows (SQLSTATE class 22 or 23 at the index,
//! a validation or the attach) fails the batch.

use crate::state::AppState;
use ingest_core::batch::{BatchId, BatchState};
use ingest_core::fault::Fault;
use ingest_core::ledger::{self, Ending};
use ingest_core::metrics as m;
use ingest_core::schema;
use std::time::Instant;
use tokio_postgres::Client;
use tracing::Instrument;

/// How soon PostgreSQL checks that a committing coordinator is still there during a long index
/// build, so the backend of a killed coordinator ends (and frees the commit lock) quickly.
const CLIENT_CHECK: &str = "SET client_connection_check_interval = '1s'";

/// The `application_name` of the session committing `batch_id`, while it holds the commit lock.
pub fn session_name(batch_id: BatchId) -> String {
    format!("ingest commit {batch_id}")
}

/// What became of one commit attempt.
#[derive(Debug, PartialEq, Eq)]
pub enum Committed {
    /// The batch is visible.
    Visible,
    /// PostgreSQL refused the rows (e.g. a port deleted meanwhile): the batch failed.
    Refused,
    /// Someone else moved the batch on (another coordinator, a cancel).
    Skipped,
    /// Another session holds the batch's commit lock: tried again later.
    Busy,
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
    let mut client = app.pool.get().await?;
    // A `loading` batch is claimed; a `committing` one (an interrupted commit) is resumed.
    if !ledger::start_commit(&client, batch_id).await?
        && ledger::batch_state(&client, batch_id).await? != Some(BatchState::Committing)
    {
        return Ok(Committed::Skipped);
    }
    client.batch_execute(CLIENT_CHECK).await?;
    if !ledger::try_lock_commit(&client, batch_id).await? {
        tracing::info!(%batch_id, "another session holds the commit lock; later");
        return Ok(Committed::Busy);
    }
    // Named, so the status can find this session's progress (pg_stat_activity).
    let named = client
        .batch_execute(&format!(
            "SET application_name = '{}'",
            session_name(batch_id)
        ))
        .await;
    let index_first = !app.config.visible_before_index;
    let result = match named {
        Ok(()) => commit_locked(app, &mut client, batch_id, started, index_first).await,
        Err(error) => Err(Fault::from(error)),
    };
    if let Ok(Visible(rows)) = result {
        // Counted as soon as readers see it: a scrape after the status says `committed` shows
        // the commit (with visible first, the index build comes after).
        let took = started.elapsed();
        metrics::counter!(m::COMMITS, "outcome" => "committed").increment(1);
        metrics::counter!(m::ROWS_COMMITTED).increment(rows);
        metrics::histogram!(m::COMMIT_SECONDS).record(took.as_secs_f64());
        tracing::info!(%batch_id, rows, seconds = took.as_secs_f64(), "batch committed");
        if !index_first {
            build_index(app, &client, batch_id).await;
        }
    }
    let released = match ledger::unlock_commit(&client, batch_id).await {
        Ok(()) => client.batch_execute("RESET application_name").await.is_ok(),
        Err(_) => false,
    };
    if !released {
        // The session is broken or confused: close it rather than pool it, and the lock ends
        // with it.
        drop(deadpool_postgres::Object::take(client));
    } else {
        drop(client);
    }
    match result {
        Ok(Visible(_)) => {
            app.batch_is_final(batch_id).await;
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

/// Steps 3 and 4, under the commit lock.
async fn commit_locked(
    app: &AppState,
    client: &mut Client,
    batch_id: BatchId,
    started: Instant,
    index_first: bool,
) -> Result<Locked, Fault> {
    // Under the lock, look again: another coordinator may have finished it meanwhile.
    if ledger::batch_state(client, batch_id).await? != Some(BatchState::Committing) {
        return Ok(Other(Committed::Skipped));
    }
    let parts = leaves(client, batch_id).await?;
    let keys = schema::foreign_keys(&*client).await?;
    // Every part's session runs to its end (none is dropped mid-statement, which would leave
    // its statement running on a pooled connection); the first failure is returned.
    futures_util::future::join_all(
        parts
            .iter()
            .map(|part| prepare_part(app, batch_id, part, &keys, index_first)),
    )
    .await
    .into_iter()
    .collect::<Result<Vec<()>, Fault>>()?;
    let tx = client.transaction().await?;
    if ledger::lock_batch(&tx, batch_id).await? != Some(BatchState::Committing) {
        return Ok(Other(Committed::Skipped));
    }
    tx.batch_execute(&schema::attach_sql(batch_id))
        .await
        .map_err(|error| step_fault("attaching the batch to prices", &error))?;
    let Some(rows) = ledger::finish_commit(&tx, batch_id, started.elapsed()).await? else {
        return Ok(Other(Committed::Skipped));
    };
    tx.commit()
        .await
        .map_err(|error| step_fault("committing the attach", &error))?;
    Ok(Visible(rows))
}

/// A failed commit step, by kind, with the step named.
fn step_fault(step: &str, error: &tokio_postgres::Error) -> Fault {
    match Fault::of_rows(error) {
        Fault::Refused(reason) => Fault::Refused(format!("{step} failed: {reason}")),
        Fault::Outage(reason) => Fault::Outage(format!("{step}: {reason}")),
    }
}

/// Step 3 for one part, in a session of its own (named like the commit's, so the status finds
/// it): the read index when `index_first`, then the foreign keys, added NOT VALID and validated.
async fn prepare_part(
    app: &AppState,
    batch_id: BatchId,
    part: &str,
    keys: &[String],
    index_first: bool,
) -> Result<(), Fault> {
    let client = app.pool.get().await?;
    client
        .batch_execute(&format!(
            "{CLIENT_CHECK}; SET application_name = '{}'",
            session_name(batch_id)
        ))
        .await?;
    let result = prepare_steps(&client, part, keys, index_first).await;
    if client
        .batch_execute("RESET application_name")
        .await
        .is_err()
    {
        drop(deadpool_postgres::Object::take(client));
    }
    result
}

/// [`prepare_part`]'s statements.
async fn prepare_steps(
    client: &Client,
    part: &str,
    keys: &[String],
    index_first: bool,
) -> Result<(), Fault> {
    if index_first {
        client
            .batch_execute(&schema::index_part_sql(part, false))
            .await
            .map_err(|error| step_fault("building the batch's index", &error))?;
    }
    client
        .batch_execute(&schema::foreign_keys_part_sql(part, keys))
        .await
        .map_err(|error| step_fault("adding the foreign keys", &error))?;
    client
        .batch_execute(&schema::validate_part_sql(part, keys.len()))
        .await
        .map_err(|error| step_fault("validating the foreign keys", &error))?;
    Ok(())
}

/// The tables that hold a batch's staged rows (see [`schema::holds_rows_of`]).
async fn leaves(client: &Client, batch_id: BatchId) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(client
        .query(&schema::leaves_sql(), &[&schema::staging_table(batch_id)])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect())
}

/// Builds the read index of each part of a committed batch with CREATE INDEX CONCURRENTLY, under
/// the batch's commit lock (held by the caller), after dropping what a cut-off build left. The
/// batch stays committed whatever happens here: a failure is logged, and [`index_missing`] tries
/// again later. Nothing to do when the partition was merged away meanwhile. True when it built.
async fn build_index(app: &AppState, client: &Client, batch_id: BatchId) -> bool {
    let started = Instant::now();
    match build_index_parts(app, client, batch_id).await {
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
async fn build_index_parts(
    app: &AppState,
    client: &Client,
    batch_id: BatchId,
) -> Result<bool, Fault> {
    let parts = leaves(client, batch_id).await?;
    let built =
        futures_util::future::join_all(parts.iter().map(|part| build_part_index(app, part)))
            .await
            .into_iter()
            .collect::<Result<Vec<bool>, Fault>>()?;
    Ok(built.contains(&true))
}

/// The read index of one part, concurrently, in a pooled session; false when it had a valid one.
async fn build_part_index(app: &AppState, part: &str) -> Result<bool, Fault> {
    let client = app.pool.get().await?;
    client.batch_execute(CLIENT_CHECK).await?;
    let index = format!("price_batches.{}", schema::index_name(part));
    let valid: Option<bool> = client
        .query_one(
            "SELECT (SELECT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1))",
            &[&index],
        )
        .await?
        .get(0);
    if valid == Some(true) {
        return Ok(false);
    }
    if valid == Some(false) {
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .await?;
    }
    client
        .batch_execute(&schema::index_part_sql(part, true))
        .await?;
    Ok(true)
}

/// Builds the read index of every committed batch with a part that has none that is valid (a
/// build that was cut off after the batch became visible). Skips a batch whose commit lock
/// another session holds: that session is building it.
pub async fn index_missing(app: &AppState) -> Result<usize, Fault> {
    let client = app.pool.get().await?;
    let unindexed: Vec<String> = client
        .query(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid \
             WHERE c.relkind = 'r' \
               AND (i.inhparent = 'prices_by_batch'::regclass \
                    OR i.inhparent IN (SELECT inhrelid FROM pg_inherits \
                                       WHERE inhparent = 'prices_by_batch'::regclass)) \
               AND NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisvalid)",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut batches: Vec<BatchId> = unindexed
        .iter()
        .filter_map(|name| schema::staging_batch(name))
        .collect();
    batches.sort();
    batches.dedup();
    let mut built = 0;
    for batch_id in batches {
        if !ledger::try_lock_commit(&client, batch_id).await? {
            continue;
        }
        client.batch_execute(CLIENT_CHECK).await?;
        if build_index(app, &client, batch_id).await {
            built += 1;
        }
        ledger::unlock_commit(&client, batch_id).await?;
    }
    Ok(built)
}
