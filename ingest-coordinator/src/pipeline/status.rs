//! Status: what a batch looks like from outside, computed from the ledger on every request
//! (nothing is cached, so every coordinator answers the same). The shape is
//! `ingest_wire::BatchStatus`; the chunk states counted are named by their enum.

use chrono::{DateTime, Utc};
use ingest_core::batch::BatchId;
use ingest_core::chunk::ChunkState;
use ingest_core::fault::Fault;
use ingest_core::ledger;
use ingest_core::schema;
use ingest_wire::{
    BatchPage, BatchState, BatchStatus, ChunkCounts, CommitProgress, CommitStep, IdempotencyKey,
    Outage, RowError,
};
use std::sync::LazyLock;
use tokio_postgres::{Client, Row};

/// The columns of a batch status; `WHERE …` and `GROUP BY b.id` follow.
static SELECT: LazyLock<String> = LazyLock::new(|| {
    let count =
        |state: ChunkState| format!("count(c.seq) FILTER (WHERE c.state = '{}')", state.as_str());
    // Damaged reads are handed out again like refused ones: both count as failed attempts.
    // indexed: no table of the batch lacks a valid index (none once merged: a merged table is
    // built with its index).
    let unindexed = format!(
        "SELECT 1 FROM pg_class t WHERE {} \
           AND NOT EXISTS (SELECT 1 FROM pg_index x WHERE x.indrelid = t.oid AND x.indisvalid)",
        schema::holds_rows_of(&schema::staging_table_sql("b.id"))
    );
    format!(
        "SELECT b.id, b.state, b.rows_total, b.error, b.error_count, b.errors, b.bytes_received,
                b.content_sha256, b.created_at, b.received_at, b.finished_at, b.commit_seconds,
                b.retracted_at, b.replaces, b.replaced_by,
                b.outage_step, b.outage_attempt, b.outage_reason, b.outage_at,
                count(c.seq) AS chunks_total, {pending} AS chunks_pending,
                {queued} AS chunks_queued, {loading} AS chunks_loading,
                {loaded} AS chunks_loaded,
                count(c.seq) FILTER (WHERE c.state IN ('{failed}', '{damaged}', '{dead}'))
                    AS chunks_failed,
                coalesce(sum(c.rows) FILTER (WHERE c.state = '{loaded_name}'), 0)::bigint
                    AS rows_loaded,
                coalesce(sum(greatest(c.attempts - 1, 0)), 0)::bigint AS retries,
                min(c.created_at) AS started_at,
                CASE WHEN b.state = '{committed}' THEN NOT EXISTS ({unindexed}) END AS indexed
         FROM batches b LEFT JOIN chunks c ON c.batch_id = b.id",
        pending = count(ChunkState::Pending),
        queued = count(ChunkState::Queued),
        loading = count(ChunkState::Loading),
        loaded = count(ChunkState::Loaded),
        failed = ChunkState::Failed.as_str(),
        damaged = ChunkState::Damaged.as_str(),
        dead = ChunkState::Dead.as_str(),
        loaded_name = ChunkState::Loaded.as_str(),
        committed = BatchState::Committed.as_str(),
    )
});

/// A count read from the ledger (never negative).
fn count(row: &Row, column: &str) -> u64 {
    u64::try_from(row.get::<_, i64>(column)).unwrap_or(0)
}

fn from_row(row: &Row) -> Result<BatchStatus, Fault> {
    let id = BatchId(row.get("id"));
    let state = ledger::batch_state_at(row, "state")?;
    let rows_total: Option<u64> = row
        .get::<_, Option<i64>>("rows_total")
        .map(|rows| u64::try_from(rows).unwrap_or(0));
    let rows_loaded = count(row, "rows_loaded");
    let started_at: Option<DateTime<Utc>> = row.get("started_at");
    let finished_at: Option<DateTime<Utc>> = row.get("finished_at");
    let (rows_per_second, eta_seconds) =
        pace(state, rows_total, rows_loaded, started_at, finished_at);
    let errors: Vec<RowError> = serde_json::from_value(row.get("errors")).map_err(|error| {
        Fault::outage(format!(
            "the ledger's errors of batch {id} do not read: {error}"
        ))
    })?;
    Ok(BatchStatus {
        id,
        state,
        status_url: format!("/batches/{id}"),
        rows_total,
        rows_loaded,
        chunks: ChunkCounts {
            total: count(row, "chunks_total"),
            pending: count(row, "chunks_pending"),
            queued: count(row, "chunks_queued"),
            loading: count(row, "chunks_loading"),
            loaded: count(row, "chunks_loaded"),
            failed: count(row, "chunks_failed"),
        },
        retries: count(row, "retries"),
        error: row.get("error"),
        error_count: u64::try_from(row.get::<_, i32>("error_count")).unwrap_or(0),
        errors,
        bytes_received: u64::try_from(row.get::<_, i64>("bytes_received")).unwrap_or(0),
        content_sha256: row.get("content_sha256"),
        duplicate_of: Vec::new(),
        created_at: row.get("created_at"),
        started_at,
        received_at: row.get("received_at"),
        finished_at,
        retracted_at: row.get("retracted_at"),
        replaces: row.get::<_, Option<i64>>("replaces").map(BatchId),
        replaced_by: row.get::<_, Option<i64>>("replaced_by").map(BatchId),
        commit_seconds: row.get("commit_seconds"),
        rows_per_second,
        eta_seconds,
        outage: outage(row)?,
        commit: None,
        indexed: row.get("indexed"),
    })
}

