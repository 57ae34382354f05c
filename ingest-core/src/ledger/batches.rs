//! A batch's life in the ledger: opened `receiving` by the coordinator that feeds its upload,
//! `loading` once the whole file is in, `committing` once every chunk is loaded, then final.
//! A batch that ends uncommitted has its tables dropped in the same transaction — unless a lock
//! would make that wait (a worker still copying into a part): then the state changes alone, at
//! once, and the tables are left for the sweep ([`leftover_tables`]), as is whatever a crash left.

use super::{batch_states, from_i64, replaceable, to_i32, to_i64, NotReplaceable, Stored};
use crate::batch::{BatchId, BatchState};
use crate::chunk::ChunkState;
use crate::schema;
use ingest_wire::{IdempotencyKey, OutageStep, RowError};
use std::time::Duration;
use tokio_postgres::{Client, Transaction};

/// What [`create_batch`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewBatch {
    /// A new batch, in `receiving`, with its staging table.
    Created(BatchId),
    /// A batch with the same idempotency key already exists.
    Existing(BatchId),
    /// The batch it was to replace cannot be replaced: nothing was recorded.
    NotReplaceable(NotReplaceable),
}

/// Records a new batch in `receiving`, fed by the coordinator `receiver`, and creates its staging
/// table and the table of its chunks' copies, in one transaction. With an idempotency key that
/// was seen before, returns the earlier batch and creates nothing. With `replaces`, the batch is
/// to replace that one when it commits (see [`super::replace`]), which must be committed and not
/// replaced yet — except for a key seen before: a retry of a replacement finds its batch even
/// when that batch has replaced the old one meanwhile.
pub async fn create_batch(
    client: &mut Client,
    idempotency_key: Option<&IdempotencyKey>,
    replaces: Option<BatchId>,
    parts: u16,
    receiver: &str,
) -> Result<NewBatch, tokio_postgres::Error> {
    let key = idempotency_key.map(IdempotencyKey::as_str);
    let tx = client.transaction().await?;
    if let Some(old) = replaces {
        if let Err(refusal) = replaceable(&tx, old).await? {
            let existing = tx
                .query_opt("SELECT id FROM batches WHERE idempotency_key = $1", &[&key])
                .await?;
            return Ok(match existing {
                Some(row) => NewBatch::Existing(BatchId(row.get(0))),
                None => NewBatch::NotReplaceable(refusal),
            });
        }
    }
    let row = tx
        .query_opt(
            "INSERT INTO batches (state, idempotency_key, receiver, replaces) VALUES ($1, $2, $3, $4)
             ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
            &[
                &BatchState::Receiving.as_str(),
                &key,
                &receiver,
                &replaces.map(BatchId::get),
            ],
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
    tx.batch_execute(&schema::create_copies_sql(id)).await?;
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

/// What [`finish_receiving`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// The batch's state afterwards (`None` for an unknown batch).
    State(Option<BatchState>),
    /// The batch is still `receiving`, but the ledger holds fewer of its chunks than the upload
    /// recorded: some records were lost — a PostgreSQL failover to a standby that had not
    /// received them (asynchronous replication) — while the upload went on on the new primary.
    MissingChunks {
        /// Chunks the ledger holds.
        recorded: u32,
        /// Chunks the upload recorded.
        cut: u32,
    },
}

/// The upload is complete and every chunk is recorded: `receiving → loading`, provided the
/// ledger holds every chunk the upload recorded. Returns the batch's state afterwards, so that a
/// repeated call whose first reply was lost (the update committed, the connection broke before
/// its answer came) tells the truth: `loading` or later, not "no longer receiving".
pub async fn finish_receiving(
    client: &Client,
    batch_id: BatchId,
    received: &Received<'_>,
) -> Result<Finished, tokio_postgres::Error> {
    let updated = client
        .execute(
            "UPDATE batches SET state = $2, rows_total = $3, chunks_total = $4,
                    bytes_received = $5, content_sha256 = $6, received_at = now()
             WHERE id = $1 AND state = $7
               AND (SELECT count(*)::int FROM chunks WHERE batch_id = $1) = $4",
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
    if updated == 1 {
        return Ok(Finished::State(Some(BatchState::Loading)));
    }
    let state = batch_state(client, batch_id).await?;
    if state == Some(BatchState::Receiving) {
        let recorded: i64 = client
            .query_one(
                "SELECT count(*) FROM chunks WHERE batch_id = $1",
                &[&batch_id.get()],
            )
            .await?
            .get(0);
        return Ok(Finished::MissingChunks {
            recorded: u32::try_from(recorded).unwrap_or(u32::MAX),
            cut: received.chunks,
        });
    }
    Ok(Finished::State(state))
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
    /// The batch failed through no fault of its content (the upload never arrived whole, or no
    /// good copy of a chunk is left): its `Idempotency-Key` is released, so the client's retry
    /// with the same key is a new submit. Refused content keeps its key: a retry of the same
    /// request gets the same refusal.
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

    /// No good copy of a chunk is left (every read of it was damaged, or it is gone): the
    /// infrastructure's fault, never the data's, so the key is released for the resubmit.
    pub fn no_good_copy(error: impl Into<String>) -> Ending {
        Ending::upload_lost(error)
    }

    /// Stopped on request.
    pub fn cancelled() -> Ending {
        Ending {
            state: BatchState::Cancelled,
            ..Ending::failed("cancelled on request")
        }
    }
}

/// How long ending a batch waits for the locks to drop its tables before it leaves them to the
/// sweep.
const DROP_LOCK_WAIT: Duration = Duration::from_secs(2);

/// Ends a batch that is not final yet as failed or cancelled, and drops what it staged and its
/// chunks' copies in the same transaction (or leaves them to the sweep, should a lock make that
/// wait). Returns false when the batch was already final (nothing changes then).
pub async fn end_batch(
    client: &mut Client,
    batch_id: BatchId,
    ending: &Ending,
) -> Result<bool, tokio_postgres::Error> {
    let mut tx = client.transaction().await?;
    let ended = end_batch_in(&tx, batch_id, ending).await?;
    if ended {
        drop_tables_in(&mut tx, batch_id).await?;
    }
    tx.commit().await?;
    Ok(ended)
}

/// Drops an ended batch's tables inside the caller's transaction, under a savepoint: when a lock
/// does not come within [`DROP_LOCK_WAIT`], the drop alone is undone and the tables are left for
/// the sweep.
pub(super) async fn drop_tables_in(
    tx: &mut Transaction<'_>,
    batch_id: BatchId,
) -> Result<(), tokio_postgres::Error> {
    let tables = batch_tables(&*tx, batch_id, false).await?;
    let savepoint = tx.savepoint("drop_tables").await?;
    let dropped = savepoint
        .batch_execute(&format!(
            "SET LOCAL lock_timeout = '{}ms'; DROP TABLE IF EXISTS {}",
            DROP_LOCK_WAIT.as_millis(),
            tables.join(", ")
        ))
        .await;
    match dropped {
        Ok(()) => savepoint.commit().await,
        Err(error) => {
            tracing::info!(%batch_id, %error, "the ended batch's tables are left for the sweep");
            savepoint.rollback().await
        }
    }
}

/// The tables of a batch to drop, in the order to lock them: its staging table's parts before
/// the staging table (the order a worker's COPY into a part takes them, so the two never
/// deadlock), then its chunks' copies — only the copies when it was `committed`.
async fn batch_tables(
    client: &impl tokio_postgres::GenericClient,
    batch_id: BatchId,
    committed: bool,
) -> Result<Vec<String>, tokio_postgres::Error> {
    let mut tables: Vec<String> = Vec::new();
    if !committed {
        let parts = client
            .query(&schema::leaves_sql(), &[&schema::staging_table(batch_id)])
            .await?;
        tables.extend(
            parts
                .iter()
                .map(|row| schema::staged(&row.get::<_, String>("name")))
                .filter(|part| *part != schema::staging_table(batch_id)),
        );
        tables.push(schema::staging_table(batch_id));
    }
    tables.push(schema::copies_table(batch_id));
    Ok(tables)
}

/// [`end_batch`]'s update inside the caller's transaction.
pub(super) async fn end_batch_in(
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
                    commit_holder = NULL, commit_lease_until = NULL, commit_pids = NULL,
                    commit_step = NULL, finished_at = now()
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
    Ok(updated == 1)
}

/// Drops what a batch that ended uncommitted staged (its staging table and parts) and the copies
/// of its chunks — or only the copies, for a committed batch. Waits at most `lock_wait` for a
/// lock: a worker still copying into a part makes this fail, to be tried again by the sweep.
pub async fn drop_batch_tables(
    client: &mut Client,
    batch_id: BatchId,
    committed: bool,
    lock_wait: Duration,
) -> Result<(), tokio_postgres::Error> {
    let tables = batch_tables(&*client, batch_id, committed).await?;
    let tx = client.transaction().await?;
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}ms'",
        lock_wait.as_millis().max(1)
    ))
    .await?;
    // One statement: it locks the tables in the order given.
    tx.batch_execute(&format!("DROP TABLE IF EXISTS {}", tables.join(", ")))
        .await?;
    tx.commit().await
}

