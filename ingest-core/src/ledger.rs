//! The ledger: every batch and chunk state lives in PostgreSQL, and every change of state goes
//! through a function in this file. Each transition is one guarded `UPDATE … WHERE state = ANY
//! (…)`, the states named by the enums (never spelled again in SQL), so a transition that no
//! longer applies (a duplicate delivery, a second coordinator, a batch cancelled meanwhile)
//! changes nothing and says so. A state name PostgreSQL holds that is not a state is an error,
//! never a guess.
//!
//! The guarantee that matters most sits in [`finish_chunk`]: a worker marks its chunk loaded in
//! the same transaction as its COPY, and the guarded update takes the chunk's row lock first,
//! so a chunk delivered twice is loaded once (the second delivery finds it `loaded`).

use crate::batch::{BatchId, BatchState};
use crate::chunk::{ChunkSeq, ChunkState, Part};
use crate::schema;
use ingest_wire::{IdempotencyKey, LineNumber, RowError};
use std::error::Error as StdError;
use std::str::FromStr;
use std::time::Duration;
use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::{Client, Transaction};

/// The names of batch states, as a `text[]` parameter (`state = ANY($n)`).
fn batch_states(states: &[BatchState]) -> Vec<&'static str> {
    states.iter().map(|state| state.as_str()).collect()
}

/// The names of chunk states, as a `text[]` parameter (`state = ANY($n)`).
fn chunk_states(states: &[ChunkState]) -> Vec<&'static str> {
    states.iter().map(|state| state.as_str()).collect()
}

/// A state column read from PostgreSQL: its text must name a state.
struct Stored<T>(T);

impl<'a, T> FromSql<'a> for Stored<T>
where
    T: FromStr,
    T::Err: StdError + Send + Sync + 'static,
{
    fn from_sql(ty: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn StdError + Sync + Send>> {
        let text = <&str as FromSql>::from_sql(ty, raw)?;
        Ok(Stored(text.parse()?))
    }

    fn accepts(ty: &Type) -> bool {
        <&str as FromSql>::accepts(ty)
    }
}

/// The batch state in column `index` of a row read from `batches` (for queries outside this file,
/// such as the status): a name that is not a state is an error.
pub fn batch_state_at(
    row: &tokio_postgres::Row,
    index: usize,
) -> Result<BatchState, tokio_postgres::Error> {
    Ok(row.try_get::<_, Stored<BatchState>>(index)?.0)
}

/// What [`create_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewBatch {
    /// A new batch, in `receiving`, with its staging table.
    Created(BatchId),
    /// A batch with the same idempotency key already exists.
    Existing(BatchId),
}

/// Records a new batch in `receiving` and creates its staging table, in one transaction. With an
/// idempotency key that was seen before, returns the earlier batch and creates nothing.
pub async fn create_batch(
    client: &mut Client,
    idempotency_key: Option<&IdempotencyKey>,
    parts: u16,
) -> Result<NewBatch, tokio_postgres::Error> {
    let key = idempotency_key.map(IdempotencyKey::as_str);
    let tx = client.transaction().await?;
    let row = tx
        .query_opt(
            "INSERT INTO batches (state, idempotency_key) VALUES ($1, $2)
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            &[&BatchState::Receiving.as_str(), &key],
        )
        .await?;
    let Some(row) = row else {
        tx.rollback().await?;
        let existing = client
            .query_one("SELECT id FROM batches WHERE idempotency_key = $1", &[&key])
            .await?;
        return Ok(NewBatch::Existing(BatchId(existing.get(0))));
    };
    let id = BatchId(row.get(0));
    tx.batch_execute(&schema::create_staging_sql(id, parts))
        .await?;
    tx.commit().await?;
    Ok(NewBatch::Created(id))
}

/// What a complete upload recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Received<'a> {
    /// Rows in the file.
    pub rows: u64,
    /// Chunks cut.
    pub chunks: u32,
    /// Bytes of the body as received.
    pub bytes: u64,
    /// SHA-256 of the body as received, hex.
    pub sha256: &'a str,
}

