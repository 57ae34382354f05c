//! A chunk's life in the ledger, and its copy: recorded `pending` with its copy (one statement),
//! `queued` once RabbitMQ confirmed its message, `loading` while a worker holds it (a lease, and
//! the worker's backend), `loaded` in the worker's COPY transaction. A chunk that must be handed
//! out again — refused, damaged, its lease expired, its message never confirmed or stranded — is
//! found here and set `pending` again; its copy is in PostgreSQL, so any coordinator can.
//!
//! Nothing here waits on a chunk's row lock: the lock of a chunk whose worker froze in its COPY
//! transaction is skipped (`SKIP LOCKED`) until that worker's backend is ended
//! ([`end_stale_claim`]).

use super::batches::{drop_tables_in, end_batch_in, Ending};
use super::{batch_states, chunk_states, from_i32, from_i64, seconds, to_i32, to_i64, Stored};
use crate::batch::{BatchId, BatchState};
use crate::chunk::{ChunkMessage, ChunkSeq, ChunkState, Part};
use crate::chunk_copy::ChunkCopy;
use crate::schema;
use chrono::{DateTime, Utc};
use ingest_wire::LineNumber;
use std::time::Duration;
use tokio_postgres::{Client, Transaction};

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

impl ChunkRecord {
    /// The message that hands this chunk out.
    pub fn message(&self) -> ChunkMessage {
        ChunkMessage {
            batch_id: self.batch_id,
            seq: self.seq,
            rows: self.rows,
            part: self.part,
            dead_letters: 0,
        }
    }
}

/// Records a chunk as `pending`, about to be published, with its copy — one statement, so no
/// chunk is ever in the ledger without its copy (idempotent: a chunk recorded before stays as it
/// is).
pub async fn record_chunk(
    client: &Client,
    chunk: &ChunkRecord,
    copy: &ChunkCopy,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            &format!(
                "WITH recorded AS (
                   INSERT INTO chunks (batch_id, seq, first_line, last_line, rows, state, part,
                                       published_at)
                   VALUES ($1, $2, $3, $4, $5, $6, $7, now())
                   ON CONFLICT (batch_id, seq) DO NOTHING)
                 INSERT INTO {} (seq, crc32, bytes) VALUES ($2, $8, $9)
                 ON CONFLICT (seq) DO NOTHING",
                schema::copies_table(chunk.batch_id)
            ),
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
                &i64::from(copy.crc32),
                &copy.compressed,
            ],
        )
        .await?;
    Ok(())
}

/// The stored copy of a chunk (`None` when there is none: a chunk recorded before copies lived
/// in PostgreSQL). An error with SQLSTATE 42P01 (undefined table) means the batch ended and its
/// copies were dropped.
pub async fn read_copy(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
) -> Result<Option<ChunkCopy>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            &format!(
                "SELECT crc32, bytes FROM {} WHERE seq = $1",
                schema::copies_table(batch_id)
            ),
            &[&seq.get()],
        )
        .await?;
    Ok(row.map(|row| ChunkCopy {
        crc32: u32::try_from(row.get::<_, i64>(0)).unwrap_or_default(),
        compressed: row.get(1),
    }))
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

/// `pending | queued | loading | failed → loading`, leased to `worker` for `lease`, with this
/// session's backend recorded: an expired lease ends that backend ([`end_stale_claim`]).
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
                    lease_until = now() + make_interval(secs => $4), updated_at = now(),
                    backend_pid = pg_backend_pid(), claimed_at = now()
             FROM batches b
             WHERE c.batch_id = $1 AND c.seq = $2 AND b.id = c.batch_id
               AND b.state = ANY($6) AND c.state = ANY($7)
             RETURNING c.attempts",
            &[
                &batch_id.get(),
                &seq.get(),
                &worker,
                &seconds(lease),
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
    set_failed(client, batch_id, seq, error, ChunkState::Failed).await
}

