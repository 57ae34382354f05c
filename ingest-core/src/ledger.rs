//! The ledger: every batch and chunk state lives in PostgreSQL, and every change of state goes
//! through a function in this file. Each transition is one guarded `UPDATE … WHERE state IN
//! (…)`, so a transition that no longer applies (a duplicate delivery, a second coordinator, a
//! batch cancelled meanwhile) changes nothing and says so.
//!
//! The guarantee that matters most sits in [`finish_chunk`]: a worker marks its chunk loaded in
//! the same transaction as its COPY, and the guarded update takes the chunk's row lock first,
//! so a chunk delivered twice is loaded once (the second delivery finds it `loaded`).

use crate::batch::BatchState;
use crate::chunk::ChunkState;
use crate::schema;
use tokio_postgres::{Client, Transaction};

/// What [`create_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewBatch {
    /// A new batch, in `receiving`, with its staging table.
    Created(i64),
    /// A batch with the same idempotency key already exists.
    Existing(i64),
}

/// Records a new batch in `receiving` and creates its staging table, in one transaction. With an
/// idempotency key that was seen before, returns the earlier batch and creates nothing.
pub async fn create_batch(
    client: &mut Client,
    idempotency_key: Option<&str>,
) -> Result<NewBatch, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "INSERT INTO batches (state, idempotency_key) VALUES ($1, $2)
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            &[&BatchState::Receiving.as_str(), &idempotency_key],
        )
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        let existing = client
            .query_one(
                "SELECT id FROM batches WHERE idempotency_key = $1",
                &[&idempotency_key],
            )
            .await?;
        return Ok(NewBatch::Existing(existing.get(0)));
    };
    let id: i64 = row.get(0);
    tx.batch_execute(&schema::create_staging_sql(id)).await?;
    tx.commit().await?;
    Ok(NewBatch::Created(id))
}

/// The upload is complete and every chunk is recorded: `receiving → loading`.
pub async fn finish_receiving(
    client: &Client,
    batch_id: i64,
    rows_total: i64,
    chunks_total: i32,
    bytes_received: i64,
    content_sha256: &str,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE batches SET state = $2, rows_total = $3, chunks_total = $4,
                    bytes_received = $5, content_sha256 = $6, received_at = now()
             WHERE id = $1 AND state = $7",
            &[
                &batch_id,
                &BatchState::Loading.as_str(),
                &rows_total,
                &chunks_total,
                &bytes_received,
                &content_sha256,
                &BatchState::Receiving.as_str(),
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// Why a batch ends without being committed.
#[derive(Debug, Clone)]
pub struct Ending {
    /// `Failed` or `Cancelled`.
    pub state: BatchState,
    /// The reason shown in the status.
    pub error: String,
    /// How many input errors were found (0 when the failure is not about the input).
    pub error_count: i32,
    /// The first input errors, as shown in the status (a JSON array).
    pub errors: serde_json::Value,
    /// What was received of the upload, when known.
    pub bytes_received: Option<i64>,
    /// The upload's SHA-256, when known.
    pub content_sha256: Option<String>,
    /// The upload never arrived whole (cut off, or the coordinator could not take it): its
    /// `Idempotency-Key` is released, so the client's retry with the same key is a new submit.
    /// Refused content keeps its key: a retry of the same request gets the same refusal.
    pub release_key: bool,
}

impl Ending {
    /// A failure with a reason and no input errors.
    pub fn failed(error: impl Into<String>) -> Ending {
        Ending {
            state: BatchState::Failed,
            error: error.into(),
            error_count: 0,
            errors: serde_json::Value::Array(Vec::new()),
            bytes_received: None,
            content_sha256: None,
            release_key: false,
        }
    }

    /// A failure of the upload itself, not of its content: the key is released.
    pub fn upload_lost(error: impl Into<String>) -> Ending {
        Ending {
            release_key: true,
            ..Ending::failed(error)
        }
    }
}

/// Ends a batch that is not final yet as failed or cancelled, and drops its staged rows, in one
/// transaction. Returns false when the batch was already final (nothing changes then).
pub async fn end_batch(
    client: &mut Client,
    batch_id: i64,
    ending: &Ending,
) -> Result<bool, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let ended = end_batch_in(&tx, batch_id, ending).await?;
    tx.commit().await?;
    Ok(ended)
}

/// [`end_batch`] inside the caller's transaction.
async fn end_batch_in(
    tx: &Transaction<'_>,
    batch_id: i64,
    ending: &Ending,
) -> Result<bool, tokio_postgres::Error> {
    debug_assert!(matches!(
        ending.state,
        BatchState::Failed | BatchState::Cancelled
    ));
    let updated = tx
        .execute(
            "UPDATE batches SET state = $2, error = $3, error_count = $4, errors = $5,
                    bytes_received = coalesce($6, bytes_received),
                    content_sha256 = coalesce($7, content_sha256),
                    idempotency_key = CASE WHEN $8 THEN NULL ELSE idempotency_key END,
                    finished_at = now()
             WHERE id = $1 AND state IN ('receiving', 'loading', 'committing')",
            &[
                &batch_id,
                &ending.state.as_str(),
                &ending.error,
                &ending.error_count,
                &ending.errors,
                &ending.bytes_received,
                &ending.content_sha256,
                &ending.release_key,
            ],
        )
        .await?;
    if updated == 1 {
        tx.batch_execute(&schema::drop_staging_sql(batch_id))
            .await?;
    }
    Ok(updated == 1)
}

/// Notes on an open batch the last outage one of its steps rode through (shown in its status).
pub async fn record_outage(
    client: &Client,
    batch_id: i64,
    step: &str,
    attempt: i32,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE batches SET outage_step = $2, outage_attempt = $3, outage_reason = $4,
                    outage_at = now()
             WHERE id = $1",
            &[&batch_id, &step, &attempt, &reason],
        )
        .await?;
    Ok(())
}