/// Batches whose tables outlived them: staging tables of batches that failed or were cancelled
/// (or that the ledger does not know), and copies of batches that are final. A drop that timed
/// out, or a coordinator killed between the end and the drop, leaves them; any coordinator drops
/// them. Returns `(batch, committed)` pairs for [`drop_batch_tables`].
pub async fn leftover_tables(
    client: &Client,
) -> Result<Vec<(BatchId, bool)>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT t.relname, n.nspname, b.state FROM pg_class t
             JOIN pg_namespace n ON n.oid = t.relnamespace
             LEFT JOIN batches b ON b.id = substring(t.relname FROM '^batch_([0-9]+)$')::bigint
             WHERE ((n.nspname = 'price_batches' AND NOT t.relispartition)
                    OR n.nspname = 'chunk_copies')
               AND t.relkind IN ('r', 'p') AND t.relname ~ '^batch_[0-9]+$'
               AND (b.state IS NULL OR NOT b.state = ANY($1))",
            &[&batch_states(&BatchState::OPEN)],
        )
        .await?;
    let mut leftovers: Vec<(BatchId, bool)> = Vec::new();
    for row in &rows {
        let Some(id) = schema::staging_batch(row.get(0)) else {
            continue;
        };
        let state: Option<Stored<BatchState>> = row.try_get(2)?;
        let committed = state.is_some_and(|state| state.0 == BatchState::Committed);
        if !leftovers.contains(&(id, committed)) {
            leftovers.push((id, committed));
        }
    }
    leftovers.sort();
    Ok(leftovers)
}