/// `loading → damaged` after a read of the chunk's copy that did not match its checksum (counted
/// in `damaged`, never in `failures`: it is not the data's fault). The coordinator hands it out
/// again, to be read again, until too many reads were damaged: then no good copy is left.
pub async fn damage_chunk(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
    error: &str,
) -> Result<(), tokio_postgres::Error> {
    set_failed(client, batch_id, seq, error, ChunkState::Damaged).await
}

/// `pending | queued | loading → failed | damaged`, counting one more in `failures` or `damaged`.
async fn set_failed(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
    error: &str,
    state: ChunkState,
) -> Result<(), tokio_postgres::Error> {
    let counter = match state {
        ChunkState::Damaged => "damaged",
        _ => "failures",
    };
    client
        .execute(
            &format!(
                "UPDATE chunks SET state = $4, last_error = $3, lease_until = NULL,
                        {counter} = {counter} + 1, updated_at = now()
                 WHERE batch_id = $1 AND seq = $2 AND state = ANY($5)"
            ),
            &[
                &batch_id.get(),
                &seq.get(),
                &error,
                &state.as_str(),
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
    /// The last read of its copy did not match its checksum (`damaged`).
    Damaged,
    /// Its worker vanished or froze: the lease expired (`loading`).
    LeaseExpired,
    /// RabbitMQ never confirmed its message (`pending`).
    Unconfirmed,
    /// Queued with no claim long after later chunks were claimed, or while the queue holds
    /// nothing ready: its message was lost (`queued`).
    Stranded,
    /// RabbitMQ dead-lettered its message (a worker kept dying on it, or rejected it).
    DeadLettered,
}

impl RedriveReason {
    /// The reason as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RedriveReason::Refused => "refused",
            RedriveReason::Damaged => "damaged",
            RedriveReason::LeaseExpired => "lease_expired",
            RedriveReason::Unconfirmed => "unconfirmed",
            RedriveReason::Stranded => "stranded",
            RedriveReason::DeadLettered => "dead_lettered",
        }
    }

    /// The state a chunk is found in for this reason, and left in when it is handed out again.
    pub fn state(self) -> ChunkState {
        match self {
            RedriveReason::Refused => ChunkState::Failed,
            RedriveReason::Damaged => ChunkState::Damaged,
            RedriveReason::LeaseExpired => ChunkState::Loading,
            RedriveReason::Unconfirmed => ChunkState::Pending,
            RedriveReason::Stranded | RedriveReason::DeadLettered => ChunkState::Queued,
        }
    }
}

/// The worker's claim a chunk is held under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The worker's name.
    pub worker: Option<String>,
    /// Its backend, recorded at the claim.
    pub backend_pid: Option<i32>,
    /// When it claimed the chunk.
    pub claimed_at: Option<DateTime<Utc>>,
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
    /// Reads of its copy that were damaged.
    pub damaged: u32,
    /// The last error, if an attempt failed.
    pub last_error: Option<String>,
    /// Who held it last.
    pub holder: Holder,
}

/// The chunks [`chunks_to_redrive`] finds ($1 the batch states taking chunks, $2 refused and
/// damaged, $3 loading, $4 pending, $5 `after` in seconds, $6 queued, $7 `queue_idle`).
const REDRIVE_SQL: &str = "WITH taking AS (SELECT id FROM batches WHERE state = ANY($1)),
                  overtaken AS (
                    SELECT max(o.published_at) AS before FROM chunks o
                    WHERE o.batch_id IN (SELECT id FROM taking)
                      AND o.claimed_at > o.published_at
                      AND o.claimed_at < now() - make_interval(secs => $5))
             SELECT c.batch_id, c.seq, c.rows, c.attempts, c.failures, c.last_error,
                    c.first_line, c.last_line, c.state, c.part, c.damaged, c.worker,
                    c.backend_pid, c.claimed_at
             FROM chunks c
             WHERE c.batch_id IN (SELECT id FROM taking)
               AND (c.state = ANY($2)
                    OR (c.state = $3 AND c.lease_until < now())
                    OR (c.state = $4 AND c.updated_at < now() - make_interval(secs => $5))
                    OR (c.state = $6
                        AND coalesce(c.published_at, c.updated_at)
                            < now() - make_interval(secs => $5)
                        AND ($7 OR coalesce(c.published_at, c.updated_at)
                                   < (SELECT before FROM overtaken))))
             ORDER BY c.batch_id, c.seq";