/// The advisory lock that makes one coordinator at a time commit a batch (its two-key space is
/// apart from the single-key migration lock). Batch ids are folded into 32 bits: two batches 2³²
/// apart would only wait for each other.
const COMMIT_LOCK: i32 = 0x696e_6763;

/// Takes the batch's commit lock for this session, without waiting: false when another session
/// holds it (another coordinator commits it, or a killed coordinator's backend has not ended
/// yet). Held until [`unlock_commit`] or the end of the session.
pub async fn try_lock_commit(
    client: &Client,
    batch_id: i64,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&COMMIT_LOCK, &(batch_id as i32)],
        )
        .await?;
    Ok(row.get(0))
}

/// Releases the batch's commit lock taken by [`try_lock_commit`] in this session.
pub async fn unlock_commit(client: &Client, batch_id: i64) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&COMMIT_LOCK, &(batch_id as i32)],
        )
        .await?;
    Ok(())
}

/// Batches whose chunks are all loaded and that wait for their commit, plus batches whose
/// commit was interrupted (a coordinator stopped in `committing`).
pub async fn batches_to_commit(client: &Client) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT b.id FROM batches b
             WHERE b.state = 'committing'
                OR (b.state = 'loading' AND b.chunks_total =
                      (SELECT count(*) FROM chunks c WHERE c.batch_id = b.id AND c.state = 'loaded'))
             ORDER BY b.id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// `loading → committing`, when every chunk is loaded. False when another coordinator got there
/// first, or the batch is already committing (a resumed commit).
pub async fn start_commit(client: &Client, batch_id: i64) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE batches b SET state = 'committing'
             WHERE b.id = $1 AND b.state = 'loading' AND b.chunks_total =
                   (SELECT count(*) FROM chunks c WHERE c.batch_id = b.id AND c.state = 'loaded')",
            &[&batch_id],
        )
        .await?;
    Ok(updated == 1)
}

/// `committing → committed`, in the transaction that attached the batch's partition, so the rows
/// and the state become visible together. False when the batch is no longer committing.
pub async fn finish_commit(
    tx: &Transaction<'_>,
    batch_id: i64,
    commit_seconds: f64,
) -> Result<bool, tokio_postgres::Error> {
    let updated = tx
        .execute(
            "UPDATE batches SET state = 'committed', finished_at = now(), commit_seconds = $2
             WHERE id = $1 AND state = 'committing'",
            &[&batch_id, &commit_seconds],
        )
        .await?;
    Ok(updated == 1)
}

/// A batch's current state (`None` for an unknown batch).
pub async fn batch_state(
    client: &Client,
    batch_id: i64,
) -> Result<Option<BatchState>, tokio_postgres::Error> {
    let row = client
        .query_opt("SELECT state FROM batches WHERE id = $1", &[&batch_id])
        .await?;
    Ok(row.and_then(|row| row.get::<_, String>(0).parse().ok()))
}