/// Notes on a batch the last outage one of its steps rode through (shown in its status).
pub async fn record_outage(
    client: &Client,
    batch_id: BatchId,
    step: OutageStep,
    attempt: u32,
    reason: &str,
) -> Result<(), tokio_postgres::Error> {
    client
        .execute(
            "UPDATE batches SET outage_step = $2, outage_attempt = $3, outage_reason = $4,
                    outage_at = now()
             WHERE id = $1",
            &[&batch_id.get(), &step.as_str(), &to_i32(attempt), &reason],
        )
        .await?;
    Ok(())
}

/// [`record_outage`] if PostgreSQL takes it now: false when it does not (PostgreSQL may be the
/// outage), for the caller to note it again later.
pub async fn note_outage(
    pool: &deadpool_postgres::Pool,
    batch_id: BatchId,
    step: OutageStep,
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
/// and the state become visible together — only while the commit lease taken with `fence` is
/// still the batch's. Returns the batch's rows, or `None` when the batch is no longer
/// committing or the lease was lost (another coordinator took it over).
pub async fn finish_commit(
    tx: &Transaction<'_>,
    batch_id: BatchId,
    fence: i64,
    took: Duration,
) -> Result<Option<u64>, tokio_postgres::Error> {
    let row = tx
        .query_opt(
            "UPDATE batches SET state = $2, finished_at = now(), commit_seconds = $3
             WHERE id = $1 AND state = $4 AND commit_fence = $5
             RETURNING coalesce(rows_total, 0)",
            &[
                &batch_id.get(),
                &BatchState::Committed.as_str(),
                &took.as_secs_f64(),
                &BatchState::Committing.as_str(),
                &fence,
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
        .map(|row| Ok((super::batch_state_at(row, 0)?, from_i64(row.get(1)))))
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