/// The upload is complete and every chunk is recorded: `receiving → loading`.
pub async fn finish_receiving(
    client: &Client,
    batch_id: BatchId,
    received: &Received<'_>,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE batches SET state = $2, rows_total = $3, chunks_total = $4,
                    bytes_received = $5, content_sha256 = $6, received_at = now()
             WHERE id = $1 AND state = $7",
            &[
                &batch_id.get(),
                &BatchState::Loading.as_str(),
                &to_i64(received.rows),
                &to_i32(received.chunks),
                &to_i64(received.bytes),
                &received.sha256,
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
    pub error_count: u64,
    /// The first input errors, as shown in the status.
    pub errors: Vec<RowError>,
    /// What was received of the upload, when known.
    pub bytes_received: Option<u64>,
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
            errors: Vec::new(),
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

    /// Stopped on request.
    pub fn cancelled() -> Ending {
        Ending {
            state: BatchState::Cancelled,
            ..Ending::failed("cancelled on request")
        }
    }
}

/// Ends a batch that is not final yet as failed or cancelled, and drops its staged rows, in one
/// transaction. Returns false when the batch was already final (nothing changes then).
pub async fn end_batch(
    client: &mut Client,
    batch_id: BatchId,
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
    batch_id: BatchId,
    ending: &Ending,
) -> Result<bool, tokio_postgres::Error> {
    debug_assert!(matches!(
        ending.state,
        BatchState::Failed | BatchState::Cancelled
    ));
    let errors = serde_json::to_value(&ending.errors).unwrap_or_default();
    let updated = tx
        .execute(
            "UPDATE batches SET state = $2, error = $3, error_count = $4, errors = $5,
                    bytes_received = coalesce($6, bytes_received),
                    content_sha256 = coalesce($7, content_sha256),
                    idempotency_key = CASE WHEN $8 THEN NULL ELSE idempotency_key END,
                    finished_at = now()
             WHERE id = $1 AND state = ANY($9)",
            &[
                &batch_id.get(),
                &ending.state.as_str(),
                &ending.error,
                &to_i32(ending.error_count),
                &errors,
                &ending.bytes_received.map(to_i64),
                &ending.content_sha256,
                &ending.release_key,
                &batch_states(&BatchState::OPEN),
            ],
        )
        .await?;
    if updated == 1 {
        tx.batch_execute(&schema::drop_staging_sql(batch_id))
            .await?;
    }
    Ok(updated == 1)
}

/// Notes on a batch the last outage one of its steps rode through (shown in its status).
pub async fn record_outage(
    client: &Client,
    batch_id: BatchId,
    step: &str,
    attempt: u32,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE batches SET outage_step = $2, outage_attempt = $3, outage_reason = $4,
                    outage_at = now()
             WHERE id = $1",
            &[&batch_id.get(), &step, &to_i32(attempt), &reason],
        )
        .await?;
    Ok(())
}

/// [`record_outage`] if PostgreSQL takes it now: false when it does not (PostgreSQL may be the
/// outage), for the caller to note it again later. `step` is `load` or `commit`.
pub async fn note_outage(
    pool: &deadpool_postgres::Pool,
    batch_id: BatchId,
    step: &str,
    attempt: u32,
    fault: &crate::fault::Fault,
) -> bool {
    let noted = match pool.get().await {
        Ok(client) => record_outage(&client, batch_id, step, attempt, &fault.to_string())
            .await
            .map_err(crate::fault::Fault::from),
        Err(error) => Err(crate::fault::Fault::from(error)),
    };
    if let Err(error) = &noted {
        tracing::debug!(%batch_id, %error, "cannot note the outage in the batch's status yet");
    }
    noted.is_ok()
}

/// The advisory lock that makes one coordinator at a time commit a batch (its two-key space is
/// apart from the single-key migration lock). Batch ids are folded into 32 bits: two batches 2³²
/// apart would only wait for each other.
const COMMIT_LOCK: i32 = 0x696e_6763;

/// The second key of a batch's commit lock.
fn commit_lock_key(batch_id: BatchId) -> i32 {
    batch_id.get() as i32
}