/// Rows loaded per second since the first chunk was published, and the seconds left at that
/// rate while the batch is open.
fn pace(
    state: BatchState,
    rows_total: Option<u64>,
    rows_loaded: u64,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
) -> (Option<f64>, Option<f64>) {
    let elapsed = started_at.map(|start| {
        (finished_at.unwrap_or_else(Utc::now) - start).num_milliseconds() as f64 / 1000.0
    });
    let rows_per_second = elapsed
        .filter(|seconds| *seconds > 0.0)
        .map(|seconds| rows_loaded as f64 / seconds);
    let eta_seconds = match (state.is_final(), rows_total, rows_per_second) {
        (false, Some(total), Some(rate)) if rate > 0.0 => {
            Some(total.saturating_sub(rows_loaded) as f64 / rate)
        }
        _ => None,
    };
    (rows_per_second, eta_seconds)
}

/// The last outage recorded for the batch, if any.
fn outage(row: &Row) -> Result<Option<Outage>, tokio_postgres::Error> {
    Ok(
        match (
            ledger::outage_step_at(row, "outage_step")?,
            row.get::<_, Option<i32>>("outage_attempt"),
            row.get("outage_reason"),
            row.get("outage_at"),
        ) {
            (Some(step), Some(attempt), Some(reason), Some(at)) => Some(Outage {
                step,
                attempt: u32::try_from(attempt).unwrap_or(0),
                reason,
                at,
            }),
            _ => None,
        },
    )
}

/// One batch's status, with the earlier batches that had the same content.
pub async fn fetch(client: &Client, id: BatchId) -> Result<Option<BatchStatus>, Fault> {
    let query = format!("{} WHERE b.id = $1 GROUP BY b.id", *SELECT);
    let Some(row) = client.query_opt(&query, &[&id.get()]).await? else {
        return Ok(None);
    };
    let mut status = from_row(&row)?;
    if status.state == BatchState::Committing {
        status.commit = commit_progress(client, id).await?;
    }
    if let Some(sha) = &status.content_sha256 {
        let rows = client
            .query(
                "SELECT id FROM batches WHERE content_sha256 = $1 AND id < $2 ORDER BY id",
                &[sha, &id.get()],
            )
            .await?;
        status.duplicate_of = rows.iter().map(|row| BatchId(row.get("id"))).collect();
    }
    Ok(Some(status))
}

/// Where the commit of `id` is: the step its holder recorded in the ledger, and for an index
/// build PostgreSQL's own progress of the holder's sessions (`None` when no coordinator holds the
/// batch's commit lease right now).
async fn commit_progress(client: &Client, id: BatchId) -> Result<Option<CommitProgress>, Fault> {
    let Some((Some(step), sessions)) = ledger::commit_in_progress(client, id).await? else {
        return Ok(None);
    };
    let progress = match step {
        CommitStep::Attach => CommitProgress {
            step,
            phase: "attaching to prices".into(),
            done: None,
            total: None,
        },
        CommitStep::ForeignKeys => CommitProgress {
            step,
            phase: "validating both foreign keys of each part".into(),
            done: None,
            total: None,
        },
        CommitStep::Index => {
            let row = client
                .query_opt(
                    "SELECT phase, blocks_done, blocks_total, tuples_done, tuples_total
                     FROM pg_stat_progress_create_index WHERE pid = ANY($1)
                     ORDER BY pid LIMIT 1",
                    &[&sessions],
                )
                .await?;
            let count = |index: usize| {
                row.as_ref()
                    .and_then(|row| row.get::<_, Option<i64>>(index))
                    .and_then(|n| u64::try_from(n).ok())
            };
            let (done, total) = match (count(2), count(4)) {
                (Some(blocks), _) if blocks > 0 => (count(1), Some(blocks)),
                (_, Some(tuples)) if tuples > 0 => (count(3), Some(tuples)),
                _ => (None, None),
            };
            CommitProgress {
                step,
                phase: row
                    .as_ref()
                    .and_then(|row| row.get::<_, Option<String>>(0))
                    .unwrap_or_else(|| "waiting to start".into()),
                done,
                total,
            }
        }
    };
    Ok(Some(progress))
}

/// Which page of batches.
#[derive(Debug, Clone)]
pub struct PageQuery {
    /// Page size (1 to 100).
    pub limit: u8,
    /// Only batches with a smaller id (the `next` cursor of the previous page).
    pub before: Option<BatchId>,
    /// Only the batch that holds this key.
    pub idempotency_key: Option<IdempotencyKey>,
}

/// A page of batches, newest first.
pub async fn page(client: &Client, query: &PageQuery) -> Result<BatchPage, Fault> {
    let sql = format!(
        "{} WHERE b.id < $1 AND ($3::text IS NULL OR b.idempotency_key = $3)
         GROUP BY b.id ORDER BY b.id DESC LIMIT $2",
        *SELECT
    );
    let before = query.before.map_or(i64::MAX, BatchId::get);
    let limit = i64::from(query.limit);
    let key = query.idempotency_key.as_ref().map(IdempotencyKey::as_str);
    let rows = client.query(&sql, &[&before, &limit, &key]).await?;
    let mut batches = rows.iter().map(from_row).collect::<Result<Vec<_>, _>>()?;
    for batch in &mut batches {
        if batch.state == BatchState::Committing {
            batch.commit = commit_progress(client, batch.id).await?;
        }
    }
    // A key names at most one batch: no next page then.
    let next = (key.is_none() && batches.len() == usize::from(query.limit))
        .then(|| batches.last())
        .flatten()
        .map(|last| format!("/batches?limit={}&before={}", query.limit, last.id));
    Ok(BatchPage { batches, next })
}