/// Takes the batch's row lock for the rest of the transaction: commit and cancel serialise on it.
pub async fn lock_batch(
    tx: &Transaction<'_>,
    batch_id: i64,
) -> Result<Option<BatchState>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT state FROM batches WHERE id = $1 FOR UPDATE",
            &[&batch_id],
        )
        .await?;
    Ok(row.and_then(|row| row.get::<_, String>(0).parse().ok()))
}

/// A chunk as the coordinator cut it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    /// The batch.
    pub batch_id: i64,
    /// The chunk's number within the batch.
    pub seq: i32,
    /// The source line of its first row (the header is line 1).
    pub first_line: i64,
    /// The source line of its last row.
    pub last_line: i64,
    /// How many rows it holds.
    pub rows: i32,
}

/// Records a chunk as `pending` before it is published (idempotent).
pub async fn record_chunk(
    client: &Client,
    chunk: &ChunkRecord,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO chunks (batch_id, seq, first_line, last_line, rows, state)
             VALUES ($1, $2, $3, $4, $5, 'pending')
             ON CONFLICT (batch_id, seq) DO NOTHING",
            &[
                &chunk.batch_id,
                &chunk.seq,
                &chunk.first_line,
                &chunk.last_line,
                &chunk.rows,
            ],
        )
        .await?;
    Ok(())
}

/// `pending → queued` once RabbitMQ confirmed the message. A worker may have been quicker and
/// already moved the chunk on; then nothing changes.
pub async fn mark_queued(
    client: &Client,
    batch_id: i64,
    seq: i32,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE chunks SET state = 'queued', updated_at = now()
             WHERE batch_id = $1 AND seq = $2 AND state = 'pending'",
            &[&batch_id, &seq],
        )
        .await?;
    Ok(())
}

/// What a worker may do with a chunk it received.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// Load it; this is attempt number `attempt` (from 1).
    Load {
        /// The attempt number, counting every delivery that reached a worker.
        attempt: i32,
    },
    /// Its rows are already in: acknowledge and move on.
    AlreadyLoaded,
    /// The batch is gone (failed, cancelled, committed, unknown) or the chunk is dead.
    Closed,
}

/// `pending | queued | loading | failed → loading`, with a lease for `lease_seconds`.
pub async fn claim_chunk(
    client: &Client,
    batch_id: i64,
    seq: i32,
    worker: &str,
    lease_seconds: f64,
) -> Result<Claim, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "UPDATE chunks c SET state = 'loading', attempts = c.attempts + 1, worker = $3,
                    lease_until = now() + make_interval(secs => $4), updated_at = now()
             FROM batches b
             WHERE c.batch_id = $1 AND c.seq = $2 AND b.id = c.batch_id
               AND b.state IN ('receiving', 'loading')
               AND c.state IN ('pending', 'queued', 'loading', 'failed')
             RETURNING c.attempts",
            &[&batch_id, &seq, &worker, &lease_seconds],
        )
        .await?;
    if let Some(row) = row {
        return Ok(Claim::Load {
            attempt: row.get(0),
        });
    }
    let state = client
        .query_opt(
            "SELECT state FROM chunks WHERE batch_id = $1 AND seq = $2",
            &[&batch_id, &seq],
        )
        .await?;
    Ok(match state.map(|row| row.get::<_, String>(0)) {
        Some(state) if state == ChunkState::Loaded.as_str() => Claim::AlreadyLoaded,
        _ => Claim::Closed,
    })
}

/// `* → loaded`, inside the worker's COPY transaction and before its COPY: takes the chunk's row
/// lock, so a concurrent duplicate waits and then finds the chunk loaded. False means "do not
/// COPY, roll back": the chunk is loaded already, dead, or its batch no longer takes chunks.
pub async fn finish_chunk(
    tx: &Transaction<'_>,
    batch_id: i64,
    seq: i32,
) -> Result<bool, tokio_postgres::Error> {
    let updated = tx
        .execute(
            "UPDATE chunks c SET state = 'loaded', lease_until = NULL, last_error = NULL,
                    updated_at = now()
             FROM batches b
             WHERE c.batch_id = $1 AND c.seq = $2 AND b.id = c.batch_id
               AND b.state IN ('receiving', 'loading')
               AND c.state IN ('pending', 'queued', 'loading', 'failed')",
            &[&batch_id, &seq],
        )
        .await?;
    Ok(updated == 1)
}

