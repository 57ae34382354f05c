//! Status: what a batch looks like from outside, computed from the ledger on every request
//! (nothing is cached, so every coordinator answers the same). Also the list of batches and the
//! health endpoints.

use crate::api_error::ApiError;
use crate::app::AppState;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use ingest_core::batch::BatchState;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio_postgres::{Client, Row};

/// Chunk counts by state.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkCounts {
    /// Chunks cut so far (all of them once the batch is `loading`).
    pub total: i64,
    /// Recorded, waiting for RabbitMQ's confirm.
    pub pending: i64,
    /// Durably queued on RabbitMQ.
    pub queued: i64,
    /// Held by a worker.
    pub loading: i64,
    /// Rows staged.
    pub loaded: i64,
    /// Last attempt failed (or attempts spent: `dead`).
    pub failed: i64,
}

/// A batch's progress, as `GET /batches/{id}` returns it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchStatus {
    /// The batch id.
    pub id: i64,
    /// Where the batch is.
    pub state: BatchState,
    /// Where to poll this status.
    pub status_url: String,
    /// Rows in the file, once the upload is complete.
    pub rows_total: Option<i64>,
    /// Rows staged by workers so far (all rows once committed).
    pub rows_loaded: i64,
    /// Chunks by state.
    pub chunks: ChunkCounts,
    /// Deliveries beyond the first, over all chunks.
    pub retries: i64,
    /// Why the batch failed or was cancelled.
    pub error: Option<String>,
    /// Input errors found.
    pub error_count: i32,
    /// The first input errors: line, column, value, message.
    pub errors: serde_json::Value,
    /// Bytes received.
    pub bytes_received: i64,
    /// SHA-256 of the body as received.
    pub content_sha256: Option<String>,
    /// Earlier batches with byte-identical content.
    pub duplicate_of: Vec<i64>,
    /// When the submit began.
    pub created_at: DateTime<Utc>,
    /// When the first chunk was published.
    pub started_at: Option<DateTime<Utc>>,
    /// When the upload was complete.
    pub received_at: Option<DateTime<Utc>>,
    /// When the batch became final.
    pub finished_at: Option<DateTime<Utc>>,
    /// Seconds the commit took (index and attach).
    pub commit_seconds: Option<f64>,
    /// Rows loaded per second since the start.
    pub rows_per_second: Option<f64>,
    /// Seconds left at the current rate, while the batch is open.
    pub eta_seconds: Option<f64>,
    /// The last outage a step of the batch rode through (a worker loading it, or the commit, tries
    /// again meanwhile).
    pub outage: Option<Outage>,
}

/// An outage a batch's step met: it is tried again, and the batch does not fail for it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Outage {
    /// The step (`load`, `commit`).
    pub step: String,
    /// Which attempt of the step met it (from 1).
    pub attempt: i32,
    /// What went wrong.
    pub reason: String,
    /// When.
    pub at: DateTime<Utc>,
}

const SELECT: &str = "
    SELECT b.id, b.state, b.rows_total, b.error, b.error_count, b.errors, b.bytes_received,
           b.content_sha256, b.created_at, b.received_at, b.finished_at, b.commit_seconds,
           count(c.seq),
           count(c.seq) FILTER (WHERE c.state = 'pending'),
           count(c.seq) FILTER (WHERE c.state = 'queued'),
           count(c.seq) FILTER (WHERE c.state = 'loading'),
           count(c.seq) FILTER (WHERE c.state = 'loaded'),
           count(c.seq) FILTER (WHERE c.state IN ('failed', 'dead')),
           coalesce(sum(c.rows) FILTER (WHERE c.state = 'loaded'), 0)::bigint,
           coalesce(sum(greatest(c.attempts - 1, 0)), 0)::bigint,
           min(c.created_at),
           b.outage_step, b.outage_attempt, b.outage_reason, b.outage_at
    FROM batches b LEFT JOIN chunks c ON c.batch_id = b.id";