/// Takes the batch's commit lock for this session, without waiting: false when another session
/// holds it (another coordinator commits it, or a killed coordinator's backend has not ended
/// yet). Held until [`unlock_commit`] or the end of the session.
pub async fn try_lock_commit(
    client: &Client,
    batch_id: BatchId,
) -> Result<bool, tokio_postgres::Error> {
    let row = client
        .query_one(
            "SELECT pg_try_advisory_lock($1, $2)",
            &[&COMMIT_LOCK, &commit_lock_key(batch_id)],
        )
        .await?;
    Ok(row.get(0))
}

/// Releases the batch's commit lock taken by [`try_lock_commit`] in this session.
pub async fn unlock_commit(
    client: &Client,
    batch_id: BatchId,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "SELECT pg_advisory_unlock($1, $2)",
            &[&COMMIT_LOCK, &commit_lock_key(batch_id)],
        )
        .await?;
    Ok(())
}

/// Batches whose chunks are all loaded and that wait for their commit, plus batches whose
/// commit was interrupted (a coordinator stopped in `committing`).
pub async fn batches_to_commit(client: &Client) -> Result<Vec<BatchId>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT b.id FROM batches b
             WHERE b.state = $1
                OR (b.state = $2 AND b.chunks_total =
                      (SELECT count(*) FROM chunks c WHERE c.batch_id = b.id AND c.state = $3))
             ORDER BY b.id",
            &[
                &BatchState::Committing.as_str(),
                &BatchState::Loading.as_str(),
                &ChunkState::Loaded.as_str(),
            ],
        )
        .await?;
    Ok(rows.iter().map(|row| BatchId(row.get(0))).collect())
}

/// `loading → committing`, when every chunk is loaded. False when another coordinator got there
/// first, or the batch is already committing (a resumed commit).
pub async fn start_commit(
    client: &Client,
    batch_id: BatchId,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE batches b SET state = $2
             WHERE b.id = $1 AND b.state = $3 AND b.chunks_total =
                   (SELECT count(*) FROM chunks c WHERE c.batch_id = b.id AND c.state = $4)",
            &[
                &batch_id.get(),
                &BatchState::Committing.as_str(),
                &BatchState::Loading.as_str(),
                &ChunkState::Loaded.as_str(),
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// `committing → committed`, in the transaction that attached the batch's partition, so the rows
/// and the state become visible together. Returns the batch's rows, or `None` when the batch is no
/// longer committing.
pub async fn finish_commit(
    tx: &Transaction<'_>,
    batch_id: BatchId,
    took: Duration,
) -> Result<Option<u64>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "UPDATE batches SET state = $2, finished_at = now(), commit_seconds = $3
             WHERE id = $1 AND state = $4
             RETURNING coalesce(rows_total, 0)",
            &[
                &batch_id.get(),
                &BatchState::Committed.as_str(),
                &took.as_secs_f64(),
                &BatchState::Committing.as_str(),
            ],
        )
        .await?;
    Ok(row.map(|row| from_i64(row.get(0))))
}

/// How many batches are in each state (states with none are left out).
pub async fn batches_by_state(
    client: &Client,
) -> Result<Vec<(BatchState, u64)>, tokio_postgres::Error> {
    let rows = client
        .query("SELECT state, count(*) FROM batches GROUP BY state", &[])
        .await?;
    rows.iter()
        .map(|row| Ok((batch_state_at(row, 0)?, from_i64(row.get(1)))))
        .collect()
}

/// A batch's current state (`None` for an unknown batch).
pub async fn batch_state(
    client: &Client,
    batch_id: BatchId,
) -> Result<Option<BatchState>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT state FROM batches WHERE id = $1",
            &[&batch_id.get()],
        )
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get::<_, Stored<BatchState>>(0)?.0),
        None => None,
    })
}

/// Takes the batch's row lock for the rest of the transaction: commit and cancel serialise on it.
pub async fn lock_batch(
    tx: &Transaction<'_>,
    batch_id: BatchId,
) -> Result<Option<BatchState>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "SELECT state FROM batches WHERE id = $1 FOR UPDATE",
            &[&batch_id.get()],
        )
        .await?;
    Ok(match row {
        Some(row) => Some(row.try_get::<_, Stored<BatchState>>(0)?.0),
        None => None,
    })
}