/// A row of [`REDRIVE_SQL`], with why its chunk is handed out again.
fn redrive_of(row: &tokio_postgres::Row) -> Result<Redrive, tokio_postgres::Error> {
    let reason = match row.try_get::<_, Stored<ChunkState>>(8)?.0 {
        ChunkState::Failed => RedriveReason::Refused,
        ChunkState::Damaged => RedriveReason::Damaged,
        ChunkState::Loading => RedriveReason::LeaseExpired,
        ChunkState::Pending => RedriveReason::Unconfirmed,
        _ => RedriveReason::Stranded,
    };
    Ok(Redrive {
        chunk: record_of(row),
        reason,
        attempts: from_i32(row.get(3)),
        failures: from_i32(row.get(4)),
        damaged: from_i32(row.get(10)),
        last_error: row.get(5),
        holder: Holder {
            worker: row.get(11),
            backend_pid: row.get(12),
            claimed_at: row.get(13),
        },
    })
}

/// Chunks of open batches that need publishing again: failed attempts (refused), damaged reads,
/// expired leases (the worker vanished or froze), chunks left `pending` longer than `after`
/// (never confirmed, e.g. the coordinator stopped between recording and publishing), and chunks
/// `queued` that long with no claim whose message was lost: a chunk published after them was
/// claimed more than `after` ago (RabbitMQ hands messages out in order, so theirs should have
/// come first), or — `queue_idle`, which the caller says when the chunk queue holds no message
/// ready — nothing is left to come. A false alarm costs a duplicate message, which the ledger
/// loads once.
pub async fn chunks_to_redrive(
    client: &Client,
    after: Duration,
    queue_idle: bool,
) -> Result<Vec<Redrive>, tokio_postgres::Error> {
    let rows = client
        .query(
            REDRIVE_SQL,
            &[
                &batch_states(&BatchState::TAKING_CHUNKS),
                &chunk_states(&[ChunkState::Failed, ChunkState::Damaged]),
                &ChunkState::Loading.as_str(),
                &ChunkState::Pending.as_str(),
                &seconds(after),
                &ChunkState::Queued.as_str(),
                &queue_idle,
            ],
        )
        .await?;
    rows.iter().map(redrive_of).collect()
}

/// The [`ChunkRecord`] in columns 0, 1, 2, 6, 7 and 9 of a `chunks` row.
fn record_of(row: &tokio_postgres::Row) -> ChunkRecord {
    ChunkRecord {
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
    }
}

/// A chunk and its state, with its batch's state (`None` when the ledger does not know it).
pub async fn chunk_and_batch(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
) -> Result<Option<(ChunkRecord, ChunkState, BatchState)>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT c.batch_id, c.seq, c.rows, NULL, NULL, NULL, c.first_line, c.last_line,
                    c.state, c.part, b.state
             FROM chunks c JOIN batches b ON b.id = c.batch_id
             WHERE c.batch_id = $1 AND c.seq = $2",
            &[&batch_id.get(), &seq.get()],
        )
        .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    Ok(Some((
        record_of(&row),
        row.try_get::<_, Stored<ChunkState>>(8)?.0,
        row.try_get::<_, Stored<BatchState>>(10)?.0,
    )))
}