fn from_row(row: &Row) -> BatchStatus {
    let id: i64 = row.get(0);
    let state: BatchState = row
        .get::<_, String>(1)
        .parse()
        .unwrap_or(BatchState::Failed);
    let rows_total: Option<i64> = row.get(2);
    let rows_loaded: i64 = row.get(18);
    let started_at: Option<DateTime<Utc>> = row.get(20);
    let finished_at: Option<DateTime<Utc>> = row.get(10);
    let elapsed = started_at.map(|start| {
        (finished_at.unwrap_or_else(Utc::now) - start).num_milliseconds() as f64 / 1000.0
    });
    let rows_per_second = elapsed
        .filter(|seconds| *seconds > 0.0)
        .map(|seconds| rows_loaded as f64 / seconds);
    let eta_seconds = match (state.is_final(), rows_total, rows_per_second) {
        (true, _, _) => None,
        (false, Some(total), Some(rate)) if rate > 0.0 => {
            Some((total - rows_loaded).max(0) as f64 / rate)
        }
        _ => None,
    };
    BatchStatus {
        id,
        state,
        status_url: format!("/batches/{id}"),
        rows_total,
        rows_loaded,
        chunks: ChunkCounts {
            total: row.get(12),
            pending: row.get(13),
            queued: row.get(14),
            loading: row.get(15),
            loaded: row.get(16),
            failed: row.get(17),
        },
        retries: row.get(19),
        error: row.get(3),
        error_count: row.get(4),
        errors: row.get(5),
        bytes_received: row.get(6),
        content_sha256: row.get(7),
        duplicate_of: Vec::new(),
        created_at: row.get(8),
        started_at,
        received_at: row.get(9),
        finished_at,
        commit_seconds: row.get(11),
        rows_per_second,
        eta_seconds,
        outage: match (row.get(21), row.get(22), row.get(23), row.get(24)) {
            (Some(step), Some(attempt), Some(reason), Some(at)) => Some(Outage {
                step,
                attempt,
                reason,
                at,
            }),
            _ => None,
        },
    }
}

/// One batch's status, with the earlier batches that had the same content.
pub async fn fetch(client: &Client, id: i64) -> Result<Option<BatchStatus>, tokio_postgres::Error> {
    let query = format!("{SELECT} WHERE b.id = $1 GROUP BY b.id");
    let Some(row) = client.query_opt(&query, &[&id]).await? else {
        return Ok(None);
    };
    let mut status = from_row(&row);
    if let Some(sha) = &status.content_sha256 {
        let rows = client
            .query(
                "SELECT id FROM batches WHERE content_sha256 = $1 AND id < $2 ORDER BY id",
                &[sha, &id],
            )
            .await?;
        status.duplicate_of = rows.iter().map(|row| row.get(0)).collect();
    }
    Ok(Some(status))
}

/// `GET /batches/{id}`.
pub async fn get_batch(
    State(app): State<AppState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Json<BatchStatus>, ApiError> {
    let Path(id) = id.map_err(|_| ApiError::bad_request("a batch id is a whole number"))?;
    let client = app.pool.get().await?;
    let status = fetch(&client, id).await?.ok_or(ApiError::no_batch(id))?;
    Ok(Json(status))
}

/// Query parameters of `GET /batches`.
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    /// Page size (1 to 100, default 20).
    limit: Option<i64>,
    /// Only batches with a smaller id (the `next` cursor of the previous page).
    before: Option<i64>,
    /// Only the batch submitted with this `Idempotency-Key` (how a client whose upload broke
    /// off finds out whether the coordinator kept it).
    idempotency_key: Option<String>,
}

/// `GET /batches`: newest first, paginated with `limit` and `before`, optionally only the batch
/// of one `idempotency_key`.
pub async fn list_batches(
    State(app): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(query) = query.map_err(|rejection| ApiError::bad_request(rejection.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    let before = query.before.unwrap_or(i64::MAX);
    let client = app.pool.get().await?;
    let sql = format!(
        "{SELECT} WHERE b.id < $1 AND ($3::text IS NULL OR b.idempotency_key = $3)
         GROUP BY b.id ORDER BY b.id DESC LIMIT $2"
    );
    let rows = client
        .query(&sql, &[&before, &limit, &query.idempotency_key])
        .await?;
    let batches: Vec<BatchStatus> = rows.iter().map(from_row).collect();
    // A key names at most one batch: no next page then.
    let next = (query.idempotency_key.is_none() && batches.len() as i64 == limit)
        .then(|| {
            batches
                .last()
                .map(|last| format!("/batches?limit={limit}&before={}", last.id))
        })
        .flatten();
    Ok(Json(json!({ "batches": batches, "next": next })))
}

/// `GET /healthz`: the process is up.
pub async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// `GET /readyz`: PostgreSQL answers, RabbitMQ is connected and the spool takes files; 503 with
/// the missing one(s) false otherwise.
pub async fn readyz(State(app): State<AppState>) -> (StatusCode, Json<serde_json::Value>) {
    let postgres = match app.pool.get().await {
        Ok(client) => client.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    let rabbitmq = app.amqp.status().connected();
    let spool = app.spool.is_writable().await;
    let status = if postgres && rabbitmq && spool {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({ "postgres": postgres, "rabbitmq": rabbitmq, "spool": spool })),
    )
}