/// A chunk as the coordinator cut it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRecord {
    /// The batch.
    pub batch_id: BatchId,
    /// The chunk's number within the batch.
    pub seq: ChunkSeq,
    /// The source line of its first row (the header is line 1).
    pub first_line: LineNumber,
    /// The source line of its last row.
    pub last_line: LineNumber,
    /// How many rows it holds.
    pub rows: u32,
    /// The part of the staging table it is copied into (`None`: a batch staged before parts by
    /// chunk).
    pub part: Option<Part>,
}

/// Records a chunk as `pending` before it is published (idempotent).
pub async fn record_chunk(
    client: &Client,
    chunk: &ChunkRecord,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "INSERT INTO chunks (batch_id, seq, first_line, last_line, rows, state, part)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (batch_id, seq) DO NOTHING",
            &[
                &chunk.batch_id.get(),
                &chunk.seq.get(),
                &to_i64(chunk.first_line.get()),
                &to_i64(chunk.last_line.get()),
                &to_i32(chunk.rows),
                &ChunkState::Pending.as_str(),
                &chunk
                    .part
                    .map(|part| i16::try_from(part.get()).expect("parts are few")),
            ],
        )
        .await?;
    Ok(())
}

/// `pending → queued` once RabbitMQ confirmed the message. A worker may have been quicker and
/// already moved the chunk on; then nothing changes.
pub async fn mark_queued(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE chunks SET state = $3, updated_at = now()
             WHERE batch_id = $1 AND seq = $2 AND state = $4",
            &[
                &batch_id.get(),
                &seq.get(),
                &ChunkState::Queued.as_str(),
                &ChunkState::Pending.as_str(),
            ],
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
        attempt: u32,
    },
    /// Its rows are already in: acknowledge and move on.
    AlreadyLoaded,
    /// The batch is gone (failed, cancelled, committed, unknown) or the chunk is dead.
    Closed,
}

/// `pending | queued | loading | failed → loading`, leased to `worker` for `lease`.
pub async fn claim_chunk(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
    worker: &str,
    lease: Duration,
) -> Result<Claim, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "UPDATE chunks c SET state = $5, attempts = c.attempts + 1, worker = $3,
                    lease_until = now() + make_interval(secs => $4), updated_at = now()
             FROM batches b
             WHERE c.batch_id = $1 AND c.seq = $2 AND b.id = c.batch_id
               AND b.state = ANY($6) AND c.state = ANY($7)
             RETURNING c.attempts",
            &[
                &batch_id.get(),
                &seq.get(),
                &worker,
                &lease.as_secs_f64(),
                &ChunkState::Loading.as_str(),
                &batch_states(&BatchState::TAKING_CHUNKS),
                &chunk_states(&ChunkState::UNLOADED),
            ],
        )
        .await?;
    if let Some(row) = row {
        return Ok(Claim::Load {
            attempt: u32::try_from(row.get::<_, i32>(0)).unwrap_or(0),
        });
    }
    let state = client
        .query_opt(
            "SELECT state FROM chunks WHERE batch_id = $1 AND seq = $2",
            &[&batch_id.get(), &seq.get()],
        )
        .await?;
    Ok(match state {
        Some(row) if row.try_get::<_, Stored<ChunkState>>(0)?.0 == ChunkState::Loaded => {
            Claim::AlreadyLoaded
        }
        _ => Claim::Closed,
    })
}