/// Ends the backend of the worker that claimed a chunk whose lease expired — the backend that
/// recorded itself at the claim, still the same one (started before the claim), not this one,
/// and busy (an idle pooled session holds no chunk: it is left alone) — and waits up to `within`
/// for it to go. Its open transaction, and with it the chunk's row lock, goes with it; the
/// worker, should it wake up, finds its connection gone and the chunk loaded by another. True
/// when such a backend was there.
pub async fn end_stale_claim(
    client: &Client,
    holder: &Holder,
    within: Duration,
) -> Result<bool, tokio_postgres::Error> {
    let (Some(pid), Some(claimed_at)) = (holder.backend_pid, holder.claimed_at) else {
        return Ok(false);
    };
    let row = client
        .query_one(
            "SELECT coalesce(bool_or(pg_terminate_backend(pid, $3)), false)
             FROM pg_stat_activity
             WHERE pid = $1 AND backend_start <= $2 AND pid <> pg_backend_pid()
               AND state <> 'idle'",
            &[
                &pid,
                &claimed_at,
                &i64::try_from(within.as_millis()).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    Ok(row.get(0))
}

/// `reason.state() → pending`, right before the coordinator publishes the chunk again — not
/// while another session holds its row lock (skipped, for the next pass), and for an expired
/// lease only while it is still expired. False when the chunk moved on meanwhile (the slow
/// worker finished, another coordinator handed it out) or is locked.
pub async fn requeue_chunk(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
    reason: RedriveReason,
) -> Result<bool, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE chunks c SET state = $3, lease_until = NULL, updated_at = now(),
                    published_at = now()
             FROM (SELECT batch_id, seq FROM chunks
                   WHERE batch_id = $1 AND seq = $2 AND state = $4
                     AND (state <> $5 OR lease_until < now())
                   FOR UPDATE SKIP LOCKED) free
             WHERE c.batch_id = free.batch_id AND c.seq = free.seq",
            &[
                &batch_id.get(),
                &seq.get(),
                &ChunkState::Pending.as_str(),
                &reason.state().as_str(),
                &ChunkState::Loading.as_str(),
            ],
        )
        .await?;
    Ok(updated == 1)
}

/// A chunk's message was published again as it was (a dead letter taken back): noted, so that
/// the chunk is not taken for stranded meanwhile (skipped while another session holds its row
/// lock: then a duplicate message may follow, which is harmless).
pub async fn republished(
    client: &Client,
    batch_id: BatchId,
    seq: ChunkSeq,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE chunks c SET published_at = now()
             FROM (SELECT batch_id, seq FROM chunks
                   WHERE batch_id = $1 AND seq = $2 AND state = ANY($3)
                   FOR UPDATE SKIP LOCKED) free
             WHERE c.batch_id = free.batch_id AND c.seq = free.seq",
            &[
                &batch_id.get(),
                &seq.get(),
                &chunk_states(&ChunkState::UNLOADED),
            ],
        )
        .await?;
    Ok(())
}

/// A chunk that will not load: `failed → dead`, and its batch ends as `ending` says, in one
/// transaction with the drop of its tables (a kill in between cannot leave a dead chunk in an
/// open batch). False when the chunk or its batch moved on meanwhile.
pub async fn bury_chunk(
    client: &mut Client,
    batch_id: BatchId,
    seq: ChunkSeq,
    ending: &Ending,
) -> Result<bool, tokio_postgres::Error> {
    let mut tx = client.transaction().await?;
    let buried = tx
        .execute(
            "UPDATE chunks SET state = $3, lease_until = NULL, updated_at = now()
             WHERE batch_id = $1 AND seq = $2 AND state = ANY($4)",
            &[
                &batch_id.get(),
                &seq.get(),
                &ChunkState::Dead.as_str(),
                &chunk_states(&ChunkState::UNLOADED),
            ],
        )
        .await?;
    if buried == 0 || !end_batch_in(&tx, batch_id, ending).await? {
        tx.rollback().await?;
        return Ok(false);
    }
    drop_tables_in(&mut tx, batch_id).await?;
    tx.commit().await?;
    Ok(true)
}