/// `loading → failed` with the reason, after an attempt whose rows PostgreSQL refused (counted in
/// `failures`); the coordinator decides whether to hand it out again or let the batch fail.
pub async fn fail_chunk(
    client: &Client,
    batch_id: i64,
    seq: i32,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE chunks SET state = 'failed', last_error = $3, lease_until = NULL,
                    failures = failures + 1, updated_at = now()
             WHERE batch_id = $1 AND seq = $2 AND state IN ('pending', 'queued', 'loading')",
            &[&batch_id, &seq, &error],
        )
        .await?;
    Ok(())
}

/// A chunk that must be handed out again, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// The chunk.
    pub batch_id: i64,
    /// Its number.
    pub seq: i32,
    /// Its row count (the message carries it).
    pub rows: i32,
    /// The source line of its first row.
    pub first_line: i64,
    /// The source line of its last row.
    pub last_line: i64,
    /// Attempts so far (every claim by a worker).
    pub attempts: i32,
    /// Attempts whose rows PostgreSQL refused.
    pub failures: i32,
    /// The last error, if an attempt failed.
    pub last_error: Option<String>,
}

/// Chunks of open batches that need publishing again: failed attempts, expired leases (the worker
/// vanished), chunks left `pending` longer than `after_seconds` (never confirmed, e.g. the
/// coordinator stopped between recording and publishing) and — when `stranded_too`, which the
/// caller says when the chunk queue holds no message ready for a worker — chunks `queued` that
/// long with no claim: their message was dead-lettered or lost.
pub async fn chunks_to_redrive(
    client: &Client,
    after_seconds: f64,
    stranded_too: bool,
) -> Result<Vec<Redrive>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT c.batch_id, c.seq, c.rows, c.attempts, c.failures, c.last_error,
                    c.first_line, c.last_line
             FROM chunks c JOIN batches b ON b.id = c.batch_id
             WHERE b.state IN ('receiving', 'loading')
               AND (c.state = 'failed'
                    OR (c.state = 'loading' AND c.lease_until < now())
                    OR (c.state IN ('pending', 'queued')
                        AND (c.state = 'pending' OR $2)
                        AND c.updated_at < now() - make_interval(secs => $1)))
             ORDER BY c.batch_id, c.seq",
            &[&after_seconds, &stranded_too],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| Redrive {
            batch_id: row.get(0),
            seq: row.get(1),
            rows: row.get(2),
            attempts: row.get(3),
            failures: row.get(4),
            last_error: row.get(5),
            first_line: row.get(6),
            last_line: row.get(7),
        })
        .collect())
}

/// `failed | loading | pending | queued → pending`, right before the coordinator publishes the
/// chunk again. False when the chunk moved on meanwhile (e.g. the slow worker finished).
pub async fn requeue_chunk(
    client: &Client,
    batch_id: i64,
    seq: i32,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE chunks SET state = 'pending', lease_until = NULL, updated_at = now()
             WHERE batch_id = $1 AND seq = $2
               AND state IN ('failed', 'loading', 'pending', 'queued')",
            &[&batch_id, &seq],
        )
        .await?;
    Ok(updated == 1)
}

/// A poison chunk: `failed → dead`, and its batch fails with `reason`, its staged rows dropped,
/// in one transaction (a kill in between cannot leave a dead chunk in an open batch). False when
/// the chunk or its batch moved on meanwhile.
pub async fn bury_chunk(
    client: &mut Client,
    batch_id: i64,
    seq: i32,
    reason: &str,
) -> Result<bool, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let buried = tx
        .execute(
            "UPDATE chunks SET state = 'dead', lease_until = NULL, updated_at = now()
             WHERE batch_id = $1 AND seq = $2 AND state = 'failed'",
            &[&batch_id, &seq],
        )
        .await?;
    if buried == 0 || !end_batch_in(&tx, batch_id, &Ending::failed(reason)).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// Batches in `receiving` that were created more than `older_than_seconds` ago, with their ids:
/// the sweep ends those that no upload of this coordinator is feeding.
pub async fn receiving_batches(
    client: &Client,
    older_than_seconds: f64,
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id FROM batches
             WHERE state = 'receiving' AND created_at < now() - make_interval(secs => $1)
             ORDER BY id",
            &[&older_than_seconds],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}

/// Of `ids`, those whose batch is final or unknown: their spooled chunks can go.
pub async fn ended_batches(
    client: &Client,
    ids: &[i64],
) -> Result<Vec<i64>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id FROM unnest($1::bigint[]) AS spooled(id)
             WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = spooled.id
                               AND b.state IN ('receiving', 'loading', 'committing'))
             ORDER BY id",
            &[&ids],
        )
        .await?;
    Ok(rows.iter().map(|row| row.get(0)).collect())
}