/// `* → loaded`, inside the worker's COPY transaction and before its COPY: takes the chunk's row
/// lock, so a concurrent duplicate waits and then finds the chunk loaded. False means "do not
/// COPY, roll back": the chunk is loaded already, dead, or its batch no longer takes chunks.
pub async fn finish_chunk(
    tx: &Transaction<'_>,
    batch_id: BatchId,
    seq: ChunkSeq,
) -> Result<bool, tokio_postgres::Error> {
    let updated = tx
        .execute(
            "UPDATE chunks c SET state = $3, lease_until = NULL, last_error = NULL,
                    updated_at = now()
             FROM batches b
             WHERE c.batch_id = $1 AND c.seq = $2 AND b.id = c.batch_id
               AND b.state = ANY($4) AND c.state = ANY($5)",
            &[
                &batch_id.get(),
                &seq.get(),
                &ChunkState::Loaded.as_str(),
                &batch_states(&BatchState::TAKING_CHUNKS),
                &chunk_states(&ChunkState::UNLOADED),
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// `loading → failed` with the reason, after an attempt whose rows PostgreSQL refused (counted in
/// `failures`); the coordinator decides whether to hand it out again or let the batch fail.
pub async fn fail_chunk(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE chunks SET state = $4, last_error = $3, lease_until = NULL,
                    failures = failures + 1, updated_at = now()
             WHERE batch_id = $1 AND seq = $2 AND state = ANY($5)",
            &[
                &batch_id.get(),
                &seq.get(),
                &error,
                &ChunkState::Failed.as_str(),
                &chunk_states(&[ChunkState::Pending, ChunkState::Queued, ChunkState::Loading]),
            ],
        )
        .await?;
    Ok(())
}

/// Why a chunk is handed out again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedriveReason {
    /// PostgreSQL refused its last attempt (`failed`).
    Refused,
    /// Its worker vanished: the lease expired (`loading`).
    LeaseExpired,
    /// RabbitMQ never confirmed its message (`pending`).
    Unconfirmed,
    /// Queued with no claim while the queue holds nothing ready: its message was dead-lettered or
    /// lost (`queued`).
    Stranded,
}

impl RedriveReason {
    /// The reason as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RedriveReason::Refused => "refused",
            RedriveReason::LeaseExpired => "lease_expired",
            RedriveReason::Unconfirmed => "unconfirmed",
            RedriveReason::Stranded => "stranded",
        }
    }

    /// Why a chunk found in `state` is handed out again.
    fn of(state: ChunkState) -> RedriveReason {
        match state {
            ChunkState::Failed => RedriveReason::Refused,
            ChunkState::Loading => RedriveReason::LeaseExpired,
            ChunkState::Pending => RedriveReason::Unconfirmed,
            _ => RedriveReason::Stranded,
        }
    }
}

/// A chunk that must be handed out again, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redrive {
    /// The chunk as it was cut.
    pub chunk: ChunkRecord,
    /// Why.
    pub reason: RedriveReason,
    /// Attempts so far (every claim by a worker).
    pub attempts: u32,
    /// Attempts whose rows PostgreSQL refused.
    pub failures: u32,
    /// The last error, if an attempt failed.
    pub last_error: Option<String>,
}

/// Chunks of open batches that need publishing again: failed attempts, expired leases (the worker
/// vanished), chunks left `pending` longer than `after` (never confirmed, e.g. the coordinator
/// stopped between recording and publishing) and — when `stranded_too`, which the caller says
/// when the chunk queue holds no message ready for a worker — chunks `queued` that long with no
/// claim: their message was dead-lettered or lost.
pub async fn chunks_to_redrive(
    client: &Client,
    after: Duration,
    stranded_too: bool,
) -> Result<Vec<Redrive>, tokio_postgres::Error> {
    let waiting = if stranded_too {
        chunk_states(&[ChunkState::Pending, ChunkState::Queued])
    } else {
        chunk_states(&[ChunkState::Pending])
    };
    let rows = client
        .query(
            "SELECT c.batch_id, c.seq, c.rows, c.attempts, c.failures, c.last_error,
                    c.first_line, c.last_line, c.state, c.part
             FROM chunks c JOIN batches b ON b.id = c.batch_id
             WHERE b.state = ANY($1)
               AND (c.state = $2
                    OR (c.state = $3 AND c.lease_until < now())
                    OR (c.state = ANY($4)
                        AND c.updated_at < now() - make_interval(secs => $5)))
             ORDER BY c.batch_id, c.seq",
            &[
                &batch_states(&BatchState::TAKING_CHUNKS),
                &ChunkState::Failed.as_str(),
                &ChunkState::Loading.as_str(),
                &waiting,
                &after.as_secs_f64(),
            ],
        )
        .await?;
    rows.iter()
        .map(|row| {
            Ok(Redrive {
                chunk: ChunkRecord {
                    batch_id: BatchId(row.get(0)),
                    seq: ChunkSeq(row.get(1)),
                    rows: from_i32(row.get(2)),
                    first_line: LineNumber(from_i64(row.get(6))),
                    last_line: LineNumber(from_i64(row.get(7))),
                    // `chunks.part` is checked to be at least 0.
                    part: row
                        .get::<_, Option<i16>>(9)
                        .and_then(|part| u16::try_from(part).ok())
                        .map(Part),
                },
                reason: RedriveReason::of(row.try_get::<_, Stored<ChunkState>>(8)?.0),
                attempts: from_i32(row.get(3)),
                failures: from_i32(row.get(4)),
                last_error: row.get(5),
            })
        })
        .collect()
}

/// `failed | loading | pending | queued → pending`, right before the coordinator publishes the
/// chunk again. False when the chunk moved on meanwhile (e.g. the slow worker finished).
pub async fn requeue_chunk(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE chunks SET state = $3, lease_until = NULL, updated_at = now()
             WHERE batch_id = $1 AND seq = $2 AND state = ANY($4)",
            &[
                &batch_id.get(),
                &seq.get(),
                &ChunkState::Pending.as_str(),
                &chunk_states(&ChunkState::UNLOADED),
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// A poison chunk: `failed → dead`, and its batch fails with `reason`, its staged rows dropped,
/// in one transaction (a kill in between cannot leave a dead chunk in an open batch). False when
/// the chunk or its batch moved on meanwhile.
pub async fn bury_chunk(
    client: &mut Client,
    batch_id: BatchId,
    seq: ChunkSeq,
    reason: &str,
) -> Result<bool, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    let buried = tx
        .execute(
            "UPDATE chunks SET state = $3, lease_until = NULL, updated_at = now()
             WHERE batch_id = $1 AND seq = $2 AND state = $4",
            &[
                &batch_id.get(),
                &seq.get(),
                &ChunkState::Dead.as_str(),
                &ChunkState::Failed.as_str(),
            ],
        )
        .await?;
    if buried == 0 || !end_batch_in(&tx, batch_id, &Ending::failed(reason)).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    tx.commit().await?;
    Ok(true)
}

/// Batches in `receiving` that were created more than `older_than` ago: the sweep ends those
/// that no upload of this coordinator is feeding.
pub async fn receiving_batches(
    client: &Client,
    older_than: Duration,
) -> Result<Vec<BatchId>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT id FROM batches
             WHERE state = $1 AND created_at < now() - make_interval(secs => $2)
             ORDER BY id",
            &[&BatchState::Receiving.as_str(), &older_than.as_secs_f64()],
        )
        .await?;
    Ok(rows.iter().map(|row| BatchId(row.get(0))).collect())
}

/// Of `ids`, those whose batch is final or unknown: their spooled chunks can go.
pub async fn ended_batches(
    client: &Client,
    ids: &[BatchId],
) -> Result<Vec<BatchId>, tokio_postgres::Error> {
    let ids: Vec<i64> = ids.iter().map(|id| id.get()).collect();
    let rows = client
        .query(
            "SELECT id FROM unnest($1::bigint[]) AS spooled(id)
             WHERE NOT EXISTS (SELECT 1 FROM batches b WHERE b.id = spooled.id
                               AND b.state = ANY($2))
             ORDER BY id",
            &[&ids, &batch_states(&BatchState::OPEN)],
        )
        .await?;
    Ok(rows.iter().map(|row| BatchId(row.get(0))).collect())
}

/// A count or size for an `integer` column (saturating: no ledger number comes near 2³¹).
fn to_i32(value: impl TryInto<i32>) -> i32 {
    value.try_into().unwrap_or(i32::MAX)
}

/// A count or size for a `bigint` column.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// An `integer` column that holds a count (never negative).
fn from_i32(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// A `bigint` column that holds a count or a line (never negative).
fn from_i64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}
